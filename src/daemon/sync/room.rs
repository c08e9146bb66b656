//! A room: one loaded document, its peers, and the log of recent patches.
//!
//! The document sits behind a mutex that is never held across an `.await`:
//! a write or a sync message is applied, its record queued to the writer
//! and its patches logged, all under the lock, and the lock is let go
//! before anyone waits for the disk. Nothing is queued per peer. Each
//! peer's own task, woken by the room's durable sequence number, takes
//! what that peer lacks when it is ready to write: the patch batches after
//! its cursor (view), or a sync message from its own sync state (replica).
//! A slow peer so gets coalesced updates, and costs the others nothing.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use automerge::AutoCommit;
use automerge::sync::SyncDoc;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::doc;
use super::writer::{Durability, StoreError, Writer};
use crate::protocol::sync::{DocName, PatchOp, PathElem, PeerInfo, Revision, RoomReport, SyncMode};
use crate::protocol::{ErrorCode, WireError};

/// One change's patches, numbered in the room's order.
#[derive(Debug)]
struct Batch {
    seq: u64,
    from: Revision,
    to: Revision,
    patches: Arc<Vec<PatchOp>>,
    bytes: usize,
}

/// Where a watch starts: the revision, then the value there or the patches
/// from the client's `since`, and the cursor to go on from.
pub(crate) type WatchStart = (Revision, Option<Value>, Option<Vec<PatchOp>>, u64);

/// What a view peer is sent next.
#[derive(Debug)]
pub(crate) enum Update {
    /// Nothing new within its path.
    Nothing { upto: u64 },
    /// The patches after its cursor, coalesced.
    Patches { from: Revision, to: Revision, patches: Vec<PatchOp>, upto: u64 },
    /// It fell behind the log: the value to start over from.
    Snapshot { revision: Revision, value: Value, upto: u64 },
}

/// The outcome of a write or a received sync message.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) revision: Revision,
    pub(crate) stale: bool,
    /// Answers once the change is on disk; `None` when nothing changed.
    pub(crate) durable: Option<oneshot::Receiver<Result<(), StoreError>>>,
}

/// Limits a room enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoomLimits {
    pub(crate) max_doc_size: u64,
    pub(crate) max_value_size: u64,
    pub(crate) max_peers: u64,
    pub(crate) patch_log_bytes: usize,
}

#[derive(Debug)]
pub(crate) struct RoomState {
    doc: AutoCommit,
    /// The last batch applied.
    seq: u64,
    log: VecDeque<Batch>,
    log_bytes: usize,
    peers: BTreeMap<u64, PeerInfo>,
    idle_since: Option<Instant>,
    base_bytes: u64,
    appended_bytes: u64,
    compacting: bool,
    revision: Revision,
}

/// A loaded document and its peers.
#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) name: DocName,
    pub(crate) path: PathBuf,
    state: Mutex<RoomState>,
    pub(crate) durability: Arc<Durability>,
    /// Bumped when peers come and go.
    presence: watch::Sender<u64>,
    /// Cancelled when the room closes; its peers then leave.
    pub(crate) closed: CancellationToken,
    close_reason: Mutex<Option<WireError>>,
    /// Cancelled once the room is out of the registry (a new open may load it again).
    pub(crate) gone: CancellationToken,
    limits: RoomLimits,
}

/// A snapshot of a room's state for the upkeep planner.
#[derive(Debug, Clone)]
pub(crate) struct RoomStats {
    pub(crate) peers: usize,
    pub(crate) idle_since: Option<Instant>,
    pub(crate) in_flight: bool,
    pub(crate) base_bytes: u64,
    pub(crate) appended_bytes: u64,
    pub(crate) compacting: bool,
}

