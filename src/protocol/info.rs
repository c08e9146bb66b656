//! `daemon.json`: how other programs find a running daemon without asking it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::codes::stable_codes;

/// The contents of `<state-dir>/daemon.json`, written atomically once the
/// socket is bound and the services are up, and removed on a clean exit.
/// A file whose pid no longer holds the lock is stale (the daemon crashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's semver version.
    pub version: String,
    /// The protocol version it speaks.
    pub protocol: u32,
    /// The socket it listens on.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// When it started, RFC 3339 in UTC.
    pub started_at: String,
    /// Other endpoints the daemon serves.
    #[serde(default)]
    pub endpoints: Endpoints,
    /// The service manager that runs it (`systemd` or `launchd`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// Endpoints besides the socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The blob HTTP read server's base URL, `http://127.0.0.1:<port>`; a
    /// blob is at `<blob_http>/blob/sha256:<hex>`. Absent when it does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_http: Option<String>,
}

/// The one JSON line `hearthd --detach` prints on stdout before it returns,
/// so that whoever started it knows the outcome without guessing.
///
/// Exit statuses: `0` with `ready`, `3` with `already_running`, `1` with `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LaunchReport {
    /// The daemon is up: its socket is bound and answering.
    Ready {
        /// Its pid.
        pid: u32,
        /// Its version.
        version: String,
        /// Its socket.
        socket: PathBuf,
    },
    /// Another daemon already holds this state directory's lock.
    AlreadyRunning {
        /// The holder's pid, when it could be read from the lock file.
        pid: Option<u32>,
    },
    /// The daemon could not start.
    Failed {
        /// A stable snake_case startup error code (see `proto-docs/lifecycle.md`).
        code: LaunchCode,
        /// What went wrong and what to do.
        message: String,
    },
}

stable_codes! {
    /// Why a daemon did not start: a stable code in a [`LaunchReport`],
    /// in `ensure_daemon_running`'s `StartFailed` error, and on `hearthd`'s
    /// stderr (listed in proto-docs/lifecycle.md).
    pub enum LaunchCode {
        /// The state directory belongs to another user or others can write it.
        StateDirInsecure => "state_dir_insecure",
        /// A directory on the way to the socket lets another user replace it.
        SocketDirInsecure => "socket_dir_insecure",
        /// The state directory cannot be created, or is not a directory.
        StateDirUnusable => "state_dir_unusable",
        /// Another daemon holds the lock. A launch report says this with an
        /// event of its own (`already_running`), not as a failure.
        AlreadyRunning => "already_running",
        /// `daemon.lock` cannot be opened or locked.
        LockFailed => "lock_failed",
        /// The socket path does not fit `sockaddr_un`.
        SocketPathTooLong => "socket_path_too_long",
        /// Something other than a stale socket is at the socket path.
        SocketPathOccupied => "socket_path_occupied",
        /// `bind` failed.
        BindFailed => "bind_failed",
        /// `daemon.json` cannot be written.
        InfoWriteFailed => "info_write_failed",
        /// The configuration is invalid.
        ConfigInvalid => "config_invalid",
        /// Socket activation passed something unusable.
        SocketActivationInvalid => "socket_activation_invalid",
        /// A service could not start.
        ServiceFailed => "service_failed",
        /// Anything else (the runtime, the log file, fork).
        StartupFailed => "startup_failed",
        /// (From the waiting parent) no report within the ready timeout.
        StartTimeout => "start_timeout",
        /// (From the waiting parent) the daemon exited without a report.
        StartupCrashed => "startup_crashed",
        /// (From `ensure_daemon_running`) `hearthd --detach` could not be run,
        /// or printed no report it could read.
        LaunchFailed => "launch_failed",
    }
}

/// `heartbeat.json`, rewritten atomically every heartbeat interval, and only
/// after the daemon has checked itself end to end (its own socket answered
/// and every service made progress). A heartbeat older than three intervals
/// means the daemon is alive but not progressing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The daemon's pid.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// When this heartbeat was written, RFC 3339 in UTC.
    pub written_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub written_at_ms: u64,
    /// Successful self-checks since start.
    pub cycle: u64,
    /// The heartbeat interval in force.
    pub interval_ms: u64,
    /// Connection counters.
    pub connections: crate::protocol::status::ConnectionStats,
    /// Health, as `status` reports it.
    pub health: crate::protocol::status::Health,
    /// Per-service counters.
    pub services: crate::protocol::status::ServiceSummaries,
}

impl Heartbeat {
    /// Staleness: older than three intervals at `now_ms`.
    pub fn is_stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.written_at_ms) > 3 * self.interval_ms.max(1)
    }
}
