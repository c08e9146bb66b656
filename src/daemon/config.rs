//! Settings: flags over environment over `config.toml` over defaults.
//!
//! Every setting has a dotted key (`server.max_frame`). The file is read as a
//! TOML table; flag and environment values are applied on top of it as
//! overrides of those keys; the result is checked against the typed [`Config`]
//! (unknown keys are errors, so a typo is never silently ignored).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::pool::settings::{PoolEntry, PoolSettings};
pub use super::sync::SyncConfig;
use crate::protocol::frame::DEFAULT_MAX_FRAME;
use crate::units::{ByteSize, HumanDuration};

/// A configuration problem, with the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or an unknown key.
    #[error("invalid configuration in {origin}: {message}")]
    Invalid {
        /// The file, or "flags and environment".
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// All daemon settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Connection handling and limits.
    pub server: ServerConfig,
    /// The daemon process: idle exit, heartbeat, draining.
    pub daemon: DaemonConfig,
    /// Health thresholds.
    pub health: HealthConfig,
    /// Logging.
    pub log: LogConfig,
    /// The pool service and the pools defined in this file.
    pub pool: PoolSettings,
    /// The job queue.
    pub queue: QueueConfig,
    /// The blob store and its HTTP read server.
    pub blob: BlobConfig,
    /// The sync channel's documents.
    pub sync: SyncConfig,
    /// Supervised processes, and those defined in this file.
    pub process: super::process::settings::ProcessSettings,
}

/// Connection handling and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Largest frame payload after the handshake.
    pub max_frame: ByteSize,
    /// Largest frame payload before the handshake completes.
    pub handshake_max_frame: ByteSize,
    /// Time from accept to a complete handshake.
    pub handshake_timeout: HumanDuration,
    /// Connections served at once (lowered at start-up to fit the open-file limit).
    pub max_connections: u64,
    /// A connection with no request for this long is closed.
    pub connection_idle_timeout: HumanDuration,
    /// A response the peer does not read within this long closes the connection.
    pub write_timeout: HumanDuration,
    /// Time in-flight requests get to finish at shutdown.
    pub shutdown_grace: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_frame: ByteSize(DEFAULT_MAX_FRAME as u64),
            handshake_max_frame: ByteSize(4096),
            handshake_timeout: HumanDuration(Duration::from_secs(5)),
            max_connections: 1024,
            connection_idle_timeout: HumanDuration(Duration::from_secs(600)),
            write_timeout: HumanDuration(Duration::from_secs(30)),
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// The daemon process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Exit after this long with no client connection, no queued or running
    /// job and no pool build (`0s`: never, the default).
    pub idle_timeout: HumanDuration,
    /// How often the daemon checks itself and rewrites `heartbeat.json`.
    pub heartbeat_interval: HumanDuration,
    /// With a draining shutdown: how long to wait for running work.
    pub drain_timeout: HumanDuration,
    /// Events an event subscriber may fall behind before it is told it
    /// missed some (`lagged`); the buffer is shared by all subscribers.
    pub event_buffer: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            idle_timeout: HumanDuration(Duration::ZERO),
            heartbeat_interval: HumanDuration(Duration::from_secs(5)),
            drain_timeout: HumanDuration(Duration::from_secs(600)),
            event_buffer: 4096,
        }
    }
}

/// Health thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Free space in the state directory below which health is `degraded`.
    pub disk_free_degraded: ByteSize,
    /// Free space below which health is `unhealthy`.
    pub disk_free_unhealthy: ByteSize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { disk_free_degraded: ByteSize(512 << 20), disk_free_unhealthy: ByteSize(64 << 20) }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `hearth=debug`, ...); `HEARTH_LOG` or `RUST_LOG` override it.
    pub filter: String,
    /// Rotate `daemon.log` when it reaches this size (`0`: never).
    pub max_size: ByteSize,
    /// Rotated logs to keep (`daemon.log.1` is the newest).
    pub keep: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "info".into(), max_size: ByteSize(10 << 20), keep: 5 }
    }
}

