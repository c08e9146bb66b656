//! The `queue` channel: a durable job queue.
//!
//! A client submits a command (`submit`), and the daemon runs it later in its
//! own process group, retrying failed attempts with backoff until the job
//! succeeds or runs out of attempts (then it is `dead`: the dead-letter
//! queue). `submit` is answered only once the job is committed to disk.
//! Long-lived exchanges: `wait` streams `job_event` frames until the job
//! ends; `logs` streams `log_data` frames and one `log_end`.
//!
//! ```
//! use hearth::protocol::queue::{QueueRequest, JobState};
//! use hearth::protocol::decode_request;
//!
//! let req: QueueRequest = decode_request(br#"{"type":"submit","argv":["make","test"]}"#).unwrap();
//! let QueueRequest::Submit(spec) = req else { panic!() };
//! assert_eq!(spec.argv, ["make", "test"]);
//! assert_eq!(spec.queue, None);
//! assert!(JobState::Dead.is_final());
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::WireError;
use super::handshake::Channel;
use super::{ChannelProtocol, Request, Response};

/// The `queue` channel.
#[derive(Debug)]
pub struct QueueChannel;

impl ChannelProtocol for QueueChannel {
    const CHANNEL: Channel = Channel::Queue;
    type Request = QueueRequest;
    type Response = QueueResponse;
}

/// The queue a job goes to when the submit names none.
pub const DEFAULT_QUEUE: &str = "default";

/// The longest queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 64;

/// The longest idempotency key, in bytes.
pub const MAX_KEY: usize = 256;

/// The largest `max_attempts` a job may have.
pub const MAX_ATTEMPTS: u32 = 1000;

/// The largest page of `list`.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// The page size of `list` when the request names none.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// The most bytes of a log in one `log_data` frame (before base64).
pub const LOG_CHUNK: usize = 256 * 1024;

/// A request on the `queue` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum QueueRequest {
    /// Add a job (answered once it is committed) → `submitted`.
    Submit(JobSpec),
    /// One job and its attempts → `job`.
    Get {
        /// The job id.
        id: u64,
    },
    /// Jobs, newest first, filtered and paginated → `jobs`.
    List(ListFilter),
    /// Cancel a queued or running job (its process group is killed) → `canceled`.
    Cancel {
        /// The job id.
        id: u64,
    },
    /// Stream the job's state changes until it ends → `job_event`...
    Wait {
        /// The job id.
        id: u64,
    },
    /// Stream a job's captured output → `log_data`... then `log_end`.
    Logs(LogsRequest),
    /// Counts per state and per queue, backlog age, throughput → `stats`.
    Stats,
    /// Requeue dead jobs with a fresh attempt budget → `retried`.
    Retry(Selection),
    /// Delete dead jobs and their logs → `purged`.
    Purge(Selection),
}

impl Request for QueueRequest {
    const TYPES: &'static [&'static str] =
        &["submit", "get", "list", "cancel", "wait", "logs", "stats", "retry", "purge"];
}

/// A response on the `queue` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum QueueResponse {
    /// The answer to `submit`: the job is durable.
    Submitted {
        /// The job (the existing one when `deduplicated`).
        job: Job,
        /// True when the idempotency key matched a job submitted before.
        deduplicated: bool,
    },
    /// The answer to `get`.
    Job {
        /// The job.
        job: Job,
        /// Its attempts, oldest first.
        attempts: Vec<Attempt>,
    },
    /// The answer to `list`.
    Jobs {
        /// Matching jobs, newest first.
        jobs: Vec<Job>,
        /// Pass as `before_id` for the next page; `null` on the last page.
        next_before_id: Option<u64>,
    },
    /// The answer to `cancel`: the job has ended as `canceled`.
    Canceled {
        /// The job.
        job: Job,
    },
    /// One frame of a `wait` stream; the stream ends with a final state.
    JobEvent {
        /// The job as it is now.
        job: Job,
    },
    /// One chunk of a `logs` stream.
    LogData {
        /// Where `data` starts in the log file.
        offset: u64,
        /// The bytes, base64 (standard alphabet, padded).
        data: Base64,
    },
    /// The end of a `logs` stream.
    LogEnd {
        /// The offset after the last byte sent (the next `offset` to ask for).
        offset: u64,
        /// The job's state when the stream ended.
        state: JobState,
    },
    /// The answer to `stats`.
    Stats(Box<QueueStats>),
    /// The answer to `retry`.
    Retried {
        /// The jobs requeued.
        ids: Vec<u64>,
    },
    /// The answer to `purge`.
    Purged {
        /// The jobs deleted.
        ids: Vec<u64>,
    },
    /// The request failed; the connection stays usable.
    Error(WireError),
}

