//! The `pool` channel: prewarmed resources (Python virtual environments,
//! scratch directories, anything a command can build in a directory) that
//! the daemon builds in the background and hands out by lease.
//!
//! A client never names a path: `take` answers with a daemon-issued lease id
//! and the resource's path, and every later request about that resource
//! (`release`) names the lease. A lease id is 32 lowercase hex digits;
//! anything else (a path, say) does not even decode.
//!
//! ```
//! use hearth::protocol::decode_request;
//! use hearth::protocol::pool::PoolRequest;
//! use hearth::protocol::ErrorCode;
//!
//! let take: PoolRequest = decode_request(br#"{"type":"take","pool":"venv"}"#).unwrap();
//! assert_eq!(take, PoolRequest::Take { pool: "venv".into(), timeout_ms: None });
//!
//! let path = br#"{"type":"release","lease":"/home/ada/.local/state/hearth/pools/venv/x"}"#;
//! assert_eq!(decode_request::<PoolRequest>(path).unwrap_err().code, ErrorCode::InvalidRequest);
//! ```
//!
//! The long form is `proto-docs/pool.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::error::WireError;
use super::handshake::Channel;
use super::{ChannelProtocol, Request, Response};

/// The `pool` channel.
#[derive(Debug)]
pub struct PoolChannel;

impl ChannelProtocol for PoolChannel {
    const CHANNEL: Channel = Channel::Pool;
    type Request = PoolRequest;
    type Response = PoolResponse;
}

