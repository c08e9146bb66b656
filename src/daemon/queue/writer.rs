//! The single writer: one thread owns the write connection and commits in
//! groups.
//!
//! Writes arrive on a channel. The thread takes the first, drains whatever
//! else is already queued (up to [`MAX_BATCH`]), applies them all in one
//! transaction (each in its own savepoint, so one failing request does not
//! undo the others), commits, and only then answers each request. So a
//! submit is acknowledged only once it is on disk, and N concurrent submits
//! cost one fsync, not N.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::store::{self, Clock, i};
use crate::protocol::queue::{Job, JobState, Outcome, Selection};
use crate::protocol::{ErrorCode, WireError};

/// The most requests committed in one transaction.
const MAX_BATCH: usize = 1024;

/// A job to insert, with every default already applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewJob {
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) argv: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: String,
    pub(crate) input: Option<Vec<u8>>,
    pub(crate) key: Option<String>,
    pub(crate) max_attempts: u32,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) backoff_base_ms: u64,
    pub(crate) backoff_cap_ms: u64,
    pub(crate) run_at_ms: Option<u64>,
    pub(crate) key_retention_ms: u64,
}

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttemptEnd {
    pub(crate) outcome: Outcome,
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) stdout_bytes: u64,
    pub(crate) stderr_bytes: u64,
    pub(crate) truncated: bool,
}

impl AttemptEnd {
    /// An end with no process behind it (it never started, or was lost).
    pub(crate) fn without_output(outcome: Outcome, error: String) -> Self {
        Self {
            outcome,
            exit_code: None,
            signal: None,
            error: Some(error),
            stdout_bytes: 0,
            stderr_bytes: 0,
            truncated: false,
        }
    }
}

/// A write request.
#[derive(Debug)]
enum Op {
    Submit(Box<NewJob>),
    /// Attempt `n` of a job got a process: record it and mark the job
    /// running. Fails unless the job is runnable and `n` is its next attempt.
    Start {
        id: u64,
        n: u32,
        pid: u32,
        pid_start_time: Option<u64>,
    },
    /// An attempt ended; `n` is `None` when it never got a process.
    Finish {
        id: u64,
        n: Option<u32>,
        end: AttemptEnd,
    },
    Cancel {
        id: u64,
    },
    Retry(Selection),
    Purge(Selection),
    Prune {
        keep_ms: u64,
        keep_count: u64,
    },
    /// Nothing: proves the writer thread takes the store's write lock and
    /// answers (an empty transaction writes nothing and syncs nothing).
    Probe,
}

/// The answer to an [`Op`].
#[derive(Debug)]
enum Reply {
    Submitted {
        job: Job,
        deduplicated: bool,
    },
    /// The attempt's number.
    Started(u32),
    Job(Job),
    /// `Cancel` of a running job: it is flagged; its process must be killed.
    CancelRunning,
    Ids(Vec<u64>),
}

/// What `cancel` did.
#[derive(Debug)]
pub(crate) enum Canceled {
    /// The job is canceled (it was not running).
    Done(Box<Job>),
    /// The job runs: it is flagged, and ends canceled once its process is killed.
    Running,
}

/// An answer that does not go with its request: a bug in this file.
fn unexpected(what: &str, reply: &Reply) -> WireError {
    tracing::error!("the queue writer answered {what} with {reply:?}");
    WireError::new(ErrorCode::Internal, format!("unexpected answer from the queue store to {what}"))
}

/// One job changed state (`None`: it did not exist / no longer exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) id: u64,
    pub(crate) queue: String,
    pub(crate) from: Option<JobState>,
    pub(crate) to: Option<JobState>,
}

/// What one commit did.
#[derive(Debug)]
pub(crate) struct Commit<'a> {
    /// The state changes it committed.
    pub(crate) transitions: &'a [Transition],
    /// How long the commit itself took (the WAL's write and fsync), when
    /// the transaction changed anything.
    pub(crate) synced: Option<std::time::Duration>,
}