/// The job queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Serve the `queue` channel and run jobs.
    pub enabled: bool,
    /// Attempts run at once; 0 means the number of CPUs.
    pub workers: u32,
    /// Attempts before a job is dead, when the submit does not say.
    pub max_attempts: u32,
    /// Backoff before the first retry, when the submit does not say.
    pub backoff_base: HumanDuration,
    /// The longest backoff, when the submit does not say.
    pub backoff_cap: HumanDuration,
    /// Per-attempt timeout when the submit does not say; 0s means none.
    pub timeout: HumanDuration,
    /// Time between SIGTERM and SIGKILL when an attempt is timed out, canceled or stopped.
    pub kill_grace: HumanDuration,
    /// Largest input (stdin) a job may have.
    pub max_input: ByteSize,
    /// Output kept per stream and attempt; the rest is discarded and the cut is marked.
    pub log_max: ByteSize,
    /// How long an idempotency key stays taken.
    pub key_retention: HumanDuration,
    /// Succeeded and canceled jobs are deleted this long after they end.
    pub keep_finished: HumanDuration,
    /// At most this many succeeded and canceled jobs are kept (the newest).
    pub keep_finished_count: u64,
    /// Health is degraded when a runnable job has waited this long for a worker.
    pub backlog_threshold: HumanDuration,
    /// Attempts run at once per queue, for the queues listed (`{ build = 1 }`).
    pub limits: std::collections::BTreeMap<String, u32>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            workers: 0,
            max_attempts: 3,
            backoff_base: HumanDuration(Duration::from_secs(1)),
            backoff_cap: HumanDuration(Duration::from_secs(300)),
            timeout: HumanDuration(Duration::ZERO),
            kill_grace: HumanDuration(Duration::from_secs(5)),
            max_input: ByteSize(1 << 20),
            log_max: ByteSize(16 << 20),
            key_retention: HumanDuration(Duration::from_secs(24 * 3600)),
            keep_finished: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            keep_finished_count: 10_000,
            backlog_threshold: HumanDuration(Duration::from_secs(600)),
            limits: Default::default(),
        }
    }
}

impl QueueConfig {
    /// The worker count in force (`workers`, or the number of CPUs).
    pub fn effective_workers(&self) -> u32 {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    }
}

/// The blob store and its HTTP read server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobConfig {
    /// Serve the blob channel (and its HTTP server) at all.
    pub enabled: bool,
    /// Size budget: collection removes least-recently-used unpinned blobs
    /// above it. Absent: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Largest single blob a put may store. Absent: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_blob_size: Option<ByteSize>,
    /// How often the background collection runs (it also runs after a put
    /// takes the store over its budget).
    pub gc_interval: HumanDuration,
    /// Run the HTTP read server on 127.0.0.1.
    pub http: bool,
    /// Its port. Absent: the port of the previous run when it is free, else
    /// any free port (remembered for next time). `0`: any free port, every time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// HTTP connections served at once; more are closed on accept.
    pub http_max_connections: u64,
    /// Time a client has to send a request's headers, and the most an idle
    /// keep-alive connection stays open.
    pub http_header_timeout: HumanDuration,
    /// A client that does not take response bytes for this long is disconnected.
    pub http_write_timeout: HumanDuration,
    /// Origins (`http://localhost:5173`) allowed to read blobs from scripts
    /// (`Access-Control-Allow-Origin`); `"*"` allows any. Empty: no CORS headers.
    pub http_cors_origins: Vec<String>,
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: None,
            max_blob_size: None,
            gc_interval: HumanDuration(Duration::from_secs(600)),
            http: true,
            http_port: None,
            http_max_connections: 128,
            http_header_timeout: HumanDuration(Duration::from_secs(10)),
            http_write_timeout: HumanDuration(Duration::from_secs(30)),
            http_cors_origins: Vec::new(),
        }
    }
}

