//! The sync service: live Automerge documents shared by every window.
//!
//! - `store.rs`: the document files (records appended, torn tails cut,
//!   unreadable files moved aside).
//! - `writer.rs`: the single writer thread and its group commit.
//! - `doc.rs`: JSON reads, path operations and patches over Automerge.
//! - `room.rs`: one loaded document, its peers and its patch log.
//! - `rooms.rs`: the registry of rooms (one load per document).
//! - `plan.rs`: the pure upkeep planner (unload idle rooms, compact).
//! - `peer.rs`: one connection's loop.
//! - `settings.rs`: the `settings` document, its mirror and watcher.
//!
//! The daemon reaches it through the `Service` trait: `serve` admits a
//! handshaked connection to its document's room (or answers why not) and
//! serves it; the other hooks report, probe, drain and stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Config;
use super::metrics::Scrape;
use super::services::{BoxFuture, Opened, Service, StartCtx, StartError, StartService};
use crate::connection::Connection;
use crate::daemon::events::EventBus;
use crate::paths::Paths;
use crate::protocol::Channel;
use crate::protocol::event::EventData;
use crate::protocol::handshake::Handshake;
use crate::protocol::status::{HealthCode, HealthReason, ServiceSummaries};
use crate::protocol::sync::{SyncOpen, SyncResponse, SyncSummary};
use crate::protocol::{ErrorCode, WireError};

pub(crate) mod config;
mod doc;
mod peer;
mod plan;
mod room;
mod rooms;
mod settings;
mod store;
mod writer;

pub use config::SyncConfig;
pub(crate) use peer::Admitted;

use plan::{Action, Policy, RoomView};
use room::RoomLimits;
use rooms::{Rooms, Unload};

/// Counters for `status`.
#[derive(Debug, Default)]
pub(crate) struct SyncStats {
    pub(crate) writes: AtomicU64,
    pub(crate) sync_messages: AtomicU64,
    pub(crate) peers_dropped_slow: AtomicU64,
    pub(crate) compactions: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The running sync service.
#[derive(Debug)]
pub(crate) struct SyncService {
    pub(crate) config: SyncConfig,
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) stop: CancellationToken,
    /// `server.connection_idle_timeout`, for connections that watch nothing.
    pub(crate) idle_timeout: Duration,
    /// `server.max_frame`.
    pub(crate) max_frame: usize,
    pub(crate) stats: SyncStats,
    mirror: Option<Arc<settings::Mirror>>,
    settings_problem: std::sync::Mutex<Option<String>>,
    upkeep_now: Notify,
}

