//! One daemon per state directory.
//!
//! The order is the guarantee: check the state directory, take `daemon.lock`,
//! and only then touch the socket. Whoever holds the lock may remove a stale
//! socket and bind; whoever fails to get it reads the holder's pid from the
//! lock file and leaves without touching anything.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fd_lock::RwLock;

use super::fsutil::{self, euid};
use crate::paths::{PathError, Paths};
use crate::protocol::info::DaemonInfo;

/// Why the daemon cannot start. Each variant has a stable [`code`](StartupError::code).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The state directory is owned by someone else or writable by others.
    #[error("refusing to use state directory {path:?}: {reason}")]
    StateDirInsecure {
        /// The directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The state directory cannot be created or used.
    #[error("cannot use state directory {path:?}: {source}")]
    StateDirUnusable {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another daemon holds the lock.
    #[error("{}", match pid {
        Some(pid) => format!("a daemon is already running for this state directory (pid {pid})"),
        None => "a daemon is already running for this state directory (pid unknown)".to_string(),
    })]
    AlreadyRunning {
        /// The holder's pid, when the lock file names it.
        pid: Option<u32>,
    },
    /// The lock file cannot be opened or locked.
    #[error("cannot take the lock {path:?}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket path does not fit `sockaddr_un`.
    #[error(transparent)]
    SocketPathTooLong(PathError),
    /// Something other than a stale socket is at the socket path.
    #[error("refusing to replace {path:?}: {what}")]
    SocketPathOccupied {
        /// The socket path.
        path: PathBuf,
        /// What is there.
        what: String,
    },
    /// Binding the socket failed.
    #[error("cannot bind {path:?}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `daemon.json` cannot be written.
    #[error("cannot write {path:?}: {source}")]
    InfoFile {
        /// The info file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// `LISTEN_FDS` passed something that is not a listening Unix stream socket.
    #[error("socket activation: {0}")]
    Activation(String),
    /// A service could not start.
    #[error("the {service} service cannot start: {message}")]
    Service {
        /// Which.
        service: &'static str,
        /// Why.
        message: String,
    },
    /// Anything else (the runtime, logging).
    #[error("{0}")]
    Other(String),
}

impl StartupError {
    /// A stable snake_case code for launch reports and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            StartupError::StateDirInsecure { .. } => "state_dir_insecure",
            StartupError::StateDirUnusable { .. } => "state_dir_unusable",
            StartupError::AlreadyRunning { .. } => "already_running",
            StartupError::Lock { .. } => "lock_failed",
            StartupError::SocketPathTooLong(_) => "socket_path_too_long",
            StartupError::SocketPathOccupied { .. } => "socket_path_occupied",
            StartupError::Bind { .. } => "bind_failed",
            StartupError::InfoFile { .. } => "info_write_failed",
            StartupError::Config(_) => "config_invalid",
            StartupError::Activation(_) => "socket_activation_invalid",
            StartupError::Service { .. } => "service_failed",
            StartupError::Other(_) => "startup_failed",
        }
    }
}

/// Creates the state directory (0700) if needed, and refuses one that is not
/// a directory, is owned by another user, or is writable by group or others.
/// An existing, acceptable directory is left exactly as it is.
pub fn prepare_state_dir(dir: &Path) -> Result<(), StartupError> {
    let unusable = |source| StartupError::StateDirUnusable { path: dir.to_owned(), source };
    if let Err(e) = std::fs::metadata(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(unusable(e));
        }
        fsutil::create_private_dir(dir).map_err(unusable)?;
    }
    let meta = std::fs::metadata(dir).map_err(unusable)?;
    check_private_dir(dir, &meta)
}

fn check_private_dir(dir: &Path, meta: &std::fs::Metadata) -> Result<(), StartupError> {
    let insecure = |reason: String| StartupError::StateDirInsecure { path: dir.to_owned(), reason };
    if !meta.is_dir() {
        return Err(StartupError::StateDirUnusable {
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "it is not a directory"),
        });
    }
    let me = euid();
    if meta.uid() != me {
        return Err(insecure(format!(
            "it is owned by uid {}, not by you (uid {me}); use a directory of your own",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(insecure(format!(
            "it is writable by group or others (mode {mode:04o}); fix it with: chmod 700 {}",
            dir.display()
        )));
    }
    Ok(())
}

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
    /// socket. Refuses a path that is not a socket, and a socket another
    /// daemon is serving.
    ///
    /// The process umask is changed around `bind`; call this before starting
    /// other threads (as `hearthd` does).
    pub fn bind(&mut self) -> Result<UnixListener, StartupError> {
        let path = self.paths.socket().to_owned();
        self.paths.check_socket_len().map_err(StartupError::SocketPathTooLong)?;
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                fsutil::create_private_dir(parent)
                    .map_err(|source| StartupError::Bind { path: path.clone(), source })?;
            }
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(&path).is_ok() {
                    return Err(StartupError::SocketPathOccupied {
                        path,
                        what: "a daemon of another state directory is listening on it".into(),
                    });
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
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino) {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(socket = %path.display(), "cannot remove socket: {e}");
                }
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

/// The listening socket passed by the service manager, when `LISTEN_PID`
/// names this process (otherwise the variables are someone else's and are
/// ignored). It must be a listening Unix stream socket with a path.
#[allow(unsafe_code)]
pub fn activated_listener() -> Result<Option<UnixListener>, StartupError> {
    use std::os::fd::FromRawFd;
    let mut fds = sd_notify::listen_fds().map_err(|e| StartupError::Activation(e.to_string()))?;
    let Some(fd) = fds.next() else { return Ok(None) };
    if fds.len() > 0 {
        tracing::warn!("socket activation passed {} sockets; serving only the first", fds.len() + 1);
    }
    let int_opt = |level, name| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`.
        let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
        if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(value) }
    };
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
    // SAFETY: the descriptor was passed to this process for this purpose and
    // nothing else owns it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    match listener.local_addr() {
        Ok(addr) if addr.as_pathname().is_some() => Ok(Some(listener)),
        Ok(_) => Err(bad("is not a Unix socket with a path".into())),
        Err(e) => Err(bad(format!("is not a Unix socket: {e}"))),
    }
}

/// Binds a listening socket that is never visible with bits looser than 0600.
#[allow(unsafe_code)]
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask only swaps the process file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let result = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = result?;
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
    fn state_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        prepare_state_dir(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = prepare_state_dir(&state).unwrap_err();
        assert_eq!(err.code(), "state_dir_insecure");
        assert!(err.to_string().contains("chmod 700"), "{err}");

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(prepare_state_dir(&file).unwrap_err().code(), "state_dir_unusable");
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
        assert_eq!(err.code(), "socket_path_occupied");
        drop(listener);
        inst.release();
        assert!(!paths.socket().exists());

        // A regular file at the socket path is never removed.
        let mut inst = Instance::acquire(paths.clone()).unwrap();
        std::fs::write(paths.socket(), "precious").unwrap();
        assert_eq!(inst.bind().unwrap_err().code(), "socket_path_occupied");
        inst.release();
        assert_eq!(std::fs::read(paths.socket()).unwrap(), b"precious");
    }
}
