//! The small system calls hearth makes, each wrapped once with its SAFETY
//! note, so that the rest of the crate stays safe code.
//!
//! Only the code that starts processes keeps its own `unsafe`: the queue's
//! clone (`daemon/queue/vfork.rs`), the `pre_exec` hooks of `daemon/child.rs`
//! (the open-file limit, the gate), and the fork of `hearthd --detach`
//! (`daemon/lifecycle/detach.rs`). What runs between fork and exec has rules
//! of its own and reads best next to the spawn it belongs to.
#![expect(unsafe_code, reason = "this module is where the crate's system calls live")]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Turns a `-1`-style return into the thread's `errno`.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// A pid as the kernel takes it; `None` for 0, negative or out-of-range
/// values, which would address a process group or every process.
fn pid_t(pid: u32) -> Option<libc::pid_t> {
    libc::pid_t::try_from(pid).ok().filter(|p| *p > 0)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The real uid of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// This process's process group.
pub fn process_group() -> u32 {
    // SAFETY: getpgrp has no preconditions and cannot fail.
    unsafe { libc::getpgrp() as u32 }
}

/// Makes the calling process the leader of a new session (and process
/// group), without a controlling terminal.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Sends `signal` to the process `pid`. Pids that would address a group or
/// every process (0, negative after conversion) are refused.
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = pid_t(pid).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Sends `signal` to every process of the group `pgid`; groups 0 and 1 are refused.
pub fn killpg(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = pid_t(pgid)
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal process group 0 or 1"))?;
    // SAFETY: killpg has no memory-safety preconditions.
    check(unsafe { libc::killpg(pgid, signal) }).map(drop)
}

/// Whether a signal could be sent to `pid` (it exists, maybe as a zombie,
/// maybe as another user's process).
pub fn process_exists(pid: u32) -> bool {
    match kill(pid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// Whether any process of the group `pgid` exists.
pub fn group_exists(pgid: u32) -> bool {
    match killpg(pgid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// A pipe whose two ends are close-on-exec from the start.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    // SAFETY: pipe2 writes two descriptors into the array we own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    // SAFETY: pipe writes two descriptors into the array we own.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    // SAFETY: both descriptors were just created and nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    for fd in [&read, &write] {
        set_cloexec(fd.as_raw_fd())?;
    }
    Ok((read, write))
}

/// Marks the descriptor number `fd` close-on-exec. It may belong to no
/// Rust object (a descriptor inherited from whoever started the process);
/// one that is not open fails with `EBADF` and nothing else happens.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD and F_SETFD only read and change the descriptor's
    // flags; they touch no memory and never close anything.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFD))?;
        if flags & libc::FD_CLOEXEC == 0 {
            check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
        }
    }
    Ok(())
}

/// Waits up to `timeout` for any of `events` on `fd`; returns the events
/// that occurred (empty on timeout). An interrupted wait counts as a timeout.
pub fn poll(fd: BorrowedFd<'_>, events: libc::c_short, timeout: Duration) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, owned by this frame, for the length we pass.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n > 0 => Ok(pfd.revents),
        0 => Ok(0),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) }
        }
    }
}

/// Makes the standard descriptor `target` (0, 1 or 2) a duplicate of `fd`.
pub fn redirect_stdio(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if !(0..=2).contains(&target) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "only stdin, stdout and stderr are redirected"));
    }
    // SAFETY: dup2 onto a standard descriptor from one we borrow; the
    // standard descriptors belong to the process, not to a Rust object.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// Runs `f` with the process file-creation mask set to `mask`.
///
/// The mask is process-wide: files other threads create meanwhile get it
/// too, which is why callers only ever tighten it, for one call.
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process file-creation mask.
    let old = unsafe { libc::umask(mask) };
    let result = f();
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    result
}

/// Bytes available to this user on the filesystem holding `path`.
pub fn free_space(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a struct we own for the call to fill.
    check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    #[allow(clippy::unnecessary_cast, reason = "the field types differ between platforms (so not `expect`)")]
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The open-file limit: (soft, hard).
pub fn nofile_limit() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) })?;
    Ok((rl.rlim_cur, rl.rlim_max))
}

/// Sets the open-file limit.
pub fn set_nofile_limit(soft: libc::rlim_t, hard: libc::rlim_t) -> io::Result<()> {
    let rl = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit reads the struct we own.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) }).map(drop)
}

/// An integer socket option of the descriptor number `fd`.
pub fn socket_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which we own.
    check(unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) })?;
    Ok(value)
}

/// The pid of the process at the other end of a connected Unix socket, as
/// the kernel recorded it (`SO_PEERCRED`; for a client, the process that
/// called `listen`). `None` where the platform does not say, or for a peer
/// of another pid namespace.
#[cfg(target_os = "linux")]
pub fn peer_pid(socket: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    // SAFETY: ucred is plain old data; an all-zero value is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    check(unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
    })?;
    Ok(u32::try_from(cred.pid).ok().filter(|pid| *pid > 0))
}

