//! The `process` channel: long-running processes the daemon keeps alive,
//! with restart policies, readiness and liveness checks, and logs.
//!
//! A process is defined once (config.toml's `[process.NAME]`, or `define`)
//! and from then on the daemon runs it: it starts it, restarts it by its
//! policy when it exits or fails its check, stops it (the stop signal, then
//! `SIGKILL` after the grace), and keeps its output in a rotated log.
//! `start`, `stop` and `restart` name one process, a label, or all of them:
//!
//! ```
//! use hearth::protocol::decode_request;
//! use hearth::protocol::process::{ProcessRequest, Selector};
//!
//! let stop: ProcessRequest = decode_request(br#"{"type":"stop","label":"workers"}"#).unwrap();
//! assert_eq!(stop, ProcessRequest::Stop { select: Selector::label("workers") });
//!
//! let roll: ProcessRequest = decode_request(br#"{"type":"restart","all":true,"rolling":true}"#).unwrap();
//! assert_eq!(roll, ProcessRequest::Restart { select: Selector::all(), rolling: true, no_wait: false });
//! ```
//!
//! The long form is `proto-docs/process.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::WireError;
use super::handshake::Channel;
use super::queue::Base64;
use super::{ChannelProtocol, Request, Response};

/// The `process` channel.
#[derive(Debug)]
pub struct ProcessChannel;

impl ChannelProtocol for ProcessChannel {
    const CHANNEL: Channel = Channel::Process;
    type Request = ProcessRequest;
    type Response = ProcessResponse;
}

/// A request on the `process` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessRequest {
    /// Every process's state, or those the selector picks → `status`.
    Status {
        /// Which processes (none of its fields: all).
        #[serde(flatten)]
        select: Selector,
    },
    /// Define or redefine a process (persisted) → `defined`.
    Define {
        /// The definition.
        definition: Box<ProcessDefinition>,
        /// Start a process defined for the first time (default true); a
        /// redefinition keeps whether it runs.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        start: bool,
    },
    /// Stop a process and remove its run-time definition → `removed`.
    Remove {
        /// The process.
        name: String,
    },
    /// Start processes, and wait until they are ready → `started`.
    Start {
        /// Which processes.
        #[serde(flatten)]
        select: Selector,
        /// Answer once they are started, without waiting for readiness.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_wait: bool,
    },
    /// Stop processes (stop signal, then `SIGKILL` after the grace), and
    /// wait until they have exited → `stopped`.
    Stop {
        /// Which processes.
        #[serde(flatten)]
        select: Selector,
    },
    /// Stop and start processes again, and wait until they are ready →
    /// `restarted`.
    Restart {
        /// Which processes.
        #[serde(flatten)]
        select: Selector,
        /// One at a time, by name, each waiting until the previous one is
        /// ready again; stops at the first that is not.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rolling: bool,
        /// Answer once they are started, without waiting for readiness
        /// (not with `rolling`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_wait: bool,
    },
    /// A process's output → `log_data` … `log_end`.
    Logs {
        /// The process.
        name: String,
        /// Only the last this many lines of the current log (default: all of it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines: Option<u32>,
        /// Keep sending output as it comes, until the connection closes.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        follow: bool,
    },
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Request for ProcessRequest {
    const TYPES: &'static [&'static str] = &["status", "define", "remove", "start", "stop", "restart", "logs"];
}

/// Which processes a request acts on: one by `name`, those with a `label`,
/// or `all`. `start`, `stop` and `restart` need exactly one of them;
/// `status` with none lists every process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    /// One process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Every process with this label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Every process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Selector {
    /// The process `name`.
    pub fn name(name: impl Into<String>) -> Self {
        Self { name: Some(name.into()), ..Self::default() }
    }

    /// The processes labelled `label`.
    pub fn label(label: impl Into<String>) -> Self {
        Self { label: Some(label.into()), ..Self::default() }
    }

    /// Every process.
    pub fn all() -> Self {
        Self { all: true, ..Self::default() }
    }

    /// How many of the three ways were given.
    pub fn given(&self) -> usize {
        usize::from(self.name.is_some()) + usize::from(self.label.is_some()) + usize::from(self.all)
    }
}

impl From<&str> for Selector {
    fn from(name: &str) -> Self {
        Selector::name(name)
    }
}

impl From<String> for Selector {
    fn from(name: String) -> Self {
        Selector::name(name)
    }
}

