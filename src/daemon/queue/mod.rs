//! The queue service: a durable job queue with idempotency keys, a worker
//! pool, retries with backoff, a dead-letter queue and recovery after a
//! crash.
//!
//! - `store.rs`: the SQLite file, its schema, and every read.
//! - `writer.rs`: the single writer thread and its group commit; every
//!   state change goes through it.
//! - `running.rs`: the attempts whose processes exist, one file each, so
//!   that a restarted daemon can find them.
//! - `spawn.rs`: starting an attempt so that its process is recorded before
//!   its program runs; `vfork.rs`: how, on Linux, without copying the daemon.
//! - `worker.rs`: the dispatcher, the attempts, and recovery at start-up.
//! - `handler.rs`: the channel's requests.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Config;
use super::child;
use super::config::QueueConfig;
use super::events::EventBus;
use super::fsutil;
use super::services::{BoxFuture, LastFailure, Opened, PROBE_TIMEOUT, Service, StartCtx, StartError, StartService};
use crate::protocol::Channel;
use crate::protocol::event::EventData;
use crate::protocol::queue::QueueSummary;
use crate::protocol::queue::{JobState, StateCounts, StoreRecovery};
use crate::protocol::status::{HealthCode, HealthReason, ServiceSummaries};
use crate::protocol::{ErrorCode, WireError};

mod handler;
mod running;
mod spawn;
mod store;
#[cfg(target_os = "linux")]
mod vfork;
mod worker;
mod writer;

pub(crate) use store::{Clock, SystemClock};

/// Descriptors one running attempt holds at its peak: its pid and gate
/// pipes and stdio pipes while it is spawned, then two pipes, two log files
/// and a pidfd.
const FDS_PER_WORKER: u64 = 12;

/// Capacity of the state-change broadcast (a slower listener re-reads).
const EVENT_CAPACITY: usize = 4096;

/// How often finished jobs and expired keys are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Why a running attempt is being killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    Cancel,
    Shutdown,
}

/// An attempt in flight: from the moment it is picked until the store
/// says what became of it (its start and end committed, or its start refused).
#[derive(Debug)]
struct InFlight {
    queue: String,
    /// It takes a worker: from the pick until its processes are gone.
    holds_slot: bool,
    kill: watch::Sender<Option<KillReason>>,
    /// Bumped whenever the attempt's output grows.
    output: watch::Sender<u64>,
}

/// The queue service.
#[derive(Debug)]
pub(crate) struct QueueService {
    config: QueueConfig,
    workers: u32,
    db_path: PathBuf,
    logs_dir: PathBuf,
    running: running::RunningDir,
    home: String,
    /// The environment every job starts from: the daemon's, less the
    /// service manager's variables (read once: the daemon never changes it).
    base_env: BTreeMap<OsString, OsString>,
    /// Whether the daemon reaps its orphaned descendants, so that an
    /// attempt's processes that left its group can be found and killed.
    adopts_orphans: bool,
    /// This daemon's mark on its jobs' processes (`HEARTH_JOB_MARK`).
    mark: String,
    clock: Arc<dyn Clock>,
    writer: writer::Writer,
    readers: store::Readers,
    counts: Arc<Mutex<BTreeMap<String, StateCounts>>>,
    /// What happened since the daemon started.
    pub(crate) activity: Arc<Activity>,
    events: broadcast::Sender<writer::Transition>,
    wake: Arc<Notify>,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    recovery: Option<StoreRecovery>,
    /// The dispatcher's thread, joined at shutdown.
    dispatcher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Stops the dispatcher and the pruner.
    stop: CancellationToken,
    /// A draining shutdown: no new attempt starts.
    draining: std::sync::atomic::AtomicBool,
    /// The pruner and every attempt.
    tasks: TaskTracker,
}

/// Counters since the daemon started, for the status summary and the heartbeat.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Jobs that succeeded.
    pub(crate) succeeded: AtomicU64,
    /// Attempts that failed and count against `max_attempts`.
    pub(crate) attempts_failed: AtomicU64,
    /// Transactions the store could not commit.
    store_errors: AtomicU64,
    /// When the store last failed, and why.
    last_store_error: LastFailure,
}