impl SyncService {
    /// Opens the store under `<state-dir>/sync/`, brings the settings
    /// document up to date, and starts the upkeep and mirror tasks.
    pub(crate) async fn open(
        config: &SyncConfig,
        server: &crate::daemon::config::ServerConfig,
        paths: &Paths,
        stop: &CancellationToken,
        tracker: &TaskTracker,
        events: &Arc<EventBus>,
    ) -> Result<Arc<SyncService>, StartError> {
        let dir = paths.state_dir().join("sync");
        let store =
            store::StoreDir::open(dir.clone()).map_err(|source| StartError::Io { path: dir.clone(), source })?;
        let writer = Arc::new(
            writer::Writer::spawn(dir.clone())
                .map_err(|source| StartError::Runtime { what: "the sync store's writer thread", source })?,
        );
        let limits = RoomLimits {
            max_doc_size: config.max_doc_size.0,
            max_value_size: config.max_value_size.0,
            max_peers: config.max_peers_per_room,
            patch_log_bytes: usize::try_from(config.patch_log_bytes.0).unwrap_or(usize::MAX),
        };
        let rooms = Arc::new(Rooms::new(store, writer, events.clone(), limits, config.max_docs));
        let defaults: Map<String, Value> = config
            .settings_defaults
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::to_value(v).ok()?)))
            .collect();
        let problem = settings::upgrade(&rooms, &defaults)
            .await
            .map_err(|e| StartError::Store { what: "the settings document", source: Box::new(e) })?;
        let mirror = config.settings_mirror.then(|| settings::Mirror::new(paths.state_dir(), &dir, events.clone()));
        let service = Arc::new(SyncService {
            config: config.clone(),
            rooms: rooms.clone(),
            stop: stop.clone(),
            idle_timeout: server.connection_idle_timeout.0,
            max_frame: server.max_frame.as_usize(),
            stats: SyncStats::default(),
            mirror: mirror.clone(),
            settings_problem: std::sync::Mutex::new(problem.map(|e| e.to_string())),
            upkeep_now: Notify::new(),
        });
        if let Some(mirror) = mirror {
            tracker.spawn(settings::run(mirror, rooms, stop.clone()));
        }
        tracker.spawn(upkeep(service.clone()));
        service.rooms.started.store(true, Ordering::Relaxed);
        Ok(service)
    }

    /// Joins a handshaked connection to its document's room (loading it),
    /// or refuses it: a bad name, too many documents, a full room.
    pub(crate) async fn admit(
        &self,
        open: &SyncOpen,
        client: Option<String>,
        pid: Option<u32>,
    ) -> Result<Admitted, WireError> {
        let id = self.rooms.next_peer_id();
        let Some(doc) = &open.doc else {
            return Ok(Admitted { room: None, id, mode: open.mode });
        };
        loop {
            let room = self.rooms.open(doc).await?;
            match room.join(room::peer_info(id, client.clone(), pid, open.mode)) {
                Ok(()) => {
                    let joined = EventData::SyncPeerJoined {
                        doc: doc.to_string(),
                        peer: id,
                        client: client.clone(),
                        pid,
                        mode: open.mode,
                    };
                    self.rooms.events.publish(Channel::Sync, joined);
                    return Ok(Admitted { room: Some(room), id, mode: open.mode });
                }
                // Closed between the open and the join: load it again.
                Err(e) if e.code == ErrorCode::RoomClosed => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Serves one handshaked connection: admits it to its room and says
    /// so with `joined`, or says why not (an error, then the connection
    /// closes).
    pub(crate) async fn serve_connection(
        self: Arc<Self>,
        mut conn: Connection,
        params: &serde_json::Map<String, serde_json::Value>,
        client: Option<String>,
        pid: Option<u32>,
    ) {
        let admitted = match SyncOpen::from_params(params) {
            Ok(open) => self.admit(&open, client, pid).await,
            Err(e) => Err(e),
        };
        let timeout = self.config.peer_write_timeout.0;
        match admitted {
            Ok(admitted) => {
                let joined = SyncResponse::Joined {
                    doc: admitted.room.as_ref().map(|r| r.name.clone()),
                    mode: admitted.mode,
                    peer: admitted.id,
                };
                if matches!(tokio::time::timeout(timeout, conn.write_json(&joined)).await, Ok(Ok(()))) {
                    peer::serve(self, conn, admitted).await;
                } else if let Some(room) = &admitted.room {
                    // It never heard it joined: out of the room at once, not a ghost in it.
                    room.leave(admitted.id);
                    let left = EventData::SyncPeerLeft { doc: room.name.to_string(), peer: admitted.id };
                    self.rooms.events.publish(Channel::Sync, left);
                }
            }
            Err(error) => {
                tracing::debug!(code = %error.code, "sync connection refused: {}", error.message);
                let _ = tokio::time::timeout(timeout, conn.write_json(&SyncResponse::Error(error))).await;
                peer::linger(conn, timeout.min(Duration::from_secs(1))).await;
            }
        }
    }

    pub(crate) fn summary(&self) -> SyncSummary {
        let rooms = self.rooms.all();
        let stats = &self.rooms.writer.stats;
        SyncSummary {
            rooms: rooms.len() as u64,
            peers: rooms.iter().map(|r| r.stats().peers as u64).sum(),
            writes: self.stats.writes.load(Ordering::Relaxed),
            sync_messages: self.stats.sync_messages.load(Ordering::Relaxed),
            commits: stats.commits.load(Ordering::Relaxed),
            peers_dropped_slow: self.stats.peers_dropped_slow.load(Ordering::Relaxed),
            store_errors: stats.errors.load(Ordering::Relaxed),
            compactions: self.stats.compactions.load(Ordering::Relaxed),
            settings_file: self.mirror.as_ref().map(|m| m.file.display().to_string()),
        }
    }

    fn health_reasons(&self, reasons: &mut Vec<HealthReason>) {
        let now = crate::time::now_ms();
        for moved in self.rooms.moved_aside() {
            let message = format!(
                "the file of {} could not be read ({}); it was moved to {} and the document started empty",
                moved.doc, moved.why, moved.to
            );
            reasons.push(HealthReason::new(HealthCode::SyncStoreMovedAside, message));
        }
        if let Some((ago, message)) = self.rooms.writer.stats.last_error.recent(now) {
            let message = format!("the sync store failed {}s ago: {message}", ago.as_secs());
            reasons.push(HealthReason::new(HealthCode::SyncStoreErrors, message));
        }
        if let Some(refused) = self.mirror.as_ref().and_then(|m| m.refused()) {
            let message = format!(
                "an edit of settings.json was refused {}s ago: {}",
                now.saturating_sub(refused.at_ms) / 1000,
                refused.why
            );
            reasons.push(HealthReason::new(HealthCode::SyncSettingsEditRefused, message));
        }
        if let Some(problem) = self.settings_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            reasons.push(HealthReason::new(HealthCode::SyncSettingsSchema, problem));
        }
    }

    /// Proves the writer thread takes work.
    async fn probe_writer(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(2), self.rooms.writer.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the sync store's writer: {e}")),
            Err(_) => Err("the sync store's writer did not answer within 2s".into()),
        }
    }

    /// Changes not yet on disk keep the daemon from being idle.
    fn busy_with(&self) -> Option<String> {
        let in_flight = self.rooms.all().iter().filter(|r| r.stats().in_flight).count();
        (in_flight > 0).then(|| format!("{in_flight} sync documents committing"))
    }

    /// `; sync: 3 rooms, 7 peers` for a `STATUS=` line.
    fn status(&self, line: &mut String) {
        let rooms = self.rooms.all();
        if !rooms.is_empty() {
            let peers: usize = rooms.iter().map(|r| r.stats().peers).sum();
            line.push_str(&format!("; sync: {} rooms, {peers} peers", rooms.len()));
        }
    }

    /// Waits until every applied change is on disk, at most until `deadline`.
    async fn drain_until(&self, deadline: tokio::time::Instant) {
        for room in self.rooms.all() {
            let target = room.seq();
            let mut durable = room.subscribe_durable();
            let _ = tokio::time::timeout_at(deadline, durable.wait_for(|s| *s >= target)).await;
        }
    }

    /// Closes every room (their peers are told the daemon is stopping),
    /// lets the writer commit what is queued, and stops it.
    pub(crate) async fn stop_all(&self) {
        for room in self.rooms.all() {
            let reason = WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down");
            let _ =
                tokio::time::timeout(Duration::from_secs(5), self.rooms.unload(&room, Unload::Shutdown, reason)).await;
        }
        let writer = self.rooms.writer.clone();
        let _ = tokio::task::spawn_blocking(move || writer.close()).await;
    }

    fn views(&self) -> Vec<RoomView> {
        self.rooms
            .all()
            .iter()
            .map(|room| {
                let s = room.stats();
                RoomView {
                    doc: room.name.clone(),
                    peers: s.peers,
                    idle_for: s.idle_since.map(|t| Instant::now().saturating_duration_since(t)),
                    pinned: room.name.as_str() == crate::protocol::sync::SETTINGS_DOC,
                    in_flight: s.in_flight,
                    base_bytes: s.base_bytes,
                    appended_bytes: s.appended_bytes,
                    compacting: s.compacting,
                }
            })
            .collect()
    }
}