/// Called on the writer thread after each commit: what it committed, or
/// why it failed.
pub(crate) type OnCommit = Box<dyn FnMut(Result<Commit<'_>, &str>) + Send>;

struct Envelope {
    op: Op,
    reply: oneshot::Sender<Result<Reply, WireError>>,
}

/// The handle of the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Envelope>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(crate) fn spawn(conn: Connection, clock: Arc<dyn Clock>, on_commit: OnCommit) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hearthd-queue-writer".into())
            .spawn(move || run(conn, &rx, clock.as_ref(), on_commit))?;
        Ok(Writer { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Inserts a job, or finds the one its idempotency key names; whether
    /// it was found (`deduplicated`).
    pub(crate) async fn submit(&self, job: NewJob) -> Result<(Job, bool), WireError> {
        match self.call(Op::Submit(Box::new(job))).await? {
            Reply::Submitted { job, deduplicated } => Ok((job, deduplicated)),
            other => Err(unexpected("submit", &other)),
        }
    }

    /// Records that attempt `n` of job `id` got the process `pid`, and marks
    /// the job running; fails unless the job is runnable and `n` is its next
    /// attempt. The request is queued now, so it is applied after everything
    /// sent before it; its answer comes once it is committed, to await
    /// whenever the caller needs it.
    pub(crate) fn start(
        &self,
        id: u64,
        n: u32,
        pid: u32,
        pid_start_time: Option<u64>,
    ) -> impl Future<Output = Result<(), WireError>> + Send + 'static {
        let answer = self.send(Op::Start { id, n, pid, pid_start_time });
        async move {
            match answer.await? {
                Reply::Started(m) if m == n => Ok(()),
                other => Err(unexpected("start", &other)),
            }
        }
    }

    /// Records how an attempt ended (`n` is `None` when it never got a
    /// process); the job as it is now.
    pub(crate) async fn finish(&self, id: u64, n: Option<u32>, end: AttemptEnd) -> Result<Job, WireError> {
        match self.call(Op::Finish { id, n, end }).await? {
            Reply::Job(job) => Ok(job),
            other => Err(unexpected("finish", &other)),
        }
    }

    /// Cancels a job: at once when it is not running; a running one is
    /// flagged, and its process must be killed.
    pub(crate) async fn cancel(&self, id: u64) -> Result<Canceled, WireError> {
        match self.call(Op::Cancel { id }).await? {
            Reply::Job(job) => Ok(Canceled::Done(Box::new(job))),
            Reply::CancelRunning => Ok(Canceled::Running),
            other => Err(unexpected("cancel", &other)),
        }
    }

    /// Moves dead jobs back to the queue; their ids.
    pub(crate) async fn retry(&self, selection: Selection) -> Result<Vec<u64>, WireError> {
        self.ids("retry", Op::Retry(selection)).await
    }

    /// Deletes dead jobs; their ids.
    pub(crate) async fn purge(&self, selection: Selection) -> Result<Vec<u64>, WireError> {
        self.ids("purge", Op::Purge(selection)).await
    }

    /// Deletes finished jobs past their retention, and expired keys; the jobs' ids.
    pub(crate) async fn prune(&self, keep_ms: u64, keep_count: u64) -> Result<Vec<u64>, WireError> {
        self.ids("prune", Op::Prune { keep_ms, keep_count }).await
    }

    /// Proves the writer thread takes the store's write lock and answers
    /// (an empty transaction writes nothing and syncs nothing).
    pub(crate) async fn probe(&self) -> Result<(), WireError> {
        self.ids("probe", Op::Probe).await.map(drop)
    }

    async fn ids(&self, what: &'static str, op: Op) -> Result<Vec<u64>, WireError> {
        match self.call(op).await? {
            Reply::Ids(ids) => Ok(ids),
            other => Err(unexpected(what, &other)),
        }
    }

    /// Sends `op` and waits until it is committed (or failed).
    async fn call(&self, op: Op) -> Result<Reply, WireError> {
        self.send(op).await
    }

    /// Queues `op` now (so it is applied after everything sent before it)
    /// and returns its answer, which comes once it is committed.
    fn send(&self, op: Op) -> impl Future<Output = Result<Reply, WireError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sender = self.tx.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let closed = || WireError::new(ErrorCode::ShuttingDown, "the queue store is closed");
        let sent = match sender {
            Some(sender) => sender.send(Envelope { op, reply }).map_err(|_| closed()),
            None => Err(closed()),
        };
        async move {
            sent?;
            answer.await.map_err(|_| closed())?
        }
    }

    /// Lets the thread commit what is queued, then waits for it to end.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = thread.join();
        }
    }
}

