//! Who owns a state directory, proven before anything is signalled.
//!
//! `hearth daemon stop` escalates to SIGTERM and SIGKILL for a daemon that
//! does not answer. The pid in `daemon.lock` alone is not enough to aim
//! those at: the file is only text, a pid can be reused, and a state
//! directory shared between pid namespaces (a container with the home
//! directory mounted) or hosts (an NFS home) holds pids that mean another
//! process here. So a pid is signalled only once all of these agree:
//!
//! 1. the kernel shows it holding `daemon.lock`'s lock (Linux `/proc/locks`,
//!    which names the holder in this pid namespace);
//! 2. `daemon.lock` names the same pid;
//! 3. its executable is `hearthd`;
//! 4. `daemon.json` names the same pid and this state directory, and the
//!    process did not start after the `started_at` recorded there (a
//!    process that started later is a reused pid);
//!
//! and right before each signal its start time is read again and must be
//! the one seen when it was checked. Anything else is a doubt, reported as
//! a [`NotOwner`] that says what disagreed; nothing is signalled then.
//!
//! Without `/proc` (macOS), 1 and 3 cannot be read: the lock file's pid
//! must be alive and agree with `daemon.json` (2 and 4, without the start
//! time).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::singleton::read_lock_pid;
use crate::daemon::child::process_start_time;
use crate::paths::Paths;
use crate::protocol::info::DaemonInfo;

/// The name of the daemon's executable.
const DAEMON_EXE: &str = "hearthd";

/// Slack for comparing a process's start (known to about a second, from
/// the boot time and clock ticks) with the `started_at` it recorded.
const START_SLACK_MS: u64 = 2_000;

/// A process proven to be the hearthd that owns a state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pid: u32,
    /// When it started, in clock ticks since boot (Linux; `None` elsewhere).
    start_time: Option<u64>,
}

/// Why a process cannot be taken for the owner of a state directory.
#[derive(Debug, thiserror::Error)]
pub enum NotOwner {
    /// No process of this pid namespace holds the lock, though it is held.
    #[error("no process visible here holds {lock:?} (a daemon in another container or on another host may hold it)")]
    HolderNotVisible {
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file names another pid than the lock's holder.
    #[error("daemon.lock names {}, but the process holding the lock is pid {holder}", named.map_or_else(|| "no pid".to_owned(), |p| format!("pid {p}")))]
    LockFileDisagrees {
        /// The pid in the lock file, if any.
        named: Option<u32>,
        /// The holder the kernel shows.
        holder: u32,
    },
    /// The holder is not a hearthd.
    #[error("pid {pid} holds the lock but is not a hearthd (its executable is {exe:?})")]
    NotHearthd {
        /// The holder.
        pid: u32,
        /// What it runs.
        exe: PathBuf,
    },
    /// `daemon.json` is missing or unreadable.
    #[error("daemon.json cannot be read ({reason}), so pid {pid} cannot be checked against it")]
    NoInfo {
        /// The process that would have been signalled.
        pid: u32,
        /// Why it cannot be read.
        reason: String,
    },
    /// `daemon.json` names another pid.
    #[error("daemon.json names pid {named}, not pid {pid}, which holds the lock")]
    InfoDisagrees {
        /// The holder.
        pid: u32,
        /// The pid in `daemon.json`.
        named: u32,
    },
    /// `daemon.json` was written for another state directory.
    #[error("daemon.json names the state directory {named:?}, not this one")]
    OtherStateDir {
        /// What it names.
        named: PathBuf,
    },
    /// The process started after the daemon recorded its start: the pid was reused.
    #[error(
        "pid {pid} started after the daemon that daemon.json describes (started_at {started_at}): the pid was reused"
    )]
    StartedLater {
        /// The process.
        pid: u32,
        /// What `daemon.json` records.
        started_at: String,
    },
    /// The process is gone.
    #[error("pid {pid} no longer exists")]
    Gone {
        /// The process.
        pid: u32,
    },
    /// Something that must be read to decide could not be.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Why.
        source: io::Error,
    },
}