impl BlobConfig {
    fn validate(&self) -> Result<(), String> {
        for (key, d) in [
            ("blob.gc_interval", self.gc_interval),
            ("blob.http_header_timeout", self.http_header_timeout),
            ("blob.http_write_timeout", self.http_write_timeout),
        ] {
            if d.0.is_zero() {
                return Err(format!("{key} must be longer than 0s"));
            }
        }
        if self.http_max_connections == 0 {
            return Err("blob.http_max_connections must be at least 1".into());
        }
        for origin in &self.http_cors_origins {
            if !valid_origin(origin) {
                return Err(format!(
                    "blob.http_cors_origins: {origin:?} is not an origin like \"http://localhost:5173\" (scheme, host, \
                     optional port, no path) or \"*\""
                ));
            }
        }
        Ok(())
    }
}

/// `*`, or `scheme://host[:port]` in the printable ASCII a browser sends.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// One override of a dotted key, from a flag or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The dotted key, e.g. `server.max_frame`.
    pub key: &'static str,
    /// The value as typed; numbers and booleans are recognised.
    pub value: String,
}

/// Reads a settings file, which must be a regular file (or a link to one):
/// a FIFO or a device is refused at once instead of stalling start-up.
fn read_settings(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    let mut text = String::new();
    crate::daemon::fsutil::open_regular(file, &mut options, libc::O_CLOEXEC)?.read_to_string(&mut text)?;
    Ok(text)
}

impl Config {
    /// Loads `file` (a missing file is fine unless `required`), applies
    /// `overrides`, and validates the result.
    pub fn load(file: &Path, required: bool, overrides: &[Override]) -> Result<Config, ConfigError> {
        let mut table = match read_settings(file) {
            Ok(text) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Invalid { origin: file.display().to_string(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => toml::Table::new(),
            Err(source) => return Err(ConfigError::Read { path: file.to_owned(), source }),
        };
        let file_config = Self::from_table(table.clone(), &file.display().to_string())?;
        if overrides.is_empty() {
            return Ok(file_config);
        }
        for o in overrides {
            set_dotted(&mut table, o.key, &o.value);
        }
        Self::from_table(table, "flags and environment")
    }

    fn from_table(table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid { origin: origin.into(), message: e.to_string() })?;
        config.sync.fit_defaults_to_frame(config.server.max_frame.0);
        config.validate().map_err(|message| ConfigError::Invalid { origin: origin.into(), message })?;
        Ok(config)
    }

    /// Checks ranges that types alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.server;
        if s.max_frame.0 < 1024 || s.max_frame.0 > u64::from(u32::MAX) {
            return Err(format!("server.max_frame must be between 1KiB and 4GiB-1, not {}", s.max_frame));
        }
        if s.handshake_max_frame.0 < 256 || s.handshake_max_frame > s.max_frame {
            return Err(format!(
                "server.handshake_max_frame must be at least 256 bytes and at most server.max_frame, not {}",
                s.handshake_max_frame
            ));
        }
        if s.max_connections == 0 {
            return Err("server.max_connections must be at least 1".into());
        }
        if self.daemon.heartbeat_interval.0 < Duration::from_millis(100) {
            return Err("daemon.heartbeat_interval must be at least 100ms".into());
        }
        if !(1..=1 << 20).contains(&self.daemon.event_buffer) {
            return Err(format!("daemon.event_buffer must be between 1 and 1048576, not {}", self.daemon.event_buffer));
        }
        if self.health.disk_free_unhealthy > self.health.disk_free_degraded {
            return Err("health.disk_free_unhealthy must not exceed health.disk_free_degraded".into());
        }
        if self.log.keep > 100 {
            return Err("log.keep must be at most 100".into());
        }
        for (key, d) in [
            ("server.handshake_timeout", s.handshake_timeout),
            ("server.connection_idle_timeout", s.connection_idle_timeout),
            ("server.write_timeout", s.write_timeout),
        ] {
            if d.0.is_zero() {
                return Err(format!("{key} must be longer than 0s"));
            }
        }
        self.pool.validate()?;
        self.process.validate()?;
        self.blob.validate()?;
        self.sync.validate(s.max_frame.0)?;
        self.validate_queue()
    }

