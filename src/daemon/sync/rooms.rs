//! The registry of loaded rooms: one load per document however many
//! peers ask at once, and unloading that waits until the room's changes
//! are on disk before anyone may load the document again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use super::room::{Room, RoomLimits};
use super::store::StoreDir;
use super::writer::Writer;
use crate::daemon::events::EventBus;
use crate::protocol::Channel;
use crate::protocol::event::EventData;
use crate::protocol::sync::{DocName, DocSummary, RoomReport, SETTINGS_DOC};
use crate::protocol::{ErrorCode, WireError};

type Slot = Arc<OnceCell<Arc<Room>>>;

/// Why a room unloads, as its `sync_room_closed` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unload {
    /// It had no peers for `sync.idle_unload`.
    Idle,
    /// A `close` request evicted it.
    Evicted,
    /// Its file failed; it reloads from what is on disk.
    StoreFailed,
    /// The daemon is stopping.
    Shutdown,
}

impl Unload {
    fn as_str(self) -> &'static str {
        match self {
            Unload::Idle => "idle",
            Unload::Evicted => "evicted",
            Unload::StoreFailed => "store_failed",
            Unload::Shutdown => "shutdown",
        }
    }
}

/// A store file that could not be read and was moved aside.
#[derive(Debug, Clone)]
pub(crate) struct MovedAside {
    pub(crate) doc: DocName,
    pub(crate) to: String,
    pub(crate) why: String,
}

/// Every loaded room.
#[derive(Debug)]
pub(crate) struct Rooms {
    pub(crate) store: StoreDir,
    pub(crate) writer: Arc<Writer>,
    /// Where rooms and peers coming and going are published.
    pub(crate) events: Arc<EventBus>,
    limits: RoomLimits,
    max_docs: u64,
    slots: Mutex<HashMap<DocName, Slot>>,
    next_peer: AtomicU64,
    moved: Mutex<Vec<MovedAside>>,
    pub(crate) loads: AtomicU64,
    /// Set once the service is up: loading `settings` is part of starting,
    /// not an event.
    pub(crate) started: std::sync::atomic::AtomicBool,
}

