//! The background work: plan, then build, check, reset and remove, until
//! the daemon stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::definition::{self, check_command, fingerprint, substitute};
use super::runner::{self, BuildLog, Step, StepError};
use super::state::{Action, Backoff, ResState, backoff_delay};
use super::store::{LeaseRecord, ProcessRef, Record, RecordState};
use super::{PoolService, failure};
use crate::protocol::event::EventData;
use crate::protocol::pool::{Lease, PoolDefinition};
use crate::protocol::{Channel, ErrorCode, WireError};
use crate::time::now_ms;

/// The longest the scheduler sleeps without being woken.
const IDLE_PLAN: Duration = Duration::from_secs(3600);

/// Plans and starts work whenever something changes or a deadline comes.
pub(crate) async fn run(service: Arc<PoolService>) {
    loop {
        let plan = service.lock().plan(PoolService::clock(), service.policy(), resource_id);
        for action in plan.actions {
            execute(&service, action);
        }
        let wake = plan.wake.unwrap_or_else(|| Instant::now() + IDLE_PLAN);
        tokio::select! {
            () = service.wake.notified() => {}
            () = tokio::time::sleep_until(wake) => {}
            () = service.stop.cancelled() => break,
        }
    }
}

/// Deletes what was moved to the trash, off the async workers.
pub(crate) async fn collect_trash(service: Arc<PoolService>) {
    loop {
        tokio::select! {
            () = service.trash.notified() => {}
            () = service.stop.cancelled() => break,
        }
        let store = service.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.empty_trash()).await;
    }
}

/// Fsyncs lease files soon after their takes were answered, many at once
/// when takes come in bursts.
pub(crate) async fn sync_leases(service: Arc<PoolService>) {
    loop {
        tokio::select! {
            () = service.sync.notified() => {}
            () = service.stop.cancelled() => break,
        }
        let batch = std::mem::take(&mut *service.unsynced.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if batch.is_empty() {
            continue;
        }
        let store = service.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.sync_leases(&batch)).await;
    }
}

fn resource_id() -> String {
    crate::daemon::random::hex(16).unwrap_or_else(|_| {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        format!("{:020x}{:012x}", now_ms(), N.fetch_add(1, Ordering::Relaxed))
    })
}

fn execute(service: &Arc<PoolService>, action: Action) {
    match action {
        Action::Build { pool, id, def, cancel } => {
            let started = EventData::PoolBuildStarted { pool: pool.clone(), resource: id.clone() };
            service.events.publish(Channel::Pool, started);
            let s = service.clone();
            service.tasks.spawn(async move { build(&s, &pool, &id, &def, &cancel).await });
        }
        Action::Reset { pool, id, def } => {
            let s = service.clone();
            service.tasks.spawn(async move { reset(&s, &pool, &id, &def).await });
        }
        Action::Check { pool, id, def } => {
            let s = service.clone();
            service.tasks.spawn(async move { check(&s, &pool, &id, &def).await });
        }
        Action::Remove { pool, id, why } => {
            tracing::info!(pool, resource = %id, "removing a ready resource: {why}");
            service.remove_resource(&pool, &id);
        }
        Action::DropPool { pool } => {
            tracing::info!(pool, "pool removed: no definition and no lease left");
            service.store.remove_pool_dir(&pool);
        }
    }
}

/// How a build, reset or check went.
struct Outcome {
    result: Result<(), StepError>,
    log: Option<PathBuf>,
    elapsed: Duration,
    /// The output's last lines, for the error.
    tail: String,
}

impl Outcome {
    fn message(&self) -> String {
        match &self.result {
            Ok(()) => String::new(),
            Err(e) if self.tail.is_empty() => e.to_string(),
            Err(e) => format!("{e}\n{}", self.tail),
        }
    }

    fn cancelled(&self) -> bool {
        matches!(self.result, Err(StepError::Cancelled))
    }
}

/// Runs `steps` (then the check) in the resource's directory under one
/// deadline, recording each step's process group before its program runs,
/// so that a daemon killed at any moment kills it at its next start.
async fn run_steps(
    service: &PoolService,
    pool: &str,
    id: &str,
    def: &PoolDefinition,
    steps: &[Vec<String>],
    record: &mut Record,
    cancel: &CancellationToken,
) -> Outcome {
    let started = Instant::now();
    let timeout = Duration::from_millis(def.create_timeout_ms.unwrap_or(600_000));
    let deadline = started + timeout;
    let dir = service.store.resource_dir(pool, id);
    let mut log = BuildLog::new(service.settings.build_log_max.as_usize());
    let check = check_command(def);
    let mut result = Ok(());
    for argv in steps.iter().chain(check.as_ref()) {
        let argv = substitute(argv, &dir);
        let step = Step { argv: &argv, dir: &dir, env: &def.env, pool };
        let store = &service.store;
        let record_process = |pgid: u32| {
            let process = ProcessRef::of(pgid)
                .ok_or_else(|| std::io::Error::other(format!("process {pgid} vanished before it ran")))?;
            record.state = match record.state {
                RecordState::Resetting { .. } => RecordState::Resetting { process: Some(process) },
                _ => RecordState::Building { process: Some(process) },
            };
            store.write_record(pool, record)
        };
        result = runner::run(&step, deadline, timeout, &mut log, cancel, record_process).await;
        if result.is_err() {
            break;
        }
    }
    let elapsed = started.elapsed();
    let tail = if result.is_err() { log.last_lines() } else { String::new() };
    let store = service.store.clone();
    let (p, i) = (pool.to_owned(), id.to_owned());
    let bytes = log.bytes();
    let log = tokio::task::spawn_blocking(move || store.write_log(&p, &i, &bytes)).await.ok().and_then(Result::ok);
    Outcome { result, log, elapsed, tail }
}

