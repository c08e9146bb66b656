//! The `sync` channel: live documents shared by every window of an app.
//!
//! A document is an Automerge document with a name (`settings` is built in;
//! apps create others such as `notebook/3f2a`). The handshake names it and
//! picks a mode:
//!
//! ```text
//!   {"channel":"sync","protocol":1,"client":"editor/2.1","doc":"notebook/3f2a","mode":"view"}
//! ```
//!
//! - **view** (the default): JSON for any language. `get` reads the document
//!   as JSON with its revision (its Automerge heads); `watch` starts a stream
//!   of `changed` events (patches, in document order, each with the new
//!   revision); `write` applies path operations as one Automerge change.
//! - **replica**: the client keeps its own Automerge replica and the two
//!   sides exchange Automerge sync messages as binary frames. The JSON
//!   requests work in this mode too.
//!
//! # Telling a sync message from a JSON frame
//!
//! Every JSON frame is an object, so its payload starts with `{` (0x7B).
//! An Automerge sync message starts with its message type byte (0x42 or
//! 0x43), never 0x7B. So a reader looks at the first byte:
//!
//! ```
//! use hearth::protocol::sync::{FrameKind, classify_frame};
//! assert_eq!(classify_frame(br#"{"type":"get"}"#), FrameKind::Json);
//! assert_eq!(classify_frame(&[0x42, 0x00, 0x01]), FrameKind::SyncMessage);
//! ```
//!
//! The same patch vocabulary serves writes and the change stream, so a view
//! client keeps a JSON copy current with [`apply_patch`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ErrorCode, WireError};
use super::handshake::Channel;
use super::{ChannelProtocol, Request, Response};

/// The name of the built-in settings document.
pub const SETTINGS_DOC: &str = "settings";

/// The longest document name, in bytes.
pub const MAX_DOC_NAME: usize = 200;

/// The deepest path a write may name (and the deepest nesting a written value may have).
pub const MAX_PATH_DEPTH: usize = 64;

/// The `sync` channel.
#[derive(Debug)]
pub struct SyncChannel;

impl ChannelProtocol for SyncChannel {
    const CHANNEL: Channel = Channel::Sync;
    type Request = SyncRequest;
    type Response = SyncResponse;
}

/// What a frame on the sync channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A JSON object: a request, response or event.
    Json,
    /// An Automerge sync message (replica mode).
    SyncMessage,
}

/// Classifies a payload by its first byte (see the module docs). An empty
/// payload counts as a sync message, which then fails to decode.
pub fn classify_frame(payload: &[u8]) -> FrameKind {
    match payload.first() {
        Some(b'{') => FrameKind::Json,
        _ => FrameKind::SyncMessage,
    }
}

/// A validated document name: one to eight `/`-separated segments of
/// lowercase ASCII letters, digits, `-`, `_` and `.`, none empty, none
/// starting with `.`, at most [`MAX_DOC_NAME`] bytes in all. Lowercase
/// only, so that two names never share a file on a case-insensitive disk.
///
/// ```
/// use hearth::protocol::sync::DocName;
/// assert!(DocName::parse("notebook/3f2a-77").is_ok());
/// assert!(DocName::parse("../etc/passwd").is_err());
/// assert!(DocName::parse("Notebook").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DocName(String);

impl DocName {
    /// Checks `name`; the error says what is wrong (`invalid_doc_name`).
    pub fn parse(name: &str) -> Result<DocName, WireError> {
        let bad = |why: &str| {
            let shown: String = name.chars().take(64).collect();
            WireError::new(ErrorCode::InvalidDocName, format!("document name {shown:?} {why}"))
        };
        if name.is_empty() {
            return Err(bad("is empty"));
        }
        if name.len() > MAX_DOC_NAME {
            return Err(bad(&format!("is longer than {MAX_DOC_NAME} bytes")));
        }
        let segments: Vec<&str> = name.split('/').collect();
        if segments.len() > 8 {
            return Err(bad("has more than 8 segments"));
        }
        for segment in segments {
            if segment.is_empty() {
                return Err(bad("has an empty segment (a leading, trailing or doubled '/')"));
            }
            if segment.starts_with('.') {
                return Err(bad("has a segment starting with '.'"));
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
            {
                return Err(bad(&format!(
                    "contains {c:?}; names use lowercase letters, digits, '-', '_', '.' and '/' between segments"
                )));
            }
        }
        Ok(DocName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The store's file stem for this name: `/` becomes `~` (which names
    /// never contain), so the mapping is one-to-one and stays in one directory.
    pub fn file_stem(&self) -> String {
        self.0.replace('/', "~")
    }

    /// The name a file stem stands for, if it is one.
    pub fn from_file_stem(stem: &str) -> Option<DocName> {
        DocName::parse(&stem.replace('~', "/")).ok()
    }
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DocName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        DocName::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// How a connection joins its document's room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// JSON reads, a stream of JSON patches, writes as path operations.
    #[default]
    View,
    /// Automerge sync messages as binary frames, both ways.
    Replica,
}

impl SyncMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::View => "view",
            SyncMode::Replica => "replica",
        }
    }
}