/// The pid of the process at the other end of a connected Unix socket:
/// not said on this platform.
#[cfg(not(target_os = "linux"))]
pub fn peer_pid(_socket: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    Ok(None)
}

/// Takes ownership of a listening socket the service manager passed as
/// descriptor `fd` (`LISTEN_FDS`). The caller checks (with
/// [`socket_option`]) that it is a stream socket; this checks that the
/// descriptor is open, and must be called once per passed descriptor.
pub fn adopt_passed_listener(fd: RawFd) -> io::Result<std::os::unix::net::UnixListener> {
    set_cloexec(fd)?;
    // SAFETY: the descriptor is open (set_cloexec succeeded) and was passed
    // to this process to own: no Rust object holds it yet.
    Ok(unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) })
}

/// Starts writing back the dirty pages of a byte range of `file`, without
/// waiting: a later fsync then has less to do at once.
#[cfg(target_os = "linux")]
pub fn start_writeback(file: BorrowedFd<'_>, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else { return };
    // SAFETY: sync_file_range only reads its arguments; the descriptor is borrowed and open.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Shuts a socket down in both directions without closing it, so that a
/// task blocked on it wakes up.
pub fn shutdown_socket(socket: BorrowedFd<'_>) {
    // SAFETY: shutdown on a borrowed, open descriptor neither closes nor frees it.
    unsafe {
        libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Peeks at most one byte of a socket without waiting: `Ok(0)` means the
/// peer closed its end, `Ok(1)` that data waits, `WouldBlock` that neither.
pub fn peek_byte(socket: BorrowedFd<'_>) -> io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local buffer; MSG_PEEK leaves the data where it is.
    let n = unsafe { libc::recv(socket.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Clock ticks per second, the unit of process start times in `/proc`.
pub fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0)
}

/// The length of the longest socket path `sockaddr_un` holds.
pub fn max_socket_path_len() -> usize {
    // SAFETY: sockaddr_un is plain old data; an all-zero value is valid.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

/// A user's name and primary group, from the password database.
pub fn user_entry(uid: u32) -> Option<(CString, u32)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data, for which all zeroes is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r fills `pw` with pointers into `buf`, both ours and
    // alive until the name is copied out below.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string in `buf`.
    let name = unsafe { CStr::from_ptr(pw.pw_name) }.to_owned();
    Some((name, pw.pw_gid))
}

/// A group's name and listed members, from the group database.
pub fn group_entry(gid: u32) -> Option<(CString, Vec<CString>)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: group is plain data, for which all zeroes is a valid value.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrgid_r fills `gr` with pointers into `buf`, both ours and
    // alive until everything is copied out below.
    let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success gr_name is a NUL-terminated string and gr_mem a
    // NULL-terminated array of them, all in `buf`.
    unsafe {
        let name = CStr::from_ptr(gr.gr_name).to_owned();
        let mut members = Vec::new();
        let mut member = gr.gr_mem;
        while !member.is_null() && !(*member).is_null() {
            members.push(CStr::from_ptr(*member).to_owned());
            member = member.add(1);
        }
        Some((name, members))
    }
}

/// Signals blocked in the calling thread until [`BlockedSignals::restore`].
pub struct BlockedSignals {
    old: libc::sigset_t,
}

impl std::fmt::Debug for BlockedSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockedSignals")
    }
}

impl BlockedSignals {
    /// Blocks `signals` in the calling thread (threads it starts inherit the mask).
    #[must_use]
    pub fn block(signals: &[libc::c_int]) -> Self {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before
        // use, and pthread_sigmask only changes this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Self { old }
        }
    }

    /// Restores the mask from before: a signal that arrived meanwhile is delivered now.
    pub fn restore(self) {
        // SAFETY: `old` is the mask pthread_sigmask returned in `block`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn signals_and_pids() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0), "pid 0 addresses a group");
        assert!(!process_exists(u32::MAX));
        assert!(kill(0, 0).is_err() && killpg(1, 0).is_err());
        assert!(group_exists(process_group()));
    }

    #[test]
    fn pipes_are_close_on_exec() {
        let (r, w) = pipe().unwrap();
        for fd in [r.as_raw_fd(), w.as_raw_fd()] {
            set_cloexec(fd).unwrap();
        }
        assert!(set_cloexec(-1).is_err());
        let revents = poll(r.as_fd(), libc::POLLIN, Duration::ZERO).unwrap();
        assert_eq!(revents, 0, "nothing written yet");
        drop(w);
        let revents = poll(r.as_fd(), libc::POLLIN, Duration::from_secs(5)).unwrap();
        assert_ne!(revents & libc::POLLHUP, 0, "the write end closed");
    }

    #[test]
    fn user_and_group_databases() {
        if let Some((_, gid)) = user_entry(euid()) {
            assert!(group_entry(gid).is_some() || gid != 0);
        }
        assert!(max_socket_path_len() >= 100);
        assert!(free_space(std::path::Path::new("/")).is_ok());
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard);
    }
}