fn run(mut conn: Connection, rx: &mpsc::Receiver<Envelope>, clock: &dyn Clock, mut on_commit: OnCommit) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut transitions = Vec::new();
        let result = commit_batch(&mut conn, &mut batch, clock, &mut transitions);
        match result {
            Ok((results, synced)) => {
                on_commit(Ok(Commit { transitions: &transitions, synced }));
                for (envelope, result) in batch.into_iter().zip(results) {
                    let _ = envelope.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!("the queue store cannot commit: {e}");
                on_commit(Err(&e.to_string()));
                for envelope in batch {
                    let error = WireError::new(ErrorCode::StoreFailed, format!("the queue store cannot commit: {e}"));
                    let _ = envelope.reply.send(Err(error));
                }
            }
        }
    }
}

/// Each request's answer, and how long the commit took when it wrote anything.
type Batch = (Vec<Result<Reply, WireError>>, Option<std::time::Duration>);

fn commit_batch(
    conn: &mut Connection,
    batch: &mut [Envelope],
    clock: &dyn Clock,
    transitions: &mut Vec<Transition>,
) -> rusqlite::Result<Batch> {
    let changes_before = conn.total_changes();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    for envelope in batch.iter_mut() {
        let now = clock.now_ms();
        let mark = transitions.len();
        tx.prepare_cached("SAVEPOINT op")?.execute([])?;
        let op = std::mem::replace(&mut envelope.op, Op::Retry(Selection::default()));
        let result = apply(&tx, op, now, transitions);
        if result.is_err() {
            tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
            transitions.truncate(mark);
        }
        tx.prepare_cached("RELEASE op")?.execute([])?;
        results.push(result.map_err(Failed::into_wire));
    }
    let changed = tx.total_changes() != changes_before;
    let syncing = std::time::Instant::now();
    tx.commit()?;
    Ok((results, changed.then(|| syncing.elapsed())))
}

/// A request that fails: on the request's account, or the store's.
#[derive(Debug)]
enum Failed {
    Request(WireError),
    Store(rusqlite::Error),
}

impl Failed {
    fn into_wire(self) -> WireError {
        match self {
            Failed::Request(e) => e,
            Failed::Store(e) => {
                tracing::error!("queue store: {e}");
                WireError::new(ErrorCode::StoreFailed, format!("the queue store failed: {e}"))
            }
        }
    }
}

impl From<rusqlite::Error> for Failed {
    fn from(e: rusqlite::Error) -> Self {
        Failed::Store(e)
    }
}

fn not_found(id: u64) -> Failed {
    Failed::Request(WireError::new(ErrorCode::JobNotFound, format!("no job {id}")))
}

fn load(tx: &Transaction<'_>, id: u64) -> Result<Job, Failed> {
    store::get_job(tx, id)?.ok_or_else(|| not_found(id))
}

fn apply(tx: &Transaction<'_>, op: Op, now: u64, out: &mut Vec<Transition>) -> Result<Reply, Failed> {
    match op {
        Op::Submit(job) => submit(tx, &job, now, out),
        Op::Start { id, n, pid, pid_start_time } => start(tx, id, n, pid, pid_start_time, now, out),
        Op::Finish { id, n, end } => finish(tx, id, n, &end, now, out).map(Reply::Job),
        Op::Cancel { id } => cancel(tx, id, now, out),
        Op::Retry(selection) => retry(tx, &selection, now, out).map(Reply::Ids),
        Op::Purge(selection) => purge(tx, &selection, out).map(Reply::Ids),
        Op::Prune { keep_ms, keep_count } => prune(tx, now, keep_ms, keep_count, out).map(Reply::Ids),
        Op::Probe => Ok(Reply::Ids(Vec::new())),
    }
}

fn set_state(tx: &Transaction<'_>, job: &Job, to: JobState, out: &mut Vec<Transition>) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE jobs SET state = ?2 WHERE id = ?1")?.execute(params![i(job.id), to.as_str()])?;
    out.push(Transition { id: job.id, queue: job.queue.clone(), from: Some(job.state), to: Some(to) });
    Ok(())
}

