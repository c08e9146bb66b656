//! Talking to the service manager (systemd `Type=notify`): `READY=1` once
//! the daemon serves, `STATUS=` lines, `WATCHDOG=1` while it makes progress,
//! `EXTEND_TIMEOUT_USEC=` during long start-up work, `STOPPING=1`, and a
//! `BARRIER=1` before exit so the manager has read everything.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op. The variables are kept in
//! the daemon's environment and removed from every child's (`daemon::child`).

use std::io;
use std::os::fd::AsFd;
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
        let (read, write) = crate::sys::pipe()?;
        sd_notify::notify_with_fds(&[NotifyState::Custom("BARRIER=1")], &[write.as_fd()])?;
        drop(write);
        match crate::sys::poll(read.as_fd(), 0, timeout)? {
            events if events & libc::POLLHUP != 0 => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::TimedOut, "the service manager did not answer BARRIER=1")),
        }
    }
}
