//! The dispatcher, the attempts, and recovery at start-up.
//!
//! The dispatcher is one thread that sleeps until something can change what
//! may run: a commit (a submit, a retry, a cancel, an attempt's end), an
//! attempt leaving its worker slot, or the earliest `run_at_ms` of a waiting
//! job. It never polls. Each attempt is a task: start the process with its
//! record written under `running/` before the program runs, commit the
//! start meanwhile (no fsync between one job's end and the next one's
//! start), copy output to the logs with a cap once the start is in, wait
//! for the exit (or a timeout, a cancel, a shutdown, a refused start), free
//! the worker, commit the end, drop the record.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::running::Record;
use super::spawn::{JobCommand, Process, Spawned, spawn_recorded};
use super::store::{self, Runnable};
use super::writer::AttemptEnd;
use super::{InFlight, KillReason, QueueService};
use crate::daemon::child;
use crate::protocol::queue::{Job, LogStream, Outcome};
use crate::protocol::{WireError, clip};

/// Size of one read from a job's output pipe.
const CHUNK: usize = 64 * 1024;

/// How long a recovered group gets to die after SIGKILL before recovery moves on.
const RECOVERY_KILL_WAIT: Duration = Duration::from_secs(5);

/// The dispatcher's thread: queries inline on its own read connection (no
/// hop to the blocking pool on the way from one job's end to the next one's
/// start), and waits on the runtime for a wake-up, a timer or the stop.
pub(super) fn dispatch(service: &Arc<QueueService>, runtime: &tokio::runtime::Handle) {
    let conn = match store::open_connection(&service.db_path) {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::error!("the queue dispatcher cannot open the store: {e}; using the shared readers");
            None
        }
    };
    loop {
        let next = match fill_slots(service, conn.as_ref(), runtime) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!("the queue dispatcher cannot read the store: {e}; retrying in 1s");
                Some(service.clock.now_ms() + 1000)
            }
        };
        let stopped = runtime.block_on(async {
            let sleep = async {
                match next {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(service.clock.now_ms()))).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = service.stop.cancelled() => true,
                () = service.wake.notified() => false,
                () = sleep => false,
            }
        });
        if stopped {
            return;
        }
    }
}

/// Starts attempts while workers are free and jobs are runnable. Returns
/// when the next waiting job becomes runnable (`None`: nothing waits, or
/// every worker is busy, and a wake-up will come).
fn fill_slots(
    service: &Arc<QueueService>,
    conn: Option<&rusqlite::Connection>,
    runtime: &tokio::runtime::Handle,
) -> rusqlite::Result<Option<u64>> {
    loop {
        if service.stop.is_cancelled() || service.is_draining() {
            return Ok(None);
        }
        let (free, saturated, in_flight) = {
            let in_flight = service.lock_in_flight();
            let busy = || in_flight.values().filter(|f| f.holds_slot);
            let free = service.workers.saturating_sub(busy().count() as u32) as usize;
            let saturated: Vec<String> = service
                .config
                .limits
                .iter()
                .filter(|(queue, limit)| busy().filter(|f| &f.queue == *queue).count() >= **limit as usize)
                .map(|(queue, _)| queue.clone())
                .collect();
            // Every job in flight is left out, also one whose worker is free
            // again: the store may not say yet what became of its attempt.
            (free, saturated, in_flight.keys().copied().collect::<Vec<_>>())
        };
        if free == 0 {
            return Ok(None);
        }
        let now = service.clock.now_ms();
        let candidates = read(service, conn, |c| store::runnable(c, now, &saturated, &in_flight, free))?;
        if candidates.is_empty() {
            return read(service, conn, |c| store::next_run_at(c, now));
        }
        for candidate in candidates {
            let Some((kill, output)) = claim(service, &candidate.job) else { continue };
            service.tasks.spawn_on(run_attempt(service.clone(), candidate, kill, output), runtime);
        }
    }
}

/// Runs a read on the dispatcher's own connection, or a pooled one.
fn read<T>(
    service: &QueueService,
    conn: Option<&rusqlite::Connection>,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    match conn {
        Some(conn) => f(conn),
        None => service.readers.with(f),
    }
}

