//! The process service: long-running processes the daemon starts, keeps
//! alive by their restart policy and checks, and stops.
//!
//! - `settings`: the `[process]` section of config.toml.
//! - `definition`: validating definitions, and the defaults in force.
//! - `store`: `processes/<name>/` on disk (definitions, run records).
//! - `state`: the processes in memory and the plan (pure, unit-tested).
//! - `supervisor`: the background task that carries the plan out (spawns,
//!   signals, checks), one task per instance, and recovery at start-up.
//! - `spawn`: starting one instance, recorded before its program runs.
//! - `logs`: each process's rotated log, and reading it.
//! - `notify`: the `sd_notify` socket of a process with a notify check.
//! - `handler`: the channel's requests.
//!
//! One mutex guards the state; it is never held across an `.await`.
//!
//! # After a crash
//!
//! A process lives inside its daemon's life: a clean stop stops every
//! process (its stop signal, then `SIGKILL` after its grace). When the
//! daemon is killed instead, its processes keep running, but nobody reads
//! their output any more (the next write to stdout or stderr fails), and
//! their exit status can never be known (they are no longer the daemon's
//! children). So the next daemon does not adopt them: it finds each one by
//! its run record (pid *and* the pid's start time, so a reused pid is never
//! signalled), stops it the way a clean stop would (its group, stop signal,
//! grace, `SIGKILL`), and starts it again under supervision. Between the two
//! daemons the processes run untracked; `hearth doctor` names them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::logs::LogSink;
use self::state::{Clock, Notification, Phase, Proc, State, unknown_process};
use self::store::Store;
use crate::daemon::Config;
use crate::daemon::events::EventBus;
use crate::daemon::services::{BoxFuture, Opened, Service, StartCtx, StartError, StartService};
use crate::paths::Paths;
use crate::protocol::Channel;
use crate::protocol::process::{
    ProcessBrief, ProcessDefinition, ProcessSource, ProcessState, ProcessStatus, ProcessSummary, ProcessesReport,
    Selector,
};
use crate::protocol::status::{HealthCode, HealthReason, ServiceSummaries};
use crate::protocol::{ErrorCode, WireError};
use crate::time::{now_ms, rfc3339_ms};

mod definition;
mod handler;
mod logs;
mod notify;
pub mod settings;
mod spawn;
mod state;
pub mod store;
mod supervisor;

/// Descriptors one supervised process holds in the daemon: its two output
/// pipes, its log and its notify socket. (A spawn's gate and a check's
/// pipes come and go within the base reserve.)
const FDS_PER_PROCESS: u64 = 4;