/// The sync channel's fields of the handshake, beside `channel`,
/// `protocol` and `client`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncOpen {
    /// The document whose room to join. Absent: a control connection, for
    /// `list`, `inspect` and `close` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<DocName>,
    /// View (the default) or replica.
    #[serde(default)]
    pub mode: SyncMode,
}

impl SyncOpen {
    /// Reads the sync fields of a handshake (its `params`), with typed
    /// errors: a bad name is `invalid_doc_name`, a bad mode `invalid_handshake`.
    pub fn from_params(params: &serde_json::Map<String, Value>) -> Result<SyncOpen, WireError> {
        let doc = match params.get("doc") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(DocName::parse(s)?),
            Some(_) => return Err(WireError::new(ErrorCode::InvalidDocName, "\"doc\" must be a string")),
        };
        let mode = match params.get("mode") {
            None | Some(Value::Null) => SyncMode::View,
            Some(v) => SyncMode::deserialize(v)
                .map_err(|_| WireError::new(ErrorCode::InvalidHandshake, "\"mode\" must be \"view\" or \"replica\""))?,
        };
        Ok(SyncOpen { doc, mode })
    }

    /// The handshake fields of this open, for a client to send.
    pub fn params(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        if let Some(doc) = &self.doc {
            map.insert("doc".into(), Value::String(doc.as_str().to_owned()));
        }
        map.insert("mode".into(), Value::String(self.mode.as_str().to_owned()));
        map
    }
}

/// A document's revision: its Automerge heads, as sorted lowercase hex
/// change hashes. The empty revision is the empty document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub Vec<String>);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(empty)");
        }
        let short: Vec<&str> = self.0.iter().map(|h| &h[..h.len().min(12)]).collect();
        f.write_str(&short.join("+"))
    }
}

/// One step of a path: a map key or a list (or text) index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathElem {
    /// A key of a map.
    Key(String),
    /// An index of a list.
    Index(u64),
}

