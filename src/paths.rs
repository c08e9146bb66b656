//! Where a daemon's files live: the state directory and the names inside it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the state directory.
pub const ENV_STATE_DIR: &str = "HEARTH_STATE_DIR";
/// Environment variable that overrides the socket path.
pub const ENV_SOCKET: &str = "HEARTH_SOCKET";

/// The socket's file name inside the state directory.
pub const SOCKET_FILE: &str = "hearth.sock";
/// The singleton lock, held for the daemon's whole life; it contains the holder's pid.
pub const LOCK_FILE: &str = "daemon.lock";
/// Discovery information, written once the daemon is up.
pub const INFO_FILE: &str = "daemon.json";
/// The daemon's log when it runs detached.
pub const LOG_FILE: &str = "daemon.log";
/// The heartbeat the daemon rewrites while it makes progress.
pub const HEARTBEAT_FILE: &str = "heartbeat.json";
/// Optional settings.
pub const CONFIG_FILE: &str = "config.toml";

/// A path could not be resolved or is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Neither an override nor a home directory is available.
    #[error("cannot choose a state directory: HOME is not set; pass --state-dir or set {ENV_STATE_DIR}")]
    NoHome,
    /// The socket path does not fit in `sockaddr_un`.
    #[error(
        "socket path {path:?} is {len} bytes, longer than the platform limit of {max} bytes; \
         use a shorter --state-dir or set --socket / {ENV_SOCKET} to a shorter path"
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest path this platform can bind or connect to.
        max: usize,
    },
    /// The current directory is needed to make a relative path absolute.
    #[error("cannot make {path:?} absolute: {source}")]
    Absolute {
        /// The relative path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The state directory and socket of one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    state_dir: PathBuf,
    socket: PathBuf,
}

impl Paths {
    /// Paths for `state_dir`, with the socket inside it.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        let socket = state_dir.join(SOCKET_FILE);
        Self { state_dir, socket }
    }

    /// The same state directory with the socket somewhere else.
    pub fn with_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = socket.into();
        self
    }

    /// Explicit values, else `HEARTH_STATE_DIR` / `HEARTH_SOCKET`, else the
    /// platform default. Relative paths are made absolute.
    pub fn resolve(state_dir: Option<PathBuf>, socket: Option<PathBuf>) -> Result<Self, PathError> {
        let state_dir = match state_dir.or_else(|| env_path(ENV_STATE_DIR)) {
            Some(dir) => dir,
            None => default_state_dir()?,
        };
        let mut paths = Paths::new(absolute(&state_dir)?);
        if let Some(socket) = socket.or_else(|| env_path(ENV_SOCKET)) {
            paths.socket = absolute(&socket)?;
        }
        Ok(paths)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
    /// `daemon.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join(LOCK_FILE)
    }
    /// `daemon.json`.
    pub fn info_file(&self) -> PathBuf {
        self.state_dir.join(INFO_FILE)
    }
    /// `daemon.log`.
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join(LOG_FILE)
    }
    /// `heartbeat.json`.
    pub fn heartbeat_file(&self) -> PathBuf {
        self.state_dir.join(HEARTBEAT_FILE)
    }
    /// `config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.state_dir.join(CONFIG_FILE)
    }

    /// Checks that the socket path fits the platform's `sockaddr_un`.
    pub fn check_socket_len(&self) -> Result<(), PathError> {
        check_socket_path(&self.socket)
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn absolute(path: &Path) -> Result<PathBuf, PathError> {
    std::path::absolute(path).map_err(|source| PathError::Absolute { path: path.to_owned(), source })
}

/// The platform's default state directory.
///
/// Linux and other Unix: `$XDG_STATE_HOME/hearth` when `XDG_STATE_HOME` is an
/// absolute path, else `~/.local/state/hearth`. macOS:
/// `~/Library/Application Support/hearth`.
pub fn default_state_dir() -> Result<PathBuf, PathError> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    if cfg!(target_os = "macos") {
        return home.map(|h| h.join("Library/Application Support/hearth")).ok_or(PathError::NoHome);
    }
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from)
        && xdg.is_absolute()
    {
        return Ok(xdg.join("hearth"));
    }
    home.map(|h| h.join(".local/state/hearth")).ok_or(PathError::NoHome)
}

/// The longest socket path (in bytes, without the terminating NUL) that
/// `bind` and `connect` accept here: 107 on Linux, 103 on macOS and the BSDs.
pub fn max_socket_path_len() -> usize {
    crate::sys::max_socket_path_len()
}

/// Checks that `path` fits in `sockaddr_un`.
pub fn check_socket_path(path: &Path) -> Result<(), PathError> {
    let len = OsString::from(path).len();
    let max = max_socket_path_len();
    if len > max {
        return Err(PathError::SocketPathTooLong { path: path.to_owned(), len, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_length_limit() {
        let max = max_socket_path_len();
        assert!(max >= 100, "{max}");
        let fits = PathBuf::from(format!("/{}", "a".repeat(max - 1)));
        assert!(check_socket_path(&fits).is_ok());
        let long = PathBuf::from(format!("/{}", "a".repeat(max)));
        let err = check_socket_path(&long).unwrap_err().to_string();
        assert!(err.contains(&max.to_string()), "{err}");
    }

    #[test]
    fn explicit_paths_win_and_are_absolute() {
        let p = Paths::resolve(Some("/x/state".into()), Some("rel.sock".into())).unwrap();
        assert_eq!(p.state_dir(), Path::new("/x/state"));
        assert!(p.socket().is_absolute());
        assert_eq!(p.lock_file(), Path::new("/x/state/daemon.lock"));
        let p = Paths::new("/s");
        assert_eq!(p.socket(), Path::new("/s/hearth.sock"));
    }
}