impl StartService for SyncService {
    const CHANNEL: Channel = Channel::Sync;

    fn enabled(config: &Config) -> bool {
        config.sync.enabled
    }

    async fn start(ctx: StartCtx<'_>) -> Result<Arc<Self>, StartError> {
        SyncService::open(&ctx.config.sync, &ctx.config.server, ctx.paths, ctx.stop, ctx.tracker, ctx.events).await
    }
}

impl Service for SyncService {
    /// A bad `doc` or `mode` refuses the handshake; the room's own limits
    /// (`too_many_docs`, `room_full`) are said after it, in place of `joined`.
    fn check_handshake(&self, handshake: &Handshake) -> Result<(), WireError> {
        SyncOpen::from_params(&handshake.params).map(drop)
    }

    fn serve(self: Arc<Self>, opened: Opened) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Opened { conn, handshake, peer_pid, .. } = opened;
            self.serve_connection(conn, &handshake.params, handshake.client, peer_pid).await;
        })
    }

    fn summarize(&self, summaries: &mut ServiceSummaries) {
        summaries.sync = Some(self.summary());
    }

    fn collect(&self, scrape: &mut Scrape<'_, '_>) -> std::fmt::Result {
        let s = self.summary();
        scrape.gauge("sync_rooms", "Sync rooms loaded", None, s.rooms)?;
        scrape.gauge("sync_peers", "Peers in the loaded sync rooms", None, s.peers)?;
        scrape.counter("sync_writes", "View-mode writes received since start", None, s.writes)?;
        scrape.counter("sync_messages", "Replica sync messages received since start", None, s.sync_messages)?;
        scrape.counter("sync_commits", "Group commits of the sync store since start", None, s.commits)?;
        scrape.counter(
            "sync_peers_dropped_slow",
            "Peers disconnected with peer_too_slow since start",
            None,
            s.peers_dropped_slow,
        )
    }

    fn health(&self, reasons: &mut Vec<HealthReason>) {
        self.health_reasons(reasons);
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.probe_writer())
    }

    fn busy(&self) -> Option<String> {
        self.busy_with()
    }

    fn status_line(&self, line: &mut String) {
        self.status(line);
    }

    fn drain(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        Box::pin(self.drain_until(deadline))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_all())
    }
}

