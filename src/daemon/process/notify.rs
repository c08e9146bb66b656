//! The notify socket of a process with a `notify` check: a datagram socket
//! `<state-dir>/processes/<name>/notify`, named to the process by
//! `NOTIFY_SOCKET`, that speaks systemd's `sd_notify` protocol, so that a
//! program written for `Type=notify` works unchanged: `READY=1` makes it
//! ready, `WATCHDOG=1` keeps it alive, `STATUS=…` shows in its status.
//! Other assignments (`MAINPID=`, `ERRNO=`, …) are ignored.
//!
//! The socket sits in the process's private directory, so only the user's
//! own processes can reach it; messages count for the instance running at
//! the time (a new instance starts only once the previous one's whole
//! process group is gone).

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use super::ProcessService;
use super::state::Notification;

/// The largest message read; longer ones are cut (`sd_notify` messages are short).
const MAX_MESSAGE: usize = 4096;
/// The longest `STATUS=` kept.
const MAX_STATUS: usize = 512;

/// Binds the socket at `path`, replacing what a previous daemon left there.
pub(crate) fn bind(path: &Path) -> io::Result<UnixDatagram> {
    use std::os::unix::ffi::OsStrExt;
    let max = crate::sys::max_socket_path_len();
    if path.as_os_str().as_bytes().len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the notify socket path {} is longer than the {max} bytes a socket path may have; use a shorter \
                 state directory",
                path.display()
            ),
        ));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let socket = crate::sys::with_umask(0o077, || std::os::unix::net::UnixDatagram::bind(path))?;
    socket.set_nonblocking(true)?;
    UnixDatagram::from_std(socket)
}

/// What one datagram says.
pub(crate) fn parse(message: &[u8]) -> Notification {
    let mut note = Notification::default();
    for line in String::from_utf8_lossy(message).lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => note.ready = true,
            Some(("WATCHDOG", "1")) => note.watchdog = true,
            Some(("STATUS", status)) => note.status = Some(status.chars().take(MAX_STATUS).collect()),
            _ => {}
        }
    }
    note
}

/// Receives the process `name`'s messages until `cancel`.
pub(crate) async fn receive(
    socket: UnixDatagram,
    name: String,
    service: Arc<ProcessService>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => return,
            received = socket.recv(&mut buf) => received,
        };
        match received {
            Ok(n) => {
                let note = parse(&buf[..n]);
                if note != Notification::default() {
                    service.notified(&name, note);
                }
            }
            Err(e) => {
                tracing::warn!(process = %name, "the notify socket failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let note = parse(b"READY=1\nSTATUS=serving 3 clients\nMAINPID=4");
        assert!(note.ready && !note.watchdog);
        assert_eq!(note.status.as_deref(), Some("serving 3 clients"));
        assert_eq!(parse(b"WATCHDOG=1"), Notification { watchdog: true, ..Notification::default() });
        assert_eq!(parse(b"READY=0\nWATCHDOG=trigger"), Notification::default());
        let long = format!("STATUS={}", "x".repeat(2000));
        assert_eq!(parse(long.as_bytes()).status.unwrap().len(), MAX_STATUS);
    }

    #[tokio::test]
    async fn a_bound_socket_receives_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        drop(bind(&path).unwrap());
        let socket = bind(&path).unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1", &path).unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).await.unwrap();
        assert!(parse(&buf[..n]).ready);
        let long = dir.path().join("x".repeat(200));
        assert_eq!(bind(&long).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