fn submit(tx: &Transaction<'_>, new: &NewJob, now: u64, out: &mut Vec<Transition>) -> Result<Reply, Failed> {
    if let Some(key) = &new.key {
        let existing: Option<(i64, i64)> = tx
            .prepare_cached("SELECT job_id, expires_at_ms FROM idempotency_keys WHERE queue = ?1 AND key = ?2")?
            .query_row(params![new.queue, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((job_id, expires)) = existing {
            if expires > i(now) {
                let job = load(tx, job_id as u64)?;
                let input: Option<Vec<u8>> =
                    tx.prepare_cached("SELECT input FROM jobs WHERE id = ?1")?.query_row([job_id], |r| r.get(0))?;
                if job.argv == new.argv && job.env == new.env && job.cwd == new.cwd && input == new.input {
                    return Ok(Reply::Submitted { job, deduplicated: true });
                }
                return Err(Failed::Request(WireError::new(
                    ErrorCode::IdempotencyConflict,
                    format!(
                        "key {key:?} of queue {:?} belongs to job {} with a different command, environment, \
                         working directory or input",
                        new.queue, job.id
                    ),
                )));
            }
            tx.prepare_cached("DELETE FROM idempotency_keys WHERE queue = ?1 AND key = ?2")?
                .execute(params![new.queue, key])?;
        }
    }
    let argv = serde_json::to_string(&new.argv).unwrap_or_else(|_| "[]".into());
    let env = serde_json::to_string(&new.env).unwrap_or_else(|_| "{}".into());
    let input_bytes = new.input.as_ref().map_or(0, Vec::len) as i64;
    tx.prepare_cached(
        "INSERT INTO jobs (queue, state, priority, argv, env, cwd, input, input_bytes, idem_key, max_attempts, \
         timeout_ms, backoff_base_ms, backoff_cap_ms, created_at_ms, run_at_ms) \
         VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        new.queue,
        new.priority,
        argv,
        env,
        new.cwd,
        new.input,
        input_bytes,
        new.key,
        new.max_attempts,
        new.timeout_ms.map(i),
        i(new.backoff_base_ms),
        i(new.backoff_cap_ms),
        i(now),
        i(new.run_at_ms.unwrap_or(now)),
    ])?;
    let id = tx.last_insert_rowid();
    if let Some(key) = &new.key {
        tx.prepare_cached("INSERT INTO idempotency_keys (queue, key, job_id, expires_at_ms) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![new.queue, key, id, i(now.saturating_add(new.key_retention_ms))])?;
    }
    let job = load(tx, id as u64)?;
    out.push(Transition { id: job.id, queue: job.queue.clone(), from: None, to: Some(JobState::Queued) });
    Ok(Reply::Submitted { job, deduplicated: false })
}

fn start(
    tx: &Transaction<'_>,
    id: u64,
    n: u32,
    pid: u32,
    pid_start_time: Option<u64>,
    now: u64,
    out: &mut Vec<Transition>,
) -> Result<Reply, Failed> {
    let job = load(tx, id)?;
    if !matches!(job.state, JobState::Queued | JobState::RetryWait) {
        return Err(Failed::Request(WireError::new(
            ErrorCode::JobFinished,
            format!("job {id} is {} and cannot start", job.state),
        )));
    }
    let next = store::next_attempt(tx, id)?;
    if n != next {
        return Err(Failed::Request(WireError::new(
            ErrorCode::Internal,
            format!("job {id}: attempt {n} cannot start, the next attempt is {next}"),
        )));
    }
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, n, started_at_ms, pid, pid_start_time) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![i(id), n, i(now), pid, pid_start_time.map(i)])?;
    tx.prepare_cached("UPDATE jobs SET attempts = attempts + 1, started_at_ms = ?2 WHERE id = ?1")?
        .execute(params![i(id), i(now)])?;
    set_state(tx, &job, JobState::Running, out)?;
    Ok(Reply::Started(n))
}

