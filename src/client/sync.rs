//! Typed calls of the `sync` channel: view mode ([`SyncClient`]) for JSON,
//! and replica mode ([`ReplicaClient`], feature `replica`) for an
//! Automerge document kept in sync with the daemon's.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth::client::ClientError> {
//! use hearth::client::{SyncClient, SyncEvent};
//! use serde_json::json;
//!
//! let socket = "/run/user/1000/hearth.sock";
//! let mut settings = SyncClient::open(socket, "settings").await?;
//! settings.put(&["theme".into()], json!("dark")).await?;
//!
//! let mut other = SyncClient::open(socket, "settings").await?;
//! let (revision, value) = other.watch(&[], None).await?;
//! println!("at {revision}: {value:?}");
//! while let SyncEvent::Changed { patches, .. } = other.next_event().await? {
//!     println!("{patches:?}");
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::path::Path;

use serde_json::Value;

use super::{Client, ClientError, ConnectOptions, unexpected};
use crate::protocol::sync::{
    DocName, DocSummary, FrameKind, PatchOp, PathElem, PeerInfo, Revision, RoomReport, SyncChannel, SyncMode, SyncOpen,
    SyncRequest, SyncResponse, ValueKind, classify_frame,
};
use crate::protocol::{Response, WireError};

/// A change the daemon reports to a watching client.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    /// The document changed: apply `patches` (with
    /// [`apply_patch`](crate::protocol::sync::apply_patch)) to go from `from` to `revision`.
    Changed {
        /// The revision the patches start from.
        from: Revision,
        /// The revision after them.
        revision: Revision,
        /// The patches, in order.
        patches: Vec<PatchOp>,
    },
    /// The client fell behind: replace the value with this one.
    Snapshot {
        /// Its revision.
        revision: Revision,
        /// The value at the watched path.
        value: Value,
    },
    /// Peers came or went.
    Presence(Vec<PeerInfo>),
}

/// The answer to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The document's revision right after the write.
    pub revision: Revision,
    /// The base revision was not the latest: the write was merged with
    /// changes the client had not seen.
    pub stale: bool,
}

/// A view-mode (or control) connection to the sync channel.
#[derive(Debug)]
pub struct SyncClient {
    client: Client<SyncChannel>,
    doc: Option<DocName>,
    peer: u64,
    events: VecDeque<SyncEvent>,
}

/// Connects with the sync fields of the handshake, then reads `joined`
/// (or the error that refuses the connection).
async fn join(options: &ConnectOptions, open: &SyncOpen) -> Result<(Client<SyncChannel>, u64), ClientError> {
    let mut client = Client::<SyncChannel>::connect_with_fields(options, open.params()).await?;
    let work = async {
        let frame = client.conn.read_frame().await.map_err(super::closed_on_reset)?.ok_or(ClientError::Closed)?;
        serde_json::from_slice::<SyncResponse>(&frame)
            .map_err(|e| ClientError::Protocol(format!("cannot decode the first sync frame: {e}")))
    };
    let first = match tokio::time::timeout(options.timeout, work).await {
        Ok(first) => first?,
        Err(_) => return Err(ClientError::Timeout { what: "joining the room", after: options.timeout }),
    };
    match first {
        SyncResponse::Joined { peer, .. } => Ok((client, peer)),
        SyncResponse::Error(error) => Err(ClientError::Refused { error, daemon: Some(client.daemon().clone()) }),
        other => Err(unexpected("joined", other)),
    }
}

fn doc_name(doc: &str) -> Result<DocName, ClientError> {
    DocName::parse(doc).map_err(ClientError::Daemon)
}

impl SyncClient {
    /// Joins `doc`'s room in view mode.
    pub async fn open(socket: impl AsRef<Path>, doc: &str) -> Result<Self, ClientError> {
        Self::open_with(&ConnectOptions::new(socket.as_ref()), doc).await
    }

