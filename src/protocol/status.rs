//! The `status` channel: liveness, health and a graceful stop.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use super::channel::ServiceSummaries;
use super::error::WireError;
use super::event::{Event, Subscribe};
use super::{Channel, ChannelProtocol, Request, Response};

/// The `status` channel.
#[derive(Debug)]
pub struct StatusChannel;

impl ChannelProtocol for StatusChannel {
    const CHANNEL: Channel = Channel::Status;
    type Request = StatusRequest;
    type Response = StatusResponse;
}

/// A request on the `status` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StatusRequest {
    /// Is the daemon answering? → `pong`.
    Ping,
    /// Health, identity, connections, limits and per-service summaries → `status`.
    Status,
    /// Stop gracefully → `shutting_down`, then the daemon stops accepting,
    /// lets in-flight requests finish within its grace period, and exits.
    Shutdown {
        /// Why; written to the daemon's log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// First let running work (jobs, builds) finish, up to the drain
        /// timeout, while still serving; then stop.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        drain: bool,
    },
    /// Stream the events that pass the filter → `subscribed`, then `event`
    /// (and `lagged`) frames until `unsubscribe` or the connection closes.
    Subscribe(Subscribe),
    /// End a subscription → `unsubscribed`; the connection takes requests again.
    Unsubscribe,
}

impl Request for StatusRequest {
    const TYPES: &'static [&'static str] = &["ping", "status", "shutdown", "subscribe", "unsubscribe"];
}

/// A response on the `status` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StatusResponse {
    /// The answer to `ping`.
    Pong,
    /// The answer to `status`.
    Status(Box<StatusReport>),
    /// The answer to `shutdown`: the daemon is stopping.
    ShuttingDown {
        /// How long in-flight requests may take once the daemon stops accepting.
        grace_ms: u64,
        /// Draining first: running work may take up to this long before the stop begins.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drain_ms: Option<u64>,
    },
    /// A subscription began; `seq` is the sequence number of the last
    /// event before it (the first event it streams is `seq + 1` or later).
    Subscribed {
        /// The last sequence number before the subscription.
        seq: u64,
    },
    /// One event of a subscription.
    Event(Event),
    /// The subscriber fell behind its buffer and missed this many events.
    Lagged {
        /// Events dropped for this subscriber.
        missed: u64,
    },
    /// The subscription ended.
    Unsubscribed,
    /// The request failed; the connection stays usable.
    Error(WireError),
}

impl Response for StatusResponse {
    fn from_error(error: WireError) -> Self {
        StatusResponse::Error(error)
    }
    fn into_result(self) -> Result<Self, WireError> {
        match self {
            StatusResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's semver version.
    pub version: String,
    /// The protocol version it speaks.
    pub protocol: u32,
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// When the daemon started, RFC 3339 in UTC.
    pub started_at: String,
    /// The socket it listens on.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Connection counters.
    pub connections: ConnectionStats,
    /// The channels this daemon serves.
    pub channels: Vec<Channel>,
    /// Overall health, with the reasons for anything short of healthy.
    pub health: Health,
    /// The limits in force.
    pub limits: Limits,
    /// One summary per service that runs.
    pub services: ServiceSummaries,
}

/// Connection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// Connections open now (this one included).
    pub active: u64,
    /// Connections accepted since start.
    pub total: u64,
    /// Connections refused because `max_connections` were open.
    pub refused_busy: u64,
    /// Connections refused because the peer ran as another user.
    pub refused_peer: u64,
}

/// The limits a client must respect (all configurable on the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame payload after the handshake, in bytes.
    pub max_frame: u64,
    /// Largest frame payload before the handshake completes.
    pub handshake_max_frame: u64,
    /// Time allowed from accept to a complete handshake.
    pub handshake_timeout_ms: u64,
    /// Connections served at once; more are refused with `too_many_connections`.
    pub max_connections: u64,
    /// A connection with no request for this long is closed (`idle_timeout`).
    pub connection_idle_timeout_ms: u64,
    /// A response the peer does not read within this long closes the connection.
    pub write_timeout_ms: u64,
    /// Time in-flight requests get to finish at shutdown.
    pub shutdown_grace_ms: u64,
}

/// Overall health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The worst state among the reasons; `healthy` when there are none.
    pub state: HealthState,
    /// Everything that is not right, most severe first.
    pub reasons: Vec<HealthReason>,
}

impl Health {
    /// Health derived from a set of reasons.
    pub fn from_reasons(mut reasons: Vec<HealthReason>) -> Self {
        reasons.sort_by_key(|r| std::cmp::Reverse(r.severity));
        let state = reasons.first().map_or(HealthState::Healthy, |r| r.severity);
        Health { state, reasons }
    }
}