/// Takes a worker slot for `job`, unless none is free or its queue is at its limit.
fn claim(service: &QueueService, job: &Job) -> Option<(watch::Receiver<Option<KillReason>>, watch::Sender<u64>)> {
    let mut in_flight = service.lock_in_flight();
    let busy = in_flight.values().filter(|f| f.holds_slot).count();
    if busy as u32 >= service.workers || in_flight.contains_key(&job.id) {
        return None;
    }
    if let Some(limit) = service.config.limits.get(&job.queue)
        && in_flight.values().filter(|f| f.holds_slot && f.queue == job.queue).count() >= *limit as usize
    {
        return None;
    }
    let (kill, kill_rx) = watch::channel(None);
    let (output, _) = watch::channel(0);
    in_flight.insert(job.id, InFlight { queue: job.queue.clone(), holds_slot: true, kill, output: output.clone() });
    Some((kill_rx, output))
}

async fn run_attempt(
    service: Arc<QueueService>,
    runnable: Runnable,
    kill: watch::Receiver<Option<KillReason>>,
    output: watch::Sender<u64>,
) {
    let id = runnable.job.id;
    let settle = || {
        service.lock_in_flight().remove(&id);
        service.wake.notify_one();
    };
    match attempt(&service, runnable, kill, &output).await {
        Attempted::Refused => settle(),
        // The job is still runnable in the store: it stays out of the
        // dispatcher's picks until the failed attempt is committed.
        Attempted::NotStarted(end) => {
            finish(&service, id, None, end).await;
            settle();
        }
        // Its start is committed, so the store says `running` until its end
        // is: the dispatcher cannot pick it again meanwhile.
        Attempted::Ended(n, end) => {
            settle();
            if finish(&service, id, Some(n), end).await {
                service.running.remove(id, n);
            }
        }
    }
}

/// Commits the end of an attempt; whether it worked.
async fn finish(service: &QueueService, id: u64, n: Option<u32>, end: AttemptEnd) -> bool {
    let outcome = end.outcome;
    match service.writer.finish(id, n, end).await {
        Ok(job) => {
            service.activity.ended(outcome);
            tracing::debug!(job = id, attempt = ?n, outcome = outcome.as_str(), state = %job.state, "attempt ended");
            true
        }
        Err(e) => {
            tracing::error!(job = id, "cannot record the end of an attempt: {e}; the next start recovers it");
            false
        }
    }
}

/// What became of an attempt.
enum Attempted {
    /// No process ran its program (e.g. a missing program): a failed
    /// attempt to record.
    NotStarted(AttemptEnd),
    /// It ran as attempt `n`, whose start is committed; its end is to be recorded.
    Ended(u32, AttemptEnd),
    /// Nothing to record: the store refused its start (the job was canceled
    /// meanwhile, or the store failed), and its process group was killed.
    Refused,
}

