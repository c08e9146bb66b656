//! Starting the processes the daemon runs for others (queue jobs, pool
//! commands, supervised processes) the same careful way, and finding or killing them later.
//!
//! Every child gets its own process group (so a timeout or a cancel kills
//! the whole tree), none of the service manager's variables (`NOTIFY_SOCKET`,
//! `LISTEN_*`, `WATCHDOG_*`: a job must never speak for the daemon), the
//! open-file soft limit the daemon itself started with, and no descriptor of
//! the daemon (they are all close-on-exec).
//!
//! A child that must be recorded before its program runs (a queue attempt,
//! a pool command, a supervised process) is started behind a gate (`Gated::spawn`): before
//! `exec` it writes its pid to a pipe and blocks reading a second pipe; the
//! daemon writes its record, then opens the gate (one byte `1`) and the
//! child execs its program. If the record cannot be written the daemon
//! writes `0` and the child exits without running anything. If the daemon
//! dies while the child waits, the child sees the gate close and exits, and
//! on Linux it is killed with the daemon anyway (the parent death signal,
//! armed before the pid is sent and disarmed before `exec`; the thread that
//! forked waits in `spawn` until the child execs, so it cannot end first).
//! So no program ever runs that a restarted daemon could not find.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Environment variables that belong to the daemon's service manager.
pub const SERVICE_MANAGER_VARS: &[&str] =
    &["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The open-file soft limit before the daemon raised its own.
static ORIGINAL_NOFILE: OnceLock<(libc::rlim_t, libc::rlim_t)> = OnceLock::new();

/// Records the limit the daemon started with (called once, before raising it).
pub(crate) fn remember_nofile_limit(soft: libc::rlim_t, hard: libc::rlim_t) {
    let _ = ORIGINAL_NOFILE.set((soft, hard));
}

/// A command for `program` with `args`, prepared as described above.
pub fn command(program: impl AsRef<OsStr>, args: &[impl AsRef<OsStr>]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).process_group(0).kill_on_drop(false);
    for var in SERVICE_MANAGER_VARS {
        cmd.env_remove(var);
    }
    reset_in_child(&mut cmd, original_nofile_limit());
    cmd
}

/// The open-file limit (soft, hard) to give the processes the daemon starts,
/// when the daemon raised its own; `None` when it did not.
pub(crate) fn original_nofile_limit() -> Option<(libc::rlim_t, libc::rlim_t)> {
    let &(soft, hard) = ORIGINAL_NOFILE.get()?;
    let (current, _) = crate::sys::nofile_limit().ok()?;
    (current != soft).then_some((soft, hard))
}

/// What the child must not inherit from the daemon's thread that forks it:
/// its signal mask (the daemon's threads keep SIGTERM, SIGINT and SIGHUP
/// blocked, see `lifecycle::signals`, and std's spawn does not clear the
/// mask: a child would ignore its stop signal), and the raised open-file
/// limit (`nofile`: the limit to restore, when it was raised).
#[expect(unsafe_code, reason = "a pre_exec hook runs in the child between fork and exec")]
fn reset_in_child(cmd: &mut tokio::process::Command, nofile: Option<(libc::rlim_t, libc::rlim_t)>) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls sigemptyset, pthread_sigmask and setrlimit, which are
    // async-signal-safe, on values on its own stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if let Some((soft, hard)) = nofile {
                let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            Ok(())
        });
    }
}

/// A forked child waiting at the gate (see the module docs): it exists,
/// with its pid and process group, but runs nothing until [`Gated::open`].
#[derive(Debug)]
pub(crate) struct Gated {
    pub(crate) pid: u32,
    gate: std::fs::File,
    spawn: JoinHandle<io::Result<Child>>,
}