/// How well the daemon is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Everything works.
    Healthy,
    /// It serves, but something needs attention (a failing pool, a backlog).
    Degraded,
    /// A service cannot do its job.
    Unhealthy,
}

impl HealthState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// One reason the daemon is not fully healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReason {
    /// A stable snake_case code (listed in proto-docs/status.md).
    pub code: HealthCode,
    /// How bad it is.
    pub severity: HealthState,
    /// Human text.
    pub message: String,
}

impl HealthReason {
    /// A reason with its code's severity.
    pub fn new(code: HealthCode, message: impl Into<String>) -> Self {
        Self { severity: code.severity(), code, message: message.into() }
    }
}

macro_rules! health_codes {
    ($( $(#[$doc:meta])* $variant:ident => $code:literal, $severity:ident, )+) => {
        /// A stable health code. Codes are never renamed or reused; a code
        /// this library does not know (from a newer daemon) decodes as
        /// [`HealthCode::Other`].
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum HealthCode {
            $( $(#[$doc])* $variant, )+
            /// A channel's service could not start: `<channel>_unavailable`.
            Unavailable(Channel),
            /// A code this version of the library does not know.
            Other(String),
        }

        impl HealthCode {
            /// Every fixed code, in documentation order (the
            /// `<channel>_unavailable` family aside).
            pub const ALL: &'static [HealthCode] = &[$(HealthCode::$variant,)+];

            /// The wire form of the code.
            pub fn as_str(&self) -> std::borrow::Cow<'static, str> {
                match self {
                    $(HealthCode::$variant => $code.into(),)+
                    HealthCode::Unavailable(channel) => format!("{channel}_unavailable").into(),
                    HealthCode::Other(code) => code.clone().into(),
                }
            }

            /// How bad a reason with this code is.
            pub fn severity(&self) -> HealthState {
                match self {
                    $(HealthCode::$variant => HealthState::$severity,)+
                    HealthCode::Unavailable(_) => HealthState::Unhealthy,
                    HealthCode::Other(_) => HealthState::Degraded,
                }
            }

            /// Parses a wire code; unknown codes become [`HealthCode::Other`].
            pub fn from_code(code: &str) -> HealthCode {
                match code {
                    $($code => HealthCode::$variant,)+
                    other => other
                        .strip_suffix("_unavailable")
                        .and_then(Channel::from_name)
                        .map_or_else(|| HealthCode::Other(other.to_owned()), HealthCode::Unavailable),
                }
            }
        }
    };
}

health_codes! {
    /// 90 % or more of `max_connections` are in use.
    ConnectionsNearLimit => "connections_near_limit", Degraded,
    /// Little free space in the state directory.
    DiskSpaceLow => "disk_space_low", Degraded,
    /// Almost no free space in the state directory.
    DiskSpaceCritical => "disk_space_critical", Unhealthy,
    /// The daemon's last self-check failed.
    SelfCheckFailed => "self_check_failed", Degraded,
    /// A draining shutdown is waiting for running work.
    Draining => "draining", Degraded,
    /// The heartbeat is older than three intervals (reported from outside).
    HeartbeatStale => "heartbeat_stale", Unhealthy,
    /// A pool's builds keep failing.
    PoolFailing => "pool_failing", Degraded,
    /// A runnable job has waited too long for a worker.
    QueueBacklog => "queue_backlog", Degraded,
    /// The queue's store was moved aside at start-up.
    QueueStoreRecovered => "queue_store_recovered", Degraded,
    /// The queue's store failed to commit lately.
    QueueStoreErrors => "queue_store_errors", Degraded,
    /// The blob store failed to write or read lately.
    BlobStoreErrors => "blob_store_errors", Degraded,
    /// The blob HTTP server is enabled but could not start.
    BlobHttpUnavailable => "blob_http_unavailable", Degraded,
    /// Pinned blobs alone exceed the store's budget.
    BlobPinnedOverBudget => "blob_pinned_over_budget", Degraded,
    /// A sync document's file could not be read; it was moved aside.
    SyncStoreMovedAside => "sync_store_moved_aside", Degraded,
    /// The sync store failed to write lately.
    SyncStoreErrors => "sync_store_errors", Degraded,
    /// An edit of settings.json was refused (not a JSON object, or it changed the schema version).
    SyncSettingsEditRefused => "sync_settings_edit_refused", Degraded,
    /// The settings document has a schema this daemon cannot migrate.
    SyncSettingsSchema => "sync_settings_schema", Degraded,
    /// A supervised process is `failed`: restarted too often, or it cannot start.
    ProcessFailing => "process_failing", Degraded,
}

impl std::fmt::Display for HealthCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for HealthCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for HealthCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(HealthCode::from_code(&code))
    }
}