impl fmt::Display for PathElem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElem::Key(k) => write!(f, "{k:?}"),
            PathElem::Index(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for PathElem {
    fn from(key: &str) -> Self {
        PathElem::Key(key.to_owned())
    }
}

impl From<String> for PathElem {
    fn from(key: String) -> Self {
        PathElem::Key(key)
    }
}

impl From<u64> for PathElem {
    fn from(index: u64) -> Self {
        PathElem::Index(index)
    }
}

/// A path from the document's root.
pub type Path = Vec<PathElem>;

/// Shows a path as `["a",0,"b"]` for messages.
pub fn show_path(path: &[PathElem]) -> String {
    let parts: Vec<String> = path.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// What a `put` creates when its value is not plain JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// A collaborative text object (the value is a string); edit it with `splice`.
    Text,
    /// A counter (the value is an integer); change it with `increment`.
    Counter,
    /// A timestamp (the value is milliseconds since the Unix epoch).
    Timestamp,
}

/// A path operation: a write (in `write`) or a patch (in `changed`).
///
/// Indices of lists count elements; indices of text count Unicode code points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PatchOp {
    /// Sets a map key (created if missing) or an existing list element.
    Put {
        /// The key or element.
        path: Path,
        /// The new value: objects become maps, arrays lists, strings plain strings.
        value: Value,
        /// Make the value a text, counter or timestamp instead.
        #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
        kind: Option<ValueKind>,
    },
    /// Removes a map key, or `count` elements of a list or characters of a
    /// text starting at the path's last index.
    Delete {
        /// The key, or the first element.
        path: Path,
        /// Elements or characters to remove (lists and texts; default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
    },
    /// Inserts `values` into a list before the path's last index (the
    /// list's length appends).
    Insert {
        /// The list and the index.
        path: Path,
        /// The values, in order.
        values: Vec<Value>,
    },
    /// Edits a text: removes `delete` characters at `index`, then inserts `insert` there.
    Splice {
        /// The text object.
        path: Path,
        /// Where, in code points.
        index: u64,
        /// Characters to remove.
        #[serde(default, skip_serializing_if = "is_zero")]
        delete: u64,
        /// Text to insert.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        insert: String,
    },
    /// Adds `by` (which may be negative) to a counter.
    Increment {
        /// The counter.
        path: Path,
        /// The amount.
        by: i64,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PatchOp {
    /// The path the operation names.
    pub fn path(&self) -> &[PathElem] {
        match self {
            PatchOp::Put { path, .. }
            | PatchOp::Delete { path, .. }
            | PatchOp::Insert { path, .. }
            | PatchOp::Splice { path, .. }
            | PatchOp::Increment { path, .. } => path,
        }
    }

    /// The operation's name.
    pub fn name(&self) -> &'static str {
        match self {
            PatchOp::Put { .. } => "put",
            PatchOp::Delete { .. } => "delete",
            PatchOp::Insert { .. } => "insert",
            PatchOp::Splice { .. } => "splice",
            PatchOp::Increment { .. } => "increment",
        }
    }
}

/// A peer in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's id, unique within this daemon's run.
    pub id: u64,
    /// The `client` its handshake named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Its process id, from the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How it joined.
    pub mode: SyncMode,
    /// When it joined, RFC 3339 in UTC.
    pub since: String,
    /// True for the connection that asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub you: bool,
}

/// A document in `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocSummary {
    /// The document's name.
    pub doc: DocName,
    /// Whether its room is loaded.
    pub loaded: bool,
    /// Peers in its room now.
    pub peers: u64,
    /// Bytes its store file holds.
    pub stored_bytes: u64,
}

/// What `inspect` tells about one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomReport {
    /// The document.
    pub doc: DocName,
    /// Whether its room is loaded (inspecting does not load it).
    pub loaded: bool,
    /// The durable revision, when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    /// The peers in the room.
    pub peers: Vec<PeerInfo>,
    /// Bytes of the store file: the last compaction plus the changes appended since.
    pub stored_bytes: u64,
    /// Of those, bytes appended since the last compaction.
    pub appended_bytes: u64,
    /// Changes in the document's history, when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<u64>,
    /// Milliseconds the room has had no peers, when loaded and empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

/// The sync service at a glance, in `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    /// Rooms loaded now.
    pub rooms: u64,
    /// Peers in them.
    pub peers: u64,
    /// Writes (view) received since the daemon started.
    pub writes: u64,
    /// Sync messages (replica) received since the daemon started.
    pub sync_messages: u64,
    /// Group commits of the store since the daemon started.
    pub commits: u64,
    /// Peers disconnected with `peer_too_slow` since the daemon started.
    pub peers_dropped_slow: u64,
    /// Appends the store could not commit since the daemon started.
    pub store_errors: u64,
    /// Compactions done since the daemon started.
    pub compactions: u64,
    /// The settings mirror, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_file: Option<String>,
}

/// A request on the `sync` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncRequest {
    /// The document (or the value at `path`) as JSON → `value`.
    Get {
        /// Where; empty for the whole document.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        path: Path,
    },
    /// Starts the stream of changes → `watching`, then `changed` events (and
    /// `snapshot` when the peer fell too far behind, `presence` when peers
    /// come and go).
    Watch {
        /// Only changes at or below this path (and the value there).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        path: Path,
        /// A revision the client already has: `watching` then carries only
        /// the patches from it instead of the whole value, when it can.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Revision>,
    },
    /// Applies `ops` as one change → `written`, once it is durable.
    Write {
        /// The operations, applied in order; all or none.
        ops: Vec<PatchOp>,
        /// The revision the client based its ops on; paths are then read
        /// as of that revision and the change is merged (see proto-docs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<Revision>,
    },
    /// Who is in this room → `peers`.
    Peers,
    /// Every document, loaded or not → `docs`.
    List {
        /// Only names starting with this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        /// Continue after this name (`next` of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many (default and cap 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// One document's room → `room`.
    Inspect {
        /// The document; default: this connection's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<DocName>,
    },
    /// Evicts a room: its peers are disconnected with `room_closed` and the
    /// document unloads (it stays on disk) → `closed`.
    Close {
        /// The document; default: this connection's (which then closes too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<DocName>,
    },
}

