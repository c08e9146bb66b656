//! Talking to the service manager (systemd `Type=notify`): `READY=1` once
//! the daemon serves, `STATUS=` lines, `WATCHDOG=1` while it makes progress,
//! `EXTEND_TIMEOUT_USEC=` during long start-up work, `STOPPING=1`, and a
//! `BARRIER=1` before exit so the manager has read everything.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op. The variables are kept in
//! the daemon's environment and removed from every child's (`daemon::child`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use sd_notify::NotifyState;

/// The service manager's notification channel, if there is one.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty());
        let watchdog = if enabled { sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) } else { None };
        Notifier { enabled, watchdog }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { enabled: false, watchdog: None }
    }

    /// The watchdog timeout the manager set, if any; ping at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("sd_notify failed: {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=<line>`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog_ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// `EXTEND_TIMEOUT_USEC=`: more time for start-up (or shutdown) work.
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `BARRIER=1`: sends a pipe's write end and waits (up to `timeout`) until
    /// the manager has closed it, i.e. has processed every earlier message.
    pub fn barrier(&self, timeout: Duration) -> io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let (read, write) = pipe()?;
        sd_notify::notify_with_fds(&[NotifyState::Custom("BARRIER=1")], &[write.as_fd()])?;
        drop(write);
        let mut pfd = libc::pollfd { fd: read.as_raw_fd(), events: 0, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd owned by this frame.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match rc {
            1 if pfd.revents & libc::POLLHUP != 0 => Ok(()),
            0 => Err(io::Error::new(io::ErrorKind::TimedOut, "the service manager did not answer BARRIER=1")),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

#[allow(unsafe_code)]
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and are ours alone.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&r, &w] {
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((r, w))
}
