//! Running a pool's commands: each in its own process group (through
//! `child::command`), in the resource's directory, with a deadline, its
//! output captured into a bounded log.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::daemon::child;

/// The head of a log kept whole; the rest keeps its end.
const LOG_HEAD: usize = 4096;
/// Output read after the command exits, from processes it left behind.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Between SIGTERM and SIGKILL on a timeout.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Lines of output quoted in an error.
const ERROR_LINES: usize = 20;
const ERROR_BYTES: usize = 2048;

/// The output of one build: its first bytes and its last, within a bound.
#[derive(Debug)]
pub(crate) struct BuildLog {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    tail_max: usize,
    skipped: u64,
}

impl BuildLog {
    /// A log keeping at most `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        Self { head: Vec::new(), tail: Default::default(), tail_max: max.saturating_sub(LOG_HEAD), skipped: 0 }
    }

    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        if self.head.len() < LOG_HEAD {
            let n = bytes.len().min(LOG_HEAD - self.head.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if bytes.len() > self.tail_max {
            let drop = bytes.len() - self.tail_max;
            self.skipped += (drop + self.tail.len()) as u64;
            self.tail.clear();
            bytes = &bytes[drop..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_max);
        if overflow > 0 {
            self.tail.drain(..overflow);
            self.skipped += overflow as u64;
        }
        self.tail.extend(bytes);
    }

    /// A line of the daemon's own, such as `$ argv` before a command.
    pub(crate) fn note(&mut self, line: &str) {
        let mut text = String::with_capacity(line.len() + 2);
        if !self.ends_with_newline() {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
        self.push(text.as_bytes());
    }

    fn ends_with_newline(&self) -> bool {
        match self.tail.back().or(self.head.last()) {
            Some(b) => *b == b'\n',
            None => true,
        }
    }

    /// The whole log.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        if self.skipped > 0 {
            out.extend_from_slice(format!("\n[… {} bytes skipped …]\n", self.skipped).as_bytes());
        }
        out.extend(self.tail.iter());
        out
    }

    /// The last lines of output, for an error message.
    pub(crate) fn last_lines(&self) -> String {
        let bytes = self.bytes();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("$ ")).collect();
        let mut out = lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n");
        if out.len() > ERROR_BYTES {
            let mut cut = out.len() - ERROR_BYTES;
            while !out.is_char_boundary(cut) {
                cut += 1;
            }
            out = format!("…{}", &out[cut..]);
        }
        out
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("cannot run {program:?}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{command} was not run: its process cannot be recorded: {source}")]
    Record { command: String, source: std::io::Error },
    #[error("{command} {status}")]
    Failed { command: String, status: String },
    #[error("{command} timed out after {after:?} and was killed")]
    TimedOut { command: String, after: Duration },
    #[error("stopped: the daemon is shutting down")]
    Cancelled,
}

/// One command to run.
#[derive(Debug)]
pub(crate) struct Step<'a> {
    pub(crate) argv: &'a [String],
    pub(crate) dir: &'a Path,
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) pool: &'a str,
}