fn finish(
    tx: &Transaction<'_>,
    id: u64,
    n: Option<u32>,
    end: &AttemptEnd,
    now: u64,
    out: &mut Vec<Transition>,
) -> Result<Job, Failed> {
    let job = load(tx, id)?;
    let counted = end.outcome != Outcome::Interrupted;
    let n = match n {
        Some(n) => n,
        None => {
            // The attempt never got a process: it starts and ends now.
            let n = store::next_attempt(tx, id)?;
            tx.prepare_cached("INSERT INTO attempts (job_id, n, started_at_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![i(id), n, i(now)])?;
            tx.prepare_cached("UPDATE jobs SET attempts = attempts + 1, started_at_ms = ?2 WHERE id = ?1")?
                .execute(params![i(id), i(now)])?;
            n
        }
    };
    tx.prepare_cached(
        "UPDATE attempts SET ended_at_ms = ?3, outcome = ?4, exit_code = ?5, signal = ?6, error = ?7, counted = ?8, \
         stdout_bytes = ?9, stderr_bytes = ?10, truncated = ?11 WHERE job_id = ?1 AND n = ?2",
    )?
    .execute(params![
        i(id),
        n,
        i(now),
        end.outcome.as_str(),
        end.exit_code,
        end.signal,
        end.error,
        counted,
        i(end.stdout_bytes),
        i(end.stderr_bytes),
        end.truncated,
    ])?;
    if !counted {
        tx.prepare_cached("UPDATE jobs SET attempts = MAX(attempts - 1, 0) WHERE id = ?1")?.execute([i(id)])?;
    }
    tx.prepare_cached("UPDATE jobs SET exit_code = ?2, signal = ?3, last_error = ?4 WHERE id = ?1")?
        .execute(params![i(id), end.exit_code, end.signal, end.error])?;
    let cancel_requested: bool =
        tx.prepare_cached("SELECT cancel_requested FROM jobs WHERE id = ?1")?.query_row([i(id)], |r| r.get(0))?;
    let job = Job { attempts: load(tx, id)?.attempts, ..job };
    let next = match end.outcome {
        Outcome::Succeeded => JobState::Succeeded,
        _ if cancel_requested || end.outcome == Outcome::Canceled => JobState::Canceled,
        Outcome::Interrupted => JobState::Queued,
        _ if job.attempts >= job.max_attempts => JobState::Dead,
        _ => JobState::RetryWait,
    };
    match next {
        JobState::Queued => {
            tx.prepare_cached("UPDATE jobs SET run_at_ms = ?2 WHERE id = ?1")?.execute(params![i(id), i(now)])?;
        }
        JobState::RetryWait => {
            let delay = backoff(job.backoff_base_ms, job.backoff_cap_ms, job.attempts);
            tx.prepare_cached("UPDATE jobs SET run_at_ms = ?2 WHERE id = ?1")?
                .execute(params![i(id), i(now.saturating_add(delay))])?;
        }
        _ => {
            tx.prepare_cached("UPDATE jobs SET finished_at_ms = ?2 WHERE id = ?1")?.execute(params![i(id), i(now)])?;
        }
    }
    set_state(tx, &job, next, out)?;
    load(tx, id)
}

/// Exponential backoff with jitter: the delay before retry `k` (k ≥ 1) is
/// drawn uniformly from [d/2, d], where d = min(cap, base · 2^(k-1)).
pub(crate) fn backoff(base_ms: u64, cap_ms: u64, k: u32) -> u64 {
    let d = base_ms.saturating_mul(1u64 << k.saturating_sub(1).min(62)).min(cap_ms);
    let half = d / 2;
    let random = crate::daemon::random::bytes(8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    half + random % (d - half + 1)
}

fn cancel(tx: &Transaction<'_>, id: u64, now: u64, out: &mut Vec<Transition>) -> Result<Reply, Failed> {
    let job = load(tx, id)?;
    match job.state {
        JobState::Queued | JobState::RetryWait => {
            tx.prepare_cached(
                "UPDATE jobs SET cancel_requested = 1, finished_at_ms = ?2, last_error = 'canceled' WHERE id = ?1",
            )?
            .execute(params![i(id), i(now)])?;
            set_state(tx, &job, JobState::Canceled, out)?;
            Ok(Reply::Job(load(tx, id)?))
        }
        JobState::Running => {
            tx.prepare_cached("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")?.execute([i(id)])?;
            Ok(Reply::CancelRunning)
        }
        done => {
            Err(Failed::Request(WireError::new(ErrorCode::JobFinished, format!("job {id} already ended ({done})"))))
        }
    }
}

/// The dead jobs a selection names; every listed id must exist and be dead.
fn select_dead(tx: &Transaction<'_>, selection: &Selection) -> Result<Vec<Job>, Failed> {
    if selection.all {
        let mut sql = format!("SELECT {} FROM jobs WHERE state = 'dead'", store::JOB_COLUMNS);
        if selection.queue.is_some() {
            sql.push_str(" AND queue = ?1");
        }
        sql.push_str(" ORDER BY id");
        let mut stmt = tx.prepare(&sql)?;
        let rows = match &selection.queue {
            Some(q) => stmt.query_map([q], store::job_from_row)?.collect::<Result<Vec<_>, _>>()?,
            None => stmt.query_map([], store::job_from_row)?.collect::<Result<Vec<_>, _>>()?,
        };
        return Ok(rows);
    }
    let mut jobs = Vec::with_capacity(selection.ids.len());
    for &id in &selection.ids {
        let job = load(tx, id)?;
        if job.state != JobState::Dead {
            return Err(Failed::Request(WireError::new(
                ErrorCode::JobNotDead,
                format!("job {id} is {}, not dead; only dead jobs can be retried or purged", job.state),
            )));
        }
        jobs.push(job);
    }
    Ok(jobs)
}

fn retry(tx: &Transaction<'_>, selection: &Selection, now: u64, out: &mut Vec<Transition>) -> Result<Vec<u64>, Failed> {
    let jobs = select_dead(tx, selection)?;
    for job in &jobs {
        tx.prepare_cached(
            "UPDATE jobs SET attempts = 0, run_at_ms = ?2, finished_at_ms = NULL, cancel_requested = 0 WHERE id = ?1",
        )?
        .execute(params![i(job.id), i(now)])?;
        set_state(tx, job, JobState::Queued, out)?;
    }
    Ok(jobs.iter().map(|j| j.id).collect())
}

fn purge(tx: &Transaction<'_>, selection: &Selection, out: &mut Vec<Transition>) -> Result<Vec<u64>, Failed> {
    let jobs = select_dead(tx, selection)?;
    for job in &jobs {
        tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute([i(job.id)])?;
        out.push(Transition { id: job.id, queue: job.queue.clone(), from: Some(job.state), to: None });
    }
    Ok(jobs.iter().map(|j| j.id).collect())
}

fn prune(
    tx: &Transaction<'_>,
    now: u64,
    keep_ms: u64,
    keep_count: u64,
    out: &mut Vec<Transition>,
) -> Result<Vec<u64>, Failed> {
    tx.prepare_cached("DELETE FROM idempotency_keys WHERE expires_at_ms <= ?1")?.execute([i(now)])?;
    let mut stmt = tx.prepare_cached(
        "DELETE FROM jobs WHERE state IN ('succeeded', 'canceled') AND (finished_at_ms < ?1 OR finished_at_ms <= \
         (SELECT finished_at_ms FROM jobs WHERE finished_at_ms IS NOT NULL AND state IN ('succeeded', 'canceled') \
         ORDER BY finished_at_ms DESC LIMIT 1 OFFSET ?2)) RETURNING id, queue, state",
    )?;
    let rows = stmt.query_map(params![i(now.saturating_sub(keep_ms)), i(keep_count)], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
    })?;
    let mut ids = Vec::new();
    for row in rows {
        let (id, queue, state) = row?;
        out.push(Transition { id: id as u64, queue, from: Some(store::state_from_sql(&state)?), to: None });
        ids.push(id as u64);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::daemon::queue::store::ManualClock;

    const DAY: u64 = 24 * 3600 * 1000;

    fn writer(dir: &std::path::Path, clock: Arc<ManualClock>) -> Writer {
        let opened = store::open_store(dir, clock.now_ms()).unwrap();
        Writer::spawn(opened.conn, clock, Box::new(|_: Result<Commit<'_>, &str>| {})).unwrap()
    }

    fn new_job(argv: &[&str], key: Option<&str>) -> Box<NewJob> {
        Box::new(NewJob {
            queue: "default".into(),
            priority: 0,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: BTreeMap::new(),
            cwd: "/".into(),
            input: None,
            key: key.map(str::to_owned),
            max_attempts: 3,
            timeout_ms: None,
            backoff_base_ms: 1000,
            backoff_cap_ms: 60_000,
            run_at_ms: None,
            key_retention_ms: DAY,
        })
    }

    async fn submit(w: &Writer, job: Box<NewJob>) -> Result<(Job, bool), WireError> {
        match w.call(Op::Submit(job)).await? {
            Reply::Submitted { job, deduplicated } => Ok((job, deduplicated)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn idempotency_keys_dedupe_conflict_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let w = writer(dir.path(), clock.clone());
        let (first, dup) = submit(&w, new_job(&["true"], Some("k"))).await.unwrap();
        assert!(!dup);
        let (again, dup) = submit(&w, new_job(&["true"], Some("k"))).await.unwrap();
        assert!(dup);
        assert_eq!(again, first);
        let err = submit(&w, new_job(&["false"], Some("k"))).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::IdempotencyConflict);
        // Another queue has its own keys.
        let mut other = new_job(&["false"], Some("k"));
        other.queue = "other".into();
        assert!(!submit(&w, other).await.unwrap().1);

        clock.advance(Duration::from_millis(DAY - 1));
        assert!(submit(&w, new_job(&["true"], Some("k"))).await.unwrap().1, "still inside the window");
        clock.advance(Duration::from_millis(1));
        let (later, dup) = submit(&w, new_job(&["false"], Some("k"))).await.unwrap();
        assert!(!dup, "the key expired with its window");
        assert_ne!(later.id, first.id);
        w.close();
    }

    #[tokio::test]
    async fn failures_back_off_then_die_and_interruptions_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let w = writer(dir.path(), clock.clone());
        let (job, _) = submit(&w, new_job(&["false"], None)).await.unwrap();
        let failed = || AttemptEnd::without_output(Outcome::Failed, "exited with status 1".into());
        let mut expected_max = 1000;
        for k in 1..=3u32 {
            let n = 2 * k - 1;
            let Reply::Started(started) =
                w.call(Op::Start { id: job.id, n, pid: 1, pid_start_time: None }).await.unwrap()
            else {
                panic!()
            };
            assert_eq!(started, n);
            let Reply::Job(after) = w.call(Op::Finish { id: job.id, n: Some(n), end: failed() }).await.unwrap() else {
                panic!()
            };
            assert_eq!(after.attempts, k);
            if k < 3 {
                assert_eq!(after.state, JobState::RetryWait);
                let delay = after.run_at_ms - clock.now_ms();
                assert!((expected_max / 2..=expected_max).contains(&delay), "retry {k}: {delay}ms");
                expected_max *= 2;
                // An interruption (daemon stop) requeues without counting.
                w.call(Op::Start { id: job.id, n: n + 1, pid: 1, pid_start_time: None }).await.unwrap();
                let end = AttemptEnd::without_output(Outcome::Interrupted, "stopped".into());
                let Reply::Job(again) = w.call(Op::Finish { id: job.id, n: Some(n + 1), end }).await.unwrap() else {
                    panic!()
                };
                assert_eq!((again.state, again.attempts), (JobState::Queued, k));
            } else {
                assert_eq!(after.state, JobState::Dead);
                assert_eq!(after.last_error.as_deref(), Some("exited with status 1"));
            }
        }
        let Reply::Ids(ids) = w.call(Op::Retry(Selection { ids: vec![job.id], ..Default::default() })).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(ids, [job.id]);
        let err = w.call(Op::Purge(Selection { ids: vec![job.id], ..Default::default() })).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::JobNotDead);
        w.close();
    }

    #[tokio::test]
    async fn a_start_needs_a_runnable_job_and_its_next_attempt_number() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let w = writer(dir.path(), clock.clone());
        let (job, _) = submit(&w, new_job(&["true"], None)).await.unwrap();
        let start = |n| Op::Start { id: job.id, n, pid: 1, pid_start_time: None };
        // Sent together, applied in order: the second start of attempt 1 is refused.
        let (first, twice, skipped) = (w.send(start(1)), w.send(start(1)), w.send(start(3)));
        assert!(matches!(first.await, Ok(Reply::Started(1))));
        assert_eq!(twice.await.unwrap_err().code, ErrorCode::JobFinished, "the job is running already");
        assert_eq!(skipped.await.unwrap_err().code, ErrorCode::JobFinished);
        let end = AttemptEnd::without_output(Outcome::Interrupted, "stopped".into());
        w.call(Op::Finish { id: job.id, n: Some(1), end }).await.unwrap();
        let readers = store::Readers::new(dir.path().join(store::DB_FILE));
        let picked = readers.with(|c| store::runnable(c, clock.now_ms(), &[], &[], 10)).unwrap();
        assert_eq!(picked.iter().map(|r| (r.job.id, r.attempt)).collect::<Vec<_>>(), [(job.id, 2)]);
        assert_eq!(w.call(start(3)).await.unwrap_err().code, ErrorCode::Internal, "attempt 2 comes next");
        // A cancel that lands before the start wins: the start is refused.
        let cancel = w.send(Op::Cancel { id: job.id });
        let late = w.send(start(2));
        assert!(matches!(cancel.await, Ok(Reply::Job(Job { state: JobState::Canceled, .. }))));
        assert_eq!(late.await.unwrap_err().code, ErrorCode::JobFinished);
        w.close();
    }

    /// Runs a fresh job's first attempt to `outcome`.
    async fn run_to(w: &Writer, id: u64, outcome: Outcome) -> Job {
        let Reply::Started(n) = w.call(Op::Start { id, n: 1, pid: 1, pid_start_time: None }).await.unwrap() else {
            panic!()
        };
        let end = AttemptEnd::without_output(outcome, "x".into());
        let Reply::Job(job) = w.call(Op::Finish { id, n: Some(n), end }).await.unwrap() else { panic!() };
        job
    }

    #[tokio::test]
    async fn pruning_drops_old_and_surplus_finished_jobs_but_keeps_the_dead() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let w = writer(dir.path(), clock.clone());
        let mut ids = Vec::new();
        for outcome in [Outcome::Succeeded, Outcome::Succeeded, Outcome::Succeeded] {
            let (job, _) = submit(&w, new_job(&["true"], Some(&format!("k{}", ids.len())))).await.unwrap();
            assert_eq!(run_to(&w, job.id, outcome).await.state, JobState::Succeeded);
            ids.push(job.id);
            clock.advance(Duration::from_secs(60));
        }
        let mut dead = new_job(&["false"], None);
        dead.max_attempts = 1;
        let (dead, _) = submit(&w, dead).await.unwrap();
        assert_eq!(run_to(&w, dead.id, Outcome::Failed).await.state, JobState::Dead);

        // By age: the first one ended 180 s ago, the second 120 s ago.
        let prune = |keep_ms, keep_count| Op::Prune { keep_ms, keep_count };
        let Reply::Ids(gone) = w.call(prune(150_000, 100)).await.unwrap() else { panic!() };
        assert_eq!(gone, [ids[0]]);
        // By count: keep the newest one.
        let Reply::Ids(gone) = w.call(prune(DAY, 1)).await.unwrap() else { panic!() };
        assert_eq!(gone, [ids[1]]);
        let readers = store::Readers::new(dir.path().join(store::DB_FILE));
        let left = readers.with(|c| store::list(c, &Default::default(), 10, usize::MAX)).unwrap().jobs;
        assert_eq!(left.iter().map(|j| j.id).collect::<Vec<_>>(), [dead.id, ids[2]]);
        // The pruned job's key is free again; expired keys are dropped.
        assert!(!submit(&w, new_job(&["other"], Some("k0"))).await.unwrap().1);
        w.close();
    }

    #[tokio::test]
    async fn the_backlog_and_the_next_wake_up_come_from_run_at() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let w = writer(dir.path(), clock.clone());
        let mut later = new_job(&["true"], None);
        later.run_at_ms = Some(1_060_000);
        submit(&w, later).await.unwrap();
        let readers = store::Readers::new(dir.path().join(store::DB_FILE));
        let now = clock.now_ms();
        assert_eq!(readers.with(|c| store::oldest_runnable(c, now)).unwrap(), None, "nothing runnable yet");
        assert_eq!(readers.with(|c| store::next_run_at(c, now)).unwrap(), Some(1_060_000));
        submit(&w, new_job(&["true"], None)).await.unwrap();
        clock.advance(Duration::from_secs(90));
        let now = clock.now_ms();
        assert_eq!(readers.with(|c| store::oldest_runnable(c, now)).unwrap(), Some(1_000_000));
        assert_eq!(readers.with(|c| store::next_run_at(c, now)).unwrap(), None);
        let runnable = readers.with(|c| store::runnable(c, now, &[], &[], 10)).unwrap();
        assert_eq!(runnable.len(), 2);
        w.close();
    }

    #[test]
    fn backoff_doubles_within_its_cap() {
        for _ in 0..100 {
            let d = backoff(1000, 5000, 1);
            assert!((500..=1000).contains(&d), "{d}");
            let d = backoff(1000, 5000, 3);
            assert!((2000..=4000).contains(&d), "{d}");
            let d = backoff(1000, 5000, 40);
            assert!((2500..=5000).contains(&d), "{d}");
        }
        assert_eq!(backoff(0, 0, 1), 0);
    }
}