impl Response for QueueResponse {
    fn from_error(error: WireError) -> Self {
        QueueResponse::Error(error)
    }
    fn into_result(self) -> Result<Self, WireError> {
        match self {
            QueueResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// What to run, and how. Only `argv` is required; the daemon fills in its
/// configured defaults for the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The program and its arguments; the program is looked up on the
    /// daemon's `PATH` unless it contains a `/`.
    pub argv: Vec<String>,
    /// Variables added to (or replacing) the daemon's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The absolute working directory [default: the daemon user's home].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Written to the job's stdin: a string as its UTF-8 bytes, any other
    /// JSON value as compact JSON. Without it, stdin is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// The queue [default: `default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Higher runs first [default: 0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// An idempotency key, unique per queue within the retention window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Attempts before the job is dead [default: `queue.max_attempts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout; 0 means none [default: `queue.timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Backoff before the first retry [default: `queue.backoff_base`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base_ms: Option<u64>,
    /// The longest backoff [default: `queue.backoff_cap`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_cap_ms: Option<u64>,
    /// Earliest start, in ms since the Unix epoch [default: now].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
}

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker (or for its `run_at_ms`).
    Queued,
    /// An attempt is running.
    Running,
    /// The last attempt failed; waiting for the backoff before the next.
    RetryWait,
    /// An attempt exited with status 0.
    Succeeded,
    /// Every attempt failed: the job is in the dead-letter queue.
    Dead,
    /// Canceled by a client.
    Canceled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::RetryWait,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Canceled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::RetryWait => "retry_wait",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Canceled => "canceled",
        }
    }

    /// Parses a wire name.
    pub fn from_name(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// True for states a job never leaves on its own.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead | JobState::Canceled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The id: an integer that only grows, never reused.
    pub id: u64,
    /// The queue.
    pub queue: String,
    /// The state.
    pub state: JobState,
    /// Higher runs first.
    pub priority: i32,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Environment additions.
    pub env: BTreeMap<String, String>,
    /// The working directory.
    pub cwd: String,
    /// Bytes written to stdin.
    pub input_bytes: u64,
    /// The idempotency key, if any.
    pub key: Option<String>,
    /// Attempts counted against `max_attempts` (a manual retry resets it).
    pub attempts: u32,
    /// Attempts before the job is dead.
    pub max_attempts: u32,
    /// Per-attempt timeout; `null` for none.
    pub timeout_ms: Option<u64>,
    /// Backoff before the first retry.
    pub backoff_base_ms: u64,
    /// The longest backoff.
    pub backoff_cap_ms: u64,
    /// When it was submitted (ms since the epoch).
    pub created_at_ms: u64,
    /// When it may run next (earliest start, or the end of its backoff).
    pub run_at_ms: u64,
    /// When its latest attempt started.
    pub started_at_ms: Option<u64>,
    /// When it reached a final state.
    pub finished_at_ms: Option<u64>,
    /// The exit code of its latest attempt, if that attempt exited.
    pub exit_code: Option<i32>,
    /// The signal that ended its latest attempt, if one did.
    pub signal: Option<i32>,
    /// Why its latest attempt failed.
    pub last_error: Option<String>,
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1, 2, ... over the job's whole life.
    pub n: u32,
    /// When it started (ms since the epoch).
    pub started_at_ms: u64,
    /// When it ended; `null` while it runs.
    pub ended_at_ms: Option<u64>,
    /// The process (and process group) id.
    pub pid: Option<u32>,
    /// How it ended; `null` while it runs.
    pub outcome: Option<Outcome>,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// What went wrong.
    pub error: Option<String>,
    /// Whether it counts against `max_attempts` (interruptions by a daemon stop do not).
    pub counted: bool,
    /// Bytes of stdout kept from this attempt.
    pub stdout_bytes: u64,
    /// Bytes of stderr kept from this attempt.
    pub stderr_bytes: u64,
    /// True when output beyond `queue.log_max` was discarded (the log says where).
    pub truncated: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited with status 0.
    Succeeded,
    /// Exited non-zero, or was killed by a signal it did not get from hearth.
    Failed,
    /// Ran past its timeout and was killed.
    TimedOut,
    /// Could not be started (missing program, bad cwd, ...).
    SpawnFailed,
    /// Canceled by a client.
    Canceled,
    /// The daemon stopped while it ran; killed and requeued, not counted.
    Interrupted,
    /// The daemon died while it ran; found and killed by the next daemon, counted.
    Lost,
}