    /// Joins `doc`'s room in view mode, with `options`.
    pub async fn open_with(options: &ConnectOptions, doc: &str) -> Result<Self, ClientError> {
        let doc = doc_name(doc)?;
        let (client, peer) = join(options, &SyncOpen { doc: Some(doc.clone()), mode: SyncMode::View }).await?;
        Ok(Self { client, doc: Some(doc), peer, events: VecDeque::new() })
    }

    /// A control connection, joined to no room: `list`, `inspect`, `close`.
    pub async fn control(options: &ConnectOptions) -> Result<Self, ClientError> {
        let (client, peer) = join(options, &SyncOpen { doc: None, mode: SyncMode::View }).await?;
        Ok(Self { client, doc: None, peer, events: VecDeque::new() })
    }

    /// The document this connection joined.
    pub fn doc(&self) -> Option<&DocName> {
        self.doc.as_ref()
    }

    /// This connection's peer id in its room.
    pub fn peer_id(&self) -> u64 {
        self.peer
    }

    /// The framed connection, for tools and tests that speak frames themselves.
    pub fn connection(&mut self) -> &mut crate::connection::Connection {
        self.client.connection()
    }

    /// Sends a request and returns its answer, keeping the events that
    /// arrive before it for [`SyncClient::next_event`].
    pub async fn request(&mut self, request: &SyncRequest) -> Result<SyncResponse, ClientError> {
        self.client.send(request).await?;
        loop {
            let response = self.read().await?;
            if let Some(event) = event_of(&response) {
                self.events.push_back(event);
                continue;
            }
            return response.into_result().map_err(ClientError::Daemon);
        }
    }

    async fn read(&mut self) -> Result<SyncResponse, ClientError> {
        let frame = self.client.conn.read_frame().await.map_err(super::closed_on_reset)?.ok_or(ClientError::Closed)?;
        if classify_frame(&frame) != FrameKind::Json {
            return Err(ClientError::Protocol("a binary frame on a view connection".into()));
        }
        serde_json::from_slice(&frame).map_err(|e| ClientError::Protocol(format!("cannot decode response: {e}")))
    }

    /// The value at `path` (empty: the whole document) and its revision.
    pub async fn get(&mut self, path: &[PathElem]) -> Result<(Revision, Value), ClientError> {
        match self.request(&SyncRequest::Get { path: path.to_vec() }).await? {
            SyncResponse::Value { revision, value } => Ok((revision, value)),
            other => Err(unexpected("value", other)),
        }
    }

    /// Applies `ops` as one change; returns once it is durable.
    pub async fn write(&mut self, ops: Vec<PatchOp>, base: Option<Revision>) -> Result<Written, ClientError> {
        match self.request(&SyncRequest::Write { ops, base }).await? {
            SyncResponse::Written { revision, stale } => Ok(Written { revision, stale }),
            other => Err(unexpected("written", other)),
        }
    }

    /// Sets the value at `path` (a map key, or an existing list element).
    pub async fn put(&mut self, path: &[PathElem], value: Value) -> Result<Written, ClientError> {
        self.write(vec![PatchOp::Put { path: path.to_vec(), value, kind: None }], None).await
    }

    /// Sets the value at `path` as a text, counter or timestamp.
    pub async fn put_as(&mut self, path: &[PathElem], value: Value, kind: ValueKind) -> Result<Written, ClientError> {
        self.write(vec![PatchOp::Put { path: path.to_vec(), value, kind: Some(kind) }], None).await
    }

    /// Removes a map key or a list element.
    pub async fn delete(&mut self, path: &[PathElem]) -> Result<Written, ClientError> {
        self.write(vec![PatchOp::Delete { path: path.to_vec(), count: None }], None).await
    }

    /// Inserts `values` into a list before the path's last index.
    pub async fn insert(&mut self, path: &[PathElem], values: Vec<Value>) -> Result<Written, ClientError> {
        self.write(vec![PatchOp::Insert { path: path.to_vec(), values }], None).await
    }

