//! The processes in memory, and the plan that keeps each one where it
//! should be.
//!
//! Everything here runs under the service's one mutex and does no I/O.
//! What happened (a process started, exited, passed or failed its check,
//! sent `READY=1`) and what was asked (start, stop, restart) only change the
//! state; [`State::plan`] then decides what to do about it and returns the
//! actions, which the supervisor carries out outside the lock.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::definition::{self, backoff_delay};
use super::store::ProcFile;
use crate::protocol::process::{
    CheckResult, ExitInfo, ProcessBrief, ProcessCheck, ProcessDefinition, ProcessSource, ProcessState,
};
use crate::protocol::{ErrorCode, WireError};
use crate::time::rfc3339_ms;

/// How often a starting process's heartbeat file is looked at.
pub(crate) const READY_POLL: Duration = Duration::from_millis(50);
/// How often a starting process's check command runs (at most).
pub(crate) const READY_POLL_COMMAND: Duration = Duration::from_millis(250);

/// Plan inputs that do not live in the state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: Instant,
    /// The wall clock, ms since the epoch (heartbeat files carry wall-clock times).
    pub(crate) now_ms: u64,
}

/// Where a process is, as the supervisor sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Phase {
    /// No instance. It starts when it is wanted (not stopped, not shutting down).
    Idle,
    /// No instance; it starts again at `until`.
    Backoff { until: Instant, until_ms: u64, delay: Duration },
    /// No instance, and its policy does not restart it.
    Exited,
    /// No instance: restarted too often, unable to start, or failed under `never`.
    Failed { error: String, storm: bool },
    /// Its spawn is under way.
    Spawning,
    /// Started; its check has not passed yet.
    Starting { deadline: Instant },
    /// Started and ready.
    Running { since: Instant },
    /// Its stop signal was sent; `SIGKILL` at `kill_at`. `failure`: why it
    /// is being stopped when that is a failure (a check, a start timeout).
    Stopping { kill_at: Instant, killed: bool, failure: Option<String> },
}

/// What the supervisor knows of a check while the process runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CheckState {
    /// When the next check run is due.
    pub(crate) next: Option<Instant>,
    /// A check run is under way.
    pub(crate) running: bool,
    /// Failed command runs in a row.
    pub(crate) failures: u32,
    /// The heartbeat file's modification time (ms) when the process started.
    pub(crate) baseline_ms: Option<u64>,
    /// The last `WATCHDOG=1` (or readiness).
    pub(crate) last_ping: Option<Instant>,
}

/// One run of a process.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Instance {
    pub(crate) id: u64,
    /// The definition it runs.
    pub(crate) def: ProcessDefinition,
    /// Its pid (the leader of its process group), once spawned.
    pub(crate) pid: Option<u32>,
    pub(crate) started: Instant,
    pub(crate) started_at_ms: u64,
    /// Left by a daemon that stopped unexpectedly: not our child, watched by polling.
    pub(crate) survivor: bool,
    pub(crate) check: CheckState,
    /// Why it must be stopped as a failure (a check said so).
    pub(crate) doomed: Option<String>,
}

/// How an instance ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Exit {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    /// Said instead of the status (a survivor whose status nobody can know).
    pub(crate) note: Option<String>,
}

impl Exit {
    fn describe(&self) -> String {
        match (&self.note, self.code, self.signal) {
            (Some(note), _, _) => note.clone(),
            (None, Some(code), _) => format!("exited with status {code}"),
            (None, None, Some(signal)) => format!("killed by {}", definition::signal_name(signal)),
            (None, None, None) => "ended".into(),
        }
    }

    fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// What a check run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The heartbeat file's modification time (ms since the epoch), if it exists.
    Heartbeat { mtime_ms: Option<u64> },
    /// The check command's outcome.
    Command { ok: bool, message: String },
}

/// What a notify socket received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Notification {
    pub(crate) ready: bool,
    pub(crate) watchdog: bool,
    pub(crate) status: Option<String>,
}

/// One process.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) name: String,
    /// Its `[process.<name>]` table.
    pub(crate) config: Option<ProcessDefinition>,
    /// What `define`, `start` and `stop` said (persisted).
    pub(crate) file: ProcFile,
    pub(crate) phase: Phase,
    pub(crate) instance: Option<Instance>,
    /// Restarts by its policy since the daemon started.
    pub(crate) restarts: u64,
    /// When the restarts within the window happened.
    pub(crate) recent: VecDeque<Instant>,
    /// Failures in a row, each quicker than the window (the backoff's exponent).
    pub(crate) quick_failures: u32,
    pub(crate) restart_requested: bool,
    pub(crate) last_exit: Option<ExitInfo>,
    pub(crate) last_check: Option<CheckResult>,
    pub(crate) notify_status: Option<String>,
    pub(crate) next_instance: u64,
}