/// Beyond the processes' own grace, how long shutdown waits for them.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// The process service of one daemon.
#[derive(Debug)]
pub(crate) struct ProcessService {
    settings: settings::ProcessSettings,
    store: Store,
    /// Where processes without a `cwd` run.
    home: PathBuf,
    /// The largest frame a response may be.
    max_frame: usize,
    state: Mutex<State>,
    /// Wakes the supervisor: something changed.
    wake: Notify,
    /// Bumped whenever the supervisor has planned: wakes requests that wait.
    changed: watch::Sender<u64>,
    /// Each process's log.
    logs: Mutex<HashMap<String, Arc<LogSink>>>,
    /// The notify sockets' receivers.
    notify: Mutex<HashMap<String, CancellationToken>>,
    /// Where state changes are published (`process_state` events).
    events: Arc<EventBus>,
    /// Stops the supervisor (once every process has stopped).
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl ProcessService {
    /// Finds what the previous daemon left, then starts the supervisor.
    pub(crate) async fn open(
        config: &Config,
        paths: &Paths,
        events: Arc<EventBus>,
    ) -> Result<Arc<ProcessService>, StartError> {
        let root = paths.state_dir().join(store::DIR);
        let store = Store::open(root.clone()).map_err(|source| StartError::Io { path: root.clone(), source })?;
        let scanning = store.clone();
        let found = tokio::task::spawn_blocking(move || scanning.scan())
            .await
            .map_err(|e| StartError::join("the processes' recovery", &e))?
            .map_err(|source| StartError::Io { path: root.clone(), source })?;
        let settings = config.process.clone();
        let mut state = State::default();
        let defs = settings
            .definitions()
            .map_err(|(name, message)| StartError::Config { section: format!("process.{name}"), message })?;
        for def in defs {
            definition::validate(&def)
                .map_err(|message| StartError::Config { section: format!("process.{}", def.name), message })?;
            let name = def.name.clone();
            state.procs.entry(name.clone()).or_insert_with(|| Proc::new(name)).config = Some(def);
        }
        let clock = Self::clock();
        let survivors = supervisor::recover(&store, &mut state, found, clock);
        let service = Arc::new(ProcessService {
            settings,
            store,
            home: definition::home_dir(),
            max_frame: config.server.max_frame.as_usize(),
            state: Mutex::new(state),
            wake: Notify::new(),
            changed: watch::Sender::new(0),
            logs: Mutex::new(HashMap::new()),
            notify: Mutex::new(HashMap::new()),
            events,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        {
            let state = service.lock();
            let running = state.procs.values().filter(|p| p.is_defined() && !p.file.stopped).count();
            tracing::info!(
                processes = state.procs.len(),
                to_start = running,
                survivors = survivors.len(),
                "process service ready"
            );
        }
        for (name, id, pid, start_time) in survivors {
            let s = service.clone();
            service.tasks.spawn(async move { supervisor::watch_survivor(&s, &name, id, pid, start_time).await });
        }
        service.tasks.spawn(supervisor::run(service.clone()));
        Ok(service)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn clock() -> Clock {
        Clock { now: Instant::now(), now_ms: now_ms() }
    }

    /// Runs `f` on the state, then wakes the supervisor to plan.
    fn update<T>(&self, f: impl FnOnce(&mut State, Clock) -> T) -> T {
        let out = f(&mut self.lock(), Self::clock());
        self.wake.notify_one();
        out
    }

    pub(crate) fn notified(&self, name: &str, note: Notification) {
        self.update(|s, c| s.notified(name, note, c));
    }

    /// The log of `name`, with the limits of `def`.
    fn log_sink(&self, name: &str, def: &ProcessDefinition) -> Arc<LogSink> {
        let (max, keep) = self.settings.log_limits(def);
        let mut logs = self.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let sink =
            logs.entry(name.to_owned()).or_insert_with(|| Arc::new(LogSink::new(self.store.log(name), max, keep)));
        sink.set_limits(max, keep);
        sink.clone()
    }

    /// The log of `name` and what wakes its followers; `None` when no such
    /// process is known.
    fn log_of(&self, name: &str) -> Option<(PathBuf, watch::Receiver<u64>)> {
        let def = {
            let state = self.lock();
            let p = state.procs.get(name)?;
            p.effective().map(|(_, d)| d.clone()).or_else(|| p.instance.as_ref().map(|i| i.def.clone()))?
        };
        Some((self.store.log(name), self.log_sink(name, &def).subscribe()))
    }

    /// The state of `name`, if it is known.
    fn state_of(&self, name: &str) -> Option<ProcessState> {
        let state = self.lock();
        state.procs.get(name).map(|p| p.state(state.shutting_down))
    }

    /// The names `select` picks among the defined processes, by name.
    fn select(state: &State, select: &Selector) -> Result<Vec<String>, WireError> {
        let defined = || state.procs.values().filter(|p| p.is_defined());
        if let Some(name) = &select.name {
            return match state.procs.get(name).filter(|p| p.is_defined()) {
                Some(_) => Ok(vec![name.clone()]),
                None => Err(unknown_process(name)),
            };
        }
        if let Some(label) = &select.label {
            let names: Vec<String> = defined()
                .filter(|p| p.effective().is_some_and(|(_, d)| d.labels.contains(label)))
                .map(|p| p.name.clone())
                .collect();
            if names.is_empty() {
                return Err(WireError::new(ErrorCode::UnknownProcess, format!("no process has the label {label:?}")));
            }
            return Ok(names);
        }
        Ok(defined().map(|p| p.name.clone()).collect())
    }

    /// Persists the stopped flag of `name` after `change` set it; undoes
    /// the change when it cannot be saved.
    fn set_wanted(
        &self,
        state: &mut State,
        name: &str,
        change: impl FnOnce(&mut State) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        let before = state.proc_mut(name)?.file.stopped;
        change(state)?;
        let p = state.proc_mut(name)?;
        if p.file.stopped != before
            && let Err(e) = self.store.write_file(name, &p.file)
        {
            p.file.stopped = before;
            return Err(WireError::new(ErrorCode::Internal, format!("cannot save the state of {name}: {e}")));
        }
        Ok(())
    }

    /// Every process's status, or those `select` picks.
    pub(crate) fn status(&self, select: &Selector) -> Result<ProcessesReport, WireError> {
        let clock = Self::clock();
        let state = self.lock();
        let names =
            if select.given() == 0 { state.procs.keys().cloned().collect() } else { Self::select(&state, select)? };
        let logs = self.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut processes: Vec<ProcessStatus> = names
            .iter()
            .filter_map(|n| state.procs.get(n))
            .map(|p| self.process_status(p, clock, state.shutting_down, logs.get(&p.name)))
            .collect();
        drop(state);
        Ok(fit(&mut processes, self.max_frame))
    }

    fn process_status(&self, p: &Proc, clock: Clock, shutting_down: bool, log: Option<&Arc<LogSink>>) -> ProcessStatus {
        let effective = p.effective();
        let inst = p.instance.as_ref().filter(|i| i.pid.is_some());
        let backoff = match &p.phase {
            Phase::Backoff { delay, until_ms, .. } => Some((*delay, *until_ms)),
            _ => None,
        };
        ProcessStatus {
            name: p.name.clone(),
            source: effective.map(|(s, _)| s),
            definition: effective.map(|(_, d)| d.clone()),
            state: p.state(shutting_down),
            pid: inst.and_then(|i| i.pid),
            started_at: inst.map(|i| rfc3339_ms(i.started_at_ms)),
            uptime_ms: inst.map(|i| clock.now.saturating_duration_since(i.started).as_millis() as u64),
            restarts: p.restarts,
            recent_restarts: p.recent_restarts(clock.now),
            backoff_ms: backoff.map(|(d, _)| d.as_millis() as u64),
            retry_at: backoff.map(|(_, at)| rfc3339_ms(at)),
            last_exit: p.last_exit.clone(),
            last_check: p.last_check.clone(),
            notify_status: p.notify_status.clone(),
            error: p.error().map(str::to_owned),
            log: self.store.log(&p.name),
            rotated_logs: log.map(|l| l.rotated()).unwrap_or_default(),
        }
    }

    /// Stores a run-time definition; returns the source in force, whether
    /// anything changed, and the state now.
    pub(crate) fn define(
        &self,
        def: ProcessDefinition,
        start: bool,
    ) -> Result<(ProcessSource, bool, ProcessState), WireError> {
        definition::validate(&def).map_err(|e| WireError::new(ErrorCode::InvalidDefinition, e))?;
        let name = def.name.clone();
        let result = {
            let mut state = self.lock();
            let defined = state.procs.values().filter(|p| p.is_defined()).count();
            let exists = state.procs.get(&name).is_some_and(Proc::is_defined);
            if !exists && defined >= self.settings.max_processes as usize {
                return Err(WireError::new(
                    ErrorCode::TooManyProcesses,
                    format!(
                        "{defined} processes are defined, the most this daemon supervises (process.max_processes); remove one first"
                    ),
                ));
            }
            let shutting_down = state.shutting_down;
            let p = state.procs.entry(name.clone()).or_insert_with(|| Proc::new(name.clone()));
            let changed = p.file.definition.as_ref() != Some(&def);
            if changed {
                let stopped = if exists { p.file.stopped } else { !start };
                let before = std::mem::replace(&mut p.file, store::ProcFile { definition: Some(def), stopped });
                if let Err(e) = self.store.write_file(&name, &p.file) {
                    p.file = before;
                    return Err(WireError::new(ErrorCode::Internal, format!("cannot save the definition: {e}")));
                }
            }
            let source = p.effective().expect("just defined").0;
            (source, changed, p.state(shutting_down))
        };
        self.wake.notify_one();
        Ok(result)
    }

    /// Removes a run-time definition and waits until its process has
    /// stopped; returns the definition in force now (`config`), if any.
    pub(crate) async fn remove(
        &self,
        name: &str,
        stop: &CancellationToken,
    ) -> Result<Option<ProcessSource>, WireError> {
        let source = {
            let mut state = self.lock();
            let p = state.procs.get_mut(name).ok_or_else(|| unknown_process(name))?;
            if p.file.definition.is_none() {
                return Err(match p.effective() {
                    Some(_) => WireError::new(
                        ErrorCode::NotRuntimeDefined,
                        format!("process {name:?} is defined in config.toml; only run-time definitions can be removed"),
                    ),
                    None => unknown_process(name),
                });
            }
            let before = std::mem::take(&mut p.file);
            if let Err(e) = self.store.write_file(name, &p.file) {
                p.file = before;
                return Err(WireError::new(ErrorCode::Internal, format!("cannot save: {e}")));
            }
            p.effective().map(|(s, _)| s)
        };
        self.wake.notify_one();
        if source.is_none() {
            let names = [name.to_owned()];
            let limit = self.stop_limit(&names);
            let stopped = self.wait(&names, Some(limit), stop, |s, n| !s.procs.get(n).is_some_and(Proc::is_live));
            if let Err(Unsettled::Stopping) = stopped.await {
                return Err(shutting_down());
            }
        }
        Ok(source)
    }

    /// Starts the processes `select` picks; unless `no_wait`, waits until
    /// each is ready (or has ended).
    pub(crate) async fn start(
        &self,
        select: &Selector,
        no_wait: bool,
        stop: &CancellationToken,
    ) -> Result<BTreeMap<String, ProcessBrief>, WireError> {
        let targets = {
            let mut state = self.lock();
            let names = Self::select(&state, select)?;
            let mut targets = Vec::new();
            for name in names {
                let first = state.procs[&name].instance.as_ref().map_or(state.procs[&name].next_instance, |i| i.id);
                self.set_wanted(&mut state, &name, |s| s.start(&name))?;
                targets.push((name, first));
            }
            targets
        };
        self.wake.notify_one();
        self.settle(&targets, no_wait, stop).await?;
        Ok(self.briefs(targets.iter().map(|(n, _)| n)))
    }

    /// Stops the processes `select` picks and waits until they have exited.
    pub(crate) async fn stop(
        &self,
        select: &Selector,
        stop: &CancellationToken,
    ) -> Result<BTreeMap<String, ProcessBrief>, WireError> {
        let names = {
            let mut state = self.lock();
            let names = Self::select(&state, select)?;
            for name in &names {
                self.set_wanted(&mut state, name, |s| s.stop(name))?;
            }
            names
        };
        self.wake.notify_one();
        // Past the limit (a process that even SIGKILL does not end at once)
        // the answer says `stopping`.
        let limit = self.stop_limit(&names);
        let stopped = self.wait(&names, Some(limit), stop, |s, n| !s.procs.get(n).is_some_and(Proc::is_live));
        if let Err(Unsettled::Stopping) = stopped.await {
            return Err(shutting_down());
        }
        Ok(self.briefs(names.iter()))
    }

    /// Restarts the processes `select` picks: all at once, or `rolling`,
    /// one at a time by name, each ready before the next is stopped.
    pub(crate) async fn restart(
        &self,
        select: &Selector,
        rolling: bool,
        no_wait: bool,
        stop: &CancellationToken,
    ) -> Result<BTreeMap<String, ProcessBrief>, WireError> {
        let names = Self::select(&self.lock(), select)?;
        let batches: Vec<Vec<String>> =
            if rolling { names.iter().map(|n| vec![n.clone()]).collect() } else { vec![names.clone()] };
        for (done, batch) in batches.into_iter().enumerate() {
            let targets = {
                let mut state = self.lock();
                let mut targets = Vec::new();
                for name in batch {
                    let next = match state.procs.get(&name) {
                        Some(p) => p.next_instance,
                        None => return Err(unknown_process(&name)),
                    };
                    self.set_wanted(&mut state, &name, |s| s.restart(&name))?;
                    targets.push((name, next));
                }
                targets
            };
            self.wake.notify_one();
            if let Err(mut e) = self.settle(&targets, no_wait && !rolling, stop).await {
                if rolling {
                    let left = names.len() - done - 1;
                    e.message = format!(
                        "{}; the rolling restart stopped there ({done} restarted before it, {left} not restarted)",
                        e.message
                    );
                }
                return Err(e);
            }
        }
        Ok(self.briefs(names.iter()))
    }

    /// Waits until each `(name, first instance)` has an instance at least
    /// that new which is ready (started, with `no_wait`), or has ended.
    async fn settle(
        &self,
        targets: &[(String, u64)],
        no_wait: bool,
        stop: &CancellationToken,
    ) -> Result<(), WireError> {
        let firsts: HashMap<&str, u64> = targets.iter().map(|(n, id)| (n.as_str(), *id)).collect();
        let names: Vec<String> = targets.iter().map(|(n, _)| n.clone()).collect();
        let limit = {
            let state = self.lock();
            names
                .iter()
                .filter_map(|n| state.procs.get(n)?.effective().map(|(_, d)| d.clone()))
                .map(|d| d.start_timeout().unwrap_or(Duration::ZERO) + d.stop_grace() + Duration::from_secs(5))
                .max()
                .unwrap_or(Duration::from_secs(5))
        };
        let mut failure = None;
        let settled = self
            .wait(&names, Some(limit), stop, |state, name| {
                let Some(p) = state.procs.get(name) else { return true };
                let first = firsts.get(name).copied().unwrap_or(0);
                let fresh = p.instance.as_ref().is_some_and(|i| i.id >= first && i.pid.is_some());
                match &p.phase {
                    Phase::Failed { error, storm } => {
                        let code = if *storm { ErrorCode::RestartStorm } else { ErrorCode::StartFailed };
                        failure.get_or_insert_with(|| WireError::new(code, format!("process {name}: {error}")));
                        true
                    }
                    Phase::Exited => true,
                    Phase::Running { .. } => fresh,
                    Phase::Starting { .. } => no_wait && fresh,
                    Phase::Idle => p.file.stopped || state.shutting_down,
                    _ => false,
                }
            })
            .await;
        if let Some(e) = failure {
            return Err(e);
        }
        settled.map_err(|unsettled| {
            let Unsettled::Pending(pending) = unsettled else { return shutting_down() };
            let state = self.lock();
            let described: Vec<String> = pending
                .iter()
                .filter_map(|n| state.procs.get(n))
                .map(|p| {
                    let why = p.last_exit.as_ref().map(|e| format!(", last: {}", e.message)).unwrap_or_default();
                    let check = p.last_check.as_ref().map(|c| format!(", check: {}", c.message)).unwrap_or_default();
                    format!("{} is {}{why}{check}", p.name, p.state(state.shutting_down))
                })
                .collect();
            WireError::new(
                ErrorCode::NotReady,
                format!("not ready within {}: {}", crate::units::HumanDuration(limit), described.join("; ")),
            )
        })
    }

    /// Waits until `done` holds for every name, or `limit` passes
    /// ([`Unsettled::Pending`] names the others), or the daemon stops.
    async fn wait(
        &self,
        names: &[String],
        limit: Option<Duration>,
        stop: &CancellationToken,
        mut done: impl FnMut(&State, &str) -> bool,
    ) -> Result<(), Unsettled> {
        let deadline = limit.map(|l| Instant::now() + l);
        let mut changed = self.changed.subscribe();
        loop {
            let pending: Vec<String> = {
                let state = self.lock();
                names.iter().filter(|n| !done(&state, n)).cloned().collect()
            };
            if pending.is_empty() {
                return Ok(());
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return Err(Unsettled::Stopping) },
                () = sleep_until_or_forever(deadline) => return Err(Unsettled::Pending(pending)),
                () = stop.cancelled() => return Err(Unsettled::Stopping),
            }
        }
    }

    /// How long stopping `names` may take: their longest grace, and a margin.
    fn stop_limit(&self, names: &[String]) -> Duration {
        let state = self.lock();
        let grace = names
            .iter()
            .filter_map(|n| state.procs.get(n))
            .filter_map(|p| p.instance.as_ref().map(|i| i.def.stop_grace()))
            .max()
            .unwrap_or_default();
        grace + SHUTDOWN_MARGIN
    }

    fn briefs<'a>(&self, names: impl Iterator<Item = &'a String>) -> BTreeMap<String, ProcessBrief> {
        let clock = Self::clock();
        let state = self.lock();
        names.filter_map(|n| Some((n.clone(), state.procs.get(n)?.brief(clock, state.shutting_down)))).collect()
    }

    /// Each process's state and pid as clients see them now.
    fn states(&self) -> HashMap<String, (ProcessState, Option<u32>)> {
        let state = self.lock();
        state
            .procs
            .values()
            .map(|p| {
                let pid = p.instance.as_ref().and_then(|i| i.pid);
                (p.name.clone(), (p.state(state.shutting_down), pid))
            })
            .collect()
    }

    /// Publishes a `process_state` event for every process whose state (or
    /// pid) changed since `seen`, which becomes the states now.
    fn publish_changes(&self, seen: &mut HashMap<String, (ProcessState, Option<u32>)>) {
        use crate::protocol::event::EventData;
        let now = self.states();
        let mut names: Vec<&String> = now.keys().chain(seen.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let (before, after) = (seen.get(name), now.get(name));
            if before == after {
                continue;
            }
            self.events.publish(
                Channel::Process,
                EventData::ProcessState {
                    name: name.clone(),
                    from: before.map(|(s, _)| *s),
                    to: after.map(|(s, _)| *s),
                    pid: after.and_then(|(_, pid)| *pid),
                },
            );
        }
        *seen = now;
    }

    /// The status channel's summary.
    pub(crate) fn summary(&self) -> ProcessSummary {
        let clock = Self::clock();
        let state = self.lock();
        let processes: BTreeMap<String, ProcessBrief> =
            state.procs.values().map(|p| (p.name.clone(), p.brief(clock, state.shutting_down))).collect();
        let running = processes
            .values()
            .filter(|b| matches!(b.state, ProcessState::Running | ProcessState::Starting) && b.pid.is_some())
            .count() as u32;
        let failed = processes.values().filter(|b| b.state == ProcessState::Failed).count() as u32;
        ProcessSummary { processes, running, failed }
    }
}

/// Why a wait ended before everything was done.
#[derive(Debug)]
enum Unsettled {
    /// The limit passed; these were not done.
    Pending(Vec<String>),
    /// The daemon is stopping.
    Stopping,
}

fn shutting_down() -> WireError {
    WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
}

/// Cuts `processes` down until their report fits in a frame of `max`
/// bytes: first without definitions, then without the last entries.
fn fit(processes: &mut Vec<ProcessStatus>, max: usize) -> ProcessesReport {
    let size = |p: &[ProcessStatus]| {
        serde_json::to_vec(&crate::protocol::process::ProcessResponse::Status(ProcessesReport {
            processes: p.to_vec(),
            truncated: true,
        }))
        .map_or(usize::MAX, |v| v.len())
    };
    if size(processes) <= max {
        return ProcessesReport { processes: std::mem::take(processes), truncated: false };
    }
    for p in processes.iter_mut() {
        p.definition = None;
    }
    while !processes.is_empty() && size(processes) > max {
        processes.pop();
    }
    ProcessesReport { processes: std::mem::take(processes), truncated: true }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl StartService for ProcessService {
    const CHANNEL: Channel = Channel::Process;

    fn enabled(config: &Config) -> bool {
        config.process.enabled
    }

    fn reserved_fds(config: &Config) -> u64 {
        u64::from(config.process.max_processes) * FDS_PER_PROCESS
    }

    async fn start(ctx: StartCtx<'_>) -> Result<Arc<Self>, StartError> {
        ProcessService::open(ctx.config, ctx.paths, ctx.events.clone()).await
    }
}

impl Service for ProcessService {
    fn serve(self: Arc<Self>, opened: Opened) -> BoxFuture<'static, ()> {
        Box::pin(handler::serve(opened.session(), self))
    }

    fn summarize(&self, summaries: &mut ServiceSummaries) {
        summaries.process = Some(self.summary());
    }

    /// A `failed` process makes the daemon degraded.
    fn health(&self, reasons: &mut Vec<HealthReason>) {
        let state = self.lock();
        for p in state.procs.values() {
            if let Some(error) = p.error() {
                reasons.push(HealthReason::new(HealthCode::ProcessFailing, format!("process {}: {error}", p.name)));
            }
        }
    }

    /// Proves the process state is not stuck under its lock.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for _ in 0..100 {
                if !matches!(self.state.try_lock(), Err(std::sync::TryLockError::WouldBlock)) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err("the process state has been locked for over a second".into())
        })
    }

    /// Supervised processes keep the daemon from idling: an idle exit would stop them.
    fn busy(&self) -> Option<String> {
        let state = self.lock();
        let live = state.procs.values().filter(|p| p.is_live()).count();
        (live > 0).then(|| format!("{live} supervised processes running"))
    }

    /// `; processes: 3 running, 1 failed` for a `STATUS=` line.
    fn status_line(&self, line: &mut String) {
        let summary = self.summary();
        if summary.running + summary.failed > 0 {
            line.push_str(&format!("; processes: {} running, {} failed", summary.running, summary.failed));
        }
    }

    /// Stops every process (stop signal, grace, `SIGKILL`), then the supervisor.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let grace = {
                let mut state = self.lock();
                state.shutting_down = true;
                state.procs.values().filter_map(|p| p.instance.as_ref()).map(|i| i.def.stop_grace()).max()
            };
            self.wake.notify_one();
            if let Some(grace) = grace {
                tracing::info!("stopping the supervised processes");
                let names: Vec<String> = self.lock().procs.keys().cloned().collect();
                let never = CancellationToken::new();
                let limit = grace + SHUTDOWN_MARGIN;
                let stopped =
                    self.wait(&names, Some(limit), &never, |s, n| !s.procs.get(n).is_some_and(Proc::is_live)).await;
                if let Err(left) = stopped {
                    tracing::warn!(?left, "supervised processes did not stop within {limit:?}");
                }
            }
            self.stop.cancel();
            for cancel in self.notify.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values() {
                cancel.cancel();
            }
            self.tasks.close();
            if tokio::time::timeout(SHUTDOWN_MARGIN, self.tasks.wait()).await.is_err() {
                tracing::warn!("process tasks did not stop within {SHUTDOWN_MARGIN:?}");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fits_in_a_frame() {
        let status = |n: usize| ProcessStatus {
            name: format!("p{n}"),
            source: Some(ProcessSource::Runtime),
            definition: Some(ProcessDefinition {
                name: format!("p{n}"),
                argv: vec!["x".repeat(1000)],
                ..Default::default()
            }),
            state: ProcessState::Running,
            pid: Some(1),
            started_at: None,
            uptime_ms: None,
            restarts: 0,
            recent_restarts: 0,
            backoff_ms: None,
            retry_at: None,
            last_exit: None,
            last_check: None,
            notify_status: None,
            error: None,
            log: "/x".into(),
            rotated_logs: vec![],
        };
        let mut all: Vec<ProcessStatus> = (0..10).map(status).collect();
        let report = fit(&mut all, 1 << 20);
        assert!(!report.truncated && report.processes.len() == 10);
        let mut all: Vec<ProcessStatus> = (0..10).map(status).collect();
        let report = fit(&mut all, 4096);
        assert!(report.truncated && report.processes.len() == 10, "definitions go first");
        assert!(report.processes.iter().all(|p| p.definition.is_none()));
        let mut all: Vec<ProcessStatus> = (0..10).map(status).collect();
        let report = fit(&mut all, 600);
        assert!(report.truncated && report.processes.len() < 10);
        let bytes = serde_json::to_vec(&crate::protocol::process::ProcessResponse::Status(report)).unwrap();
        assert!(bytes.len() <= 600);
    }
}
