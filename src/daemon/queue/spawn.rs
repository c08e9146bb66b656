//! Starting an attempt behind a gate, so that its pid is on disk before its
//! program runs.
//!
//! The child is forked as usual, but before `exec` it writes its pid to a
//! pipe and blocks reading a second pipe (the gate). The daemon commits the
//! pid and the process's start time, then opens the gate (one byte `1`) and
//! the child execs the job's program. If the commit fails the daemon writes
//! `0` and the child exits without running anything. If the daemon dies
//! while the child waits, the child is killed with it (Linux: the parent
//! death signal, armed before the pid is sent and disarmed before `exec`),
//! so no program ever runs that a restarted daemon could not find.

use std::io::{self, Write};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::AsyncReadExt;

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::running::RunningDir;
use crate::daemon::child;

/// An attempt's process, running its program, with its record written.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) start_time: Option<u64>,
}

/// Forks `cmd` behind the gate, records its process in `running` as
/// attempt `n` of `job`, and opens the gate at once. The record is removed
/// again when the program cannot be started.
pub(crate) async fn spawn_recorded(cmd: Command, running: &RunningDir, job: u64, n: u32) -> io::Result<Spawned> {
    let gated = spawn_gated(cmd).await?;
    let pid = gated.pid;
    let start_time = child::process_start_time(pid);
    if let Err(e) = running.write(job, n, pid, start_time) {
        gated.abort().await;
        return Err(io::Error::new(e.kind(), format!("cannot record the attempt's process: {e}")));
    }
    match gated.open().await {
        Ok(child) => Ok(Spawned { child, pid, start_time }),
        Err(e) => {
            running.remove(job, n);
            Err(e)
        }
    }
}

/// A forked child waiting at the gate.
#[derive(Debug)]
pub(crate) struct Gated {
    pub(crate) pid: u32,
    gate: std::fs::File,
    spawn: JoinHandle<io::Result<Child>>,
}

impl Gated {
    /// Lets the child exec its program; returns it, or why exec failed
    /// (e.g. a missing program).
    pub(crate) async fn open(self) -> io::Result<Child> {
        self.release(1).await
    }

    /// Makes the child exit without running its program.
    pub(crate) async fn abort(self) {
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

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    #[allow(unsafe_code)]
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks `cmd` and waits until the child stands at the gate.
pub(crate) async fn spawn_gated(mut cmd: Command) -> io::Result<Gated> {
    let (pid_r, pid_w) = pipe()?;
    let (gate_r, gate_w) = pipe()?;
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

#[allow(unsafe_code)]
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