impl Activity {
    fn store_failed(&self, now_ms: u64, error: &str) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        self.last_store_error.record(now_ms, error.to_owned());
    }

    /// Counts an attempt whose end was committed.
    pub(crate) fn ended(&self, outcome: crate::protocol::queue::Outcome) {
        use crate::protocol::queue::Outcome;
        match outcome {
            Outcome::Succeeded => self.succeeded.fetch_add(1, Ordering::Relaxed),
            Outcome::Failed | Outcome::TimedOut | Outcome::SpawnFailed | Outcome::Lost => {
                self.attempts_failed.fetch_add(1, Ordering::Relaxed)
            }
            Outcome::Canceled | Outcome::Interrupted => 0,
        };
    }
}

impl StartService for QueueService {
    const CHANNEL: Channel = Channel::Queue;

    fn enabled(config: &Config) -> bool {
        config.queue.enabled
    }

    fn reserved_fds(config: &Config) -> u64 {
        u64::from(config.queue.effective_workers()) * FDS_PER_WORKER
    }

    async fn start(ctx: StartCtx<'_>) -> Result<Arc<Self>, StartError> {
        QueueService::open(&ctx.config.queue, ctx.paths.state_dir(), Arc::new(SystemClock), ctx.events.clone()).await
    }
}

impl QueueService {
    /// Opens the store under `<state_dir>/queue`, recovers the attempts a
    /// previous daemon left running, and starts the dispatcher and pruner.
    pub(crate) async fn open(
        config: &QueueConfig,
        state_dir: &Path,
        clock: Arc<dyn Clock>,
        bus: Arc<EventBus>,
    ) -> Result<Arc<QueueService>, StartError> {
        let dirs = QueueDirs::prepare(state_dir)?;
        let (opened, initial, orphans) = open_store(&dirs.root, clock.now_ms()).await?;
        let counts = Arc::new(Mutex::new(initial));
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let wake = Arc::new(Notify::new());
        let activity = Arc::new(Activity::default());
        let on_commit = on_commit(counts.clone(), events.clone(), wake.clone(), activity.clone(), clock.clone(), bus);
        let writer = writer::Writer::spawn(opened.conn, clock.clone(), on_commit)
            .map_err(|source| StartError::Runtime { what: "cannot start the queue's writer thread", source })?;
        let home = std::env::var("HOME").ok().filter(|h| h.starts_with('/')).unwrap_or_else(|| "/".into());
        let db_path = dirs.root.join(store::DB_FILE);
        let service = Arc::new(QueueService {
            workers: config.effective_workers(),
            config: config.clone(),
            readers: store::Readers::new(db_path.clone()),
            db_path,
            logs_dir: dirs.logs,
            running: dirs.running,
            home,
            base_env: std::env::vars_os()
                .filter(|(k, _)| !child::SERVICE_MANAGER_VARS.iter().any(|v| k == v))
                .collect(),
            adopts_orphans: child::adopt_orphans(),
            mark: super::random::hex(8).unwrap_or_else(|_| format!("{:x}", std::process::id())),
            clock,
            writer,
            counts,
            activity,
            events,
            wake,
            in_flight: Mutex::new(HashMap::new()),
            recovery: opened.recovery,
            dispatcher: Mutex::new(None),
            stop: CancellationToken::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            tasks: TaskTracker::new(),
        });
        worker::recover(&service, orphans).await;
        service.start_dispatcher()?;
        service.tasks.spawn(prune_loop(service.clone()));
        if service.adopts_orphans {
            service.tasks.spawn(reap_loop(service.clone()));
        }
        tracing::info!(store = %service.db_path.display(), workers = service.workers, "queue service ready");
        Ok(service)
    }