impl Request for SyncRequest {
    const TYPES: &'static [&'static str] = &["get", "watch", "write", "peers", "list", "inspect", "close"];
}

/// A response or event on the `sync` channel. Events (`changed`,
/// `snapshot`, `presence`) come only after `watch`, between responses;
/// every other type answers one request, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncResponse {
    /// The first frame after the handshake: the connection joined its
    /// document's room (or, without `doc`, is a control connection). A
    /// connection that cannot join gets an `error` instead, and is closed.
    Joined {
        /// The document, unless a control connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<DocName>,
        /// How it joined.
        mode: SyncMode,
        /// Its peer id in the room (see `peers`).
        peer: u64,
    },
    /// The answer to `get`.
    Value {
        /// The revision read.
        revision: Revision,
        /// The JSON value.
        value: Value,
    },
    /// The answer to `watch`: the starting point of the stream.
    Watching {
        /// The revision the stream starts from.
        revision: Revision,
        /// The value at the watched path, unless `patches` bring the client's `since` up to date.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
        /// The changes from the client's `since`, when it sent one the daemon could use.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patches: Option<Vec<PatchOp>>,
    },
    /// Event: the document changed (one or more coalesced changes).
    Changed {
        /// The revision before these patches.
        from: Revision,
        /// The revision after them.
        revision: Revision,
        /// The patches, in order.
        patches: Vec<PatchOp>,
    },
    /// Event: the peer fell behind further than the room's patch log
    /// reaches; here is the value to start over from.
    Snapshot {
        /// The revision of `value`.
        revision: Revision,
        /// The value at the watched path.
        value: Value,
    },
    /// Event: peers came or went.
    Presence {
        /// Everyone in the room now.
        peers: Vec<PeerInfo>,
    },
    /// The answer to `write`: it is durable.
    Written {
        /// The revision right after the change.
        revision: Revision,
        /// True when `base` was not the latest revision: the write was
        /// merged with changes the client had not seen.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stale: bool,
    },
    /// The answer to `peers`.
    Peers {
        /// Everyone in the room, this connection marked `you`.
        peers: Vec<PeerInfo>,
    },
    /// The answer to `list`.
    Docs {
        /// Documents by name.
        docs: Vec<DocSummary>,
        /// `after` for the next page, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// The answer to `inspect`.
    Room(Box<RoomReport>),
    /// The answer to `close`.
    Closed {
        /// The document.
        doc: DocName,
        /// Peers that were disconnected.
        peers: u64,
        /// False when the room was not loaded.
        was_loaded: bool,
    },
    /// The request failed (or, just before the daemon closes the
    /// connection, why it does).
    Error(WireError),
}

impl SyncResponse {
    /// True for the event types, which come after `watch` between responses.
    pub fn is_event(&self) -> bool {
        matches!(self, SyncResponse::Changed { .. } | SyncResponse::Snapshot { .. } | SyncResponse::Presence { .. })
    }
}