impl Outcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::SpawnFailed => "spawn_failed",
            Outcome::Canceled => "canceled",
            Outcome::Interrupted => "interrupted",
            Outcome::Lost => "lost",
        }
    }
}

/// Which jobs `list` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListFilter {
    /// Only these states; empty for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<JobState>,
    /// Only this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// At most this many (1 to 1000) [default: 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only jobs with a smaller id (the previous page's `next_before_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_id: Option<u64>,
}

/// Which dead jobs `retry` and `purge` act on: the listed `ids`, or with
/// `all`, every dead job (of `queue`, when given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// These jobs (each must be dead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<u64>,
    /// Every dead job (with `queue`: of that queue).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// With `all`: only this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// The job's stdout.
    #[default]
    Stdout,
    /// The job's stderr.
    Stderr,
}

impl LogStream {
    /// The wire name (and the log file's extension).
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// A `logs` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// The job id.
    pub id: u64,
    /// Which stream [default: stdout].
    #[serde(default)]
    pub stream: LogStream,
    /// Start at this byte [default: 0].
    #[serde(default)]
    pub offset: u64,
    /// Keep streaming as the job writes, until it ends.
    #[serde(default)]
    pub follow: bool,
}

/// What `stats` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Jobs per state, over every queue.
    pub states: StateCounts,
    /// Per queue.
    pub queues: BTreeMap<String, StateCounts>,
    /// Age of the oldest job that could run but waits for a worker, if any.
    pub oldest_queued_ms: Option<u64>,
    /// Jobs that reached a final state in the last 60 s.
    pub finished_last_minute: u64,
    /// Workers in the pool.
    pub workers: u32,
    /// Workers running an attempt now.
    pub busy_workers: u32,
    /// The store file.
    pub store: String,
    /// Set when the store was found corrupt or unopenable at start-up and
    /// moved aside; a fresh store was started.
    pub store_recovered: Option<StoreRecovery>,
}

/// Counts of jobs per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// Waiting for a worker (or a start time).
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// Waiting for a retry.
    pub retry_wait: u64,
    /// Done, exit 0.
    pub succeeded: u64,
    /// In the dead-letter queue.
    pub dead: u64,
    /// Canceled.
    pub canceled: u64,
}

impl StateCounts {
    /// The count for `state`.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::RetryWait => self.retry_wait,
            JobState::Succeeded => self.succeeded,
            JobState::Dead => self.dead,
            JobState::Canceled => self.canceled,
        }
    }

    /// The count for `state`, mutably.
    pub fn get_mut(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Queued => &mut self.queued,
            JobState::Running => &mut self.running,
            JobState::RetryWait => &mut self.retry_wait,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Dead => &mut self.dead,
            JobState::Canceled => &mut self.canceled,
        }
    }
}

