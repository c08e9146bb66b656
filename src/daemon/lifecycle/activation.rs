//! Socket activation: serving on a listening socket the service manager
//! passed (`LISTEN_FDS`), instead of binding one.

use std::os::unix::net::UnixListener;

use super::StartupError;

/// The listening socket passed by the service manager, when `LISTEN_PID`
/// names this process (otherwise the variables are someone else's and are
/// ignored). It must be a listening Unix stream socket with a path.
pub fn activated_listener() -> Result<Option<UnixListener>, StartupError> {
    let mut fds = sd_notify::listen_fds().map_err(|e| StartupError::Activation(e.to_string()))?;
    let Some(fd) = fds.next() else { return Ok(None) };
    if fds.len() > 0 {
        tracing::warn!("socket activation passed {} sockets; serving only the first", fds.len() + 1);
    }
    let int_opt = |level, name| crate::sys::socket_option(fd, level, name);
    let bad = |what: String| StartupError::Activation(format!("descriptor {fd} {what}"));
    match int_opt(libc::SOL_SOCKET, libc::SO_TYPE) {
        Ok(t) if t == libc::SOCK_STREAM => {}
        Ok(_) => return Err(bad("is not a stream socket; use ListenStream= in the socket unit".into())),
        Err(e) => return Err(bad(format!("is not a socket: {e}"))),
    }
    #[cfg(target_os = "linux")]
    if int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(|e| bad(e.to_string()))? == 0 {
        return Err(bad("is not listening".into()));
    }
    let listener = crate::sys::adopt_passed_listener(fd).map_err(|e| bad(e.to_string()))?;
    match listener.local_addr() {
        Ok(addr) if addr.as_pathname().is_some() => Ok(Some(listener)),
        Ok(_) => Err(bad("is not a Unix socket with a path".into())),
        Err(e) => Err(bad(format!("is not a Unix socket: {e}"))),
    }
}