impl Proc {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            config: None,
            file: ProcFile::default(),
            phase: Phase::Idle,
            instance: None,
            restarts: 0,
            recent: VecDeque::new(),
            quick_failures: 0,
            restart_requested: false,
            last_exit: None,
            last_check: None,
            notify_status: None,
            next_instance: 1,
        }
    }

    /// The definition in force: config.toml's, else the run-time one.
    pub(crate) fn effective(&self) -> Option<(ProcessSource, &ProcessDefinition)> {
        self.config
            .as_ref()
            .map(|d| (ProcessSource::Config, d))
            .or_else(|| self.file.definition.as_ref().map(|d| (ProcessSource::Runtime, d)))
    }

    pub(crate) fn is_defined(&self) -> bool {
        self.effective().is_some()
    }

    /// Whether it has a process (spawning, running or stopping).
    pub(crate) fn is_live(&self) -> bool {
        self.instance.is_some()
    }

    /// Its state as clients see it.
    pub(crate) fn state(&self, shutting_down: bool) -> ProcessState {
        match &self.phase {
            Phase::Idle if self.file.stopped || shutting_down || !self.is_defined() => ProcessState::Stopped,
            Phase::Idle | Phase::Spawning | Phase::Starting { .. } => ProcessState::Starting,
            Phase::Backoff { .. } => ProcessState::Backoff,
            Phase::Exited => ProcessState::Exited,
            Phase::Failed { .. } => ProcessState::Failed,
            Phase::Running { .. } => ProcessState::Running,
            Phase::Stopping { .. } => ProcessState::Stopping,
        }
    }

    /// The restarts that count toward the cap, at `now`.
    pub(crate) fn recent_restarts(&self, now: Instant) -> u32 {
        let window = self.effective().map_or(definition::DEFAULT_RESTART_WINDOW, |(_, d)| d.restart_window());
        self.recent.iter().filter(|t| now.saturating_duration_since(**t) < window).count() as u32
    }

    pub(crate) fn error(&self) -> Option<&str> {
        match &self.phase {
            Phase::Failed { error, .. } => Some(error),
            _ => None,
        }
    }

    pub(crate) fn brief(&self, clock: Clock, shutting_down: bool) -> ProcessBrief {
        let inst = self.instance.as_ref().filter(|i| i.pid.is_some());
        ProcessBrief {
            state: self.state(shutting_down),
            pid: inst.and_then(|i| i.pid),
            uptime_ms: inst.map(|i| clock.now.saturating_duration_since(i.started).as_millis() as u64),
            restarts: self.restarts,
            last_exit: self.last_exit.as_ref().map(|e| e.message.clone()),
            check_ok: self.last_check.as_ref().map(|c| c.ok),
            error: self.error().map(str::to_owned),
        }
    }

    /// Clears what a manual start or restart starts over: the restart
    /// count within the window, the backoff, a failed or exited state.
    fn fresh_start(&mut self) {
        self.recent.clear();
        self.quick_failures = 0;
        if matches!(self.phase, Phase::Backoff { .. } | Phase::Exited | Phase::Failed { .. }) {
            self.phase = Phase::Idle;
        }
    }

    fn check_result(&mut self, clock: Clock, ok: bool, message: String) {
        self.last_check = Some(CheckResult { at: rfc3339_ms(clock.now_ms), ok, message });
    }

    /// Decides what happens after an instance that ran for `ran` ended in
    /// a way its policy restarts: a restart after the backoff, or `failed`
    /// when the restarts within the window reached the cap.
    fn schedule_restart(&mut self, def: &ProcessDefinition, ran: Duration, clock: Clock, why: &str) {
        let window = def.restart_window();
        while self.recent.front().is_some_and(|t| clock.now.saturating_duration_since(*t) >= window) {
            self.recent.pop_front();
        }
        let cap = def.max_restarts_in_window();
        if self.recent.len() as u32 >= cap {
            let error = format!(
                "restarted {cap} times within {}; not restarting again ({why}); `start` tries again",
                crate::units::HumanDuration(window)
            );
            self.phase = Phase::Failed { error, storm: true };
            return;
        }
        self.recent.push_back(clock.now);
        self.restarts += 1;
        self.quick_failures = if ran >= window { 1 } else { self.quick_failures.saturating_add(1) };
        let delay = backoff_delay(self.quick_failures, def.backoff_base(), def.backoff_max());
        self.phase =
            Phase::Backoff { until: clock.now + delay, until_ms: clock.now_ms + delay.as_millis() as u64, delay };
    }
}

/// `820ms`, `31.2s`: an age as people read it.
fn age_text(age: Duration) -> String {
    if age < Duration::from_secs(1) { format!("{}ms", age.as_millis()) } else { format!("{:.1}s", age.as_secs_f64()) }
}

