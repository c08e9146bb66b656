//! Events: what the daemon's services did, streamed to subscribers.
//!
//! A client subscribes on the `status` channel (`{"type": "subscribe", ...}`,
//! see proto-docs/status.md) and then reads `event` frames, each with a
//! sequence number that grows by one per event, until it sends
//! `unsubscribe` or closes the connection. A subscriber that falls behind
//! its buffer gets one `lagged` frame saying how many events it missed,
//! never unbounded memory in the daemon.

use serde::{Deserialize, Serialize};

use super::Channel;
use super::codes::stable_codes;
use super::queue::JobState;
use super::status::{HealthCode, HealthState};

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// One more than the event before it; a subscriber that sees a gap was
    /// told how many it missed (`lagged`).
    pub seq: u64,
    /// When it happened, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The service it comes from.
    pub service: Channel,
    /// What happened (`kind`) and its fields.
    #[serde(flatten)]
    pub data: EventData,
}

/// What happened, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventData {
    /// A job changed state (`from: null`: it was just submitted; `to: null`:
    /// it was purged or pruned).
    JobState {
        /// The job.
        id: u64,
        /// Its queue.
        queue: String,
        /// The state it left.
        from: Option<JobState>,
        /// The state it entered.
        to: Option<JobState>,
    },
    /// A pool build (or reset) started.
    PoolBuildStarted {
        /// The pool.
        pool: String,
        /// The resource being built.
        resource: String,
    },
    /// A pool build (or reset) ended.
    PoolBuildEnded {
        /// The pool.
        pool: String,
        /// The resource.
        resource: String,
        /// Whether the resource is ready.
        ok: bool,
        /// How long it took.
        ms: u64,
    },
    /// A resource was taken.
    PoolTake {
        /// The pool.
        pool: String,
        /// The lease handed out.
        lease: String,
        /// Whether it was ready at once (not built for this take).
        warm: bool,
    },
    /// A lease was released.
    PoolRelease {
        /// The pool.
        pool: String,
        /// The lease.
        lease: String,
    },
    /// A blob was stored (or a put found it stored already).
    BlobPut {
        /// Its hash.
        hash: String,
        /// Its size in bytes.
        size: u64,
        /// Whether it was stored already.
        existed: bool,
    },
    /// A blob was deleted.
    BlobDelete {
        /// Its hash.
        hash: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A collection removed blobs.
    BlobGc {
        /// How many.
        removed: u64,
        /// How many bytes they held.
        bytes: u64,
    },
    /// A supervised process changed state (`from: null`: it was just
    /// defined; `to: null`: it was removed).
    ProcessState {
        /// The process.
        name: String,
        /// The state it left.
        from: Option<super::process::ProcessState>,
        /// The state it entered.
        to: Option<super::process::ProcessState>,
        /// Its pid, while it runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// The daemon's health changed state.
    HealthChanged {
        /// The state before.
        from: HealthState,
        /// The state now.
        to: HealthState,
        /// The codes of the reasons now.
        codes: Vec<HealthCode>,
    },
    /// A kind this version of the library does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

impl EventData {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::JobState { .. } => EventKind::JobState,
            EventData::PoolBuildStarted { .. } => EventKind::PoolBuildStarted,
            EventData::PoolBuildEnded { .. } => EventKind::PoolBuildEnded,
            EventData::PoolTake { .. } => EventKind::PoolTake,
            EventData::PoolRelease { .. } => EventKind::PoolRelease,
            EventData::BlobPut { .. } => EventKind::BlobPut,
            EventData::BlobDelete { .. } => EventKind::BlobDelete,
            EventData::BlobGc { .. } => EventKind::BlobGc,
            EventData::ProcessState { .. } => EventKind::ProcessState,
            EventData::HealthChanged { .. } => EventKind::HealthChanged,
            EventData::Unknown => EventKind::Other("unknown".into()),
        }
    }

    /// What the event is about, for `ids` filters: the job id, the pool's
    /// name, the blob's hash, the process's name; `None` for events about
    /// the whole service.
    pub fn subject(&self) -> Option<String> {
        match self {
            EventData::JobState { id, .. } => Some(id.to_string()),
            EventData::PoolBuildStarted { pool, .. }
            | EventData::PoolBuildEnded { pool, .. }
            | EventData::PoolTake { pool, .. }
            | EventData::PoolRelease { pool, .. } => Some(pool.clone()),
            EventData::BlobPut { hash, .. } | EventData::BlobDelete { hash, .. } => Some(hash.clone()),
            EventData::ProcessState { name, .. } => Some(name.clone()),
            EventData::BlobGc { .. } | EventData::HealthChanged { .. } | EventData::Unknown => None,
        }
    }
}

