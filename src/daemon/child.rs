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

use std::ffi::{OsStr, OsString};
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

/// Why a command cannot be executed as it is: `execve` would refuse it
/// with "Argument list too long".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecTooLarge {
    /// One argument or variable is longer than the system takes.
    #[error(
        "{what} is {len} bytes; this system takes at most {max} bytes per argument or environment variable \
         (MAX_ARG_STRLEN)"
    )]
    String {
        /// Which argument or variable (`argv[3]`, `env FOO`).
        what: String,
        /// Its length with its terminating NUL (and `=` for a variable).
        len: usize,
        /// The most the system takes.
        max: usize,
    },
    /// Arguments and environment together are more than the system takes.
    #[error(
        "the command and its environment take {total} bytes to execute ({args} arguments, {vars} variables, \
         the daemon's own environment included); this system takes at most {max} (ARG_MAX)"
    )]
    Total {
        /// Bytes `execve` needs: every string with its NUL, and a pointer to each.
        total: usize,
        /// Arguments.
        args: usize,
        /// Environment variables.
        vars: usize,
        /// The most the system takes.
        max: usize,
    },
}

/// Room for the program's path, which the kernel copies with the arguments.
const PATH_ROOM: usize = 4096;

/// Checks that `argv` with the environment `env` (the whole of it, as the
/// process gets it) fits what `execve` takes on this system: each string
/// under the per-string limit (Linux), and everything together, with a
/// pointer to each string and the program's path, within `ARG_MAX`.
pub fn check_exec<A: AsRef<OsStr>>(argv: &[A], env: &[(OsString, OsString)]) -> Result<(), ExecTooLarge> {
    use std::os::unix::ffi::OsStrExt;
    // Linux: 32 pages per string (MAX_ARG_STRLEN), NUL included; and never
    // more than three quarters of the 8 MiB default stack in all (_STK_LIM).
    #[cfg(target_os = "linux")]
    let (per_string, arg_max) = (32 * crate::sys::page_size(), crate::sys::arg_max().min(6 << 20));
    #[cfg(not(target_os = "linux"))]
    let (per_string, arg_max) = (usize::MAX, crate::sys::arg_max());
    let mut total = PATH_ROOM + (argv.len() + env.len() + 2) * std::mem::size_of::<usize>();
    for (i, arg) in argv.iter().enumerate() {
        let len = arg.as_ref().as_bytes().len() + 1;
        if len > per_string {
            return Err(ExecTooLarge::String { what: format!("argv[{i}]"), len, max: per_string });
        }
        total += len;
    }
    for (k, v) in env {
        let len = k.len() + 1 + v.len() + 1;
        if len > per_string {
            let what = format!("environment variable {}", crate::protocol::clip(&k.to_string_lossy(), 80));
            return Err(ExecTooLarge::String { what, len, max: per_string });
        }
        total += len;
    }
    if total > arg_max {
        return Err(ExecTooLarge::Total { total, args: argv.len(), vars: env.len(), max: arg_max });
    }
    Ok(())
}

// --- descendants that left their process group -------------------------------
//
// A process can leave the group it was started in (`setsid`, `setpgid`), and
// a kill of the group no longer reaches it. On Linux the daemon makes itself
// the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`): once the
// process that started such a leaver ends, the leaver becomes the daemon's
// own child, where `kill_marked` finds it by a variable of its environment.
// The daemon must then reap what it adopted, and only that: its own children
// (every one of them leads its own process group in the daemon's session)
// are reaped by whoever started them.

/// Makes the daemon the reaper of its orphaned descendants; whether it is
/// one (Linux only).
pub(crate) fn adopt_orphans() -> bool {
    #[cfg(target_os = "linux")]
    {
        match crate::sys::set_child_subreaper() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot become the reaper of orphaned job processes: {e}");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    zombie: bool,
    pgrp: u32,
    session: u32,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state, ppid, pgrp, session.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let zombie = fields.next()? == "Z";
    let _ppid = fields.next()?;
    Some(Stat { zombie, pgrp: fields.next()?.parse().ok()?, session: fields.next()?.parse().ok()? })
}

/// The daemon's children that may have been adopted: the kernel hands an
/// orphan to the first live thread of its reaper, the main thread, whose
/// list is read alone (one small read per ending attempt); the lists of
/// every thread when `all` (or when the main thread's cannot be read).
fn children(all: bool) -> Vec<u32> {
    let read = |tid: &str| std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).ok();
    let parse = |text: String| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>();
    if !all && let Some(text) = read(&std::process::id().to_string()) {
        return parse(text);
    }
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten();
    tasks.filter_map(|t| read(&t.file_name().to_string_lossy())).flat_map(parse).collect()
}

