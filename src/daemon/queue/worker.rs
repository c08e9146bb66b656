//! The dispatcher, the attempts, and recovery at start-up.
//!
//! The dispatcher is one thread that sleeps until something can change what
//! may run: a commit (a submit, a retry, a cancel, an attempt's end), an
//! attempt leaving its worker slot, or the earliest `run_at_ms` of a waiting
//! job. It never polls. Each attempt is a task: spawn behind the gate,
//! commit the pid, open the gate, copy output to the logs with a cap, wait
//! for the exit (or a timeout, a cancel, a shutdown), commit the end.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::spawn::spawn_gated;
use super::store::{self, Runnable};
use super::writer::{AttemptEnd, Op, Reply};
use super::{InFlight, KillReason, QueueService};
use crate::daemon::child;
use crate::protocol::queue::{Job, LogStream, Outcome};

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
            let free = service.workers.saturating_sub(in_flight.len() as u32) as usize;
            let saturated: Vec<String> = service
                .config
                .limits
                .iter()
                .filter(|(queue, limit)| in_flight.values().filter(|f| &f.queue == *queue).count() >= **limit as usize)
                .map(|(queue, _)| queue.clone())
                .collect();
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
    if in_flight.len() as u32 >= service.workers || in_flight.contains_key(&job.id) {
        return None;
    }
    if let Some(limit) = service.config.limits.get(&job.queue) {
        if in_flight.values().filter(|f| f.queue == job.queue).count() >= *limit as usize {
            return None;
        }
    }
    let (kill, kill_rx) = watch::channel(None);
    let (output, _) = watch::channel(0);
    in_flight.insert(job.id, InFlight { queue: job.queue.clone(), kill, output: output.clone() });
    Some((kill_rx, output))
}

async fn run_attempt(
    service: Arc<QueueService>,
    runnable: Runnable,
    kill: watch::Receiver<Option<KillReason>>,
    output: watch::Sender<u64>,
) {
    let id = runnable.job.id;
    let result = attempt(&service, runnable, kill, &output).await;
    let release = || {
        service.lock_in_flight().remove(&id);
        service.wake.notify_one();
    };
    // A job whose start is committed stays `running` in the store until its
    // end is committed, so the dispatcher cannot pick it again: its worker
    // is free as soon as its process is gone, and the next attempt's start
    // can share a commit with this one's end. A job that never started is
    // still runnable in the store: it keeps its slot until its end is in.
    let started = matches!(result, Some((Some(_), _)));
    if started {
        release();
    }
    if let Some((n, end)) = result {
        let outcome = end.outcome;
        match service.writer.call(Op::Finish { id, n, end }).await {
            Ok(Reply::Job(job)) => {
                tracing::debug!(job = id, attempt = ?n, outcome = outcome.as_str(), state = %job.state, "attempt ended");
            }
            Ok(other) => tracing::error!(job = id, "unexpected answer to finish: {other:?}"),
            Err(e) => tracing::error!(job = id, "cannot record the end of an attempt: {e}; the next start recovers it"),
        }
    }
    if !started {
        release();
    }
}

