//! Starting an attempt so that its process is recorded (under `running/`)
//! before its program runs.
//!
//! On Linux the process is cloned without copying the daemon and writes its
//! own record before it execs (`vfork.rs`). Elsewhere, and on kernels that
//! cannot do that, it is forked behind a gate: before `exec` the child
//! writes its pid to a pipe and blocks reading a second pipe (the gate); the
//! daemon writes the record, then opens the gate (one byte `1`) and the
//! child execs the job's program. If the record cannot be written the
//! daemon writes `0` and the child exits without running anything. If the
//! daemon dies while the child waits, the child sees the gate close and
//! exits, and on Linux it is killed with the daemon anyway (the parent
//! death signal, armed before the pid is sent and disarmed before `exec`;
//! the thread that forked waits in `spawn` until the child execs, so it
//! cannot end first), so no program ever runs that a restarted daemon could
//! not find.

use std::ffi::OsString;
use std::io;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Child;

use super::running::RunningDir;
#[cfg(target_os = "linux")]
use super::vfork;
use crate::daemon::child;

/// What a job's process is made of.
#[derive(Debug, Clone)]
pub(crate) struct JobCommand {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    /// The whole environment (the daemon's, less the service manager's
    /// variables, plus the job's).
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) cwd: OsString,
    /// A pipe for stdin (else `/dev/null`).
    pub(crate) stdin_piped: bool,
}

/// An attempt's process, running its program, with its record written.
pub(crate) struct Spawned {
    pub(crate) process: Process,
    pub(crate) pid: u32,
    pub(crate) start_time: Option<u64>,
    pub(crate) stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    pub(crate) stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub(crate) stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
}

/// An attempt's main process.
#[derive(Debug)]
pub(crate) enum Process {
    Forked(Child),
    #[cfg(target_os = "linux")]
    Cloned(vfork::Child),
}

impl Process {
    /// Waits for the process to end (and reaps it).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Process::Forked(child) => child.wait().await,
            #[cfg(target_os = "linux")]
            Process::Cloned(child) => child.wait().await,
        }
    }
}