/// Whether the process `pid` has `entry` (`NAME=value`) in its environment.
fn has_env_entry(pid: u32, entry: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry))
}

/// Whether the zombie child `pid` is one the daemon adopted (not one it
/// started, which leads its own group in the daemon's session).
fn adopted(pid: u32, stat: Stat) -> bool {
    stat.session != crate::sys::session() || (stat.pgrp != pid && stat.pgrp != crate::sys::process_group())
}

/// How long a killed leaver gets to die before the sweep moves on.
const LEAVER_DEATH: std::time::Duration = std::time::Duration::from_secs(5);

/// Kills (SIGKILL, with the group it leads) every process the daemon
/// adopted whose environment holds `entry`, and reaps it; again for what
/// their deaths hand over in turn. Also reaps the adopted zombies it finds
/// on the way. Returns how many it killed.
pub(crate) async fn kill_marked(entry: &str) -> usize {
    let mut killed = 0;
    // Each round hands the killed processes' own leavers over to the next.
    for _ in 0..64 {
        let mut round = Vec::new();
        for pid in children(false) {
            match stat(pid) {
                Some(s) if s.zombie && adopted(pid, s) => {
                    let _ = crate::sys::reap(pid);
                }
                Some(s) if !s.zombie && has_env_entry(pid, entry.as_bytes()) => {
                    if s.pgrp == pid {
                        let _ = kill_group(pid, libc::SIGKILL);
                    }
                    let _ = crate::sys::kill(pid, libc::SIGKILL);
                    round.push(pid);
                }
                _ => {}
            }
        }
        if round.is_empty() {
            break;
        }
        killed += round.len();
        let deadline = tokio::time::Instant::now() + LEAVER_DEATH;
        let mut delay = std::time::Duration::from_micros(200);
        round.retain(|pid| !matches!(crate::sys::reap(*pid), Ok(true) | Err(_)));
        while !round.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_millis(20));
            round.retain(|pid| !matches!(crate::sys::reap(*pid), Ok(true) | Err(_)));
        }
    }
    killed
}

/// Reaps the adopted zombies among the daemon's children: leavers that
/// ended on their own. Returns how many.
pub(crate) fn reap_adopted() -> usize {
    children(true)
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|s| s.zombie && adopted(*pid, s)))
        .filter(|pid| matches!(crate::sys::reap(*pid), Ok(true)))
        .count()
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
    fn commands_execve_would_refuse_are_found_before() {
        let env: Vec<(OsString, OsString)> = vec![("HOME".into(), "/home/ada".into())];
        assert_eq!(check_exec(&["true", "x"], &env), Ok(()));
        let max = crate::sys::arg_max();
        let many = vec!["a"; max / 8];
        assert!(matches!(check_exec(&many, &env), Err(ExecTooLarge::Total { .. })));
        let long = "y".repeat(max + 1);
        assert!(check_exec(&["echo", long.as_str()], &env).is_err());
        #[cfg(target_os = "linux")]
        {
            let long = "z".repeat(32 * crate::sys::page_size());
            let err = check_exec(&["echo", long.as_str()], &env).unwrap_err();
            assert!(matches!(&err, ExecTooLarge::String { what, .. } if what == "argv[1]"), "{err}");
            // The kernel agrees: exec refuses it with E2BIG, as it refuses the
            // next size up of a command that the check passed.
            let refused = std::process::Command::new("true").arg(&long).status().unwrap_err();
            assert_eq!(refused.raw_os_error(), Some(libc::E2BIG));
            let fits = "z".repeat(32 * crate::sys::page_size() - 1);
            assert_eq!(check_exec(&["true", fits.as_str()], &env), Ok(()));
            assert!(std::process::Command::new("true").arg(&fits).status().unwrap().success());
        }
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