    /// Starts the dispatcher's thread; it runs until the service stops.
    fn start_dispatcher(self: &Arc<Self>) -> Result<(), StartError> {
        let (dispatcher, runtime) = (self.clone(), tokio::runtime::Handle::current());
        let thread = std::thread::Builder::new()
            .name("hearthd-queue-dispatch".into())
            .spawn(move || worker::dispatch(&dispatcher, &runtime))
            .map_err(|source| StartError::Runtime { what: "cannot start the queue's dispatcher thread", source })?;
        *self.dispatcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(())
    }

    fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, InFlight>> {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a read on a pooled connection, off the async workers.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, WireError> {
        let service = self.clone();
        tokio::task::spawn_blocking(move || service.readers.with(f))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| {
                tracing::error!("queue store read failed: {e}");
                WireError::new(ErrorCode::StoreFailed, format!("the queue store failed: {e}"))
            })
    }

    fn log_path(&self, id: u64, stream: crate::protocol::queue::LogStream) -> PathBuf {
        self.logs_dir.join(format!("{id}.{}", stream.as_str()))
    }

    fn total_counts(&self) -> (StateCounts, BTreeMap<String, StateCounts>) {
        let per_queue = self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut total = StateCounts::default();
        for counts in per_queue.values() {
            for state in JobState::ALL {
                *total.get_mut(state) += counts.get(state);
            }
        }
        (total, per_queue)
    }

    /// Age of the oldest runnable job still waiting, in ms. A quick indexed
    /// read, fine to run inline.
    fn oldest_waiting_ms(&self) -> Option<u64> {
        let now = self.clock.now_ms();
        match self.readers.with(|c| store::oldest_runnable(c, now)) {
            Ok(at) => at.map(|at| now.saturating_sub(at)),
            Err(e) => {
                tracing::warn!("cannot read the queue backlog: {e}");
                None
            }
        }
    }

    /// Workers taken by an attempt whose processes are not all gone yet.
    fn busy_workers(&self) -> u32 {
        self.lock_in_flight().values().filter(|f| f.holds_slot).count() as u32
    }

    /// Gives the worker of job `id`'s attempt back (its processes are gone),
    /// while the job stays out of the dispatcher's picks until the store
    /// says what became of the attempt.
    fn free_slot(&self, id: u64) {
        if let Some(f) = self.lock_in_flight().get_mut(&id) {
            f.holds_slot = false;
        }
        self.wake.notify_one();
    }

    /// The status channel's summary.
    pub(crate) fn summary(&self) -> QueueSummary {
        let (total, _) = self.total_counts();
        QueueSummary {
            pending: total.queued + total.retry_wait,
            running: total.running,
            dead: total.dead,
            succeeded: self.activity.succeeded.load(Ordering::Relaxed),
            attempts_failed: self.activity.attempts_failed.load(Ordering::Relaxed),
            store_errors: self.activity.store_errors.load(Ordering::Relaxed),
            workers: self.workers,
            oldest_queued_ms: self.oldest_waiting_ms(),
            store_moved_to: self.recovery.as_ref().map(|r| r.moved_to.clone()),
        }
    }
}