/// Starts `cmd` as attempt `n` of `job`, its process recorded in `running`
/// before its program runs. The record is removed again when the program
/// cannot be started.
pub(crate) async fn spawn_recorded(cmd: JobCommand, running: &RunningDir, job: u64, n: u32) -> io::Result<Spawned> {
    #[cfg(target_os = "linux")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
        if !UNSUPPORTED.load(Ordering::Relaxed) {
            match vfork::spawn(&cmd, running, job, n) {
                Ok(started) => return cloned(started),
                Err(vfork::SpawnError::Failed(e)) => return Err(e),
                Err(vfork::SpawnError::Unsupported) => {
                    tracing::info!("this kernel cannot clone with a pidfd: queue jobs are forked");
                    UNSUPPORTED.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    spawn_forked(cmd, running, job, n).await
}

#[cfg(target_os = "linux")]
fn cloned(started: vfork::Started) -> io::Result<Spawned> {
    use tokio::net::unix::pipe;
    let stdin = match started.stdin {
        Some(fd) => Some(Box::pin(pipe::Sender::from_owned_fd(fd)?) as Pin<Box<dyn AsyncWrite + Send>>),
        None => None,
    };
    Ok(Spawned {
        process: Process::Cloned(started.child),
        pid: started.pid,
        start_time: started.start_time,
        stdin,
        stdout: Some(Box::pin(pipe::Receiver::from_owned_fd(started.stdout)?)),
        stderr: Some(Box::pin(pipe::Receiver::from_owned_fd(started.stderr)?)),
    })
}

/// Forks behind the gate, records the process, and opens the gate at once.
async fn spawn_forked(cmd: JobCommand, running: &RunningDir, job: u64, n: u32) -> io::Result<Spawned> {
    let mut command = child::command(&cmd.program, &cmd.args);
    command
        .env_clear()
        .envs(cmd.env)
        .current_dir(&cmd.cwd)
        .stdin(if cmd.stdin_piped { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let gated = child::Gated::spawn(command).await?;
    let pid = gated.pid;
    let start_time = child::process_start_time(pid);
    if let Err(e) = running.write(job, n, pid, start_time) {
        gated.abort().await;
        return Err(io::Error::new(e.kind(), format!("cannot record the attempt's process: {e}")));
    }
    match gated.open().await {
        Ok(mut child) => {
            let stdin = child.stdin.take().map(|s| Box::pin(s) as Pin<Box<dyn AsyncWrite + Send>>);
            let stdout = child.stdout.take().map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>);
            let stderr = child.stderr.take().map(|s| Box::pin(s) as Pin<Box<dyn AsyncRead + Send>>);
            Ok(Spawned { process: Process::Forked(child), pid, start_time, stdin, stdout, stderr })
        }
        Err(e) => {
            running.remove(job, n);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both ways of starting an attempt: the program finds its own record
    /// already written, and gets its stdio, environment and working directory.
    #[tokio::test]
    async fn the_record_is_there_before_the_program_runs() {
        for forked in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let running = RunningDir::open(dir.path().join("running")).unwrap();
            let record = running.file(5, 2);
            let script = r#"cat "$RECORD"; pwd; echo "$GREETING"; read line; echo "got $line"; echo oops >&2; exit 3"#;
            let env = vec![
                ("RECORD".into(), record.clone().into_os_string()),
                ("GREETING".into(), "hello".into()),
                ("PATH".into(), std::env::var_os("PATH").unwrap()),
            ];
            let cmd = JobCommand {
                program: "sh".into(),
                args: vec!["-c".into(), script.into()],
                env,
                cwd: dir.path().into(),
                stdin_piped: true,
            };
            let spawned = if forked {
                spawn_forked(cmd.clone(), &running, 5, 2).await.unwrap()
            } else {
                spawn_recorded(cmd.clone(), &running, 5, 2).await.unwrap()
            };
            let Spawned { mut process, pid, start_time, stdin, stdout, stderr } = spawned;
            assert_eq!(start_time, child::process_start_time(pid), "forked: {forked}");
            let mut stdin = stdin.unwrap();
            stdin.write_all(b"input\n").await.unwrap();
            drop(stdin);
            let (mut out, mut err) = (String::new(), String::new());
            stdout.unwrap().read_to_string(&mut out).await.unwrap();
            stderr.unwrap().read_to_string(&mut err).await.unwrap();
            assert_eq!(process.wait().await.unwrap().code(), Some(3));
            let mut lines = out.lines();
            let written: super::super::running::Record = serde_json::from_str(lines.next().unwrap()).unwrap();
            assert_eq!((written.job, written.attempt, written.pid, written.pid_start_time), (5, 2, pid, start_time));
            let cwd = dir.path().canonicalize().unwrap();
            assert_eq!(lines.collect::<Vec<_>>(), [cwd.to_str().unwrap(), "hello", "got input"], "forked: {forked}");
            assert_eq!(err, "oops\n");
            assert!(record.exists(), "the record stays until the attempt's end is committed");
            running.remove(5, 2);

            let missing = JobCommand { program: "hearth-test-no-such-program".into(), ..cmd.clone() };
            let err = if forked {
                spawn_forked(missing, &running, 5, 3).await.err().unwrap()
            } else {
                spawn_recorded(missing, &running, 5, 3).await.err().unwrap()
            };
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
            let bad_cwd = JobCommand { cwd: dir.path().join("gone").into(), ..cmd };
            let err = if forked {
                spawn_forked(bad_cwd, &running, 5, 4).await.err().unwrap()
            } else {
                spawn_recorded(bad_cwd, &running, 5, 4).await.err().unwrap()
            };
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
            assert!(
                std::fs::read_dir(running.path()).unwrap().next().is_none(),
                "no record of a program that never ran"
            );
        }
    }
}