/// Runs one attempt. Its program starts as soon as its process is recorded
/// under `running/`; its start is committed meanwhile, and its output only
/// reaches the logs once that commit is in (nothing of a refused attempt does).
async fn attempt(
    service: &Arc<QueueService>,
    runnable: Runnable,
    kill: watch::Receiver<Option<KillReason>>,
    output: &watch::Sender<u64>,
) -> Attempted {
    let Runnable { job, input, attempt: n } = runnable;
    let command = job_command(service, &job, input.is_some());
    let Spawned { process: mut child, pid, start_time, stdin, stdout, stderr } =
        match spawn_recorded(command, &service.running, job.id, n).await {
            Ok(spawned) => spawned,
            Err(e) => {
                let program = job.argv.first().map_or(std::borrow::Cow::Borrowed(""), |p| clip(p, 200));
                let error = format!("cannot start {program:?}: {e}");
                return Attempted::NotStarted(AttemptEnd::without_output(Outcome::SpawnFailed, error));
            }
        };
    let begun = tokio::time::Instant::now();
    let start = service.writer.start(job.id, n, pid, start_time);
    tracing::debug!(job = job.id, attempt = n, pid, "attempt started");
    let (confirm, confirmed) = watch::channel(None);
    if let (Some(mut stdin), Some(input)) = (stdin, input) {
        tokio::spawn(async move {
            // A job that exits without reading its input is not an error.
            let _ = stdin.write_all(&input).await;
        });
    }
    let copies = start_log_copies(service, &job, n, (stdout, stderr), &confirmed, output);
    let grace = service.config.kill_grace.0;
    let timeout = job.timeout_ms.filter(|t| *t > 0).map(Duration::from_millis);
    let watched = Watched { pid, deadline: timeout.map(|t| begun + t), grace };
    let ended = || {
        // The attempt is its main process: whatever it left in its group goes too.
        let _ = child::kill_group(pid, libc::SIGKILL);
        service.free_slot(job.id);
    };
    let (status, verdict, ended_by) = supervise(&mut child, &watched, start, &confirm, kill, ended).await;
    // And so does what left the group (handed to the daemon as the
    // processes that started it ended).
    if service.adopts_orphans {
        let killed = child::kill_marked(&mark_entry(&service.mark, job.id)).await;
        if killed > 0 {
            tracing::debug!(job = job.id, attempt = n, killed, "killed processes that had left the attempt's group");
        }
    }
    let ((stdout_bytes, out_cut), (stderr_bytes, err_cut)) = join_copies(copies, grace).await;
    if let Err(why) = verdict {
        tracing::debug!(job = job.id, attempt = n, pid, "attempt not started, its group was killed: {why}");
        service.running.remove(job.id, n);
        return Attempted::Refused;
    }
    let mut end = AttemptEnd {
        outcome: Outcome::Failed,
        exit_code: None,
        signal: None,
        error: None,
        stdout_bytes,
        stderr_bytes,
        truncated: out_cut || err_cut,
    };
    match status {
        Ok(status) => describe_exit(&mut end, status),
        Err(e) => end.error = Some(format!("cannot wait for the process: {e}")),
    }
    if let Some(by) = ended_by {
        describe_stop(&mut end, by, timeout);
    }
    Attempted::Ended(n, end)
}

/// What an attempt runs.
fn job_command(service: &QueueService, job: &Job, stdin_piped: bool) -> JobCommand {
    JobCommand {
        program: job.argv.first().cloned().unwrap_or_default().into(),
        args: job.argv.iter().skip(1).map(Into::into).collect(),
        env: job_env(service, &job.env, job.id, &job.queue, job.attempts.saturating_add(1)),
        cwd: job.cwd.clone().into(),
        stdin_piped,
    }
}

/// The variable by which the daemon knows a job's processes once they have
/// left its process group: this daemon's mark and the job's id.
const MARK_VAR: &str = "HEARTH_JOB_MARK";

/// `HEARTH_JOB_MARK=<mark>.<id>`, as it appears in `/proc/<pid>/environ`.
fn mark_entry(mark: &str, id: u64) -> String {
    format!("{MARK_VAR}={mark}.{id}")
}

/// What a log copy has kept so far: read when it ends, or when it is cut
/// off because a process outside the daemon's reach holds the pipe.
#[derive(Debug, Default)]
struct Copied {
    kept: std::sync::atomic::AtomicU64,
    truncated: std::sync::atomic::AtomicBool,
}

impl Copied {
    fn get(&self) -> (u64, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.kept.load(Relaxed), self.truncated.load(Relaxed))
    }
}

type CopyTask = (tokio::task::JoinHandle<()>, Arc<Copied>);

/// One of the attempt's output pipes.
type Output = std::pin::Pin<Box<dyn AsyncRead + Send>>;

/// Starts copying the attempt's stdout and stderr into its logs, up to
/// `log_max` each; what reaches the logs waits for `confirmed`.
fn start_log_copies(
    service: &QueueService,
    job: &Job,
    n: u32,
    (stdout, stderr): (Option<Output>, Option<Output>),
    confirmed: &watch::Receiver<Option<bool>>,
    output: &watch::Sender<u64>,
) -> (CopyTask, CopyTask) {
    // Later attempts announce themselves in the logs they write to.
    let header = (n > 1).then(|| {
        format!(
            "[hearth: attempt {n} (counted {} of {}) started at {}]\n",
            job.attempts + 1,
            job.max_attempts,
            crate::time::rfc3339_ms(service.clock.now_ms())
        )
    });
    let stdout_log = LogSink::new(service.log_path(job.id, LogStream::Stdout), header.clone(), confirmed.clone());
    let stderr_log = LogSink::new(service.log_path(job.id, LogStream::Stderr), header, confirmed.clone());
    let cap = service.config.log_max.0;
    let (out, err) = (Arc::new(Copied::default()), Arc::new(Copied::default()));
    (
        (tokio::spawn(copy_capped(stdout, stdout_log, cap, "stdout", output.clone(), out.clone())), out),
        (tokio::spawn(copy_capped(stderr, stderr_log, cap, "stderr", output.clone(), err.clone())), err),
    )
}