/// Something the supervisor does outside the lock.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Start instance `instance` of `name` (marked spawning).
    Spawn { name: String, instance: u64, def: ProcessDefinition },
    /// Ask the process group `pid` to stop.
    Signal { name: String, pid: u32, signal: libc::c_int },
    /// `SIGKILL` the process group `pid`.
    Kill { name: String, pid: u32 },
    /// Run the check of `def` for instance `instance` (marked running).
    Check { name: String, instance: u64, def: ProcessDefinition },
    /// Remove the directory of a process no longer defined, already forgotten.
    Forget { name: String },
}

/// Every process.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) procs: BTreeMap<String, Proc>,
    /// The daemon is stopping: stop everything, start nothing.
    pub(crate) shutting_down: bool,
}

pub(crate) fn unknown_process(name: &str) -> WireError {
    WireError::new(ErrorCode::UnknownProcess, format!("no process named {name:?} is defined"))
}

impl State {
    pub(crate) fn proc_mut(&mut self, name: &str) -> Result<&mut Proc, WireError> {
        self.procs.get_mut(name).filter(|p| p.is_defined()).ok_or_else(|| unknown_process(name))
    }

    /// `start`: the process is wanted (the caller persists `file.stopped`).
    pub(crate) fn start(&mut self, name: &str) -> Result<(), WireError> {
        let p = self.proc_mut(name)?;
        p.file.stopped = false;
        p.fresh_start();
        Ok(())
    }

    /// `stop`: the process is not wanted (the caller persists `file.stopped`).
    pub(crate) fn stop(&mut self, name: &str) -> Result<(), WireError> {
        let p = self.proc_mut(name)?;
        p.file.stopped = true;
        if p.instance.is_none() {
            p.phase = Phase::Idle;
        }
        Ok(())
    }

    /// `restart`: stop the instance if there is one, and start again.
    pub(crate) fn restart(&mut self, name: &str) -> Result<(), WireError> {
        let p = self.proc_mut(name)?;
        p.file.stopped = false;
        p.fresh_start();
        if matches!(p.phase, Phase::Spawning | Phase::Starting { .. } | Phase::Running { .. }) {
            p.restart_requested = true;
        }
        Ok(())
    }

    /// Instance `id` of `name` runs as `pid`; `baseline_ms` is its heartbeat
    /// file's modification time just before it started.
    pub(crate) fn spawned(&mut self, name: &str, id: u64, pid: u32, baseline_ms: Option<u64>, clock: Clock) {
        let Some(p) = self.procs.get_mut(name) else { return };
        let Some(inst) = p.instance.as_mut().filter(|i| i.id == id) else { return };
        inst.pid = Some(pid);
        inst.started = clock.now;
        inst.started_at_ms = clock.now_ms;
        inst.check = CheckState { baseline_ms, ..CheckState::default() };
        p.notify_status = None;
        p.phase = match inst.def.start_timeout() {
            None => Phase::Running { since: clock.now },
            Some(timeout) => {
                inst.check.next = match inst.def.check {
                    Some(ProcessCheck::Heartbeat { .. }) => Some(clock.now + READY_POLL),
                    Some(ProcessCheck::Command { .. }) => Some(clock.now + READY_POLL_COMMAND),
                    _ => None,
                };
                Phase::Starting { deadline: clock.now + timeout }
            }
        };
    }

    /// Instance `id` of `name` could not start. `permanent`: trying again
    /// cannot help (no such program or directory).
    pub(crate) fn spawn_failed(&mut self, name: &str, id: u64, message: &str, permanent: bool, clock: Clock) {
        let Some(p) = self.procs.get_mut(name) else { return };
        let Some(inst) = p.instance.take_if(|i| i.id == id) else { return };
        let error = format!("cannot start {}: {message}", inst.def.argv.first().map_or("", String::as_str));
        p.last_exit = Some(ExitInfo {
            at: rfc3339_ms(clock.now_ms),
            code: None,
            signal: None,
            failure: true,
            message: error.clone(),
        });
        if permanent || inst.def.restart_policy() == crate::protocol::process::RestartPolicy::Never {
            p.phase = Phase::Failed { error, storm: false };
        } else if self.shutting_down || p.file.stopped {
            p.phase = Phase::Idle;
        } else {
            p.schedule_restart(&inst.def, Duration::ZERO, clock, &error);
        }
    }

