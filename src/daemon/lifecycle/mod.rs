//! The daemon process's own life: one instance per state directory, the
//! checks on the directories it uses, socket activation, detaching, signals,
//! the service manager, logging, and the supervisor that watches it all.
//!
//! - `permissions`: the audit of the state directory and the socket's
//!   directories (every directory on the way, from `/`).
//! - `singleton`: the lock, the socket and `daemon.json`, in that order.
//! - `owner`: proving which process owns a state directory before anyone
//!   signals it (`hearth daemon stop`).
//! - `activation`: a listening socket passed by the service manager.
//! - `signals`: stop signals held back during start-up.
//! - `detach`: `hearthd --detach` and its launch report.
//! - `notify`: `sd_notify` (READY, STATUS, WATCHDOG, STOPPING).
//! - `logging`: the log file, its rotation and SIGHUP reopening.
//! - `supervisor`: the self-check, heartbeat, watchdog and idle exit.

use std::io;
use std::path::PathBuf;

use crate::paths::PathError;
use crate::protocol::info::LaunchCode;

pub mod activation;
pub mod detach;
pub mod logging;
pub mod notify;
pub mod owner;
pub mod permissions;
pub mod signals;
pub mod singleton;
pub(crate) mod supervisor;

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
    /// The stable code of this failure.
    pub fn code(&self) -> LaunchCode {
        match self {
            StartupError::StateDirInsecure { .. } => LaunchCode::StateDirInsecure,
            StartupError::SocketDirInsecure { .. } => LaunchCode::SocketDirInsecure,
            StartupError::StateDirUnusable { .. } => LaunchCode::StateDirUnusable,
            StartupError::AlreadyRunning { .. } => LaunchCode::AlreadyRunning,
            StartupError::Lock { .. } => LaunchCode::LockFailed,
            StartupError::SocketPathTooLong(_) => LaunchCode::SocketPathTooLong,
            StartupError::SocketPathOccupied { .. } => LaunchCode::SocketPathOccupied,
            StartupError::Bind { .. } => LaunchCode::BindFailed,
            StartupError::InfoFile { .. } => LaunchCode::InfoWriteFailed,
            StartupError::Config(_) => LaunchCode::ConfigInvalid,
            StartupError::Activation(_) => LaunchCode::SocketActivationInvalid,
            StartupError::Service { .. } => LaunchCode::ServiceFailed,
            StartupError::Other(_) => LaunchCode::StartupFailed,
        }
    }
}