/// Builds one resource and hands it to a waiting take or to the pool.
async fn build(service: &Arc<PoolService>, pool: &str, id: &str, def: &PoolDefinition, cancel: &CancellationToken) {
    let commands = definition::commands(def, definition::find_uv().as_deref());
    let mut record = Record {
        id: id.to_owned(),
        state: RecordState::Building { process: None },
        spec: fingerprint(def),
        created_at_ms: 0,
        build_ms: 0,
    };
    let prepared = service
        .store
        .create_pool_dir(pool)
        .and_then(|()| service.store.write_record(pool, &record))
        .and_then(|()| service.store.create_resource_dir(pool, id));
    let outcome = match prepared {
        Ok(_) => run_steps(service, pool, id, def, &commands.create, &mut record, cancel).await,
        Err(e) => Outcome {
            result: Err(StepError::Spawn { program: "(the daemon)".into(), source: e }),
            log: None,
            elapsed: Duration::ZERO,
            tail: String::new(),
        },
    };
    if outcome.result.is_ok() {
        record.state = RecordState::Ready;
        record.created_at_ms = now_ms();
        record.build_ms = outcome.elapsed.as_millis() as u64;
        let recorded = service.store.clear_lease(pool, id).and_then(|()| service.store.write_record(pool, &record));
        if let Err(e) = recorded {
            return finished_failed(service, pool, id, &outcome, Some(format!("cannot record the build: {e}")));
        }
        tracing::info!(pool, resource = %id, build_ms = record.build_ms, "built");
        finished_ready(service, pool, id, &record, true);
    } else {
        finished_failed(service, pool, id, &outcome, None);
    }
}

/// A resource is built (or reset) and recorded ready: give it to the first
/// waiting take, else to the pool.
fn finished_ready(service: &Arc<PoolService>, pool: &str, id: &str, record: &Record, built: bool) {
    let ended = EventData::PoolBuildEnded { pool: pool.into(), resource: id.into(), ok: true, ms: record.build_ms };
    service.events.publish(Channel::Pool, ended);
    let clock = PoolService::clock();
    let handed = {
        let mut state = service.lock();
        state.builds_running -= 1;
        let p = state.pools.get_mut(pool).expect("a pool with a build stays");
        if built {
            p.stats.builds += 1;
            p.stats.build_ms_total += record.build_ms;
            p.stats.failures = 0;
            p.backoff = None;
        }
        let current = p.effective().map(|(_, d)| fingerprint(d));
        if current.as_deref() != Some(record.spec.as_str()) {
            p.resources.remove(id);
            drop(state);
            tracing::info!(pool, resource = %id, "built from a definition no longer in force; removing it");
            service.remove_resource(pool, id);
            service.wake.notify_one();
            return;
        }
        let r = p.resources.get_mut(id).expect("building");
        r.created_at_ms = record.created_at_ms;
        r.build_ms = record.build_ms;
        r.cancel = None;
        match p.waiters.pop_front() {
            Some(w) => {
                r.for_take = false;
                let lease = LeaseRecord {
                    id: w.lease.clone(),
                    taken_at_ms: clock.now_ms,
                    warm: false,
                    wait_ms: clock.now.saturating_duration_since(w.since).as_millis() as u64,
                    holder: w.holder.client.clone(),
                    holder_pid: w.holder.pid,
                };
                r.state = ResState::Taken(lease.clone());
                let r = r.clone();
                p.stats.takes += 1;
                state.leases.insert(w.lease.clone(), (pool.to_owned(), id.to_owned()));
                Some((w, lease, r))
            }
            None => {
                r.state = ResState::Ready { verified: true, checked: clock.now };
                None
            }
        }
    };
    service.wake.notify_one();
    let Some((waiter, lease, r)) = handed else { return };
    let answer: Result<Lease, WireError> =
        service.hand_over(pool, id, &lease).map(|()| service.lease_view(pool, id, &r, &lease, clock.now_ms));
    if let Err(Ok(lease)) = waiter.tx.send(answer) {
        // The take gave up in the very same moment.
        service.untake(&lease.lease);
    }
}