    fn validate_queue(&self) -> Result<(), String> {
        let q = &self.queue;
        if q.workers > 1024 {
            return Err(format!("queue.workers must be at most 1024, not {}", q.workers));
        }
        if q.max_attempts == 0 || q.max_attempts > crate::protocol::queue::MAX_ATTEMPTS {
            return Err(format!(
                "queue.max_attempts must be between 1 and {}, not {}",
                crate::protocol::queue::MAX_ATTEMPTS,
                q.max_attempts
            ));
        }
        if let Some((name, _)) = q.limits.iter().find(|(_, n)| **n == 0) {
            return Err(format!("queue.limits.{name} must be at least 1"));
        }
        if q.backoff_cap < q.backoff_base {
            return Err("queue.backoff_cap must not be shorter than queue.backoff_base".into());
        }
        if q.log_max.0 < 1024 {
            return Err(format!("queue.log_max must be at least 1KiB, not {}", q.log_max));
        }
        for (key, d) in [("queue.kill_grace", q.kill_grace), ("queue.backlog_threshold", q.backlog_threshold)] {
            if d.0.is_zero() {
                return Err(format!("{key} must be longer than 0s"));
            }
        }
        Ok(())
    }

    /// The configuration as a `config.toml` document.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// Sets `a.b.c = value` in `table`, creating tables on the way. The value is
/// read as a TOML integer, float or boolean when it is one, else as a string.
fn set_dotted(table: &mut toml::Table, key: &str, value: &str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let leaf = parts.pop().unwrap_or(key);
    let mut current = table;
    for part in parts {
        let entry = current.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else { unreachable!("just made a table") };
        current = next;
    }
    let parsed = if let Ok(i) = value.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_owned())
    };
    current.insert(leaf.to_owned(), parsed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[server]\nmax_connections = 7\nconnection_idle_timeout = \"1m\"\n");
        let config = Config::load(&file, true, &[]).unwrap();
        assert_eq!(config.server.max_connections, 7);
        assert_eq!(config.server.connection_idle_timeout.0, Duration::from_secs(60));
        assert_eq!(config.server.write_timeout, ServerConfig::default().write_timeout);

        let over = [Override { key: "server.max_connections", value: "9".into() }];
        let config = Config::load(&file, true, &over).unwrap();
        assert_eq!(config.server.max_connections, 9);
        assert_eq!(config.server.connection_idle_timeout.0, Duration::from_secs(60));
    }

    #[test]
    fn a_small_max_frame_lowers_the_sync_limits_left_at_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[server]\nmax_frame = \"64KiB\"\n");
        let config = Config::load(&file, true, &[]).unwrap();
        assert_eq!(config.sync.max_sync_message.0, 64 << 10);
        assert_eq!(config.sync.max_value_size.0, 64 << 10);
        let file = write(dir.path(), "[server]\nmax_frame = \"64KiB\"\n[sync]\nmax_sync_message = \"1MiB\"\n");
        let err = Config::load(&file, true, &[]).unwrap_err().to_string();
        assert!(err.contains("sync.max_sync_message"), "{err}");
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[server]\nmax_conections = 7\n");
        let err = Config::load(&file, true, &[]).unwrap_err().to_string();
        assert!(err.contains("max_conections"), "{err}");
        let file = write(dir.path(), "[server]\nmax_frame = \"12 parsecs\"\n");
        let err = Config::load(&file, true, &[]).unwrap_err().to_string();
        assert!(err.contains("parsecs"), "{err}");
        let file = write(dir.path(), "[server]\nmax_connections = 0\n");
        assert!(Config::load(&file, true, &[]).is_err());
        assert!(Config::load(&dir.path().join("missing.toml"), true, &[]).is_err());
        assert_eq!(Config::load(&dir.path().join("missing.toml"), false, &[]).unwrap(), Config::default());
    }

    #[test]
    fn printed_config_loads_back() {
        let config = Config::default();
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &config.to_toml());
        assert_eq!(Config::load(&file, true, &[]).unwrap(), config);
    }
}