/// What [`supervise`] watches besides the process.
struct Watched {
    /// The process's pid, which is also its group's id.
    pid: u32,
    /// When the attempt times out, if it can.
    deadline: Option<tokio::time::Instant>,
    /// Between SIGTERM and SIGKILL.
    grace: Duration,
}

/// Waits for the attempt's process to end, while its start is committed
/// (a refused start kills its group at once), its deadline passes, or a
/// cancel or shutdown asks for it to stop. Runs `ended` as soon as the
/// process has ended, then waits for the start's commit if it is not in
/// yet. Returns its exit status, whether its start was committed, and what
/// stopped it (if not itself).
///
/// `ended` frees the worker: a short job often ends before its start is
/// durable, and holding its worker through that fsync would let each
/// worker run one job per commit. Freed at once, the next job starts
/// meanwhile, and its start shares a group commit with this one's end.
/// What reaches the disk, and in what order, is unchanged: the end is only
/// sent to the writer after the start is in (see `run_attempt`), and the
/// job stays in flight, out of the dispatcher's picks, until then.
async fn supervise(
    child: &mut Process,
    watched: &Watched,
    start: impl Future<Output = Result<(), WireError>>,
    confirm: &watch::Sender<Option<bool>>,
    mut kill: watch::Receiver<Option<KillReason>>,
    ended: impl FnOnce(),
) -> (std::io::Result<ExitStatus>, Result<(), String>, Option<Outcome>) {
    let mut start = std::pin::pin!(start);
    let mut verdict: Option<Result<(), String>> = None;
    let mut ended_by = None;
    let status = loop {
        let refused = matches!(verdict, Some(Err(_)));
        tokio::select! {
            reply = &mut start, if verdict.is_none() => {
                let v = reply.map_err(|e| e.message);
                confirm.send_replace(Some(v.is_ok()));
                if v.is_err() {
                    let _ = child::kill_group(watched.pid, libc::SIGKILL);
                }
                verdict = Some(v);
            }
            status = child.wait() => break status,
            () = sleep_until_or_forever(watched.deadline), if !refused => {
                ended_by = Some(Outcome::TimedOut);
                break terminate(child, watched.pid, watched.grace).await;
            }
            reason = async { kill.wait_for(Option::is_some).await.ok().and_then(|r| *r) }, if !refused => {
                ended_by = Some(if reason == Some(KillReason::Shutdown) { Outcome::Interrupted } else { Outcome::Canceled });
                break terminate(child, watched.pid, watched.grace).await;
            }
        }
    };
    ended();
    let verdict = match verdict {
        Some(v) => v,
        None => {
            let v = start.await.map_err(|e| e.message);
            confirm.send_replace(Some(v.is_ok()));
            v
        }
    };
    (status, verdict, ended_by)
}

/// An attempt the daemon stopped: why, in its record.
fn describe_stop(end: &mut AttemptEnd, by: Outcome, timeout: Option<Duration>) {
    end.outcome = by;
    end.error = Some(match by {
        Outcome::TimedOut => format!("timed out after {}", crate::units::HumanDuration(timeout.unwrap_or_default())),
        Outcome::Canceled => "canceled".into(),
        _ => "hearthd stopped while this attempt ran; it will run again (not counted)".into(),
    });
}

/// The environment of a job's process: the daemon's (less the service
/// manager's variables), the job's `env`, and `HEARTH_JOB_*` (its id, its
/// queue, its counted attempt and, where the daemon adopts orphans, its mark).
pub(super) fn job_env(
    service: &QueueService,
    env: &BTreeMap<String, String>,
    id: u64,
    queue: &str,
    attempt: u32,
) -> Vec<(OsString, OsString)> {
    let mut all = service.base_env.clone();
    all.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
    all.insert("HEARTH_JOB_ID".into(), id.to_string().into());
    all.insert("HEARTH_JOB_QUEUE".into(), queue.into());
    all.insert("HEARTH_JOB_ATTEMPT".into(), attempt.to_string().into());
    if service.adopts_orphans {
        all.insert(MARK_VAR.into(), format!("{}.{id}", service.mark).into());
    }
    all.into_iter().collect()
}