impl Gated {
    /// Forks `cmd` and waits until the child stands at the gate, its pid known
    /// and its program not yet run.
    pub(crate) async fn spawn(mut cmd: Command) -> io::Result<Gated> {
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

/// Sends `signal` to every process of the group `pgid`. A group that no
/// longer exists is not an error.
pub fn kill_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    match crate::sys::killpg(pgid, signal) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// Whether any process of the group `pgid` still runs. A zombie (ended,
/// waiting to be reaped by whoever its parent is now) does not count.
pub fn group_alive(pgid: u32) -> bool {
    if !crate::sys::group_exists(pgid) {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        // The group exists: is any of its processes more than a zombie?
        let Ok(entries) = std::fs::read_dir("/proc") else { return true };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(proc_stat)
            .any(|stat| stat.pgrp == pgid && stat.state != 'Z')
    }
    #[cfg(not(target_os = "linux"))]
    {
        true
    }
}

/// The fields of `/proc/<pid>/stat` the daemon looks at.
#[cfg(target_os = "linux")]
struct ProcStat {
    state: char,
    pgrp: u32,
    start_time: u64,
}

#[cfg(target_os = "linux")]
fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain
    // anything) start at field 3: state, ppid, pgrp, … starttime (22).
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// When the process `pid` started, in clock ticks since boot (Linux), so
/// that a recorded (pid, start time) pair identifies one process even after
/// the pid is reused. `None` when the process does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        proc_stat(pid).map(|stat| stat.start_time)
    }
    #[cfg(not(target_os = "linux"))]
    {
        crate::daemon::fsutil::pid_alive(pid).then_some(0)
    }
}

/// Whether the process group a record names (its leader `pid`, started at
/// `recorded_start`) still has processes: its leader with the recorded start
/// time (so a reused pid is never taken for it), or, with the leader gone,
/// any process of the group (the kernel does not reuse an id a group still
/// uses).
pub fn recorded_group_alive(pid: u32, recorded_start: Option<u64>) -> bool {
    match (process_start_time(pid), recorded_start) {
        (Some(now), Some(then)) if now == then => crate::daemon::fsutil::pid_alive(pid) || group_alive(pid),
        (Some(_), _) => false,
        (None, _) => group_alive(pid),
    }
}

/// This boot's id (Linux), so that records of processes from before a
/// reboot are known for what they are.
pub fn boot_id() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|id| id.trim().to_owned())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_a_process() {
        let me = std::process::id();
        let t = process_start_time(me).expect("own start time");
        assert_eq!(process_start_time(me), Some(t));
        assert_eq!(process_start_time(u32::MAX), None);
    }

    #[test]
    fn service_manager_variables_are_removed() {
        let cmd = command("true", &[] as &[&str]);
        let removed: Vec<_> = cmd.as_std().get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_owned()).collect();
        for var in SERVICE_MANAGER_VARS {
            assert!(removed.iter().any(|k| k == var), "{var} is not removed");
        }
    }

    #[test]
    fn children_start_with_no_signal_blocked() {
        // As in the daemon: the thread that starts the child has the stop signals blocked.
        let held = crate::sys::BlockedSignals::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let out = runtime.block_on(async {
            // grep itself reads its own mask (a shell would change its own).
            let mut cmd = command("grep", &["SigBlk", "/proc/self/status"]);
            cmd.stdout(std::process::Stdio::piped()).output().await.unwrap()
        });
        held.restore();
        let text = String::from_utf8_lossy(&out.stdout);
        if cfg!(target_os = "linux") {
            assert_eq!(text.split_whitespace().nth(1), Some("0000000000000000"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_gated_child_runs_only_once_its_gate_opens() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let mut cmd = command("touch", &[marker.as_os_str()]);
        cmd.stdin(std::process::Stdio::null());
        let gated = Gated::spawn(cmd).await.unwrap();
        assert!(crate::daemon::fsutil::pid_alive(gated.pid));
        assert!(process_start_time(gated.pid).is_some(), "it can be recorded before it runs");
        assert!(!marker.exists(), "nothing runs before the gate opens");
        assert!(gated.open().await.unwrap().wait().await.unwrap().success());
        assert!(marker.exists());

        let aborted = marker.with_extension("no");
        let mut cmd = command("touch", &[aborted.as_os_str()]);
        cmd.stdin(std::process::Stdio::null());
        let gated = Gated::spawn(cmd).await.unwrap();
        gated.abort().await;
        assert!(!aborted.exists(), "an aborted child never runs its program");

        let mut cmd = command("/nonexistent/hearth-test-program", &[] as &[&str]);
        cmd.stdin(std::process::Stdio::null());
        let err = Gated::spawn(cmd).await.unwrap().open().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[tokio::test]
    async fn children_lead_their_own_process_group() {
        let out =
            command("sh", &["-c", "ps -o pgid= -p $$"]).stdout(std::process::Stdio::piped()).output().await.unwrap();
        let pgid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let mine = crate::sys::process_group();
        assert_ne!(pgid, mine, "the child leads its own process group");
        assert!(!group_alive(pgid), "the group ended with its only process");
    }
}