impl Response for SyncResponse {
    fn from_error(error: WireError) -> Self {
        SyncResponse::Error(error)
    }
    fn into_result(self) -> Result<Self, WireError> {
        match self {
            SyncResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// Why a patch could not be applied to a JSON value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {op} at {path}: {why}")]
pub struct PatchError {
    /// The operation.
    pub op: &'static str,
    /// Its path.
    pub path: String,
    /// What was wrong.
    pub why: String,
}

/// Applies one patch to a JSON copy of the document (or of the watched
/// value, with `base` the watched path), the way the daemon applied it to
/// the document: a view client keeps its copy current with this.
///
/// ```
/// use hearth::protocol::sync::{apply_patch, PatchOp, PathElem};
/// use serde_json::json;
/// let mut doc = json!({"title": "hello", "tags": ["a"]});
/// let op: PatchOp = serde_json::from_value(json!({"op": "insert", "path": ["tags", 1], "values": ["b"]})).unwrap();
/// apply_patch(&mut doc, &[], &op).unwrap();
/// let op: PatchOp = serde_json::from_value(json!({"op": "splice", "path": ["title"], "index": 5, "insert": "!"})).unwrap();
/// apply_patch(&mut doc, &[], &op).unwrap();
/// assert_eq!(doc, json!({"title": "hello!", "tags": ["a", "b"]}));
/// ```
pub fn apply_patch(root: &mut Value, base: &[PathElem], op: &PatchOp) -> Result<(), PatchError> {
    let full = op.path();
    let err = |why: String| PatchError { op: op.name(), path: show_path(full), why };
    let Some(rel) = full.strip_prefix(base) else {
        return Err(err(format!("outside the watched path {}", show_path(base))));
    };
    // A splice's path names the text itself; every other op names a slot in a container.
    if let PatchOp::Splice { index, delete, insert, .. } = op {
        let target = walk(root, rel).map_err(err)?;
        let Value::String(text) = target else { return Err(err("not a text".into())) };
        let mut chars: Vec<char> = text.chars().collect();
        let start = usize::try_from(*index).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(*delete).unwrap_or(usize::MAX));
        if end > chars.len() {
            return Err(err(format!("range {start}..{end} beyond the text's {} characters", chars.len())));
        }
        chars.splice(start..end, insert.chars());
        *text = chars.into_iter().collect();
        return Ok(());
    }
    let Some((last, parent_path)) = rel.split_last() else {
        return match op {
            PatchOp::Put { value, .. } => {
                *root = value.clone();
                Ok(())
            }
            _ => Err(err("the path is empty".into())),
        };
    };
    let parent = walk(root, parent_path).map_err(err)?;
    match (op, parent, last) {
        (PatchOp::Put { value, .. }, Value::Object(map), PathElem::Key(k)) => {
            map.insert(k.clone(), value.clone());
        }
        (PatchOp::Put { value, .. }, Value::Array(list), PathElem::Index(i)) => {
            let slot = list.get_mut(idx(*i)).ok_or_else(|| err("no such element".into()))?;
            *slot = value.clone();
        }
        (PatchOp::Delete { .. }, Value::Object(map), PathElem::Key(k)) => {
            map.remove(k).ok_or_else(|| err("no such key".into()))?;
        }
        (PatchOp::Delete { count, .. }, Value::Array(list), PathElem::Index(i)) => {
            let start = idx(*i);
            let end = start.saturating_add(idx(count.unwrap_or(1)));
            if end > list.len() {
                return Err(err("beyond the end of the list".into()));
            }
            list.drain(start..end);
        }
        (PatchOp::Delete { count, .. }, Value::String(text), PathElem::Index(i)) => {
            let mut chars: Vec<char> = text.chars().collect();
            let start = idx(*i);
            let end = start.saturating_add(idx(count.unwrap_or(1)));
            if end > chars.len() {
                return Err(err("beyond the end of the text".into()));
            }
            chars.drain(start..end);
            *text = chars.into_iter().collect();
        }
        (PatchOp::Insert { values, .. }, Value::Array(list), PathElem::Index(i)) => {
            let at = idx(*i);
            if at > list.len() {
                return Err(err("beyond the end of the list".into()));
            }
            list.splice(at..at, values.iter().cloned());
        }
        (PatchOp::Increment { by, .. }, container, last) => {
            let slot = match (container, last) {
                (Value::Object(map), PathElem::Key(k)) => map.get_mut(k),
                (Value::Array(list), PathElem::Index(i)) => list.get_mut(idx(*i)),
                _ => None,
            };
            let Some(slot) = slot else { return Err(err("no such counter".into())) };
            let now = slot.as_i64().ok_or_else(|| err("not a counter".into()))?;
            *slot = Value::from(now.saturating_add(*by));
        }
        _ => return Err(err("the container does not take this operation".into())),
    }
    Ok(())
}

fn idx(i: u64) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX)
}