impl Service for QueueService {
    fn serve(self: Arc<Self>, opened: Opened) -> BoxFuture<'static, ()> {
        Box::pin(handler::serve(opened.session(), self))
    }

    fn summarize(&self, summaries: &mut ServiceSummaries) {
        summaries.queue = Some(self.summary());
    }

    /// What is wrong with the queue.
    fn health(&self, reasons: &mut Vec<HealthReason>) {
        if let Some(r) = &self.recovery {
            let message = format!(
                "the queue store was corrupt or unopenable ({}); it was moved to {} and a fresh store started",
                r.reason, r.moved_to
            );
            reasons.push(HealthReason::new(HealthCode::QueueStoreRecovered, message));
        }
        let now = self.clock.now_ms();
        if let Some((ago, message)) = self.activity.last_store_error.recent(now) {
            let message = format!(
                "the queue store failed to commit {}s ago ({message}); {} failures since start",
                ago.as_secs(),
                self.activity.store_errors.load(Ordering::Relaxed)
            );
            reasons.push(HealthReason::new(HealthCode::QueueStoreErrors, message));
        }
        let threshold = self.config.backlog_threshold.0.as_millis() as u64;
        if let Some(age) = self.oldest_waiting_ms().filter(|age| *age >= threshold) {
            let message = format!(
                "a runnable job has waited {}s for a worker (threshold {})",
                age / 1000,
                self.config.backlog_threshold
            );
            reasons.push(HealthReason::new(HealthCode::QueueBacklog, message));
        }
    }

    /// Proves the writer thread takes the store's write lock and answers,
    /// and that the dispatcher thread is alive.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let finished = self
                .dispatcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(std::thread::JoinHandle::is_finished);
            if finished && !self.stop.is_cancelled() {
                return Err("the queue dispatcher has stopped".into());
            }
            match tokio::time::timeout(PROBE_TIMEOUT, self.writer.probe()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("the queue store: {}", e.message)),
                Err(_) => Err(format!("the queue store's writer did not answer within {PROBE_TIMEOUT:?}")),
            }
        })
    }

    /// Jobs waiting or running, if any: they keep the daemon from idling.
    fn busy(&self) -> Option<String> {
        let (total, _) = self.total_counts();
        let in_flight = self.lock_in_flight().len() as u64;
        let (pending, running) = (total.queued + total.retry_wait, total.running.max(in_flight));
        (pending + running > 0).then(|| format!("{running} jobs running, {pending} waiting"))
    }

    /// `; queue: 2 running, 5 waiting` for a `STATUS=` line.
    fn status_line(&self, line: &mut String) {
        let (total, _) = self.total_counts();
        let pending = total.queued + total.retry_wait;
        if pending + total.running + total.dead > 0 {
            line.push_str(&format!("; queue: {} running, {pending} waiting, {} dead", total.running, total.dead));
        }
    }

    /// A draining shutdown: start no new attempt, and wait (until
    /// `deadline`) for the running ones to end. Submissions are still
    /// accepted and stored; the next daemon runs them.
    fn drain(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
            self.wake.notify_one();
            loop {
                let running = self.lock_in_flight().len();
                if running == 0 || Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Stops dispatching; running attempts get SIGTERM, then SIGKILL after
    /// `kill_grace`, and are requeued without counting. Then the writer
    /// commits what it has and closes.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.cancel();
            let dispatcher = self.dispatcher.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(thread) = dispatcher {
                // It returns as soon as it sees the stop; it never waits on a job.
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            let running: Vec<_> = {
                let in_flight = self.lock_in_flight();
                in_flight.values().map(|f| f.kill.clone()).collect()
            };
            if !running.is_empty() {
                tracing::info!(jobs = running.len(), "stopping running jobs; they will run again after restart");
            }
            for kill in running {
                kill.send_replace(Some(KillReason::Shutdown));
            }
            self.tasks.close();
            let limit = self.config.kill_grace.0 + Duration::from_secs(5);
            if tokio::time::timeout(limit, self.tasks.wait()).await.is_err() {
                tracing::warn!("queue attempts did not end within {limit:?}; the next start recovers them");
            }
            self.writer.close();
        })
    }
}

/// The queue's directories under the state directory.
struct QueueDirs {
    /// `queue/`, by its real path.
    root: PathBuf,
    logs: PathBuf,
    running: running::RunningDir,
}

impl QueueDirs {
    fn prepare(state_dir: &Path) -> Result<QueueDirs, StartError> {
        let dir = state_dir.join("queue");
        let logs = dir.join("logs");
        for path in [&dir, &logs] {
            fsutil::private_subdir(path).map_err(|source| StartError::Io { path: path.clone(), source })?;
        }
        // SQLite's no-follow flag refuses a symlink anywhere in the path, so
        // the store is opened by the directory's real path: a state directory
        // reached through a symlinked parent must not look like a broken store.
        let root = std::fs::canonicalize(&dir).map_err(|source| StartError::Io { path: dir.clone(), source })?;
        let running_dir = root.join("running");
        let running = running::RunningDir::open(running_dir.clone())
            .map_err(|source| StartError::Io { path: running_dir, source })?;
        Ok(QueueDirs { root, logs, running })
    }
}