    /// Edits the text at `path`: removes `delete` characters at `index`, inserts `insert`.
    pub async fn splice(
        &mut self,
        path: &[PathElem],
        index: u64,
        delete: u64,
        insert: &str,
    ) -> Result<Written, ClientError> {
        let op = PatchOp::Splice { path: path.to_vec(), index, delete, insert: insert.to_owned() };
        self.write(vec![op], None).await
    }

    /// Adds `by` to the counter at `path`.
    pub async fn increment(&mut self, path: &[PathElem], by: i64) -> Result<Written, ClientError> {
        self.write(vec![PatchOp::Increment { path: path.to_vec(), by }], None).await
    }

    /// Starts watching `path`: returns the revision and the value there;
    /// then [`SyncClient::next_event`] yields each change. With `since`, a
    /// revision whose value the caller kept, the daemon sends (when its log
    /// reaches back that far) only the patches from it: they come as the
    /// first `Changed` event and the value returned is `None`.
    pub async fn watch(
        &mut self,
        path: &[PathElem],
        since: Option<Revision>,
    ) -> Result<(Revision, Option<Value>), ClientError> {
        let from = since.clone();
        match self.request(&SyncRequest::Watch { path: path.to_vec(), since }).await? {
            SyncResponse::Watching { revision, value: Some(value), .. } => Ok((revision, Some(value))),
            SyncResponse::Watching { revision, value: None, patches } => {
                let patches = patches.unwrap_or_default();
                if !patches.is_empty() {
                    let from = from.unwrap_or_default();
                    self.events.push_front(SyncEvent::Changed { from, revision: revision.clone(), patches });
                }
                Ok((revision, None))
            }
            other => Err(unexpected("watching", other)),
        }
    }