/// A request on the `pool` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PoolRequest {
    /// Every pool's counters, or one pool's → `status`.
    Status {
        /// Only this pool.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// Hand over a resource: a ready one at once, else one built on demand
    /// within `timeout_ms` → `taken`.
    Take {
        /// The pool.
        pool: String,
        /// How long to wait for an on-demand build (default 10 minutes);
        /// 0 takes only a ready resource.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Give a taken resource back: reset and reuse it, or remove it → `released`.
    Release {
        /// The lease `take` returned.
        lease: LeaseId,
        /// Reset the resource and put it back in the pool when its pool can
        /// reset and needs one; else it is removed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reuse: bool,
    },
    /// The resources handed out and not released yet → `leases`.
    Leases {
        /// Only this pool's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// Set how many ready resources a pool keeps → `target_set`.
    Warm {
        /// The pool.
        pool: String,
        /// The new target.
        size: u32,
    },
    /// Remove a pool's ready resources and set its target to 0 → `drained`.
    Drain {
        /// The pool.
        pool: String,
    },
    /// Define or redefine a pool at run time (persisted) → `defined`.
    Define {
        /// The definition.
        definition: PoolDefinition,
    },
    /// Remove a run-time definition → `undefined`.
    Undefine {
        /// The pool.
        pool: String,
    },
}

impl Request for PoolRequest {
    const TYPES: &'static [&'static str] =
        &["status", "take", "release", "leases", "warm", "drain", "define", "undefine"];
}

/// A response on the `pool` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PoolResponse {
    /// The answer to `status`.
    Status(PoolsReport),
    /// The answer to `take`: the resource now belongs to the caller.
    Taken(Lease),
    /// The answer to `release`.
    Released {
        /// The lease, now void.
        lease: LeaseId,
        /// What happens to the resource.
        outcome: ReleaseOutcome,
        /// Why a resource the caller asked to reuse is removed instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The answer to `leases`.
    Leases {
        /// Every lease not released yet, oldest first.
        leases: Vec<Lease>,
    },
    /// The answer to `warm`.
    TargetSet {
        /// The pool.
        pool: String,
        /// The new target.
        target: u32,
        /// The target before.
        previous: u32,
    },
    /// The answer to `drain`.
    Drained {
        /// The pool.
        pool: String,
        /// Ready resources removed.
        removed: u32,
    },
    /// The answer to `define`.
    Defined {
        /// The pool.
        pool: String,
        /// The definition in force now: `config` when config.toml defines the
        /// same name (the run-time definition is kept but does not apply).
        source: DefinitionSource,
        /// False when the same definition was already stored (nothing changed).
        changed: bool,
    },
    /// The answer to `undefine`.
    Undefined {
        /// The pool.
        pool: String,
        /// The definition in force now (`builtin`), or none: the pool is gone
        /// once its leases are released.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<DefinitionSource>,
    },
    /// The request failed; the connection stays usable.
    Error(WireError),
}

impl Response for PoolResponse {
    fn from_error(error: WireError) -> Self {
        PoolResponse::Error(error)
    }
    fn into_result(self) -> Result<Self, WireError> {
        match self {
            PoolResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// A lease id: 32 lowercase hex digits issued by the daemon. It decodes from
/// nothing else, so a path can never stand in for one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct LeaseId(String);

impl LeaseId {
    /// The length of a lease id in hex digits.
    pub const LEN: usize = 32;

    /// Parses a lease id.
    ///
    /// ```
    /// use hearth::protocol::pool::LeaseId;
    /// assert!(LeaseId::parse("0123456789abcdef0123456789abcdef").is_ok());
    /// assert!(LeaseId::parse("/tmp/venv").is_err());
    /// assert!(LeaseId::parse("0123456789ABCDEF0123456789ABCDEF").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<LeaseId, InvalidLeaseId> {
        if s.len() == Self::LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(LeaseId(s.to_owned()))
        } else {
            Err(InvalidLeaseId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for LeaseId {
    type Err = InvalidLeaseId;
    fn from_str(s: &str) -> Result<Self, InvalidLeaseId> {
        LeaseId::parse(s)
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        LeaseId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A string that is not a lease id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a lease id is the 32 lowercase hex digits that take returned (never a path)")]
pub struct InvalidLeaseId;

/// What a pool's resources are and how they are built.
///
/// `create`, `check` and `reset` are argument vectors, run without a shell,
/// in which `{path}` stands for the resource's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDefinition {
    /// The pool's name: 1 to 64 ASCII letters, digits, `_` or `-`, starting
    /// with a letter or digit.
    pub name: String,
    /// `command` (built by `create`) or `venv` (a Python virtual
    /// environment). When absent: `command` if `create` is given, else `venv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PoolKind>,
    /// Builds a resource in the fresh empty directory `{path}`. Absent for
    /// `venv`; given, it must name a program (an empty list is refused,
    /// never read as "absent").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<Vec<String>>,
    /// Exits 0 when a ready resource is still good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Vec<String>>,
    /// Makes a released resource reusable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Vec<String>>,
    /// `venv` only: packages installed into each environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// `venv` only: the interpreter (default `python3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// How many ready resources to keep.
    #[serde(default)]
    pub size: u32,
    /// Ready resources older than this are rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// A build (all its commands) taking longer is killed (default 10 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_timeout_ms: Option<u64>,
    /// How often ready resources are checked (default 15 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_interval_ms: Option<u64>,
    /// Variables added to the environment of the pool's commands.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// How a pool's resources are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// By the definition's `create` command.
    Command,
    /// A Python virtual environment: `uv venv` when `uv` is on `PATH`, else
    /// `python3 -m venv`, plus the definition's packages.
    Venv,
}

impl PoolKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Command => "command",
            PoolKind::Venv => "venv",
        }
    }
}

/// Where the definition in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionSource {
    /// Built into the daemon (the `venv` pool).
    Builtin,
    /// A `[pool.<name>]` section of config.toml.
    Config,
    /// A `define` request.
    Runtime,
}

impl DefinitionSource {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DefinitionSource::Builtin => "builtin",
            DefinitionSource::Config => "config",
            DefinitionSource::Runtime => "runtime",
        }
    }
}

/// What `release` does with the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseOutcome {
    /// Removed (in the background).
    Removed,
    /// Being reset; it goes back to the pool once `reset` succeeds.
    Resetting,
}

/// A taken resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease id: the only handle on the resource.
    pub lease: LeaseId,
    /// The pool.
    pub pool: String,
    /// The resource's id (its directory's name).
    pub resource: String,
    /// The resource's directory; it now belongs to the holder.
    pub path: PathBuf,
    /// True when it was ready at once; false when it was built on demand.
    pub warm: bool,
    /// When its build finished, RFC 3339 in UTC.
    pub created_at: String,
    /// When it was taken.
    pub taken_at: String,
    /// How old it is (since its build finished).
    pub age_ms: u64,
    /// How long its build took.
    pub build_ms: u64,
    /// How long the take waited for it.
    pub wait_ms: u64,
    /// The `client` named in the taker's handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The taker's process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_pid: Option<u32>,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolsReport {
    /// One entry per pool, by name.
    pub pools: Vec<PoolStatus>,
    /// Builds and resets running now, all pools together.
    pub builds_running: u32,
    /// The most that run at once.
    pub max_concurrent_builds: u32,
}