/// Runs one attempt. `None` when it did not happen (the job was canceled
/// before it could start, or the store refused the start).
async fn attempt(
    service: &Arc<QueueService>,
    runnable: Runnable,
    mut kill: watch::Receiver<Option<KillReason>>,
    output: &watch::Sender<u64>,
) -> Option<(Option<u32>, AttemptEnd)> {
    let Runnable { job, input } = runnable;
    let program = job.argv.first().cloned().unwrap_or_default();
    let spawn_failed = |n, e: &dyn std::fmt::Display| {
        Some((n, AttemptEnd::without_output(Outcome::SpawnFailed, format!("cannot start {program:?}: {e}"))))
    };
    let mut cmd = child::command(&program, &job.argv[1..]);
    cmd.envs(&job.env)
        .env("HEARTH_JOB_ID", job.id.to_string())
        .env("HEARTH_JOB_QUEUE", &job.queue)
        .env("HEARTH_JOB_ATTEMPT", (job.attempts + 1).to_string())
        .current_dir(&job.cwd)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let gated = match spawn_gated(cmd).await {
        Ok(gated) => gated,
        Err(e) => return spawn_failed(None, &e),
    };
    let pid = gated.pid;
    let start = Op::Start { id: job.id, pid, pid_start_time: child::process_start_time(pid) };
    let n = match service.writer.call(start).await {
        Ok(Reply::Started(n)) => n,
        other => {
            tracing::debug!(job = job.id, "attempt not started: {other:?}");
            gated.abort().await;
            return None;
        }
    };
    // Later attempts announce themselves in the logs they write to.
    let header = (n > 1).then(|| {
        format!(
            "[hearth: attempt {n} (counted {} of {}) started at {}]\n",
            job.attempts + 1,
            job.max_attempts,
            crate::time::rfc3339_ms(service.clock.now_ms())
        )
    });
    let stdout_log = LogSink::new(service.log_path(job.id, LogStream::Stdout), header.clone());
    let stderr_log = LogSink::new(service.log_path(job.id, LogStream::Stderr), header);
    let mut child = match gated.open().await {
        Ok(child) => child,
        Err(e) => return spawn_failed(Some(n), &e),
    };
    tracing::debug!(job = job.id, attempt = n, pid, "attempt started");

    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        tokio::spawn(async move {
            // A job that exits without reading its input is not an error.
            let _ = stdin.write_all(&input).await;
        });
    }
    let cap = service.config.log_max.0;
    let copy_out = tokio::spawn(copy_capped(child.stdout.take(), stdout_log, cap, "stdout", output.clone()));
    let copy_err = tokio::spawn(copy_capped(child.stderr.take(), stderr_log, cap, "stderr", output.clone()));

    let grace = service.config.kill_grace.0;
    let timeout = job.timeout_ms.filter(|t| *t > 0).map(Duration::from_millis);
    let mut ended_by = None;
    let status = tokio::select! {
        status = child.wait() => status,
        () = sleep_or_forever(timeout) => {
            ended_by = Some(Outcome::TimedOut);
            terminate(&mut child, pid, grace).await
        }
        reason = async { kill.wait_for(Option::is_some).await.ok().and_then(|r| *r) } => {
            ended_by = Some(if reason == Some(KillReason::Shutdown) { Outcome::Interrupted } else { Outcome::Canceled });
            terminate(&mut child, pid, grace).await
        }
    };
    // The attempt is its main process: whatever it left in its group goes too.
    let _ = child::kill_group(pid, libc::SIGKILL);
    let (stdout_bytes, out_cut) = join_copy(copy_out, grace).await;
    let (stderr_bytes, err_cut) = join_copy(copy_err, grace).await;
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
    match ended_by {
        Some(Outcome::TimedOut) => {
            end.outcome = Outcome::TimedOut;
            end.error = Some(format!("timed out after {}", crate::units::HumanDuration(timeout.unwrap_or_default())));
        }
        Some(Outcome::Canceled) => {
            end.outcome = Outcome::Canceled;
            end.error = Some("canceled".into());
        }
        Some(Outcome::Interrupted) => {
            end.outcome = Outcome::Interrupted;
            end.error = Some("hearthd stopped while this attempt ran; it will run again (not counted)".into());
        }
        _ => {}
    }
    Some((Some(n), end))
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

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM to the group; SIGKILL after `grace` if the main process is still there.
async fn terminate(child: &mut tokio::process::Child, pgid: u32, grace: Duration) -> std::io::Result<ExitStatus> {
    let _ = child::kill_group(pgid, libc::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status;
    }
    let _ = child::kill_group(pgid, libc::SIGKILL);
    child.wait().await
}

/// A job's log file, created on the first byte an attempt writes (most jobs
/// of some queues write nothing, and creating files is not free), appended
/// to, never through a symlink.
struct LogSink {
    path: PathBuf,
    header: Option<String>,
    file: Option<tokio::fs::File>,
}

impl LogSink {
    fn new(path: PathBuf, header: Option<String>) -> Self {
        Self { path, header, file: None }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
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
/// a marker and drains the rest. Returns (bytes kept, truncated).
async fn copy_capped(
    from: Option<impl AsyncRead + Unpin>,
    mut log: LogSink,
    cap: u64,
    name: &'static str,
    output: watch::Sender<u64>,
) -> (u64, bool) {
    let Some(mut from) = from else { return (0, false) };
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
        }
    }
    log.flush().await;
    output.send_modify(|v| *v += 1);
    (kept, discarded > 0)
}

async fn join_copy(task: tokio::task::JoinHandle<(u64, bool)>, grace: Duration) -> (u64, bool) {
    // A process that left the group (setsid) may hold the pipe open: do not
    // wait for it forever.
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(result)) => result,
        _ => {
            abort.abort();
            (0, false)
        }
    }
}

/// Finds the attempts a previous daemon left running, kills what is left of
/// their process groups (a group is ours only if its leader still has the
/// recorded start time, or is gone while the group lives on), and ends them
/// as `lost`, which counts and applies the retry policy.
pub(super) async fn recover(service: &Arc<QueueService>) {
    let orphans = match service.read(store::orphans).await {
        Ok(orphans) => orphans,
        Err(e) => {
            tracing::error!("cannot look for attempts left by a previous daemon: {e}");
            return;
        }
    };
    for orphan in orphans {
        let what = match orphan.pid {
            Some(pid) => kill_leftover(pid, orphan.pid_start_time).await,
            None => "it had no process yet".to_string(),
        };
        let error = format!("hearthd stopped unexpectedly while this attempt ran; {what}");
        tracing::warn!(job = orphan.job_id, attempt = orphan.n, "recovering an interrupted attempt: {error}");
        let end = AttemptEnd::without_output(Outcome::Lost, error);
        if let Err(e) = service.writer.call(Op::Finish { id: orphan.job_id, n: Some(orphan.n), end }).await {
            tracing::error!(job = orphan.job_id, "cannot record a recovered attempt: {e}");
        }
    }
}

async fn kill_leftover(pid: u32, recorded_start: Option<u64>) -> String {
    let now_start = child::process_start_time(pid);
    let ours = match (now_start, recorded_start) {
        (Some(now), Some(then)) => now == then,
        // The leader is gone; a live group with its id can only be its
        // group (the kernel does not reuse an id a group still uses).
        (None, _) => child::group_alive(pid),
        (Some(_), None) => false,
    };
    if !ours {
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
