//! Starting the processes the daemon runs for others (queue jobs, pool
//! commands) the same careful way, and finding or killing them later.
//!
//! Every child gets its own process group (so a timeout or a cancel kills
//! the whole tree), none of the service manager's variables (`NOTIFY_SOCKET`,
//! `LISTEN_*`, `WATCHDOG_*`: a job must never speak for the daemon), the
//! open-file soft limit the daemon itself started with, and no descriptor of
//! the daemon (they are all close-on-exec).

use std::ffi::OsStr;
use std::io;
use std::sync::OnceLock;

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
    if let Some(&(soft, hard)) = ORIGINAL_NOFILE.get() {
        restore_nofile(&mut cmd, soft, hard);
    }
    cmd
}

/// The open-file limit (soft, hard) to give the processes the daemon starts,
/// when the daemon raised its own; `None` when it did not.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // the queue's clone, Linux only
pub(crate) fn original_nofile_limit() -> Option<(libc::rlim_t, libc::rlim_t)> {
    let &(soft, hard) = ORIGINAL_NOFILE.get()?;
    let (current, _) = crate::sys::nofile_limit().ok()?;
    (current != soft).then_some((soft, hard))
}

#[expect(unsafe_code, reason = "a pre_exec hook runs in the child between fork and exec")]
fn restore_nofile(cmd: &mut tokio::process::Command, soft: libc::rlim_t, hard: libc::rlim_t) {
    if crate::sys::nofile_limit().is_ok_and(|(current, _)| current == soft) {
        return; // Nothing was raised: keep the faster posix_spawn path.
    }
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setrlimit, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
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

/// Whether any process of the group `pgid` still exists.
pub fn group_alive(pgid: u32) -> bool {
    crate::sys::group_exists(pgid)
}

/// When the process `pid` started, in clock ticks since boot (Linux), so
/// that a recorded (pid, start time) pair identifies one process even after
/// the pid is reused. `None` when the process does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22; fields after the parenthesised command name start at 3.
        let (_, rest) = stat.rsplit_once(')')?;
        rest.split_whitespace().nth(19)?.parse().ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        crate::daemon::fsutil::pid_alive(pid).then_some(0)
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
