//! Stop signals held back while the daemon starts.

/// SIGTERM, SIGINT and SIGHUP held back (blocked in the calling thread) from
/// before any thread starts until the daemon's handlers are in place, so a
/// stop asked for during start-up is a clean stop rather than the default
/// action killing a daemon that already shows its socket. Threads started
/// meanwhile inherit the mask, which leaves the calling thread to receive
/// these signals once [`HeldSignals::release`] unblocks them; child
/// processes start with an empty mask (`child::command` and the job
/// spawner reset it: std's spawn does not).
#[derive(Debug)]
pub struct HeldSignals(crate::sys::BlockedSignals);

impl HeldSignals {
    /// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread.
    #[must_use]
    pub fn hold() -> Self {
        Self(crate::sys::BlockedSignals::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]))
    }

    /// Restores the mask: a signal that arrived meanwhile is delivered now.
    pub fn release(self) {
        self.0.restore();
    }
}