/// A response on the `process` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessResponse {
    /// The answer to `status`.
    Status(ProcessesReport),
    /// The answer to `define`.
    Defined {
        /// The process.
        name: String,
        /// The definition in force now: `config` when config.toml defines the
        /// same name (the run-time definition is kept but does not apply).
        source: ProcessSource,
        /// False when the same definition was already stored.
        changed: bool,
        /// The process's state after the definition.
        state: ProcessState,
    },
    /// The answer to `remove`: the process has exited.
    Removed {
        /// The process.
        name: String,
        /// The definition in force now (`config`), if any: the process goes
        /// on under it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<ProcessSource>,
    },
    /// The answer to `start`.
    Started {
        /// Each process started, and its state now.
        processes: BTreeMap<String, ProcessBrief>,
    },
    /// The answer to `stop`.
    Stopped {
        /// Each process stopped, and its state now.
        processes: BTreeMap<String, ProcessBrief>,
    },
    /// The answer to `restart`.
    Restarted {
        /// Each process restarted, and its state now.
        processes: BTreeMap<String, ProcessBrief>,
    },
    /// A piece of a `logs` stream.
    LogData {
        /// The bytes, base64 (standard alphabet, padded).
        data: Base64,
    },
    /// The end of a `logs` stream.
    LogEnd {
        /// The process's state when the stream ended.
        state: ProcessState,
    },
    /// The request failed; the connection stays usable.
    Error(WireError),
}

impl Response for ProcessResponse {
    fn from_error(error: WireError) -> Self {
        ProcessResponse::Error(error)
    }
    fn into_result(self) -> Result<Self, WireError> {
        match self {
            ProcessResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// What a supervised process is and how it is kept alive.
///
/// Every field but `name` and `argv` is optional; `proto-docs/process.md`
/// lists the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDefinition {
    /// 1 to 64 ASCII letters, digits, `_` or `-`, starting with a letter or digit.
    pub name: String,
    /// The program and its arguments, run without a shell.
    pub argv: Vec<String>,
    /// The working directory (absolute); default the daemon's home directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Variables added to the daemon's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Groups the process belongs to, for `start`, `stop` and `restart`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// When the process is started again after it ends (default `always`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// The delay before the first restart after a failure; it doubles with
    /// each failure in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base_ms: Option<u64>,
    /// The longest delay between restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max_ms: Option<u64>,
    /// Restarts allowed within `restart_window_ms`; one more and the process
    /// is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// The window of `max_restarts`; a process that ran this long counts as
    /// stable again (its backoff starts over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_window_ms: Option<u64>,
    /// The signal that asks the process to stop (`SIGTERM`, `SIGINT`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long it may take to stop before `SIGKILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
    /// How the daemon knows the process is ready, and still alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<ProcessCheck>,
    /// The log is rotated when it reaches this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max: Option<u64>,
    /// Rotated logs kept (`output.log.1` is the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_keep: Option<u32>,
}

/// When a process that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Whenever it ends, however it ends.
    Always,
    /// When it fails: a non-zero exit status, a signal, a failed check.
    #[serde(alias = "on-failure")]
    OnFailure,
    /// Never: it ends `exited` (status 0) or `failed`.
    Never,
}

impl RestartPolicy {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on_failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// How the daemon knows a process is ready (a `start` waits for it, a
/// rolling restart moves on after it) and still alive (a failing check
/// restarts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProcessCheck {
    /// The process touches a file while it makes progress: it is ready once
    /// the file changes after its start, and dead once the file is older
    /// than `stale_ms`.
    Heartbeat {
        /// The file; a relative path is taken from the process's `cwd`.
        path: PathBuf,
        /// Older than this, the process is restarted.
        stale_ms: u64,
        /// Not ready within this long, the process is restarted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_timeout_ms: Option<u64>,
    },
    /// A command that exits 0 while the process is healthy.
    Command {
        /// The command, run without a shell in the process's `cwd` and environment.
        argv: Vec<String>,
        /// How often it runs once the process is ready.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_ms: Option<u64>,
        /// A run taking longer fails.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// Failures in a row that restart the process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failures: Option<u32>,
        /// Not ready within this long, the process is restarted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_timeout_ms: Option<u64>,
    },
    /// The process speaks the `sd_notify` protocol on the datagram socket
    /// named by `NOTIFY_SOCKET`: ready at `READY=1`, alive while `WATCHDOG=1`
    /// comes at least every `watchdog_ms`.
    Notify {
        /// Without a `WATCHDOG=1` for this long, the process is restarted
        /// (absent: no watchdog).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        watchdog_ms: Option<u64>,
        /// Not ready within this long, the process is restarted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_timeout_ms: Option<u64>,
    },
}

impl ProcessCheck {
    /// The wire name of its kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ProcessCheck::Heartbeat { .. } => "heartbeat",
            ProcessCheck::Command { .. } => "command",
            ProcessCheck::Notify { .. } => "notify",
        }
    }

    /// Its `start_timeout_ms`.
    pub fn start_timeout_ms(&self) -> Option<u64> {
        match self {
            ProcessCheck::Heartbeat { start_timeout_ms, .. }
            | ProcessCheck::Command { start_timeout_ms, .. }
            | ProcessCheck::Notify { start_timeout_ms, .. } => *start_timeout_ms,
        }
    }
}

/// Where the definition in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessSource {
    /// A `[process.<name>]` table of config.toml.
    Config,
    /// A `define` request.
    Runtime,
}

