//! `daemon.json`: how other programs find a running daemon without asking it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
        code: String,
        /// What went wrong and what to do.
        message: String,
    },
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