    /// Instance `id` of `name` has ended (its whole process group is gone).
    pub(crate) fn exited(&mut self, name: &str, id: u64, exit: &Exit, clock: Clock) {
        use crate::protocol::process::RestartPolicy;
        let shutting_down = self.shutting_down;
        let Some(p) = self.procs.get_mut(name) else { return };
        let Some(inst) = p.instance.take_if(|i| i.id == id) else { return };
        let ran = clock.now.saturating_duration_since(inst.started);
        let stopping = std::mem::replace(&mut p.phase, Phase::Idle);
        let described = exit.describe();
        let asked_to_stop = matches!(stopping, Phase::Stopping { failure: None, .. });
        let (failure, message) = match stopping {
            Phase::Stopping { failure: None, .. } => (false, format!("stopped ({described})")),
            Phase::Stopping { failure: Some(why), .. } => (true, format!("{why}; {described}")),
            Phase::Starting { .. } if !exit.success() => (true, format!("{described} before it was ready")),
            _ => (!exit.success(), described),
        };
        p.last_exit = Some(ExitInfo {
            at: rfc3339_ms(clock.now_ms),
            code: exit.code,
            signal: exit.signal,
            failure,
            message: message.clone(),
        });
        if asked_to_stop {
            return; // Asked to stop: `Idle` decides (start again, or stay stopped).
        }
        let restart = match inst.def.restart_policy() {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failure,
            RestartPolicy::Never => false,
        };
        if !restart {
            p.phase = if failure { Phase::Failed { error: message, storm: false } } else { Phase::Exited };
        } else if !(shutting_down || p.file.stopped) {
            let def = p.effective().map_or(inst.def, |(_, d)| d.clone());
            p.schedule_restart(&def, ran, clock, &message);
        }
    }

    /// A check run of instance `id` of `name` found `probe`.
    pub(crate) fn checked(&mut self, name: &str, id: u64, probe: Probe, clock: Clock) {
        let Some(p) = self.procs.get_mut(name) else { return };
        let Some(inst) = p.instance.as_mut().filter(|i| i.id == id) else { return };
        inst.check.running = false;
        let starting = matches!(p.phase, Phase::Starting { .. });
        if !starting && !matches!(p.phase, Phase::Running { .. }) {
            return;
        }
        let (ok, message) = match (&inst.def.check, probe) {
            (Some(ProcessCheck::Heartbeat { path, stale_ms, .. }), Probe::Heartbeat { mtime_ms }) => {
                let stale = Duration::from_millis(*stale_ms);
                match mtime_ms {
                    Some(mtime) if starting => {
                        if Some(mtime) != inst.check.baseline_ms {
                            let left = stale.saturating_sub(Duration::from_millis(clock.now_ms.saturating_sub(mtime)));
                            inst.check.next = Some(clock.now + left.max(Duration::from_millis(10)));
                            (true, format!("first heartbeat: {} was touched", path.display()))
                        } else {
                            inst.check.next = Some(clock.now + READY_POLL);
                            (false, format!("waiting for the first heartbeat: {} not touched yet", path.display()))
                        }
                    }
                    None if starting => {
                        inst.check.next = Some(clock.now + READY_POLL);
                        (false, format!("waiting for the first heartbeat: {} does not exist yet", path.display()))
                    }
                    Some(mtime) => {
                        let age = Duration::from_millis(clock.now_ms.saturating_sub(mtime));
                        let message = format!(
                            "heartbeat {} is {} old (stale after {})",
                            path.display(),
                            age_text(age),
                            crate::units::HumanDuration(stale)
                        );
                        if age > stale {
                            inst.doomed = Some(message.clone());
                            (false, message)
                        } else {
                            // Looked at again the moment it would turn stale.
                            inst.check.next = Some(clock.now + (stale - age) + Duration::from_millis(1));
                            (true, message)
                        }
                    }
                    None => {
                        let message = format!("heartbeat file {} is gone", path.display());
                        inst.doomed = Some(message.clone());
                        (false, message)
                    }
                }
            }
            (Some(ProcessCheck::Command { interval_ms, failures, .. }), Probe::Command { ok, message }) => {
                let interval = interval_ms.map_or(definition::DEFAULT_CHECK_INTERVAL, Duration::from_millis);
                if ok {
                    inst.check.failures = 0;
                    inst.check.next = Some(clock.now + interval);
                } else if starting {
                    inst.check.next = Some(clock.now + interval.min(READY_POLL_COMMAND));
                } else {
                    inst.check.failures += 1;
                    inst.check.next = Some(clock.now + interval);
                    let allowed = failures.unwrap_or(definition::DEFAULT_CHECK_FAILURES);
                    if inst.check.failures >= allowed {
                        inst.doomed = Some(format!("its check failed {allowed} times in a row ({message})"));
                    }
                }
                (ok, message)
            }
            _ => return, // The definition changed under the check: ignore it.
        };
        if ok && starting {
            p.phase = Phase::Running { since: clock.now };
        }
        p.check_result(clock, ok, message);
    }