fn describe_exit(end: &mut AttemptEnd, status: ExitStatus) {
    end.exit_code = status.code();
    end.signal = status.signal();
    if status.success() {
        end.outcome = Outcome::Succeeded;
    } else if let Some(code) = status.code() {
        end.error = Some(format!("exited with status {code}"));
    } else if let Some(signal) = status.signal() {
        end.error = Some(format!("killed by signal {signal}"));
    }
}

async fn sleep_until_or_forever(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM to the group; SIGKILL after `grace` if the main process is still there.
async fn terminate(child: &mut Process, pgid: u32, grace: Duration) -> std::io::Result<ExitStatus> {
    let _ = child::kill_group(pgid, libc::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status;
    }
    let _ = child::kill_group(pgid, libc::SIGKILL);
    child.wait().await
}

/// A job's log file, created on the first byte an attempt writes (most jobs
/// of some queues write nothing, and creating files is not free), appended
/// to, never through a symlink. Nothing is written before the store has
/// recorded the attempt's start (`recorded`), and nothing at all if it
/// refused it.
struct LogSink {
    path: PathBuf,
    header: Option<String>,
    file: Option<tokio::fs::File>,
    recorded: watch::Receiver<Option<bool>>,
    discard: bool,
}

impl LogSink {
    fn new(path: PathBuf, header: Option<String>, recorded: watch::Receiver<Option<bool>>) -> Self {
        Self { path, header, file: None, recorded, discard: false }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.discard {
            return Ok(());
        }
        if self.file.is_none() {
            let recorded = self.recorded.wait_for(Option::is_some).await.is_ok_and(|r| *r == Some(true));
            if !recorded {
                self.discard = true;
                return Ok(());
            }
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&self.path)?;
            let mut file = tokio::fs::File::from_std(file);
            if let Some(header) = self.header.take() {
                file.write_all(header.as_bytes()).await?;
            }
            self.file = Some(file);
        }
        match self.file.as_mut() {
            Some(file) => file.write_all(bytes).await,
            None => Ok(()),
        }
    }

    async fn flush(&mut self) {
        if let Some(file) = self.file.as_mut() {
            let _ = file.flush().await;
        }
    }
}

/// Copies a pipe into a log, keeping at most `cap` bytes; past that, writes
/// a marker and drains the rest. Counts what it kept in `copied` as it goes.
async fn copy_capped(
    from: Option<impl AsyncRead + Unpin>,
    mut log: LogSink,
    cap: u64,
    name: &'static str,
    output: watch::Sender<u64>,
    copied: Arc<Copied>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(mut from) = from else { return };
    let mut buf = vec![0u8; CHUNK];
    let (mut kept, mut discarded) = (0u64, 0u64);
    let mut broken = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let take = if broken { 0 } else { (cap.saturating_sub(kept) as usize).min(n) };
        if take > 0 {
            if let Err(e) = log.write(&buf[..take]).await {
                tracing::warn!(log = %log.path.display(), "cannot write a job's {name}: {e}; discarding it");
                broken = true;
                discarded += n as u64;
                continue;
            }
            kept += take as u64;
            copied.kept.store(kept, Relaxed);
            output.send_modify(|v| *v += 1);
        }
        if take < n {
            if discarded == 0 && !broken {
                let marker = format!(
                    "\n[hearth: {name} truncated here: this attempt reached queue.log_max ({}); the rest was discarded]\n",
                    crate::units::ByteSize(cap)
                );
                let _ = log.write(marker.as_bytes()).await;
            }
            discarded += (n - take) as u64;
            copied.truncated.store(true, Relaxed);
        }
    }
    log.flush().await;
    output.send_modify(|v| *v += 1);
}

/// Waits for both log copies to reach the end of their pipes, at most
/// `grace` for the two together: a process out of the daemon's reach (one
/// that dropped `HEARTH_JOB_MARK`, or not on Linux) may hold a pipe open.
/// Either way, what each kept is counted.
async fn join_copies(copies: (CopyTask, CopyTask), grace: Duration) -> ((u64, bool), (u64, bool)) {
    let ((out, out_copied), (err, err_copied)) = copies;
    let (out_abort, err_abort) = (out.abort_handle(), err.abort_handle());
    if tokio::time::timeout(grace, async { tokio::join!(out, err) }).await.is_err() {
        out_abort.abort();
        err_abort.abort();
    }
    (out_copied.get(), err_copied.get())
}