impl Rooms {
    pub(crate) fn new(
        store: StoreDir,
        writer: Arc<Writer>,
        events: Arc<EventBus>,
        limits: RoomLimits,
        max_docs: u64,
    ) -> Rooms {
        Rooms {
            store,
            writer,
            events,
            limits,
            max_docs,
            slots: Mutex::new(HashMap::new()),
            next_peer: AtomicU64::new(1),
            moved: Mutex::new(Vec::new()),
            loads: AtomicU64::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn next_peer_id(&self) -> u64 {
        self.next_peer.fetch_add(1, Ordering::Relaxed)
    }

    /// The loaded room of `doc`, if there is one.
    pub(crate) fn loaded(&self, doc: &DocName) -> Option<Arc<Room>> {
        let slot = self.slots.lock().unwrap_or_else(PoisonError::into_inner).get(doc).cloned()?;
        slot.get().filter(|r| !r.closed.is_cancelled()).cloned()
    }

    /// Every loaded room.
    pub(crate) fn all(&self) -> Vec<Arc<Room>> {
        let slots: Vec<Slot> = self.slots.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        slots.iter().filter_map(|s| s.get().cloned()).collect()
    }

    /// The room of `doc`, loading it (or creating the document) if needed.
    pub(crate) async fn open(&self, doc: &DocName) -> Result<Arc<Room>, WireError> {
        loop {
            let slot = {
                let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                slots.entry(doc.clone()).or_default().clone()
            };
            let loaded = slot.get_or_try_init(|| self.load(doc)).await;
            let room = match loaded {
                Ok(room) => room.clone(),
                Err(e) => {
                    self.drop_slot(doc, &slot);
                    return Err(e);
                }
            };
            if !room.closed.is_cancelled() {
                return Ok(room);
            }
            // Closing: wait until its last changes are on disk and it left.
            room.gone.cancelled().await;
        }
    }

    fn drop_slot(&self, doc: &DocName, slot: &Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.get(doc).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(doc);
        }
    }

    async fn load(&self, doc: &DocName) -> Result<Arc<Room>, WireError> {
        let created = !self.store.exists(doc);
        if created && doc.as_str() != SETTINGS_DOC {
            let count = self.count_docs_with(doc).await?;
            if count > self.max_docs {
                return Err(WireError::new(
                    ErrorCode::TooManyDocs,
                    format!("the store holds its maximum of {} documents (sync.max_docs)", self.max_docs),
                ));
            }
        }
        let store = self.store.clone();
        let name = doc.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load(&name))
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, format!("loading {doc} failed: {e}")))?
            .map_err(|e| WireError::new(ErrorCode::StoreFailed, format!("cannot read {doc}: {e}")))?;
        if let Some((to, why)) = loaded.moved_aside {
            self.moved.lock().unwrap_or_else(PoisonError::into_inner).push(MovedAside {
                doc: doc.clone(),
                to: to.display().to_string(),
                why,
            });
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        if self.started.load(Ordering::Relaxed) {
            self.events.publish(Channel::Sync, EventData::SyncRoomOpened { doc: doc.to_string(), created });
        }
        Ok(Room::new(
            doc.clone(),
            self.store.path_of(doc),
            loaded.doc,
            loaded.base_bytes,
            loaded.appended_bytes,
            self.limits,
        ))
    }

    /// How many documents there would be with `doc` added.
    async fn count_docs_with(&self, doc: &DocName) -> Result<u64, WireError> {
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| WireError::new(ErrorCode::StoreFailed, format!("cannot list the sync store: {e}")))?;
        let mut names: BTreeSet<DocName> = stored.into_iter().map(|(n, _)| n).collect();
        names.extend(self.all().into_iter().map(|r| r.name.clone()));
        names.insert(doc.clone());
        Ok(names.len() as u64)
    }

    /// Closes a room: its peers leave with `reason`; once its changes are
    /// on disk it leaves the registry. Returns how many peers it had.
    pub(crate) async fn unload(&self, room: &Arc<Room>, why: Unload, reason: WireError) -> u64 {
        let peers = room.peers(None).len() as u64;
        let first = !room.closed.is_cancelled();
        room.close(reason);
        let target = room.seq();
        let mut durable = room.subscribe_durable();
        let _ = durable.wait_for(|seq| *seq >= target || room.durability.failure().is_some()).await;
        let slot = self.slots.lock().unwrap_or_else(PoisonError::into_inner).get(&room.name).cloned();
        if let Some(slot) = slot
            && slot.get().is_some_and(|r| Arc::ptr_eq(r, room))
        {
            self.drop_slot(&room.name, &slot);
        }
        self.writer.forget(room.path.clone());
        room.gone.cancel();
        if first {
            let event = EventData::SyncRoomClosed { doc: room.name.to_string(), why: why.as_str().into(), peers };
            self.events.publish(Channel::Sync, event);
        }
        tracing::debug!(doc = %room.name, peers, "room unloaded");
        peers
    }

    /// Every document, stored or loaded, after `after`, with `prefix`.
    pub(crate) async fn list(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DocSummary>, Option<String>), WireError> {
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| WireError::new(ErrorCode::StoreFailed, format!("cannot list the sync store: {e}")))?;
        let mut docs: std::collections::BTreeMap<DocName, DocSummary> = stored
            .into_iter()
            .map(|(doc, bytes)| (doc.clone(), DocSummary { doc, loaded: false, peers: 0, stored_bytes: bytes }))
            .collect();
        for room in self.all() {
            let peers = room.peers(None).len() as u64;
            let entry = docs.entry(room.name.clone()).or_insert_with(|| DocSummary {
                doc: room.name.clone(),
                loaded: true,
                peers,
                stored_bytes: 0,
            });
            entry.loaded = true;
            entry.peers = peers;
        }
        let mut page: Vec<DocSummary> = docs
            .into_values()
            .filter(|d| prefix.is_none_or(|p| d.doc.as_str().starts_with(p)))
            .filter(|d| after.is_none_or(|a| d.doc.as_str() > a))
            .take(limit + 1)
            .collect();
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|d| d.doc.as_str().to_owned())
        } else {
            None
        };
        Ok((page, next))
    }

    /// A document's room report; an unloaded one is not loaded for it.
    pub(crate) fn inspect(&self, doc: &DocName, me: Option<u64>) -> Result<RoomReport, WireError> {
        if let Some(room) = self.loaded(doc) {
            return Ok(room.report(me));
        }
        if !self.store.exists(doc) {
            return Err(WireError::new(ErrorCode::DocNotFound, format!("no document named {doc}")));
        }
        Ok(RoomReport {
            doc: doc.clone(),
            loaded: false,
            revision: None,
            peers: Vec::new(),
            stored_bytes: self.store.stored_bytes(doc),
            appended_bytes: 0,
            changes: None,
            idle_ms: None,
        })
    }

    /// Files moved aside since the daemon started.
    pub(crate) fn moved_aside(&self) -> Vec<MovedAside> {
        self.moved.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