impl ProcessSource {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessSource::Config => "config",
            ProcessSource::Runtime => "runtime",
        }
    }
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Not running, and not meant to (stopped, or never started).
    Stopped,
    /// Started, and not ready yet (its check has not passed).
    Starting,
    /// Running and ready (at once for a process without a check).
    Running,
    /// Asked to stop, waiting for it to exit.
    Stopping,
    /// It ended; it starts again at `retry_at`.
    Backoff,
    /// It ended and its policy does not restart it (successfully, or under
    /// `on_failure`).
    Exited,
    /// It ended in failure and is not restarted: too many restarts within
    /// the window, a program that cannot start, or a failure under `never`.
    Failed,
}

impl ProcessState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Stopped => "stopped",
            ProcessState::Starting => "starting",
            ProcessState::Running => "running",
            ProcessState::Stopping => "stopping",
            ProcessState::Backoff => "backoff",
            ProcessState::Exited => "exited",
            ProcessState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessesReport {
    /// One entry per process, by name.
    pub processes: Vec<ProcessStatus>,
    /// Entries were left out (or their definitions) so that the answer fits
    /// in one frame; ask for fewer (by `name` or `label`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One process, in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// The process.
    pub name: String,
    /// Where its definition comes from; absent while a removed process stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ProcessSource>,
    /// The definition in force, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<ProcessDefinition>,
    /// Where it is in its life.
    pub state: ProcessState,
    /// Its process id (the leader of its process group), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When it was started, RFC 3339 in UTC, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// How long it has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Times its policy restarted it since the daemon started.
    pub restarts: u64,
    /// Of those, the ones within the restart window (the cap counts these).
    pub recent_restarts: u32,
    /// In `backoff`: the delay, and when it starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// In `backoff`: when it starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// How it last ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
    /// The last result of its check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckResult>,
    /// The last `STATUS=` it sent (notify checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_status: Option<String>,
    /// In `failed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its output (stdout and stderr together).
    pub log: PathBuf,
    /// Rotated logs, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotated_logs: Vec<PathBuf>,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// When, RFC 3339 in UTC.
    pub at: String,
    /// Its exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether its policy counts it as a failure.
    pub failure: bool,
    /// What happened, in words.
    pub message: String,
}

/// One run of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// When, RFC 3339 in UTC.
    pub at: String,
    /// Whether it passed.
    pub ok: bool,
    /// What it found.
    pub message: String,
}

/// The process service in the status channel's `services`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSummary {
    /// One line per process.
    pub processes: BTreeMap<String, ProcessBrief>,
    /// Processes running (ready or not).
    pub running: u32,
    /// Processes `failed`.
    pub failed: u32,
}

/// One process, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessBrief {
    /// Where it is in its life.
    pub state: ProcessState,
    /// Its process id, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How long it has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Times its policy restarted it since the daemon started.
    pub restarts: u64,
    /// How it last ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Whether its check last passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ok: Option<bool>,
    /// In `failed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, decode_request};

    #[test]
    fn every_listed_type_is_known_to_serde() {
        let frames = [
            r#"{"type":"status"}"#,
            r#"{"type":"define","definition":{"name":"w","argv":["sleep","9"]}}"#,
            r#"{"type":"remove","name":"w"}"#,
            r#"{"type":"start","name":"w"}"#,
            r#"{"type":"stop","all":true}"#,
            r#"{"type":"restart","label":"l","rolling":true}"#,
            r#"{"type":"logs","name":"w","follow":true}"#,
        ];
        assert_eq!(frames.len(), ProcessRequest::TYPES.len());
        for (frame, kind) in frames.iter().zip(ProcessRequest::TYPES) {
            let decoded = decode_request::<ProcessRequest>(frame.as_bytes()).unwrap();
            let again = serde_json::to_value(&decoded).unwrap();
            assert_eq!(again["type"], *kind);
            assert_eq!(again, serde_json::from_str::<serde_json::Value>(frame).unwrap(), "{frame} round-trips");
        }
    }

    #[test]
    fn define_starts_by_default_and_checks_are_tagged() {
        let frame = r#"{"type":"define","definition":{"name":"w","argv":["w"],"restart":"on-failure",
            "check":{"kind":"heartbeat","path":"/tmp/hb","stale_ms":30000}}}"#;
        let ProcessRequest::Define { definition, start } = decode_request(frame.as_bytes()).unwrap() else {
            panic!("not a define")
        };
        assert!(start);
        assert_eq!(definition.restart, Some(RestartPolicy::OnFailure), "the systemd spelling is accepted");
        assert_eq!(definition.check.as_ref().map(ProcessCheck::kind), Some("heartbeat"));
        let bad = br#"{"type":"define","definition":{"name":"w","argv":["w"],"check":{"kind":"psychic"}}}"#;
        assert_eq!(decode_request::<ProcessRequest>(bad).unwrap_err().code, ErrorCode::InvalidRequest);
        let bad = br#"{"type":"define","definition":{"name":"w","argv":["w"],"restart":"sometimes"}}"#;
        assert_eq!(decode_request::<ProcessRequest>(bad).unwrap_err().code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn selectors_count_what_was_given() {
        assert_eq!(Selector::default().given(), 0);
        assert_eq!(Selector::name("a").given(), 1);
        let both = Selector { name: Some("a".into()), all: true, ..Selector::default() };
        assert_eq!(both.given(), 2);
    }
}
