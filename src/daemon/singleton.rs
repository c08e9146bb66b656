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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fd_lock::RwLock;

use super::fsutil;
use crate::paths::{PathError, Paths};
use crate::protocol::info::DaemonInfo;
use crate::sys::euid;

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
    /// A directory on the way to the socket (its own included) could be
    /// changed by another user: owned by one, or writable by group or others
    /// without the sticky bit.
    #[error("refusing to put the socket at {path:?}: {reason}")]
    SocketDirInsecure {
        /// The socket path.
        path: PathBuf,
        /// Which directory, what is wrong and how to fix it.
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
            StartupError::SocketDirInsecure { .. } => "socket_dir_insecure",
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
/// a directory, is owned by another user, or is writable by group or others,
/// or that another user could replace (see [`check_state_dir`]): nothing is
/// created before these checks. An existing, acceptable directory is left
/// exactly as it is.
pub fn prepare_state_dir(dir: &Path) -> Result<(), StartupError> {
    let unusable = |source| StartupError::StateDirUnusable { path: dir.to_owned(), source };
    check_state_dir(dir)?;
    if let Err(e) = std::fs::metadata(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(unusable(e));
        }
        fsutil::create_private_dir(dir).map_err(unusable)?;
    }
    let meta = std::fs::metadata(dir).map_err(unusable)?;
    check_private_dir(dir, &meta)
}

/// Checks the state directory without creating anything: every directory
/// passed through to reach it (from `/`, following symbolic links) must be
/// safe from other users (see [`check_route`]), and the directory itself, if
/// it exists, must be a private directory of this user.
pub fn check_state_dir(dir: &Path) -> Result<(), StartupError> {
    let insecure = |reason: String| StartupError::StateDirInsecure { path: dir.to_owned(), reason };
    check_route(dir, true).map_err(|r| insecure(r.to_string()))?;
    match std::fs::metadata(dir) {
        Ok(meta) => check_private_dir(dir, &meta),
        Err(_) => Ok(()),
    }
}

/// Checks, without creating anything, that no other user could replace the
/// socket: every directory passed through to reach it, its own directory
/// included, must be safe from other users (see [`check_route`]).
pub fn check_socket_dir(socket: &Path) -> Result<(), StartupError> {
    check_route(socket, false)
        .map_err(|r| StartupError::SocketDirInsecure { path: socket.to_owned(), reason: r.to_string() })
}

/// A directory or symbolic link on the way to a path that lets another user
/// swap what the path leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeStep {
    /// The directory or link.
    pub path: PathBuf,
    /// What is wrong with it and how to fix it.
    pub reason: String,
}

impl std::fmt::Display for UnsafeStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.path.display(), self.reason)
    }
}

/// Walks `path` from `/` the way the kernel resolves it, and checks every
/// directory it passes through (not `path` itself) and every symbolic link
/// it follows (`path` too when `follow_last`): each must belong to this user
/// or to root, and a directory that group or others can write must have the
/// sticky bit (as `/tmp` does), since otherwise another user could rename
/// what it holds and put their own in its place, under the daemon's feet.
/// A directory that only the user's private group can write (a group named
/// after the user, with no other member: the `umask 002` setups) is fine.
/// The walk stops at the first missing component: the daemon creates the
/// rest itself, mode 0700.
pub fn check_route(path: &Path, follow_last: bool) -> Result<(), UnsafeStep> {
    use std::collections::VecDeque;
    use std::path::Component;
    let Ok(path) = std::path::absolute(path) else { return Ok(()) };
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    let push_front = |pending: &mut VecDeque<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(name) => pending.push_front(name.to_owned()),
                Component::ParentDir => pending.push_front("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    push_front(&mut pending, &path);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        // `name` is looked up in (or will be created in) `resolved`: that
        // directory must be safe from other users.
        let parent = std::fs::metadata(&resolved)
            .map_err(|e| UnsafeStep { path: resolved.clone(), reason: format!("cannot be checked: {e}") })?;
        check_step(&resolved, &parent)?;
        let last = pending.is_empty();
        let next = resolved.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&next) else { break };
        if meta.file_type().is_symlink() {
            if last && !follow_last {
                break;
            }
            let me = euid();
            if meta.uid() != me && meta.uid() != 0 {
                return Err(UnsafeStep {
                    path: next,
                    reason: format!(
                        "is a symbolic link owned by uid {}, who could point it elsewhere at any time; \
                         use a path of your own",
                        meta.uid()
                    ),
                });
            }
            links += 1;
            let Ok(target) = std::fs::read_link(&next) else { break };
            if links > 40 {
                break; // the daemon's own open fails with ELOOP
            }
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            push_front(&mut pending, &target);
            continue;
        }
        if !meta.is_dir() {
            break; // using it fails later with a plain error
        }
        resolved = next;
    }
    Ok(())
}