/// A store that was moved aside at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecovery {
    /// Where the old store is now.
    pub moved_to: String,
    /// What was wrong with it.
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// Bytes carried as a base64 string (standard alphabet, padded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Base64 {
    /// The base64 text.
    ///
    /// ```
    /// use hearth::protocol::queue::Base64;
    /// assert_eq!(Base64(b"hi\n".to_vec()).encode(), "aGkK");
    /// assert_eq!(Base64::decode("aGkK").unwrap().0, b"hi\n");
    /// assert_eq!(Base64::decode("aA==").unwrap().0, b"h");
    /// ```
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.0.len().div_ceil(3) * 4);
        for chunk in self.0.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Parses base64 text.
    pub fn decode(text: &str) -> Result<Base64, String> {
        let bytes = text.as_bytes();
        if !bytes.len().is_multiple_of(4) {
            return Err("base64 length is not a multiple of 4".into());
        }
        let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let last = i == bytes.len() / 4 - 1;
            let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
            if pad > 2 || (pad > 0 && !last) {
                return Err("misplaced base64 padding".into());
            }
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                let v = B64.iter().position(|x| *x == c).ok_or_else(|| format!("invalid base64 byte {c:#04x}"))?;
                n = n << 6 | v as u32;
            }
            n <<= 6 * pad as u32;
            let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&decoded[..3 - pad]);
        }
        Ok(Base64(out))
    }
}

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Base64::decode(&text).map_err(serde::de::Error::custom)
    }
}

/// The queue service at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary {
    /// Jobs waiting to run (queued or waiting for a retry).
    pub pending: u64,
    /// Jobs running now.
    pub running: u64,
    /// Jobs in the dead-letter queue.
    pub dead: u64,
    /// Jobs that succeeded since the daemon started.
    #[serde(default)]
    pub succeeded: u64,
    /// Attempts that failed (non-zero exit, signal, timeout, spawn failure,
    /// lost in a crash) since the daemon started.
    #[serde(default)]
    pub attempts_failed: u64,
    /// Transactions the store could not commit since the daemon started.
    #[serde(default)]
    pub store_errors: u64,
    /// Workers in the pool.
    pub workers: u32,
    /// Age of the oldest job that could run but waits for a worker.
    pub oldest_queued_ms: Option<u64>,
    /// Where a corrupt or unopenable store was moved at start-up, if it was.
    pub store_moved_to: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrips() {
        for len in 0..50 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = Base64(bytes.clone()).encode();
            assert_eq!(Base64::decode(&text).unwrap().0, bytes, "{text}");
        }
        assert!(Base64::decode("a").is_err());
        assert!(Base64::decode("a=bc").is_err());
        assert!(Base64::decode("ab!c").is_err());
    }

    #[test]
    fn every_listed_type_decodes() {
        let examples = [
            r#"{"type":"submit","argv":["true"]}"#,
            r#"{"type":"get","id":1}"#,
            r#"{"type":"list"}"#,
            r#"{"type":"cancel","id":1}"#,
            r#"{"type":"wait","id":1}"#,
            r#"{"type":"logs","id":1}"#,
            r#"{"type":"stats"}"#,
            r#"{"type":"retry","all":true}"#,
            r#"{"type":"purge","ids":[3]}"#,
        ];
        for (kind, text) in QueueRequest::TYPES.iter().zip(examples) {
            assert!(text.contains(kind));
            super::super::decode_request::<QueueRequest>(text.as_bytes()).unwrap();
        }
    }

    #[test]
    fn a_jobs_json_input_reaches_it_with_every_number_as_sent() {
        // Found by the `requests` fuzz target: without correctly rounded
        // float parsing a number could come out one unit in the last place
        // away from what the client sent, and the job would see another value.
        let big = format!("600080{}", "8".repeat(69));
        let frame = format!(
            r#"{{"type":"submit","argv":["cat"],"input":{{"a":{big},"b":0.1,"c":1e-300,"d":18446744073709551615}}}}"#
        );
        let QueueRequest::Submit(spec) = super::super::decode_request::<QueueRequest>(frame.as_bytes()).unwrap() else {
            panic!("not a submit")
        };
        let input = serde_json::to_string(spec.input.as_ref().unwrap()).unwrap();
        // The nearest double to the 75-digit integer, as Python's float() gives it.
        assert_eq!(input, r#"{"a":6.000808888888889e+74,"b":0.1,"c":1e-300,"d":18446744073709551615}"#);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&input).unwrap(), *spec.input.as_ref().unwrap());
    }
}