impl Owner {
    /// The owner's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` if the process is still the one that was checked (the
    /// same start time). Returns `false`, sending nothing, when it is gone
    /// or its pid now belongs to another process.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<bool> {
        if self.start_time.is_some_and(|expected| process_start_time(self.pid) != Some(expected)) {
            return Ok(false);
        }
        match crate::sys::kill(self.pid, signal) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Proves that the process holding `paths`' lock is the hearthd that owns
/// it (see the module docs), or says what disagrees. Call it only while the
/// lock is held.
pub fn verify_owner(paths: &Paths) -> Result<Owner, NotOwner> {
    let lock = paths.lock_file();
    let named = read_lock_pid(&lock);
    let pid = match lock_holder(&lock) {
        Ok(Some(holder)) => {
            if named != Some(holder) {
                return Err(NotOwner::LockFileDisagrees { named, holder });
            }
            check_executable(holder)?;
            holder
        }
        Ok(None) => return Err(NotOwner::HolderNotVisible { lock }),
        // No /proc/locks: the lock file's pid is all there is.
        Err(e) if e.kind() == io::ErrorKind::Unsupported => match named {
            Some(pid) if crate::daemon::fsutil::pid_alive(pid) => pid,
            Some(pid) => return Err(NotOwner::Gone { pid }),
            None => return Err(NotOwner::HolderNotVisible { lock }),
        },
        Err(source) => return Err(NotOwner::Io { what: "/proc/locks".into(), source }),
    };
    let start_time = process_start_time(pid).ok_or(NotOwner::Gone { pid })?;
    check_info(paths, pid)?;
    Ok(Owner { pid, start_time: cfg!(target_os = "linux").then_some(start_time) })
}

fn check_executable(pid: u32) -> Result<(), NotOwner> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|source| NotOwner::Io { what: format!("the executable of pid {pid}"), source })?;
    // A binary replaced by an upgrade while it runs reads as "… (deleted)".
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.strip_suffix(" (deleted)").unwrap_or(&name) != DAEMON_EXE {
        return Err(NotOwner::NotHearthd { pid, exe });
    }
    Ok(())
}

