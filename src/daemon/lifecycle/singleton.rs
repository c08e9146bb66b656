//! One daemon per state directory.
//!
//! The order is the guarantee: check the state directory (and every
//! directory on the way to it and to the socket), take `daemon.lock`, and
//! only then touch the socket. Whoever holds the lock may remove a stale
//! socket and bind; whoever fails to get it reads the holder's pid from the
//! lock file and leaves without touching anything.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use fd_lock::RwLock;

use super::StartupError;
use super::permissions::{check_socket_dir, prepare_state_dir};
use crate::daemon::fsutil;
use crate::paths::Paths;
use crate::protocol::info::DaemonInfo;

/// A held singleton lock, and the files the holder owns.
#[derive(Debug)]
pub struct Instance {
    paths: Paths,
    lock: Option<RwLock<File>>,
    /// Device and inode of the socket this instance bound, so that release
    /// never removes a socket someone else put there.
    socket_id: Option<(u64, u64)>,
    info_written: bool,
}

impl Instance {
    /// Prepares the state directory and takes the lock, without touching the
    /// socket. The lock file (0600, close-on-exec) then contains this pid.
    /// Descriptors inherited from the parent are made close-on-exec first.
    pub fn acquire(paths: Paths) -> Result<Instance, StartupError> {
        if let Err(e) = fsutil::cloexec_inherited_fds() {
            tracing::warn!("cannot mark inherited descriptors close-on-exec: {e}");
        }
        prepare_state_dir(paths.state_dir())?;
        let lock_path = paths.lock_file();
        let lock_err = |source| StartupError::Lock { path: lock_path.clone(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(lock_err)?;
        let mut lock = RwLock::new(file);
        // A checker (`hearth daemon status`) may hold a shared lock for a
        // moment; a starting daemon writes its pid right after locking. So an
        // unreadable pid means "in flux": retry briefly before giving up.
        let started = Instant::now();
        loop {
            match lock.try_write() {
                Ok(mut guard) => {
                    let write_pid = |file: &mut File| -> io::Result<()> {
                        file.set_len(0)?;
                        file.rewind()?;
                        writeln!(file, "{}", std::process::id())
                    };
                    write_pid(&mut guard).map_err(lock_err)?;
                    // Keep the lock for as long as the file stays open: it is
                    // released when `lock` is dropped and the descriptor closes.
                    std::mem::forget(guard);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let pid = read_lock_pid(&lock_path);
                    let in_flux = pid.is_none_or(|pid| !fsutil::pid_alive(pid));
                    if !in_flux || started.elapsed() > Duration::from_millis(250) {
                        return Err(StartupError::AlreadyRunning { pid });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(lock_err(e)),
            }
        }
        Ok(Instance { paths, lock: Some(lock), socket_id: None, info_written: false })
    }

    /// The paths this instance owns.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Binds the socket with mode 0600 from the start, replacing a stale
    /// socket. Refuses a path that is not a socket, a socket another daemon
    /// is serving, and a directory on the way that another user could
    /// change ([`check_socket_dir`]).
    ///
    /// The process umask is changed around `bind`; call this before starting
    /// other threads (as `hearthd` does).
    pub fn bind(&mut self) -> Result<UnixListener, StartupError> {
        let path = self.paths.socket().to_owned();
        self.paths.check_socket_len().map_err(StartupError::SocketPathTooLong)?;
        check_socket_dir(&path)?;
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            fsutil::create_private_dir(parent).map_err(|source| StartupError::Bind { path: path.clone(), source })?;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if let Ok(stream) = UnixStream::connect(&path) {
                    let what = match self.daemon_of_this_state_dir(&stream) {
                        Some(pid) => format!(
                            "the daemon of this state directory (pid {pid}) is listening on it: daemon.lock was \
                             deleted or replaced while it ran, so the lock could not keep this start out; stop \
                             that daemon (`hearth shutdown`, or kill {pid}) and start again"
                        ),
                        None => "a daemon of another state directory is listening on it".into(),
                    };
                    return Err(StartupError::SocketPathOccupied { path, what });
                }
                tracing::info!(socket = %path.display(), "removing stale socket");
                std::fs::remove_file(&path).map_err(|source| StartupError::Bind { path: path.clone(), source })?;
            }
            Ok(meta) => {
                let what = if meta.file_type().is_symlink() {
                    "it is a symbolic link, not a socket"
                } else if meta.is_dir() {
                    "it is a directory, not a socket"
                } else {
                    "it is a file, not a socket"
                };
                return Err(StartupError::SocketPathOccupied { path, what: what.into() });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StartupError::Bind { path, source }),
        }
        let listener = bind_private(&path).map_err(|source| StartupError::Bind { path: path.clone(), source })?;
        let meta =
            std::fs::symlink_metadata(&path).map_err(|source| StartupError::Bind { path: path.clone(), source })?;
        self.socket_id = Some((meta.dev(), meta.ino()));
        Ok(listener)
    }

    /// The daemon listening on `stream`'s socket, if it is the one
    /// `daemon.json` of this state directory describes: the listener's pid
    /// (where the kernel says) is the pid there, and that process runs.
    fn daemon_of_this_state_dir(&self, stream: &UnixStream) -> Option<u32> {
        let info: DaemonInfo =
            serde_json::from_slice(&fsutil::read_small(&self.paths.info_file(), 64 * 1024).ok()?).ok()?;
        let listener = crate::sys::peer_pid(std::os::fd::AsFd::as_fd(stream)).ok().flatten();
        let same = info.socket == self.paths.socket()
            && info.pid != std::process::id()
            && listener.is_none_or(|pid| pid == info.pid)
            && fsutil::pid_alive(info.pid);
        same.then_some(info.pid)
    }

    /// The device and inode of the socket this instance bound (`None` for
    /// an adopted one, or before `bind`): while the daemon runs, the socket
    /// path must keep leading to it.
    pub fn bound_socket(&self) -> Option<(u64, u64)> {
        self.socket_id
    }

    /// Serves on a socket the service manager passed (socket activation)
    /// instead of binding one. The socket belongs to the manager: it is
    /// never removed, and the paths follow its real address.
    pub fn adopt(&mut self, listener: UnixListener) -> Result<UnixListener, StartupError> {
        let addr = listener.local_addr().map_err(|e| StartupError::Activation(e.to_string()))?;
        let path = addr
            .as_pathname()
            .ok_or_else(|| StartupError::Activation("the socket has no filesystem path".into()))?
            .to_owned();
        if path != self.paths.socket() {
            tracing::info!(
                socket = %path.display(),
                configured = %self.paths.socket().display(),
                "serving on the socket the service manager passed"
            );
        }
        self.paths = self.paths.clone().with_socket(path);
        self.socket_id = None;
        Ok(listener)
    }

    /// Writes `daemon.json` atomically (0600).
    pub fn publish(&mut self, info: &DaemonInfo) -> Result<(), StartupError> {
        let path = self.paths.info_file();
        let mut json = serde_json::to_vec_pretty(info)
            .map_err(|e| StartupError::InfoFile { path: path.clone(), source: io::Error::other(e) })?;
        json.push(b'\n');
        // Not fsynced: after a crash the file is stale anyway, and readers
        // tolerate a missing or damaged one.
        fsutil::write_atomic(&path, &json, 0o600, false).map_err(|source| StartupError::InfoFile { path, source })?;
        self.info_written = true;
        Ok(())
    }

    /// Removes the socket (if it is still the one bound here) and the info
    /// file, clears the pid from the lock file, and releases the lock.
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if let Some((dev, ino)) = self.socket_id.take() {
            let path = self.paths.socket();
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
                && let Err(e) = std::fs::remove_file(path)
            {
                tracing::warn!(socket = %path.display(), "cannot remove socket: {e}");
            }
        }
        if std::mem::take(&mut self.info_written) {
            let _ = std::fs::remove_file(self.paths.info_file());
        }
        if let Some(lock) = self.lock.take() {
            // Clear the pid first, so that nobody reads it as a live holder.
            let _ = lock.into_inner().set_len(0);
        }
    }
}

impl Drop for Instance {
    /// An instance dropped on an error path still cleans up what it made.
    fn drop(&mut self) {
        self.release_inner();
    }
}

/// Binds a listening socket that is never visible with bits looser than 0600.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let listener = crate::sys::with_umask(0o177, || UnixListener::bind(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The pid recorded in a lock file, if any.
pub fn read_lock_pid(lock_file: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(lock_file).ok()?.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Who holds a state directory's lock, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// No daemon holds it (or the lock file does not exist).
    Free,
    /// A daemon holds it.
    Held {
        /// The holder's pid, when the lock file names it.
        pid: Option<u32>,
    },
}

/// Checks the lock without taking it for more than an instant (a shared,
/// non-blocking attempt that is released at once).
pub fn probe_lock(paths: &Paths) -> io::Result<LockState> {
    let path = paths.lock_file();
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockState::Free),
        Err(e) => return Err(e),
    };
    let lock = RwLock::new(file);
    match lock.try_read() {
        Ok(_guard) => Ok(LockState::Free),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(LockState::Held { pid: read_lock_pid(&path) }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::info::LaunchCode;

    #[test]
    fn second_instance_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("state"));
        let first = Instance::acquire(paths.clone()).unwrap();
        assert_eq!(probe_lock(&paths).unwrap(), LockState::Held { pid: Some(std::process::id()) });
        match Instance::acquire(paths.clone()) {
            Err(StartupError::AlreadyRunning { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        first.release();
        assert_eq!(probe_lock(&paths).unwrap(), LockState::Free);
        Instance::acquire(paths).unwrap().release();
    }

    #[test]
    fn bind_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("state"));
        let mut inst = Instance::acquire(paths.clone()).unwrap();
        let listener = inst.bind().unwrap();
        let mode = std::fs::metadata(paths.socket()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(listener);
        // The socket file is now stale: a new bind replaces it.
        let listener = inst.bind().unwrap();
        // A live socket of someone else is refused.
        let err = inst.bind().unwrap_err();
        assert_eq!(err.code(), LaunchCode::SocketPathOccupied);
        drop(listener);
        inst.release();
        assert!(!paths.socket().exists());

        // A regular file at the socket path is never removed.
        let mut inst = Instance::acquire(paths.clone()).unwrap();
        std::fs::write(paths.socket(), "precious").unwrap();
        assert_eq!(inst.bind().unwrap_err().code(), LaunchCode::SocketPathOccupied);
        inst.release();
        assert_eq!(std::fs::read(paths.socket()).unwrap(), b"precious");
    }
}