fn walk<'a>(mut at: &'a mut Value, path: &[PathElem]) -> Result<&'a mut Value, String> {
    for (n, step) in path.iter().enumerate() {
        at = match (at, step) {
            (Value::Object(map), PathElem::Key(k)) => map.get_mut(k),
            (Value::Array(list), PathElem::Index(i)) => list.get_mut(idx(*i)),
            _ => None,
        }
        .ok_or_else(|| format!("{} does not exist", show_path(&path[..=n])))?;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_checked() {
        for ok in ["settings", "notebook/3f2a", "a.b_c-d/e", "x/y/z"] {
            let name = DocName::parse(ok).unwrap();
            assert_eq!(DocName::from_file_stem(&name.file_stem()), Some(name));
        }
        for bad in ["", "/a", "a/", "a//b", "..", "a/../b", ".hidden", "A", "a b", "a\\b", "a~b", "é", "a/.b"] {
            let err = DocName::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidDocName, "{bad:?}");
        }
        assert!(DocName::parse(&"a".repeat(MAX_DOC_NAME + 1)).is_err());
        assert!(DocName::parse("a/b/c/d/e/f/g/h/i").is_err());
        assert!(serde_json::from_str::<DocName>(r#""../x""#).is_err());
    }

    #[test]
    fn handshake_fields_are_typed() {
        let params = |v: Value| v.as_object().unwrap().clone();
        let open = SyncOpen::from_params(&params(serde_json::json!({"doc": "settings"}))).unwrap();
        assert_eq!(open.doc.as_ref().unwrap().as_str(), "settings");
        assert_eq!(open.mode, SyncMode::View);
        assert_eq!(SyncOpen::from_params(&open.params()).unwrap(), open);
        let open = SyncOpen::from_params(&params(serde_json::json!({"mode": "replica"}))).unwrap();
        assert!(open.doc.is_none());
        assert_eq!(open.mode, SyncMode::Replica);
        let code = |v: Value| SyncOpen::from_params(&params(v)).unwrap_err().code;
        assert_eq!(code(serde_json::json!({"doc": "../x"})), ErrorCode::InvalidDocName);
        assert_eq!(code(serde_json::json!({"doc": 7})), ErrorCode::InvalidDocName);
        assert_eq!(code(serde_json::json!({"doc": "a", "mode": "mirror"})), ErrorCode::InvalidHandshake);
    }

    #[test]
    fn patches_apply_to_json() {
        let mut doc = json!({"a": {"n": 1, "list": [1, 2, 3]}, "t": "héllo"});
        let ops: Vec<PatchOp> = serde_json::from_value(json!([
            {"op": "increment", "path": ["a", "n"], "by": 4},
            {"op": "delete", "path": ["a", "list", 0], "count": 2},
            {"op": "insert", "path": ["a", "list", 1], "values": [9, 10]},
            {"op": "put", "path": ["a", "list", 0], "value": "x"},
            {"op": "splice", "path": ["t"], "index": 1, "delete": 1, "insert": "e"},
            {"op": "delete", "path": ["t", 0]},
            {"op": "put", "path": ["new"], "value": {"k": []}},
        ]))
        .unwrap();
        for op in &ops {
            apply_patch(&mut doc, &[], op).unwrap();
        }
        assert_eq!(doc, json!({"a": {"n": 5, "list": ["x", 9, 10]}, "t": "ello", "new": {"k": []}}));
        let bad: PatchOp = serde_json::from_value(json!({"op": "put", "path": ["zz", "q"], "value": 1})).unwrap();
        assert!(apply_patch(&mut doc, &[], &bad).is_err());
        // Relative to a watched path.
        let mut sub = json!([1]);
        let op: PatchOp =
            serde_json::from_value(json!({"op": "insert", "path": ["a", "list", 0], "values": [0]})).unwrap();
        apply_patch(&mut sub, &[PathElem::Key("a".into()), PathElem::Key("list".into())], &op).unwrap();
        assert_eq!(sub, json!([0, 1]));
    }

    #[test]
    fn frames_are_told_apart_by_their_first_byte() {
        assert_eq!(classify_frame(b"{}"), FrameKind::Json);
        assert_eq!(classify_frame(&[0x42]), FrameKind::SyncMessage);
        assert_eq!(classify_frame(&[0x43]), FrameKind::SyncMessage);
        assert_eq!(classify_frame(&[]), FrameKind::SyncMessage);
    }
}