/// One pool's state and counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool.
    pub name: String,
    /// Where its definition comes from; absent when it is no longer defined
    /// and only lists until its last lease is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DefinitionSource>,
    /// The definition in force, with defaults filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<PoolDefinition>,
    /// The commands that run, `{path}` still in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<PoolCommands>,
    /// Ready resources it keeps.
    pub target: u32,
    /// Ready to hand out.
    pub ready: u32,
    /// Being built.
    pub building: u32,
    /// Built, but waiting for or running a check (after a restart, or the
    /// periodic one); handed out once it passes.
    pub checking: u32,
    /// Released with `reuse`, being reset.
    pub resetting: u32,
    /// Handed out.
    pub taken: u32,
    /// Takes waiting for an on-demand build.
    pub waiting: u32,
    /// Takes served since the daemon started.
    pub takes: u64,
    /// Takes served with a ready resource.
    pub warm_takes: u64,
    /// `warm_takes / takes`; absent before the first take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_hit_rate: Option<f64>,
    /// Builds that succeeded since the daemon started.
    pub builds: u64,
    /// Their mean duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_build_ms: Option<u64>,
    /// Builds that failed in a row (0 once one succeeds).
    pub failures: u64,
    /// Builds that failed since the daemon started.
    pub failures_total: u64,
    /// The last failed build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<BuildFailure>,
    /// While failing: the delay before the next background build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// While failing: when the next background build starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// Ready resources removed for being older than `max_age_ms`.
    pub expired: u64,
    /// Ready resources removed because `check` failed.
    pub check_failed: u64,
}

/// The commands a pool runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCommands {
    /// Run in order to build a resource.
    pub create: Vec<Vec<String>>,
    /// Checks a ready resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Vec<String>>,
    /// Resets a released resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Vec<String>>,
}

/// A failed build (or reset, or check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildFailure {
    /// When, RFC 3339 in UTC.
    pub at: String,
    /// What failed: the command and its exit status or timeout, then the
    /// last lines of its output.
    pub message: String,
    /// The whole (bounded) log of that build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

/// The pool service in the status channel's `services`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolSummary {
    /// One line per pool.
    pub pools: BTreeMap<String, PoolBrief>,
    /// Builds and resets running now.
    pub builds_running: u32,
}

/// One pool, in short.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolBrief {
    /// Ready resources it keeps.
    pub target: u32,
    /// Ready now.
    pub ready: u32,
    /// Being built or reset.
    pub building: u32,
    /// Handed out.
    pub taken: u32,
    /// `warm_takes / takes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_hit_rate: Option<f64>,
    /// Mean build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_build_ms: Option<u64>,
    /// Builds failed in a row.
    pub failures: u64,
    /// Successful builds since the daemon started.
    #[serde(default)]
    pub builds: u64,
    /// Builds failed since the daemon started.
    #[serde(default)]
    pub failures_total: u64,
    /// The first line of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, decode_request};

    #[test]
    fn every_listed_type_is_known_to_serde() {
        let lease = "0123456789abcdef0123456789abcdef";
        let frames = [
            r#"{"type":"status"}"#.to_owned(),
            r#"{"type":"take","pool":"p"}"#.to_owned(),
            format!(r#"{{"type":"release","lease":"{lease}"}}"#),
            r#"{"type":"leases"}"#.to_owned(),
            r#"{"type":"warm","pool":"p","size":1}"#.to_owned(),
            r#"{"type":"drain","pool":"p"}"#.to_owned(),
            r#"{"type":"define","definition":{"name":"p"}}"#.to_owned(),
            r#"{"type":"undefine","pool":"p"}"#.to_owned(),
        ];
        assert_eq!(frames.len(), PoolRequest::TYPES.len());
        for (frame, kind) in frames.iter().zip(PoolRequest::TYPES) {
            let decoded = decode_request::<PoolRequest>(frame.as_bytes()).unwrap();
            let again = serde_json::to_value(&decoded).unwrap();
            assert_eq!(again["type"], *kind);
        }
    }

    #[test]
    fn leases_are_never_paths() {
        for bad in ["/tmp/x", "../../etc", "", "0123456789abcdef0123456789abcde", "0123456789abcdef0123456789abcdeg"] {
            let frame = serde_json::json!({"type": "release", "lease": bad}).to_string();
            let err = decode_request::<PoolRequest>(frame.as_bytes()).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{bad}");
            assert!(err.message.contains("lease id"), "{}", err.message);
        }
    }
}