    /// The notify socket of `name` received `note`.
    pub(crate) fn notified(&mut self, name: &str, note: Notification, clock: Clock) {
        let Some(p) = self.procs.get_mut(name) else { return };
        let Some(inst) = p.instance.as_mut().filter(|i| i.pid.is_some()) else { return };
        if let Some(status) = note.status {
            p.notify_status = Some(status);
        }
        if note.watchdog {
            inst.check.last_ping = Some(clock.now);
        }
        if note.ready && matches!(p.phase, Phase::Starting { .. }) {
            inst.check.last_ping = Some(clock.now);
            p.phase = Phase::Running { since: clock.now };
            p.check_result(clock, true, "READY=1 received".into());
        }
    }

    /// Decides what to do now; returns the actions and when to plan again
    /// at the latest (`None`: only when something changes).
    pub(crate) fn plan(&mut self, clock: Clock) -> (Vec<Action>, Option<Instant>) {
        let mut actions = Vec::new();
        let mut wake: Option<Instant> = None;
        let mut soonest = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
        let shutting_down = self.shutting_down;
        let mut forget = Vec::new();

        for (name, p) in &mut self.procs {
            let def = p.effective().map(|(_, d)| d.clone());
            let Some(inst) = p.instance.as_mut() else {
                let Some(def) = def else {
                    forget.push(name.clone());
                    continue;
                };
                let wanted = !p.file.stopped && !shutting_down;
                if p.file.stopped && p.phase != Phase::Idle {
                    p.phase = Phase::Idle;
                }
                let due = match p.phase {
                    Phase::Idle => wanted,
                    Phase::Backoff { until, .. } if wanted => {
                        soonest(until);
                        clock.now >= until
                    }
                    _ => false,
                };
                if due {
                    let id = p.next_instance;
                    p.next_instance += 1;
                    p.instance = Some(Instance {
                        id,
                        def: def.clone(),
                        pid: None,
                        started: clock.now,
                        started_at_ms: clock.now_ms,
                        survivor: false,
                        check: CheckState::default(),
                        doomed: None,
                    });
                    p.phase = Phase::Spawning;
                    actions.push(Action::Spawn { name: name.clone(), instance: id, def });
                }
                continue;
            };
            match &mut p.phase {
                Phase::Spawning => continue,
                Phase::Stopping { kill_at, killed, .. } => {
                    if !*killed && clock.now >= *kill_at {
                        *killed = true;
                        if let Some(pid) = inst.pid {
                            actions.push(Action::Kill { name: name.clone(), pid });
                        }
                    } else if !*killed {
                        soonest(*kill_at);
                    }
                    continue;
                }
                _ => {}
            }
            let Some(pid) = inst.pid else { continue };
            let watchdog = match (&inst.def.check, &p.phase) {
                (Some(ProcessCheck::Notify { watchdog_ms: Some(ms), .. }), Phase::Running { since }) => {
                    Some(inst.check.last_ping.unwrap_or(*since) + Duration::from_millis(*ms))
                }
                _ => None,
            };
            // Why the instance must stop now, if it must: `Some(None)` as
            // asked, `Some(Some(why))` as a failure.
            let asked = shutting_down
                || p.file.stopped
                || std::mem::take(&mut p.restart_requested)
                || def.as_ref() != Some(&inst.def);
            let stop: Option<Option<String>> = if asked {
                Some(None)
            } else if let Some(why) = inst.doomed.take() {
                Some(Some(why))
            } else if matches!(p.phase, Phase::Starting { deadline } if clock.now >= deadline) {
                let timeout = inst.def.start_timeout().unwrap_or_default();
                Some(Some(format!("not ready within {}", crate::units::HumanDuration(timeout))))
            } else if watchdog.is_some_and(|at| clock.now >= at) {
                let ms = match &inst.def.check {
                    Some(ProcessCheck::Notify { watchdog_ms: Some(ms), .. }) => *ms,
                    _ => 0,
                };
                Some(Some(format!("no WATCHDOG=1 for {}", crate::units::HumanDuration(Duration::from_millis(ms)))))
            } else {
                None
            };
            if let Some(failure) = stop {
                let grace = inst.def.stop_grace();
                p.phase = Phase::Stopping { kill_at: clock.now + grace, killed: false, failure };
                actions.push(Action::Signal { name: name.clone(), pid, signal: inst.def.stop_signal_number() });
                soonest(clock.now + grace);
                continue;
            }
            if let Phase::Starting { deadline } = p.phase {
                soonest(deadline);
            }
            if let Some(at) = watchdog {
                soonest(at);
            }
            if let Some(next) = inst.check.next.filter(|_| !inst.check.running) {
                if clock.now >= next {
                    inst.check.running = true;
                    inst.check.next = None;
                    actions.push(Action::Check { name: name.clone(), instance: inst.id, def: inst.def.clone() });
                } else {
                    soonest(next);
                }
            }
        }
        for name in forget {
            self.procs.remove(&name);
            actions.push(Action::Forget { name });
        }
        (actions, wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::process::RestartPolicy;

    fn def(name: &str) -> ProcessDefinition {
        ProcessDefinition {
            name: name.into(),
            argv: vec!["sleep".into(), "1000".into()],
            backoff_base_ms: Some(100),
            backoff_max_ms: Some(1000),
            max_restarts: Some(3),
            restart_window_ms: Some(10_000),
            ..Default::default()
        }
    }

    fn state_with(defs: &[ProcessDefinition]) -> State {
        let mut state = State::default();
        for d in defs {
            let mut p = Proc::new(d.name.clone());
            p.config = Some(d.clone());
            state.procs.insert(d.name.clone(), p);
        }
        state
    }

    fn at(base: Clock, ms: u64) -> Clock {
        Clock { now: base.now + Duration::from_millis(ms), now_ms: base.now_ms + ms }
    }

    fn clock() -> Clock {
        Clock { now: Instant::now(), now_ms: 1_000_000 }
    }

    /// Plans, and reports every spawn as started with pid 1000 + instance.
    fn spawn_all(state: &mut State, c: Clock) -> Vec<Action> {
        let (actions, _) = state.plan(c);
        for a in &actions {
            if let Action::Spawn { name, instance, .. } = a {
                state.spawned(name, *instance, 1000 + *instance as u32, None, c);
            }
        }
        actions
    }

    fn instance(state: &State, name: &str) -> u64 {
        state.procs[name].instance.as_ref().map(|i| i.id).expect("an instance")
    }

    fn crash(state: &mut State, name: &str, code: i32, c: Clock) {
        let id = instance(state, name);
        state.exited(name, id, &Exit { code: Some(code), ..Exit::default() }, c);
    }

    fn phase(state: &State, name: &str) -> ProcessState {
        state.procs[name].state(state.shutting_down)
    }

    #[test]
    fn defined_processes_start_and_run() {
        let mut state = state_with(&[def("a"), def("b")]);
        let c = clock();
        let actions = spawn_all(&mut state, c);
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::Spawn { .. })).count(), 2);
        assert_eq!(phase(&state, "a"), ProcessState::Running, "no check: ready once started");
        assert_eq!(state.plan(c), (vec![], None), "nothing more to do");
    }

    #[test]
    fn crash_loops_back_off_and_hit_the_cap() {
        let mut state = state_with(&[def("a")]);
        let mut c = clock();
        spawn_all(&mut state, c);
        let mut delays = Vec::new();
        for _ in 0..3 {
            crash(&mut state, "a", 1, c);
            let Phase::Backoff { delay, until, .. } = state.procs["a"].phase else { panic!("not backing off") };
            delays.push(delay.as_millis());
            let (actions, wake) = state.plan(c);
            assert!(actions.is_empty() && wake == Some(until), "waits out the backoff");
            c = at(c, delay.as_millis() as u64);
            assert!(matches!(&spawn_all(&mut state, c)[..], [Action::Spawn { .. }]));
        }
        assert_eq!(delays, [100, 200, 400], "the delay doubles");
        crash(&mut state, "a", 1, c);
        assert_eq!(phase(&state, "a"), ProcessState::Failed, "the fourth restart within the window is refused");
        assert!(state.procs["a"].error().unwrap().contains("restarted 3 times"));
        assert_eq!(state.procs["a"].restarts, 3);
        assert!(state.plan(c).0.is_empty(), "a failed process is left alone");
        state.start("a").unwrap();
        assert!(matches!(&spawn_all(&mut state, c)[..], [Action::Spawn { .. }]), "start tries again");
        assert_eq!(state.procs["a"].recent_restarts(c.now), 0, "with a fresh count");
    }

    #[test]
    fn a_process_that_ran_for_the_window_backs_off_from_the_start_again() {
        let mut state = state_with(&[def("a")]);
        let mut c = clock();
        spawn_all(&mut state, c);
        for _ in 0..2 {
            crash(&mut state, "a", 1, c);
            c = at(c, 1000);
            spawn_all(&mut state, c);
        }
        c = at(c, 10_000);
        crash(&mut state, "a", 1, c);
        let Phase::Backoff { delay, .. } = state.procs["a"].phase else { panic!() };
        assert_eq!(delay.as_millis(), 100, "stable for the window: the backoff starts over");
        assert_eq!(state.procs["a"].recent_restarts(c.now), 1, "older restarts left the window");
    }

    #[test]
    fn policies_decide_what_an_exit_means() {
        let policies = [
            (RestartPolicy::Always, 0, ProcessState::Backoff),
            (RestartPolicy::Always, 1, ProcessState::Backoff),
            (RestartPolicy::OnFailure, 0, ProcessState::Exited),
            (RestartPolicy::OnFailure, 3, ProcessState::Backoff),
            (RestartPolicy::Never, 0, ProcessState::Exited),
            (RestartPolicy::Never, 3, ProcessState::Failed),
        ];
        for (policy, code, expected) in policies {
            let mut d = def("a");
            d.restart = Some(policy);
            let mut state = state_with(&[d]);
            let c = clock();
            spawn_all(&mut state, c);
            crash(&mut state, "a", code, c);
            assert_eq!(phase(&state, "a"), expected, "{policy:?} after status {code}");
            let failure = state.procs["a"].last_exit.as_ref().unwrap().failure;
            assert_eq!(failure, code != 0);
        }
    }

    #[test]
    fn stop_restart_and_shutdown_signal_then_kill() {
        let mut d = def("a");
        d.stop_grace_ms = Some(500);
        d.stop_signal = Some("SIGINT".into());
        let mut state = state_with(&[d]);
        let c = clock();
        spawn_all(&mut state, c);
        let pid = state.procs["a"].instance.as_ref().unwrap().pid.unwrap();
        state.stop("a").unwrap();
        let (actions, wake) = state.plan(c);
        assert_eq!(actions, [Action::Signal { name: "a".into(), pid, signal: libc::SIGINT }]);
        assert_eq!(wake, Some(c.now + Duration::from_millis(500)));
        assert_eq!(phase(&state, "a"), ProcessState::Stopping);
        let later = at(c, 500);
        assert_eq!(state.plan(later).0, [Action::Kill { name: "a".into(), pid }], "SIGKILL after the grace");
        assert!(state.plan(later).0.is_empty(), "killed once");
        crash(&mut state, "a", 0, later);
        assert_eq!(phase(&state, "a"), ProcessState::Stopped);
        assert!(!state.procs["a"].last_exit.as_ref().unwrap().failure, "a requested stop is no failure");
        assert!(state.plan(later).0.is_empty(), "stopped stays stopped");

        state.restart("a").unwrap();
        let spawned = spawn_all(&mut state, later);
        assert!(matches!(&spawned[..], [Action::Spawn { .. }]), "restart starts a stopped process");
        state.restart("a").unwrap();
        assert!(matches!(&state.plan(later).0[..], [Action::Signal { .. }]), "restart stops a running one first");
        crash(&mut state, "a", 143, later);
        assert!(matches!(&spawn_all(&mut state, later)[..], [Action::Spawn { .. }]), "and starts it at once");
        assert_eq!(state.procs["a"].restarts, 0, "requested restarts are not counted");

        state.shutting_down = true;
        assert!(matches!(&state.plan(later).0[..], [Action::Signal { .. }]));
        crash(&mut state, "a", 143, later);
        assert_eq!(state.plan(later), (vec![], None), "nothing starts while shutting down");
        assert!(!state.procs["a"].file.stopped, "a shutdown does not stop it for the next daemon");
    }

    #[test]
    fn a_new_definition_restarts_and_an_undefined_process_is_forgotten() {
        let mut state = state_with(&[def("a")]);
        let c = clock();
        spawn_all(&mut state, c);
        state.procs.get_mut("a").unwrap().config.as_mut().unwrap().argv.push("x".into());
        assert!(matches!(&state.plan(c).0[..], [Action::Signal { .. }]));
        crash(&mut state, "a", 143, c);
        let spawned = spawn_all(&mut state, c);
        assert!(matches!(&spawned[..], [Action::Spawn { def, .. }] if def.argv.len() == 3));
        state.procs.get_mut("a").unwrap().config = None;
        assert!(matches!(&state.plan(c).0[..], [Action::Signal { .. }]), "stopped first");
        crash(&mut state, "a", 143, c);
        assert_eq!(state.plan(c).0, [Action::Forget { name: "a".into() }]);
        assert!(state.procs.is_empty());
    }

    #[test]
    fn heartbeats_make_a_process_ready_and_a_stale_one_is_restarted() {
        let mut d = def("a");
        d.check = Some(ProcessCheck::Heartbeat { path: "/hb".into(), stale_ms: 1000, start_timeout_ms: Some(5000) });
        let mut state = state_with(&[d]);
        let c = clock();
        let (actions, _) = state.plan(c);
        let [Action::Spawn { instance, .. }] = &actions[..] else { panic!("{actions:?}") };
        state.spawned("a", *instance, 7, Some(500), c);
        assert_eq!(phase(&state, "a"), ProcessState::Starting);
        let (actions, wake) = state.plan(c);
        assert!(actions.is_empty());
        assert_eq!(wake, Some(c.now + READY_POLL));
        let c1 = at(c, 50);
        assert!(matches!(&state.plan(c1).0[..], [Action::Check { .. }]));
        state.checked("a", *instance, Probe::Heartbeat { mtime_ms: Some(500) }, c1);
        assert_eq!(phase(&state, "a"), ProcessState::Starting, "the file has not changed since the start");
        let c2 = at(c, 100);
        state.plan(c2);
        state.checked("a", *instance, Probe::Heartbeat { mtime_ms: Some(c2.now_ms) }, c2);
        assert_eq!(phase(&state, "a"), ProcessState::Running, "touched after the start: ready");
        let (_, wake) = state.plan(c2);
        assert_eq!(wake, Some(c2.now + Duration::from_millis(1000)), "looked at when it would turn stale");
        let c3 = at(c2, 1000);
        assert!(matches!(&state.plan(c3).0[..], [Action::Check { .. }]));
        state.checked("a", *instance, Probe::Heartbeat { mtime_ms: Some(c2.now_ms + 600) }, c3);
        assert_eq!(state.plan(c3).1, Some(c3.now + Duration::from_millis(601)), "it beat meanwhile");
        let c4 = at(c3, 2000);
        state.plan(c4);
        state.checked("a", *instance, Probe::Heartbeat { mtime_ms: Some(c2.now_ms + 600) }, c4);
        assert!(matches!(&state.plan(c4).0[..], [Action::Signal { .. }]), "stale: stopped");
        crash(&mut state, "a", 143, c4);
        let exit = state.procs["a"].last_exit.clone().unwrap();
        assert!(exit.failure && exit.message.contains("stale after 1s"), "{exit:?}");
        assert_eq!(phase(&state, "a"), ProcessState::Backoff);
    }

    #[test]
    fn not_ready_in_time_is_a_failure() {
        let mut d = def("a");
        d.check = Some(ProcessCheck::Notify { watchdog_ms: Some(2000), start_timeout_ms: Some(1000) });
        let mut state = state_with(&[d]);
        let c = clock();
        spawn_all(&mut state, c);
        assert_eq!(state.plan(c).1, Some(c.now + Duration::from_secs(1)));
        assert!(matches!(&state.plan(at(c, 1000)).0[..], [Action::Signal { .. }]));
        crash(&mut state, "a", 143, at(c, 1000));
        assert!(state.procs["a"].last_exit.as_ref().unwrap().message.contains("not ready within 1s"));

        let c = at(c, 2000);
        let id = match &spawn_all(&mut state, c)[..] {
            [Action::Spawn { instance, .. }] => *instance,
            other => panic!("{other:?}"),
        };
        state.notified("a", Notification { ready: true, status: Some("serving".into()), ..Default::default() }, c);
        assert_eq!(phase(&state, "a"), ProcessState::Running);
        assert_eq!(state.procs["a"].notify_status.as_deref(), Some("serving"));
        assert_eq!(state.plan(c).1, Some(c.now + Duration::from_secs(2)), "the watchdog's deadline");
        state.notified("a", Notification { watchdog: true, ..Default::default() }, at(c, 1500));
        assert!(state.plan(at(c, 2000)).0.is_empty(), "pinged in time");
        assert!(matches!(&state.plan(at(c, 3500)).0[..], [Action::Signal { .. }]), "missed the watchdog");
        state.exited("a", id, &Exit { signal: Some(libc::SIGTERM), ..Exit::default() }, at(c, 3500));
        assert!(state.procs["a"].last_exit.as_ref().unwrap().message.contains("no WATCHDOG=1 for 2s"));
    }

    #[test]
    fn failing_check_commands_restart_after_the_allowed_failures() {
        let mut d = def("a");
        d.check = Some(ProcessCheck::Command {
            argv: vec!["true".into()],
            interval_ms: Some(1000),
            timeout_ms: None,
            failures: Some(2),
            start_timeout_ms: None,
        });
        let mut state = state_with(&[d]);
        let c = clock();
        spawn_all(&mut state, c);
        let id = instance(&state, "a");
        let fail = || Probe::Command { ok: false, message: "exited with status 1".into() };
        state.checked("a", id, fail(), c);
        assert_eq!(phase(&state, "a"), ProcessState::Starting, "failures while starting only wait");
        state.checked("a", id, Probe::Command { ok: true, message: "ok".into() }, c);
        assert_eq!(phase(&state, "a"), ProcessState::Running);
        state.checked("a", id, fail(), c);
        assert!(state.plan(c).0.is_empty(), "one failure is allowed");
        state.checked("a", id, fail(), c);
        assert!(matches!(&state.plan(c).0[..], [Action::Signal { .. }]));
    }

    #[test]
    fn programs_that_cannot_start_fail_at_once_or_back_off() {
        let mut state = state_with(&[def("a")]);
        let c = clock();
        state.plan(c);
        state.spawn_failed("a", 1, "No such file or directory", true, c);
        assert_eq!(phase(&state, "a"), ProcessState::Failed);
        assert!(state.procs["a"].error().unwrap().contains("cannot start sleep"));
        state.start("a").unwrap();
        state.plan(c);
        state.spawn_failed("a", 2, "Resource temporarily unavailable", false, c);
        assert_eq!(phase(&state, "a"), ProcessState::Backoff, "a passing condition is retried");
    }
}