impl Room {
    pub(crate) fn new(
        name: DocName,
        path: PathBuf,
        mut doc: AutoCommit,
        base_bytes: u64,
        appended_bytes: u64,
        limits: RoomLimits,
    ) -> Arc<Room> {
        // Patches are computed once per change, from Automerge's patch log,
        // at a cost that follows the change, not the history.
        doc.update_diff_cursor();
        let revision = doc::revision(&doc.get_heads());
        Arc::new(Room {
            name,
            path,
            state: Mutex::new(RoomState {
                doc,
                seq: 0,
                log: VecDeque::new(),
                log_bytes: 0,
                peers: BTreeMap::new(),
                idle_since: Some(Instant::now()),
                base_bytes,
                appended_bytes,
                compacting: false,
                revision,
            }),
            durability: Durability::new(0),
            presence: watch::Sender::new(0),
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            gone: CancellationToken::new(),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_open(&self) -> Result<(), WireError> {
        if self.closed.is_cancelled() {
            return Err(self.close_reason());
        }
        if let Some(failure) = self.durability.failure() {
            return Err(WireError::new(ErrorCode::StoreFailed, format!("the document's file failed: {failure}")));
        }
        Ok(())
    }

    /// Why the room closed (`room_closed` unless said otherwise).
    pub(crate) fn close_reason(&self) -> WireError {
        self.close_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| WireError::new(ErrorCode::RoomClosed, format!("the room of {} was closed", self.name)))
    }

    /// Closes the room: its peers leave with `reason`.
    pub(crate) fn close(&self, reason: WireError) {
        let mut slot = self.close_reason.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(reason);
        drop(slot);
        // Under the state lock, so that a join either sees it or is counted.
        let _state = self.lock();
        self.closed.cancel();
    }

    /// Adds a peer; its id comes from the registry.
    pub(crate) fn join(&self, info: PeerInfo) -> Result<(), WireError> {
        let mut state = self.lock();
        if self.closed.is_cancelled() {
            return Err(self.close_reason());
        }
        if state.peers.len() as u64 >= self.limits.max_peers {
            return Err(WireError::new(
                ErrorCode::RoomFull,
                format!("{} already has {} peers (sync.max_peers_per_room)", self.name, state.peers.len()),
            ));
        }
        state.peers.insert(info.id, info);
        state.idle_since = None;
        drop(state);
        self.presence.send_modify(|n| *n += 1);
        Ok(())
    }

    pub(crate) fn leave(&self, id: u64) {
        let mut state = self.lock();
        if state.peers.remove(&id).is_some() && state.peers.is_empty() {
            state.idle_since = Some(Instant::now());
        }
        drop(state);
        self.presence.send_modify(|n| *n += 1);
    }

    pub(crate) fn peers(&self, me: Option<u64>) -> Vec<PeerInfo> {
        let state = self.lock();
        state.peers.values().map(|p| PeerInfo { you: Some(p.id) == me, ..p.clone() }).collect()
    }

    pub(crate) fn subscribe_presence(&self) -> watch::Receiver<u64> {
        self.presence.subscribe()
    }

    pub(crate) fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.durability.seq.subscribe()
    }

    pub(crate) fn stats(&self) -> RoomStats {
        let state = self.lock();
        RoomStats {
            peers: state.peers.len(),
            idle_since: state.idle_since,
            in_flight: *self.durability.seq.borrow() < state.seq,
            base_bytes: state.base_bytes,
            appended_bytes: state.appended_bytes,
            compacting: state.compacting,
        }
    }

    pub(crate) fn report(&self, me: Option<u64>) -> RoomReport {
        let state = self.lock();
        let changes = automerge::ReadDoc::stats(&state.doc).num_changes;
        RoomReport {
            doc: self.name.clone(),
            loaded: true,
            revision: Some(state.revision.clone()),
            peers: state.peers.values().map(|p| PeerInfo { you: Some(p.id) == me, ..p.clone() }).collect(),
            stored_bytes: state.base_bytes + state.appended_bytes + super::store::MAGIC.len() as u64,
            appended_bytes: state.appended_bytes,
            changes: Some(changes),
            idle_ms: state.idle_since.map(|t| t.elapsed().as_millis() as u64),
        }
    }

    pub(crate) fn set_compacting(&self, on: bool) {
        self.lock().compacting = on;
    }

    /// After a compaction: the file's new sizes.
    pub(crate) fn compacted(&self, base_bytes: u64, appended_bytes: u64) {
        let mut state = self.lock();
        state.base_bytes = base_bytes;
        state.appended_bytes = appended_bytes;
        state.compacting = false;
    }

    /// The value at `path` and the revision it was read at.
    pub(crate) fn get(&self, path: &[PathElem]) -> Result<(Revision, Value), WireError> {
        self.check_open()?;
        let state = self.lock();
        let value = doc::to_json(&state.doc, path, None)?;
        Ok((state.revision.clone(), value))
    }

    /// Starting a watch: the value at `path` (or the patches from `since`,
    /// when the log still reaches back to it) and the cursor to go on from.
    pub(crate) fn watch_start(&self, path: &[PathElem], since: Option<&Revision>) -> Result<WatchStart, WireError> {
        self.check_open()?;
        let state = self.lock();
        if let Some(since) = since {
            if *since == state.revision {
                return Ok((state.revision.clone(), None, Some(Vec::new()), state.seq));
            }
            if let Some(start) = state.log.iter().position(|b| b.from == *since) {
                let patches: Vec<PatchOp> = state
                    .log
                    .iter()
                    .skip(start)
                    .flat_map(|b| b.patches.iter().filter(|p| p.path().starts_with(path)).cloned())
                    .collect();
                return Ok((state.revision.clone(), None, Some(patches), state.seq));
            }
        }
        let value = doc::to_json(&state.doc, path, None)?;
        Ok((state.revision.clone(), Some(value), None, state.seq))
    }

    /// What a view peer at `cursor` is sent, up to the durable sequence
    /// number, at most `max_bytes` of patches at once.
    pub(crate) fn update_for(&self, cursor: u64, path: &[PathElem], max_bytes: usize) -> Result<Update, WireError> {
        self.check_open()?;
        let durable = *self.durability.seq.borrow();
        let state = self.lock();
        let upto = durable.min(state.seq);
        if upto <= cursor {
            return Ok(Update::Nothing { upto: cursor });
        }
        let first = state.log.front().map_or(u64::MAX, |b| b.seq);
        if cursor + 1 < first {
            // Fell off the log: start over, at the durable revision when the
            // document has nothing newer (the usual case) or else at the
            // latest one (it will be durable within one commit).
            let value = doc::to_json(&state.doc, path, None)?;
            return Ok(Update::Snapshot { revision: state.revision.clone(), value, upto: state.seq });
        }
        let mut patches = Vec::new();
        let mut from = None;
        let mut to = None;
        let mut last = cursor;
        let mut bytes = 0;
        for batch in state.log.iter().filter(|b| b.seq > cursor && b.seq <= upto) {
            if bytes > 0 && bytes + batch.bytes > max_bytes {
                break;
            }
            if bytes == 0 && batch.bytes > max_bytes {
                let value = doc::to_json(&state.doc, path, None)?;
                return Ok(Update::Snapshot { revision: state.revision.clone(), value, upto: state.seq });
            }
            bytes += batch.bytes;
            from.get_or_insert_with(|| batch.from.clone());
            to = Some(batch.to.clone());
            last = batch.seq;
            patches.extend(batch.patches.iter().filter(|p| p.path().starts_with(path)).cloned());
        }
        match (from, to) {
            (Some(from), Some(to)) if !patches.is_empty() => Ok(Update::Patches { from, to, patches, upto: last }),
            // A change that shows nothing (a concurrent put that lost) still
            // moves the revision; a watcher of the whole document hears it,
            // or its revision would lag behind the document's for good.
            (Some(from), Some(to)) if path.is_empty() => Ok(Update::Patches { from, to, patches, upto: last }),
            _ => Ok(Update::Nothing { upto: last }),
        }
    }

    /// Applies a view write as one change and queues it to the writer.
    pub(crate) fn write(
        &self,
        writer: &Writer,
        ops: &[PatchOp],
        base: Option<&Revision>,
    ) -> Result<Applied, WireError> {
        self.check_open()?;
        for op in ops {
            doc::check_op(op, self.limits.max_value_size)?;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        self.check_size(state, ops.iter().map(|op| serde_json::to_vec(op).map_or(0, |v| v.len() as u64)).sum())?;
        let base_heads = base.map(|b| doc::heads_of(&mut state.doc, b)).transpose()?;
        let current = state.doc.get_heads();
        let stale = base_heads.as_ref().is_some_and(|b| {
            let mut b = b.clone();
            b.sort();
            let mut c = current.clone();
            c.sort();
            b != c
        });
        let change = if let (true, Some(base_heads)) = (stale, base_heads) {
            // Read the paths as the writer saw them, then merge the change
            // in: exactly what Automerge does with concurrent edits.
            let mut fork =
                state.doc.fork_at(&base_heads).map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
            apply_all(&mut fork, ops)?;
            if fork.commit().is_none() {
                return Ok(Applied { revision: state.revision.clone(), stale, durable: None });
            }
            let change =
                fork.get_last_local_change().ok_or_else(|| WireError::new(ErrorCode::Internal, "no change"))?;
            let bytes = change.raw_bytes().to_vec();
            state.doc.apply_changes([change]).map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
            bytes
        } else {
            apply_all(&mut state.doc, ops)?;
            if state.doc.commit().is_none() {
                return Ok(Applied { revision: state.revision.clone(), stale: false, durable: None });
            }
            let change =
                state.doc.get_last_local_change().ok_or_else(|| WireError::new(ErrorCode::Internal, "no change"))?;
            change.raw_bytes().to_vec()
        };
        let durable = self.log_and_queue(state, writer, &change, true)?;
        Ok(Applied { revision: state.revision.clone(), stale, durable })
    }

    /// Applies a replica's sync message; its changes are queued to the writer.
    pub(crate) fn receive(
        &self,
        writer: &Writer,
        sync_state: &mut automerge::sync::State,
        message: automerge::sync::Message,
        message_len: u64,
    ) -> Result<Applied, WireError> {
        self.check_open()?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let has_changes = !message.changes.is_empty();
        if has_changes {
            self.check_size(state, message_len)?;
        }
        let chunks: Vec<u8> = message.changes.iter().flatten().copied().collect();
        let before = state.doc.get_heads();
        state.doc.sync().receive_sync_message(sync_state, message).map_err(|e| {
            WireError::new(ErrorCode::InvalidSyncMessage, format!("the sync message does not apply: {e}"))
        })?;
        if state.doc.get_heads() == before {
            return Ok(Applied { revision: state.revision.clone(), stale: false, durable: None });
        }
        let durable = self.log_and_queue(state, writer, &chunks, true)?;
        Ok(Applied { revision: state.revision.clone(), stale: false, durable })
    }

    /// The next sync message for a replica peer, if it lacks anything.
    pub(crate) fn generate(&self, sync_state: &mut automerge::sync::State) -> Result<Option<Vec<u8>>, WireError> {
        self.check_open()?;
        let mut state = self.lock();
        Ok(state.doc.sync().generate_sync_message(sync_state).map(automerge::sync::Message::encode))
    }

    fn check_size(&self, state: &RoomState, adding: u64) -> Result<(), WireError> {
        let stored = state.base_bytes + state.appended_bytes;
        if stored + adding > self.limits.max_doc_size {
            return Err(WireError::new(
                ErrorCode::DocTooLarge,
                format!(
                    "{} holds {stored} bytes; adding {adding} would pass sync.max_doc_size ({} bytes)",
                    self.name, self.limits.max_doc_size
                ),
            ));
        }
        Ok(())
    }

    /// Logs the new patches and queues `payload` (the change's bytes) to the
    /// writer, with the room locked so records keep the document's order.
    fn log_and_queue(
        &self,
        state: &mut RoomState,
        writer: &Writer,
        payload: &[u8],
        want_reply: bool,
    ) -> Result<Option<oneshot::Receiver<Result<(), StoreError>>>, WireError> {
        let from = std::mem::take(&mut state.revision);
        state.revision = doc::revision(&state.doc.get_heads());
        let patches = doc::patch_ops(state.doc.diff_incremental());
        state.seq += 1;
        let bytes = patches.iter().map(|p| serde_json::to_vec(p).map_or(0, |v| v.len())).sum::<usize>() + 64;
        state.log.push_back(Batch {
            seq: state.seq,
            from,
            to: state.revision.clone(),
            patches: Arc::new(patches),
            bytes,
        });
        state.log_bytes += bytes;
        while state.log_bytes > self.limits.patch_log_bytes && state.log.len() > 1 {
            if let Some(old) = state.log.pop_front() {
                state.log_bytes -= old.bytes;
            }
        }
        state.appended_bytes += (payload.len() + super::store::RECORD_HEADER) as u64;
        writer
            .append(self.path.clone(), payload, state.seq, self.durability.clone(), want_reply)
            .map_err(|e| WireError::new(ErrorCode::StoreFailed, e.to_string()))
    }

    /// The sequence number of the last change applied.
    pub(crate) fn seq(&self) -> u64 {
        self.lock().seq
    }
}

fn apply_all(doc: &mut AutoCommit, ops: &[PatchOp]) -> Result<(), WireError> {
    for op in ops {
        if let Err(e) = doc::apply_op(doc, op) {
            doc.rollback();
            return Err(e);
        }
    }
    Ok(())
}

/// A peer's entry, made when it joins.
pub(crate) fn peer_info(id: u64, client: Option<String>, pid: Option<u32>, mode: SyncMode) -> PeerInfo {
    PeerInfo { id, client, pid, mode, since: crate::time::rfc3339(std::time::SystemTime::now()), you: false }
}