/// Runs `step` until it exits, `deadline` passes (the whole process group is
/// killed: SIGTERM, then SIGKILL), or `stop` is cancelled (SIGKILL).
/// `record` is given the process group id once the process exists and
/// before its program runs (see [`child::Gated`]); if it fails, the program
/// never runs.
pub(crate) async fn run(
    step: &Step<'_>,
    deadline: Instant,
    timeout: Duration,
    log: &mut BuildLog,
    stop: &CancellationToken,
    record: impl FnOnce(u32) -> std::io::Result<()>,
) -> Result<(), StepError> {
    let shown = display_argv(step.argv);
    log.note(&format!("$ {shown}"));
    let mut cmd = child::command(&step.argv[0], &step.argv[1..]);
    cmd.current_dir(step.dir)
        .envs(step.env)
        .env("HEARTH_POOL", step.pool)
        .env("HEARTH_POOL_PATH", step.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_error = |source| StepError::Spawn { program: step.argv[0].clone(), source };
    let gated = child::Gated::spawn(cmd).await.map_err(spawn_error)?;
    let pgid = gated.pid;
    if let Err(source) = record(pgid) {
        gated.abort().await;
        return Err(StepError::Record { command: shown, source });
    }
    let mut process = gated.open().await.map_err(spawn_error)?;
    let mut out = process.stdout.take();
    let mut err = process.stderr.take();
    let (mut out_buf, mut err_buf) = (vec![0u8; 8192], vec![0u8; 8192]);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut drain_until = None;
    let mut outcome = None;
    loop {
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        tokio::select! {
            s = process.wait(), if status.is_none() => {
                status = Some(s);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            n = read_some(&mut out, &mut out_buf) => match n {
                Some(n) => log.push(&out_buf[..n]),
                None => out = None,
            },
            n = read_some(&mut err, &mut err_buf) => match n {
                Some(n) => log.push(&err_buf[..n]),
                None => err = None,
            },
            () = sleep_until_opt(drain_until) => break,
            () = tokio::time::sleep_until(deadline), if status.is_none() && outcome.is_none() => {
                log.note(&format!("[hearth: timed out after {timeout:?}; killing the process group]"));
                outcome = Some(StepError::TimedOut { command: shown.clone(), after: timeout });
                status = Some(kill(&mut process, pgid, libc::SIGTERM).await);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            () = stop.cancelled(), if status.is_none() && outcome.is_none() => {
                outcome = Some(StepError::Cancelled);
                status = Some(kill(&mut process, pgid, libc::SIGKILL).await);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
        }
    }
    if let Some(error) = outcome {
        // Whatever the group left behind must not keep writing into a
        // directory that is about to be removed.
        let _ = child::kill_group(pgid, libc::SIGKILL);
        return Err(error);
    }
    match status {
        Some(Ok(s)) if s.success() => Ok(()),
        Some(Ok(s)) => Err(StepError::Failed { command: shown, status: describe(s) }),
        Some(Err(e)) => Err(StepError::Failed { command: shown, status: format!("could not be waited for: {e}") }),
        None => Err(StepError::Failed { command: shown, status: "ended without a status".into() }),
    }
}

/// Signals the group, waits up to the grace period, then SIGKILLs it.
async fn kill(process: &mut tokio::process::Child, pgid: u32, first: libc::c_int) -> std::io::Result<ExitStatus> {
    let _ = child::kill_group(pgid, first);
    if first != libc::SIGKILL {
        if let Ok(status) = tokio::time::timeout(KILL_GRACE, process.wait()).await {
            let _ = child::kill_group(pgid, libc::SIGKILL);
            return status;
        }
        let _ = child::kill_group(pgid, libc::SIGKILL);
    }
    process.wait().await
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(reader: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match reader {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended with {status}"),
    }
}

/// An argument vector as a person would type it.
pub(crate) fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./{}=:,+@%".contains(&b)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn run_for(args: &[&str], timeout: Duration) -> (Result<(), StepError>, BuildLog) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = BuildLog::new(64 << 10);
        let argv = argv(args);
        let env = BTreeMap::from([("EXTRA".to_owned(), "yes".to_owned())]);
        let step = Step { argv: &argv, dir: dir.path(), env: &env, pool: "p" };
        let stop = CancellationToken::new();
        let result = run(&step, Instant::now() + timeout, timeout, &mut log, &stop, |_| Ok(())).await;
        (result, log)
    }

    /// The process exists when it is recorded, and its program has not run.
    #[tokio::test]
    async fn the_process_is_recorded_before_its_program_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let argv = argv(&["touch", marker.to_str().unwrap()]);
        let env = BTreeMap::new();
        let step = Step { argv: &argv, dir: dir.path(), env: &env, pool: "p" };
        let (stop, timeout) = (CancellationToken::new(), Duration::from_secs(10));
        let mut log = BuildLog::new(4096);
        let mut seen = None;
        let result = run(&step, Instant::now() + timeout, timeout, &mut log, &stop, |pgid| {
            seen = Some((crate::daemon::child::process_start_time(pgid).is_some(), marker.exists()));
            Ok(())
        })
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(seen, Some((true, false)), "alive when recorded, its program not run yet");
        assert!(marker.exists());

        let refused = run(&step, Instant::now() + timeout, timeout, &mut log, &stop, |_| {
            std::fs::remove_file(&marker).unwrap();
            Err(std::io::Error::other("disk full"))
        })
        .await;
        assert!(matches!(refused, Err(StepError::Record { .. })), "{refused:?}");
        assert!(!marker.exists(), "a process that cannot be recorded never runs its program");
    }

    #[tokio::test]
    async fn output_and_status_are_captured() {
        let (result, log) =
            run_for(&["sh", "-c", "echo out; echo err >&2; echo $EXTRA $HEARTH_POOL; exit 3"], Duration::from_secs(10))
                .await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("exited with status 3"), "{err}");
        let text = String::from_utf8(log.bytes()).unwrap();
        assert!(text.starts_with("$ sh -c "), "{text}");
        for needle in ["out", "err", "yes p"] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        // stdout and stderr are two pipes: their relative order is not kept.
        assert!(log.last_lines().lines().any(|l| l == "yes p"), "{}", log.last_lines());
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let marker = tempfile::tempdir().unwrap();
        let pidfile = marker.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let (result, _) = run_for(&["sh", "-c", &script], Duration::from_millis(300)).await;
        assert!(matches!(result, Err(StepError::TimedOut { .. })), "{result:?}");
        let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(!crate::daemon::fsutil::pid_alive(pid), "the background sleep was killed too");
    }

    #[tokio::test]
    async fn missing_programs_are_spawn_errors() {
        let (result, _) = run_for(&["/nonexistent/program"], Duration::from_secs(5)).await;
        assert!(matches!(result, Err(StepError::Spawn { .. })), "{result:?}");
    }

    #[test]
    fn logs_keep_head_and_tail() {
        let mut log = BuildLog::new(LOG_HEAD + 100);
        log.push(&vec![b'a'; LOG_HEAD]);
        for _ in 0..50 {
            log.push(&[b'b'; 10]);
        }
        log.push(b"\nthe end\n");
        let bytes = log.bytes();
        assert!(bytes.starts_with(&[b'a'; 16]));
        assert!(bytes.ends_with(b"the end\n"));
        assert!(bytes.len() < LOG_HEAD + 200);
        assert!(String::from_utf8_lossy(&bytes).contains("bytes skipped"));
        assert_eq!(log.last_lines().lines().last(), Some("the end"));
    }

    #[test]
    fn argv_display_quotes_what_needs_it() {
        assert_eq!(display_argv(&argv(&["sh", "-c", "mkdir -p {path}"])), "sh -c 'mkdir -p {path}'");
        assert_eq!(display_argv(&argv(&["echo", "it's"])), r"echo 'it'\''s'");
    }
}