/// Finds the attempts a previous daemon left running, kills what is left of
/// their process groups (a group is ours only if its leader still has the
/// recorded start time, or is gone while the group lives on), and ends
/// those whose start is in the store as `lost`, which counts and applies
/// the retry policy. An attempt recorded under `running/` whose start never
/// reached the store leaves no trace: its group is killed, and its job,
/// still runnable in the store, runs again.
pub(super) async fn recover(service: &Arc<QueueService>, orphans: rusqlite::Result<Vec<store::Orphan>>) {
    let orphans = match orphans {
        Ok(orphans) => orphans,
        Err(e) => {
            tracing::error!("cannot look for attempts left by a previous daemon: {e}");
            return;
        }
    };
    let found = service.running.scan().unwrap_or_else(|e| {
        tracing::error!(dir = %service.running.path().display(), "cannot read the running attempts' records: {e}");
        Vec::new()
    });
    let mut records = HashMap::new();
    for found in found {
        match found.record {
            Ok(record) => {
                records.insert((record.job, record.attempt), (found.path, record));
            }
            // Its process was killed before it could run anything: the
            // record is written before the program runs.
            Err(why) => {
                tracing::warn!(path = %found.path.display(), "dropping a running-attempt record: {why}");
                service.running.remove_file(&found.path);
            }
        }
    }

    for orphan in orphans {
        let record = records.remove(&(orphan.job_id, orphan.n));
        let what = match (orphan.pid, &record) {
            (_, Some((_, record))) if !service.running.this_boot(record) => {
                "its processes ended with the system's restart".to_string()
            }
            (Some(pid), _) => kill_leftover(pid, orphan.pid_start_time).await,
            (None, _) => "it had no process yet".to_string(),
        };
        let error = format!("hearthd stopped unexpectedly while this attempt ran; {what}");
        tracing::warn!(job = orphan.job_id, attempt = orphan.n, "recovering an interrupted attempt: {error}");
        let end = AttemptEnd::without_output(Outcome::Lost, error);
        match service.writer.finish(orphan.job_id, Some(orphan.n), end).await {
            Ok(_) => {
                if let Some((path, _)) = record {
                    service.running.remove_file(&path);
                }
            }
            Err(e) => tracing::error!(job = orphan.job_id, "cannot record a recovered attempt: {e}"),
        }
    }

    let records: Vec<(PathBuf, Record)> = records.into_values().collect();
    let keys: Vec<(u64, u32)> = records.iter().map(|(_, r)| (r.job, r.attempt)).collect();
    let looked_up = service
        .read(move |c| keys.iter().map(|&(id, n)| store::attempt_ended(c, id, n)).collect::<Result<Vec<_>, _>>())
        .await;
    let ended = match looked_up {
        Ok(ended) => ended,
        Err(e) => {
            tracing::error!("cannot look up the recorded attempts: {e}; keeping their records for the next start");
            return;
        }
    };
    for (ended, (path, record)) in ended.into_iter().zip(records) {
        let (job, attempt) = (record.job, record.attempt);
        if service.running.this_boot(&record) {
            let what = kill_leftover(record.pid, record.pid_start_time).await;
            match ended {
                // The daemon stopped between committing its end and dropping the record.
                Some(true) => tracing::debug!(job, attempt, "a record of an attempt that had ended: {what}"),
                _ => tracing::warn!(
                    job,
                    attempt,
                    "hearthd stopped before the start of this attempt was committed; {what}; the job runs again \
                     and the attempt is not counted"
                ),
            }
        }
        service.running.remove_file(&path);
    }
}

async fn kill_leftover(pid: u32, recorded_start: Option<u64>) -> String {
    if !child::recorded_group_alive(pid, recorded_start) {
        return format!("its process {pid} was already gone");
    }
    let _ = child::kill_group(pid, libc::SIGKILL);
    let deadline = tokio::time::Instant::now() + RECOVERY_KILL_WAIT;
    let mut delay = Duration::from_millis(1);
    while child::group_alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    format!("its leftover process group {pid} was killed")
}