fn check_info(paths: &Paths, pid: u32) -> Result<(), NotOwner> {
    let info: DaemonInfo = std::fs::read(paths.info_file())
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        .map_err(|reason| NotOwner::NoInfo { pid, reason })?;
    if info.pid != pid {
        return Err(NotOwner::InfoDisagrees { pid, named: info.pid });
    }
    if !same_dir(&info.state_dir, paths.state_dir()) {
        return Err(NotOwner::OtherStateDir { named: info.state_dir });
    }
    let recorded = crate::time::parse_rfc3339_utc(&info.started_at);
    if let (Some(started), Some(recorded)) = (process_started_at_ms(pid), recorded)
        && started > recorded + START_SLACK_MS
    {
        return Err(NotOwner::StartedLater { pid, started_at: info.started_at });
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// When `pid` started, in milliseconds since the epoch (Linux: the boot
/// time plus its start in clock ticks), to about a second.
fn process_started_at_ms(pid: u32) -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let ticks = process_start_time(pid)?;
    let hz = crate::sys::clock_ticks_per_second()?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot_s: u64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(boot_s * 1000 + ticks * 1000 / hz)
}

/// The pid the kernel shows holding an exclusive `flock` on `lock_file`, in
/// this pid namespace: `None` when it shows none (not held, or held by a
/// process this namespace cannot see, shown as pid 0). Errors with
/// [`io::ErrorKind::Unsupported`] where there is no `/proc/locks`.
pub fn lock_holder(lock_file: &Path) -> io::Result<Option<u32>> {
    if !cfg!(target_os = "linux") {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    let meta = std::fs::symlink_metadata(lock_file)?;
    let text = std::fs::read_to_string("/proc/locks")?;
    Ok(holder_in(&text, meta.dev(), meta.ino()))
}

/// Parses `/proc/locks`: lines such as
/// `1: FLOCK  ADVISORY  WRITE 15261 fe:00:5767213 0 EOF`, where the device
/// is `major:minor` in hex; a blocked waiter's line has `->` after the
/// number and is skipped. The device the kernel prints is the filesystem's,
/// which on some (btrfs subvolumes, overlays) is not the `st_dev` of
/// `stat`: then a single holder of that inode number is taken.
fn holder_in(text: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (u64::from(major(dev)), u64::from(minor(dev)));
    let mut exact = None;
    let mut by_inode = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, kind, _, mode, pid, file, ..] = fields.as_slice() else { continue };
        if *kind != "FLOCK" || *mode != "WRITE" {
            continue;
        }
        let mut parts = file.split(':');
        let (Some(maj), Some(min), Some(inode), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if inode.parse::<u64>().ok() != Some(ino) {
            continue;
        }
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let same_dev =
            u64::from_str_radix(maj, 16).ok() == Some(major) && u64::from_str_radix(min, 16).ok() == Some(minor);
        if same_dev {
            exact = Some(pid);
        } else {
            by_inode.push(pid);
        }
    }
    let pid = match (exact, by_inode.as_slice()) {
        (Some(pid), _) => pid,
        (None, [only]) => *only,
        _ => return None,
    };
    (pid != 0).then_some(pid)
}

#[cfg(target_os = "linux")]
fn major(dev: u64) -> u32 {
    libc::major(dev)
}

#[cfg(target_os = "linux")]
fn minor(dev: u64) -> u32 {
    libc::minor(dev)
}

#[cfg(not(target_os = "linux"))]
fn major(dev: u64) -> u32 {
    ((dev >> 24) & 0xff) as u32
}

#[cfg(not(target_os = "linux"))]
fn minor(dev: u64) -> u32 {
    (dev & 0xff_ffff) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_are_read_exactly() {
        let dev = libc_dev(0xfe, 0x00);
        let text = "\
1: FLOCK  ADVISORY  WRITE 15261 fe:00:5767213 0 EOF
1: -> FLOCK  ADVISORY  WRITE 999 fe:00:5767213 0 EOF
2: FLOCK  ADVISORY  READ 15262 fe:00:10133507 0 EOF
3: POSIX  ADVISORY  WRITE 15263 fe:00:42 0 EOF
4: FLOCK  ADVISORY  WRITE 0 fe:00:77 0 EOF
";
        assert_eq!(holder_in(text, dev, 5_767_213), Some(15261), "the holder, not the waiter");
        assert_eq!(holder_in(text, dev, 10_133_507), None, "a shared lock is not a daemon's");
        assert_eq!(holder_in(text, dev, 42), None, "a POSIX lock is not a flock");
        assert_eq!(holder_in(text, dev, 77), None, "pid 0: a holder this namespace cannot see");
        assert_eq!(holder_in(text, dev, 1), None);
        // Another device number for the same inode (btrfs, overlays): taken when it is the only one.
        assert_eq!(holder_in(text, libc_dev(0x08, 0x01), 5_767_213), Some(15261));
        let two = "1: FLOCK  ADVISORY  WRITE 5 08:01:9 0 EOF\n2: FLOCK  ADVISORY  WRITE 6 08:02:9 0 EOF\n";
        assert_eq!(holder_in(two, libc_dev(0xfe, 0), 9), None, "ambiguous: nobody");
        assert_eq!(holder_in(two, libc_dev(0x08, 0x02), 9), Some(6));
    }

    #[cfg(target_os = "linux")]
    fn libc_dev(major: u32, minor: u32) -> u64 {
        libc::makedev(major, minor)
    }

    #[cfg(not(target_os = "linux"))]
    fn libc_dev(major: u32, minor: u32) -> u64 {
        (u64::from(major) << 24) | u64::from(minor)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_names_the_holder_of_a_daemons_lock() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("state"));
        let instance = super::super::singleton::Instance::acquire(paths.clone()).unwrap();
        assert_eq!(lock_holder(&paths.lock_file()).unwrap(), Some(std::process::id()));
        // This test binary holds the lock but is no hearthd: never taken for one.
        match verify_owner(&paths) {
            Err(NotOwner::NotHearthd { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected NotHearthd, got {other:?}"),
        }
        instance.release();
        assert_eq!(lock_holder(&paths.lock_file()).unwrap(), None);
    }
}