/// Opens (or creates, or moves aside and recreates) the store, off the async workers.
/// What start-up reads from the store: the per-queue counts, and the
/// attempts a previous daemon left running (a failed read of those is
/// logged by recovery; the store still serves).
type Opening = (store::Opened, BTreeMap<String, StateCounts>, rusqlite::Result<Vec<store::Orphan>>);

/// Opens the store and reads what start-up needs on the writer's own
/// connection, in one trip off the async workers: each new connection
/// parses the schema again, and the daemon is not ready until this is done.
async fn open_store(dir: &Path, now_ms: u64) -> Result<Opening, StartError> {
    let dir = dir.to_owned();
    let store_error =
        |e: Box<dyn std::error::Error + Send + Sync>| StartError::Store { what: "the queue store", source: e };
    tokio::task::spawn_blocking(move || {
        let opened = store::open_store(&dir, now_ms).map_err(|e| store_error(Box::new(e)))?;
        let counts = store::counts(&opened.conn).map_err(|e| store_error(Box::new(e)))?;
        let orphans = store::orphans(&opened.conn);
        Ok((opened, counts, orphans))
    })
    .await
    .map_err(|e| StartError::join("the queue store's opening", &e))?
}

/// What the writer thread does after each commit: keep the per-queue
/// counts, tell `wait`ers, wake the dispatcher, and note store failures.
fn on_commit(
    counts: Arc<Mutex<BTreeMap<String, StateCounts>>>,
    events: broadcast::Sender<writer::Transition>,
    wake: Arc<Notify>,
    activity: Arc<Activity>,
    clock: Arc<dyn Clock>,
    bus: Arc<EventBus>,
) -> writer::OnCommit {
    Box::new(move |committed: Result<&[writer::Transition], &str>| {
        let transitions = match committed {
            Ok(transitions) => transitions,
            Err(e) => return activity.store_failed(clock.now_ms(), e),
        };
        if transitions.is_empty() {
            return;
        }
        let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
        for t in transitions {
            let per_queue = counts.entry(t.queue.clone()).or_default();
            if let Some(from) = t.from {
                let n = per_queue.get_mut(from);
                *n = n.saturating_sub(1);
            }
            if let Some(to) = t.to {
                *per_queue.get_mut(to) += 1;
            }
        }
        drop(counts);
        for t in transitions {
            // The bus first: whoever learns of the change from a `wait`
            // finds it among the events already.
            let data = EventData::JobState { id: t.id, queue: t.queue.clone(), from: t.from, to: t.to };
            bus.publish(Channel::Queue, data);
            let _ = events.send(t.clone());
        }
        wake.notify_one();
    })
}

async fn prune_loop(service: Arc<QueueService>) {
    loop {
        let keep_ms = service.config.keep_finished.0.as_millis() as u64;
        match service.writer.prune(keep_ms, service.config.keep_finished_count).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(jobs = ids.len(), "pruned finished jobs");
                service.remove_logs(ids).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot prune the queue: {e}"),
        }
        tokio::select! {
            () = service.stop.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// How often orphans the daemon adopted and that ended on their own are
/// reaped (those of an ending attempt are reaped as it ends).
const REAP_EVERY: Duration = Duration::from_secs(10);

async fn reap_loop(service: Arc<QueueService>) {
    loop {
        tokio::select! {
            () = service.stop.cancelled() => return,
            () = tokio::time::sleep(REAP_EVERY) => {}
        }
        let reaped = tokio::task::spawn_blocking(child::reap_adopted).await.unwrap_or(0);
        if reaped > 0 {
            tracing::debug!(reaped, "reaped orphaned job processes that had ended");
        }
    }
}

impl QueueService {
    /// Deletes the log files of jobs that no longer exist.
    async fn remove_logs(self: &Arc<Self>, ids: Vec<u64>) {
        let service = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for id in ids {
                for stream in [crate::protocol::queue::LogStream::Stdout, crate::protocol::queue::LogStream::Stderr] {
                    let _ = std::fs::remove_file(service.log_path(id, stream));
                }
            }
        })
        .await;
    }
}