/// Whether another user could rename entries of the directory `dir`.
fn check_step(dir: &Path, meta: &std::fs::Metadata) -> Result<(), UnsafeStep> {
    let mode = meta.permissions().mode() & 0o7777;
    let private_group = mode & 0o020 != 0 && is_private_group(meta.gid());
    step_verdict(dir, meta.uid(), mode, private_group, euid())
        .map_err(|reason| UnsafeStep { path: dir.to_owned(), reason })
}

/// The rule of [`check_route`] for one directory, as a pure function.
fn step_verdict(dir: &Path, uid: u32, mode: u32, private_group: bool, me: u32) -> Result<(), String> {
    if uid != me && uid != 0 {
        return Err(format!(
            "is owned by uid {uid}, who could replace what it holds; use a directory that you (uid {me}) or root own"
        ));
    }
    let sticky = mode & 0o1000 != 0;
    let others = mode & 0o002 != 0;
    let group = mode & 0o020 != 0 && !private_group;
    if (others || group) && !sticky {
        return Err(format!(
            "is writable by group or others and not sticky (mode {mode:04o}), so another user could move \
             what it holds away and put their own in its place; fix it with: chmod go-w {}",
            dir.display()
        ));
    }
    Ok(())
}

/// Whether `gid` is this user's private group: the user's primary group,
/// named after the user, with no other member listed. Group 0 never is.
fn is_private_group(gid: u32) -> bool {
    if gid == 0 {
        return false;
    }
    let Some((user, primary)) = crate::sys::user_entry(euid()) else { return false };
    let Some((name, members)) = crate::sys::group_entry(gid) else { return false };
    primary == gid && name == user && members.iter().all(|m| *m == user)
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

/// SIGTERM, SIGINT and SIGHUP held back (blocked in the calling thread) from
/// before any thread starts until the daemon's handlers are in place, so a
/// stop asked for during start-up is a clean stop rather than the default
/// action killing a daemon that already shows its socket. Threads started
/// meanwhile inherit the mask, which leaves the calling thread to receive
/// these signals once [`HeldSignals::release`] unblocks them; child
/// processes start with an empty mask (std's spawn and the job spawner both
/// reset it).
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
    fn route_rule() {
        let dir = Path::new("/d");
        let me = 1000;
        // Root's and one's own directories, private or sticky, are fine.
        for (uid, mode) in [(0, 0o755), (me, 0o700), (0, 0o1777), (me, 0o1770), (me, 0o755)] {
            assert_eq!(step_verdict(dir, uid, mode, false, me), Ok(()), "{uid} {mode:o}");
        }
        // Another user's directory, however private, is not.
        let err = step_verdict(dir, 1001, 0o700, false, me).unwrap_err();
        assert!(err.contains("owned by uid 1001"), "{err}");
        // Writable by others, or by a group that is not the user's own, without the sticky bit.
        for (mode, private_group) in [(0o777, false), (0o757, false), (0o770, false), (0o772, true)] {
            let err = step_verdict(dir, me, mode, private_group, me).unwrap_err();
            assert!(err.contains("not sticky") && err.contains("chmod go-w /d"), "{mode:o}: {err}");
        }
        // The user's private group may write (umask 002 setups).
        assert_eq!(step_verdict(dir, me, 0o775, true, me), Ok(()));
        assert!(!is_private_group(0), "group 0 is never private");
    }

    #[test]
    fn route_follows_links_and_checks_every_directory_on_the_way() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir_all(open.join("inner/deeper")).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        // Below a directory others can write, however deep, and however reached.
        for path in [open.join("state"), open.join("inner/deeper/state"), open.join("inner/../inner/state")] {
            let err = check_route(&path, true).unwrap_err();
            assert_eq!(err.path, open, "{path:?}: {err}");
        }
        std::os::unix::fs::symlink(open.join("inner"), base.path().join("link")).unwrap();
        assert_eq!(check_route(&base.path().join("link/state"), true).unwrap_err().path, open);
        // The link itself as the last component: followed only when asked.
        std::os::unix::fs::symlink(open.join("inner"), base.path().join("last")).unwrap();
        assert!(check_route(&base.path().join("last"), true).is_err());
        assert_eq!(check_route(&base.path().join("last"), false), Ok(()));
        // Made sticky, it is fine; missing components end the walk.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(check_route(&base.path().join("link/missing/state"), true), Ok(()));
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