    /// The next event of the watch (waits for it).
    pub async fn next_event(&mut self) -> Result<SyncEvent, ClientError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        loop {
            let response = self.read().await?;
            if let Some(event) = event_of(&response) {
                return Ok(event);
            }
            if let SyncResponse::Error(e) = response {
                return Err(ClientError::Daemon(e));
            }
        }
    }

    /// The events as a stream (the connection is used up).
    pub fn into_events(self) -> impl futures_util::Stream<Item = Result<SyncEvent, ClientError>> {
        futures_util::stream::unfold(Some(self), |client| async move {
            let mut client = client?;
            match client.next_event().await {
                Ok(event) => Some((Ok(event), Some(client))),
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// Who is in this room.
    pub async fn peers(&mut self) -> Result<Vec<PeerInfo>, ClientError> {
        match self.request(&SyncRequest::Peers).await? {
            SyncResponse::Peers { peers } => Ok(peers),
            other => Err(unexpected("peers", other)),
        }
    }

    /// Every document (all pages).
    pub async fn list(&mut self, prefix: Option<&str>) -> Result<Vec<DocSummary>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let request = SyncRequest::List { prefix: prefix.map(str::to_owned), after: after.take(), limit: None };
            match self.request(&request).await? {
                SyncResponse::Docs { docs, next } => {
                    all.extend(docs);
                    match next {
                        Some(next) => after = Some(next),
                        None => return Ok(all),
                    }
                }
                other => return Err(unexpected("docs", other)),
            }
        }
    }

    /// One document's room (this connection's when `doc` is `None`).
    pub async fn inspect(&mut self, doc: Option<&str>) -> Result<RoomReport, ClientError> {
        let doc = doc.map(doc_name).transpose()?;
        match self.request(&SyncRequest::Inspect { doc }).await? {
            SyncResponse::Room(report) => Ok(*report),
            other => Err(unexpected("room", other)),
        }
    }

    /// Evicts a room; returns how many peers were disconnected.
    pub async fn close(&mut self, doc: &str) -> Result<u64, ClientError> {
        match self.request(&SyncRequest::Close { doc: Some(doc_name(doc)?) }).await? {
            SyncResponse::Closed { peers, .. } => Ok(peers),
            other => Err(unexpected("closed", other)),
        }
    }
}

fn event_of(response: &SyncResponse) -> Option<SyncEvent> {
    match response {
        SyncResponse::Changed { from, revision, patches } => {
            Some(SyncEvent::Changed { from: from.clone(), revision: revision.clone(), patches: patches.clone() })
        }
        SyncResponse::Snapshot { revision, value } => {
            Some(SyncEvent::Snapshot { revision: revision.clone(), value: value.clone() })
        }
        SyncResponse::Presence { peers } => Some(SyncEvent::Presence(peers.clone())),
        _ => None,
    }
}

#[cfg(feature = "replica")]
pub use replica::ReplicaClient;

#[cfg(feature = "replica")]
mod replica {
    use automerge::sync::{Message, State, SyncDoc};
    use automerge::{AutoCommit, ChangeHash};

    use super::*;

    /// A replica-mode connection: an Automerge document kept in sync with
    /// the daemon's by exchanging sync messages.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), hearth::client::ClientError> {
    /// use automerge::transaction::Transactable;
    /// use hearth::client::ReplicaClient;
    ///
    /// let mut replica = ReplicaClient::open("/run/user/1000/hearth.sock", "notebook/1").await?;
    /// replica.sync().await?;
    /// replica.doc_mut().put(automerge::ROOT, "title", "Notes").unwrap();
    /// replica.push().await?; // returns once the daemon has it on disk
    /// # Ok(()) }
    /// ```
    #[derive(Debug)]
    pub struct ReplicaClient {
        client: Client<SyncChannel>,
        doc: AutoCommit,
        state: State,
        /// A JSON error the daemon sent (a refused message); reported by the next call.
        error: Option<WireError>,
    }

    impl ReplicaClient {
        /// Joins `doc`'s room in replica mode with an empty document.
        pub async fn open(socket: impl AsRef<Path>, doc: &str) -> Result<Self, ClientError> {
            Self::open_with(&ConnectOptions::new(socket.as_ref()), doc, AutoCommit::new()).await
        }

        /// Joins with `options`, starting from `replica` (say, one kept
        /// from an earlier session: only the changes it lacks are sent).
        pub async fn open_with(options: &ConnectOptions, doc: &str, replica: AutoCommit) -> Result<Self, ClientError> {
            let doc = doc_name(doc)?;
            let (client, _) = join(options, &SyncOpen { doc: Some(doc), mode: SyncMode::Replica }).await?;
            Ok(Self { client, doc: replica, state: State::new(), error: None })
        }

        /// The local replica.
        pub fn doc(&self) -> &AutoCommit {
            &self.doc
        }

        /// The local replica, to change (then call [`ReplicaClient::push`]).
        pub fn doc_mut(&mut self) -> &mut AutoCommit {
            &mut self.doc
        }

        /// Gives the replica back (to keep for the next session).
        pub fn into_doc(self) -> AutoCommit {
            self.doc
        }

        /// Sends a sync message if the daemon lacks anything.
        async fn send(&mut self) -> Result<(), ClientError> {
            if let Some(message) = self.doc.sync().generate_sync_message(&mut self.state) {
                self.client.conn.write_raw(message.encode().into()).await.map_err(super::super::closed_on_reset)?;
            }
            Ok(())
        }

        /// Reads one frame: applies a sync message (true when the replica
        /// changed), or takes note of a JSON error.
        async fn receive(&mut self) -> Result<bool, ClientError> {
            let frame = self
                .client
                .conn
                .read_frame()
                .await
                .map_err(super::super::closed_on_reset)?
                .ok_or(ClientError::Closed)?;
            match classify_frame(&frame) {
                FrameKind::Json => {
                    let response: SyncResponse = serde_json::from_slice(&frame)
                        .map_err(|e| ClientError::Protocol(format!("cannot decode response: {e}")))?;
                    if let SyncResponse::Error(e) = response {
                        self.error = Some(e);
                    }
                    Ok(false)
                }
                FrameKind::SyncMessage => {
                    let message = Message::decode(&frame)
                        .map_err(|e| ClientError::Protocol(format!("the daemon sent a bad sync message: {e}")))?;
                    let before = self.doc.get_heads();
                    self.doc
                        .sync()
                        .receive_sync_message(&mut self.state, message)
                        .map_err(|e| ClientError::Protocol(format!("the daemon's sync message does not apply: {e}")))?;
                    self.send().await?;
                    Ok(self.doc.get_heads() != before)
                }
            }
        }

        fn take_error(&mut self) -> Result<(), ClientError> {
            match self.error.take() {
                Some(e) => Err(ClientError::Daemon(e)),
                None => Ok(()),
            }
        }

        /// Whether the daemon has every change of `heads` (its last
        /// message said so).
        fn daemon_has(&mut self, heads: &[ChangeHash]) -> bool {
            let Some(theirs) = self.state.their_heads.clone() else { return false };
            if !self.doc.get_missing_deps(&theirs).is_empty() {
                return false;
            }
            let after: Vec<ChangeHash> = self.doc.get_changes(&theirs).iter().map(automerge::Change::hash).collect();
            heads.iter().all(|h| !after.contains(h))
        }

        /// Brings the replica up to the daemon's document as it is now
        /// (and sends the daemon what the replica has that it lacks).
        pub async fn sync(&mut self) -> Result<(), ClientError> {
            self.send().await?;
            let target = match self.request(&SyncRequest::Inspect { doc: None }).await? {
                SyncResponse::Room(report) => report.revision.unwrap_or_default(),
                other => return Err(unexpected("room", other)),
            };
            let mut wanted = Vec::with_capacity(target.0.len());
            for hash in &target.0 {
                let hash: ChangeHash =
                    hash.parse().map_err(|_| ClientError::Protocol(format!("bad change hash {hash:?}")))?;
                wanted.push(hash);
            }
            while wanted.iter().any(|h| self.doc.get_change_meta_by_hash(h).is_none()) {
                self.receive().await?;
                self.take_error()?;
            }
            Ok(())
        }

        /// Sends local changes and returns once the daemon acknowledged
        /// them: its heads then include them, which it says only once they
        /// are on disk.
        pub async fn push(&mut self) -> Result<(), ClientError> {
            let heads = self.doc.get_heads();
            self.send().await?;
            while !self.daemon_has(&heads) {
                self.receive().await?;
                self.take_error()?;
            }
            Ok(())
        }

        /// Waits until a change from another peer arrives and is applied.
        pub async fn next_change(&mut self) -> Result<(), ClientError> {
            loop {
                let changed = self.receive().await?;
                self.take_error()?;
                if changed {
                    return Ok(());
                }
            }
        }

        /// Sends one JSON request (`peers`, `get`, ...) and returns its
        /// answer; sync messages that arrive meanwhile are applied.
        pub async fn request(&mut self, request: &SyncRequest) -> Result<SyncResponse, ClientError> {
            self.client.send(request).await?;
            loop {
                let frame = self
                    .client
                    .conn
                    .read_frame()
                    .await
                    .map_err(super::super::closed_on_reset)?
                    .ok_or(ClientError::Closed)?;
                if classify_frame(&frame) == FrameKind::SyncMessage {
                    let message = Message::decode(&frame)
                        .map_err(|e| ClientError::Protocol(format!("the daemon sent a bad sync message: {e}")))?;
                    self.doc
                        .sync()
                        .receive_sync_message(&mut self.state, message)
                        .map_err(|e| ClientError::Protocol(format!("the daemon's sync message does not apply: {e}")))?;
                    self.send().await?;
                    continue;
                }
                let response: SyncResponse = serde_json::from_slice(&frame)
                    .map_err(|e| ClientError::Protocol(format!("cannot decode response: {e}")))?;
                return response.into_result().map_err(ClientError::Daemon);
            }
        }

        /// The raw connection, for tests and tools that speak the frames themselves.
        pub fn client(&mut self) -> &mut Client<SyncChannel> {
            &mut self.client
        }
    }
}
