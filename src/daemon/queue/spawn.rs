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
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

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
    let gated = spawn_gated(command).await?;
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

/// A forked child waiting at the gate.
#[derive(Debug)]
struct Gated {
    pub(crate) pid: u32,
    gate: std::fs::File,
    spawn: JoinHandle<io::Result<Child>>,
}

impl Gated {
    /// Lets the child exec its program; returns it, or why exec failed
    /// (e.g. a missing program).
    async fn open(self) -> io::Result<Child> {
        self.release(1).await
    }

    /// Makes the child exit without running its program.
    async fn abort(self) {
        let _ = self.release(0).await;
    }

    async fn release(mut self, byte: u8) -> io::Result<Child> {
        // A one-byte write to an empty pipe never blocks.
        let written = self.gate.write_all(&[byte]);
        drop(self.gate);
        let spawned = self.spawn.await.map_err(io::Error::other)?;
        written?;
        spawned
    }
}

/// Forks `cmd` and waits until the child stands at the gate.
async fn spawn_gated(mut cmd: Command) -> io::Result<Gated> {
    let (pid_r, pid_w) = crate::sys::pipe()?;
    let (gate_r, gate_w) = crate::sys::pipe()?;
    install_gate(&mut cmd, pid_r.as_raw_fd(), pid_w.as_raw_fd(), gate_r.as_raw_fd(), gate_w.as_raw_fd());
    let spawn = tokio::task::spawn_blocking(move || {
        let spawned = cmd.spawn();
        // Our copies of the child's ends: closing them lets the pid reader
        // see EOF when the child died before sending its pid.
        drop(pid_w);
        drop(gate_r);
        spawned
    });
    let pid = async {
        let mut buf = [0u8; 4];
        tokio::net::unix::pipe::Receiver::from_owned_fd(pid_r)?.read_exact(&mut buf).await?;
        Ok::<u32, io::Error>(u32::from_ne_bytes(buf))
    }
    .await;
    match pid {
        Ok(pid) => Ok(Gated { pid, gate: std::fs::File::from(gate_w), spawn }),
        Err(_) => {
            drop(gate_w);
            match spawn.await.map_err(io::Error::other)? {
                Err(e) => Err(e),
                Ok(mut child) => {
                    let _ = child.start_kill();
                    Err(io::Error::other("the child started without passing the gate"))
                }
            }
        }
    }
}

#[expect(unsafe_code, reason = "starting a process: see the module docs")]
fn install_gate(cmd: &mut Command, pid_r: RawFd, pid_w: RawFd, gate_r: RawFd, gate_w: RawFd) {
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (close, prctl, getppid, getpid,
    // write, read) on descriptors that exist in the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::close(pid_r);
            libc::close(gate_w);
            #[cfg(target_os = "linux")]
            {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ECANCELED));
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = parent;
            let me = libc::getpid().to_ne_bytes();
            if libc::write(pid_w, me.as_ptr().cast(), me.len()) != me.len() as isize {
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
            libc::close(pid_w);
            let mut byte = 0u8;
            loop {
                let n = libc::read(gate_r, (&raw mut byte).cast(), 1);
                if n == 1 && byte == 1 {
                    break;
                }
                if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
            libc::close(gate_r);
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, 0 as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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

    #[tokio::test]
    async fn the_program_runs_only_after_the_gate_opens() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let mut cmd = crate::daemon::child::command("touch", &[marker.as_os_str()]);
        cmd.stdin(std::process::Stdio::null());
        let gated = spawn_gated(cmd).await.unwrap();
        assert!(crate::daemon::fsutil::pid_alive(gated.pid));
        assert!(!marker.exists(), "nothing runs before the gate opens");
        let status = gated.open().await.unwrap().wait().await.unwrap();
        assert!(status.success());
        assert!(marker.exists());

        let mut cmd = crate::daemon::child::command("touch", &[marker.with_extension("no").as_os_str()]);
        cmd.stdin(std::process::Stdio::null());
        let gated = spawn_gated(cmd).await.unwrap();
        gated.abort().await;
        assert!(!marker.with_extension("no").exists(), "an aborted child never runs its program");
    }

    #[tokio::test]
    async fn a_missing_program_fails_after_the_gate() {
        let mut cmd = crate::daemon::child::command("/nonexistent/hearth-test-program", &[] as &[&str]);
        cmd.stdin(std::process::Stdio::null());
        let gated = spawn_gated(cmd).await.unwrap();
        let err = gated.open().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