fn finished_failed(service: &Arc<PoolService>, pool: &str, id: &str, outcome: &Outcome, extra: Option<String>) {
    let message = extra.unwrap_or_else(|| outcome.message());
    if !outcome.cancelled() {
        tracing::warn!(pool, resource = %id, "build failed: {message}");
    }
    let ms = outcome.elapsed.as_millis() as u64;
    let ended = EventData::PoolBuildEnded { pool: pool.into(), resource: id.into(), ok: false, ms };
    service.events.publish(Channel::Pool, ended);
    service.remove_resource(pool, id);
    {
        let mut state = service.lock();
        state.builds_running -= 1;
        let p = state.pools.get_mut(pool).expect("a pool with a build stays");
        p.resources.remove(id);
        if !outcome.cancelled() {
            let s = &service.settings;
            p.stats.failures += 1;
            p.stats.failures_total += 1;
            p.stats.last_error = Some(failure(message.clone(), outcome.log.clone()));
            let delay = backoff_delay(p.stats.failures, s.retry_base.0, s.retry_max.0);
            let until = Instant::now() + delay;
            p.backoff = Some(Backoff { delay, until, until_ms: now_ms() + delay.as_millis() as u64 });
            // Takes waiting now asked for a resource now: tell them why there is none.
            p.fail_waiters(&WireError::new(
                ErrorCode::BuildFailed,
                format!("building a resource of pool {pool:?} failed: {message}"),
            ));
        }
    }
    service.wake.notify_one();
}

/// Resets a released resource, checks it, and puts it back.
async fn reset(service: &Arc<PoolService>, pool: &str, id: &str, def: &PoolDefinition) {
    let (spec, created_at_ms, build_ms) = {
        let state = service.lock();
        let r = &state.pools[pool].resources[id];
        (r.spec.clone(), r.created_at_ms, r.build_ms)
    };
    let mut record =
        Record { id: id.to_owned(), state: RecordState::Resetting { process: None }, spec, created_at_ms, build_ms };
    let steps: Vec<Vec<String>> = def.reset.iter().cloned().collect();
    // A reset works on `{path}`; if its holder swapped the directory for a
    // symlink, the reset would work on wherever that leads.
    let outcome = if service.store.is_real_resource_dir(pool, id) {
        run_steps(service, pool, id, def, &steps, &mut record, &service.stop).await
    } else {
        Outcome {
            result: Err(StepError::Failed {
                command: "reset".into(),
                status: "was not run: the resource's directory is no longer a directory (a symlink?)".into(),
            }),
            log: None,
            elapsed: Duration::ZERO,
            tail: String::new(),
        }
    };
    if outcome.result.is_ok() {
        record.state = RecordState::Ready;
        if service.store.write_record(pool, &record).is_ok() {
            tracing::info!(pool, resource = %id, "reset and back in the pool");
            return finished_ready(service, pool, id, &record, false);
        }
    }
    if !outcome.cancelled() {
        tracing::warn!(pool, resource = %id, "reset failed; removing the resource: {}", outcome.message());
    }
    service.remove_resource(pool, id);
    {
        let mut state = service.lock();
        state.builds_running -= 1;
        let p = state.pools.get_mut(pool).expect("a pool with a reset stays");
        p.resources.remove(id);
        if outcome.result.is_err() && !outcome.cancelled() {
            p.stats.last_error = Some(failure(format!("reset: {}", outcome.message()), outcome.log.clone()));
        }
    }
    service.wake.notify_one();
}

/// Checks a ready resource; a failing one is removed (and rebuilt).
async fn check(service: &Arc<PoolService>, pool: &str, id: &str, def: &PoolDefinition) {
    let Some(check) = check_command(def) else { return };
    let dir = service.store.resource_dir(pool, id);
    let argv = substitute(&check, &dir);
    let timeout = Duration::from_millis(def.create_timeout_ms.unwrap_or(600_000));
    let mut log = BuildLog::new(service.settings.build_log_max.as_usize());
    let step = Step { argv: &argv, dir: &dir, env: &def.env, pool };
    // The resource stays recorded ready while it is checked: there is no
    // record to name the check's process in, so a check interrupted by a
    // crash is not killed at the next start (the resource is checked again).
    let result = runner::run(&step, Instant::now() + timeout, timeout, &mut log, &service.stop, |_| Ok(())).await;
    let passed = result.is_ok();
    let removed = {
        let mut state = service.lock();
        let Some(p) = state.pools.get_mut(pool) else { return };
        match p.resources.get_mut(id) {
            Some(r) if r.state == ResState::Checking => {
                if passed {
                    r.state = ResState::Ready { verified: true, checked: Instant::now() };
                    false
                } else {
                    p.resources.remove(id);
                    if !matches!(result, Err(StepError::Cancelled)) {
                        p.stats.check_failed += 1;
                        let message = format!("check: {}\n{}", result.as_ref().unwrap_err(), log.last_lines());
                        p.stats.last_error = Some(failure(message.trim_end().to_owned(), None));
                    }
                    true
                }
            }
            _ => false,
        }
    };
    if removed {
        tracing::info!(pool, resource = %id, "removing a resource that failed its check");
        service.remove_resource(pool, id);
    }
    service.wake.notify_one();
}