/// Unloads idle rooms and compacts documents, as `plan()` says, until the daemon stops.
async fn upkeep(service: Arc<SyncService>) {
    let policy =
        Policy { idle_unload: service.config.idle_unload.0, compact_min_bytes: service.config.compact_min_bytes.0 };
    let tick = (policy.idle_unload / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = service.stop.cancelled() => return,
            _ = interval.tick() => {}
            () = service.upkeep_now.notified() => {}
        }
        // A room whose file failed reloads from what is on disk.
        for room in service.rooms.all() {
            if let Some(failure) = room.durability.failure() {
                let reason = WireError::new(ErrorCode::StoreFailed, format!("the document's file failed: {failure}"));
                service.rooms.unload(&room, Unload::StoreFailed, reason).await;
            }
        }
        for action in plan::plan(&service.views(), policy) {
            match action {
                Action::Unload(doc) => {
                    if let Some(room) = service.rooms.loaded(&doc) {
                        // Re-checked: a peer may have joined since the plan.
                        if room.stats().peers == 0 {
                            let reason =
                                WireError::new(ErrorCode::RoomClosed, format!("{doc} unloaded after being idle"));
                            service.rooms.unload(&room, Unload::Idle, reason).await;
                        }
                    }
                }
                Action::Compact(doc) => {
                    if let Some(room) = service.rooms.loaded(&doc) {
                        room.set_compacting(true);
                        let service = service.clone();
                        tokio::spawn(async move {
                            match compact(&service, &room).await {
                                Ok((base, appended)) => {
                                    bump(&service.stats.compactions);
                                    tracing::debug!(doc = %room.name, base, appended, "compacted");
                                    room.compacted(base, appended);
                                    let bytes = base + appended + store::MAGIC.len() as u64;
                                    let event = EventData::SyncCompacted { doc: room.name.to_string(), bytes };
                                    service.rooms.events.publish(Channel::Sync, event);
                                }
                                Err(e) => {
                                    tracing::warn!(doc = %room.name, "compaction failed: {e}");
                                    room.set_compacting(false);
                                }
                            }
                        });
                    }
                }
            }
        }
    }
}

/// Compacts one document's file in the background: the bytes on disk up
/// to a cut are loaded and saved whole into a temp file (off the room's
/// lock, off the writer), then the writer appends what came after the
/// cut and renames the result into place.
async fn compact(service: &SyncService, room: &room::Room) -> std::io::Result<(u64, u64)> {
    let writer = &service.rooms.writer;
    let cut = writer.cut(room.path.clone()).await?;
    let path = room.path.clone();
    let tmp = path.with_extension("am.compact");
    let tmp2 = tmp.clone();
    tokio::task::spawn_blocking(move || store::compact_into(&path, cut, &tmp2))
        .await
        .map_err(std::io::Error::other)??;
    writer.swap(room.path.clone(), tmp, cut).await
}

#[cfg(test)]
mod tests;