stable_codes! {
    /// The kinds of events (the `kind` field), for filters and docs.
    pub enum EventKind {
        /// A job changed state.
        JobState => "job_state",
        /// A pool build or reset started.
        PoolBuildStarted => "pool_build_started",
        /// A pool build or reset ended.
        PoolBuildEnded => "pool_build_ended",
        /// A resource was taken.
        PoolTake => "pool_take",
        /// A lease was released.
        PoolRelease => "pool_release",
        /// A blob was stored.
        BlobPut => "blob_put",
        /// A blob was deleted.
        BlobDelete => "blob_delete",
        /// A collection removed blobs.
        BlobGc => "blob_gc",
        /// A supervised process changed state.
        ProcessState => "process_state",
        /// The daemon's health changed state.
        HealthChanged => "health_changed",
    }
}

/// Which events a subscriber wants: each non-empty list must match (an
/// empty list matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only events of these services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Channel>,
    /// Only events of these kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<EventKind>,
    /// Only events about these subjects (job ids as strings, pool names,
    /// blob hashes, process names; see [`EventData::subject`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// A `subscribe` request: a filter, and where to resume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Resume after this sequence number: the events after it that the
    /// daemon still keeps (`daemon.event_buffer`) are sent first, and those
    /// it no longer keeps are reported as one `lagged`. Absent: only events
    /// from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Which events.
    #[serde(flatten)]
    pub filter: EventFilter,
}

/// The most entries each list of an [`EventFilter`] may have.
pub const MAX_FILTER_ENTRIES: usize = 256;

impl EventFilter {
    /// Whether an event of `service`, `kind` and `subject` passes.
    pub fn matches(&self, service: Channel, kind: &EventKind, subject: Option<&str>) -> bool {
        (self.services.is_empty() || self.services.contains(&service))
            && (self.kinds.is_empty() || self.kinds.contains(kind))
            && (self.ids.is_empty() || subject.is_some_and(|s| self.ids.iter().any(|id| id == s)))
    }

    /// Why this filter cannot be served, if it cannot: an unknown kind, or
    /// a list over [`MAX_FILTER_ENTRIES`].
    pub fn check(&self) -> Result<(), String> {
        if let Some(EventKind::Other(kind)) = self.kinds.iter().find(|k| matches!(k, EventKind::Other(_))) {
            let known: Vec<&str> = EventKind::ALL.iter().map(EventKind::as_str).collect();
            return Err(format!("unknown event kind {kind:?}; kinds are {}", known.join(", ")));
        }
        let longest = self.services.len().max(self.kinds.len()).max(self.ids.len());
        if longest > MAX_FILTER_ENTRIES {
            return Err(format!("a filter list has {longest} entries; the most is {MAX_FILTER_ENTRIES}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_flatten_their_kind_and_fields() {
        let event = Event {
            seq: 7,
            at_ms: 1,
            service: Channel::Queue,
            data: EventData::JobState { id: 42, queue: "default".into(), from: None, to: Some(JobState::Queued) },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "job_state");
        assert_eq!(json["id"], 42);
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
        let newer: Event =
            serde_json::from_str(r#"{"seq":1,"at_ms":1,"service":"queue","kind":"from_the_future","x":1}"#).unwrap();
        assert_eq!(newer.data, EventData::Unknown);
    }

    #[test]
    fn filters_match_each_list_and_refuse_unknown_kinds() {
        let filter = EventFilter { services: vec![Channel::Queue], kinds: vec![], ids: vec!["42".into()] };
        assert!(filter.matches(Channel::Queue, &EventKind::JobState, Some("42")));
        assert!(!filter.matches(Channel::Queue, &EventKind::JobState, Some("43")));
        assert!(!filter.matches(Channel::Pool, &EventKind::PoolTake, Some("42")));
        assert!(!filter.matches(Channel::Queue, &EventKind::JobState, None));
        assert!(EventFilter::default().matches(Channel::Blob, &EventKind::BlobGc, None));
        let unknown: EventFilter = serde_json::from_str(r#"{"kinds":["job_state","nope"]}"#).unwrap();
        assert!(unknown.check().unwrap_err().contains("\"nope\""));
    }
}
