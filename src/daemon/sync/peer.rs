//! One connection of the sync channel: its requests, its writes waiting
//! for their commit, and what it is sent as the document changes.
//!
//! The loop reads through [`Connection`] (a `Framed` codec keeps a frame
//! that arrived in pieces across a cancelled read), so reading can sit in
//! `select!` beside the room's wake-ups. Responses leave in request order:
//! each request's answer is a future in one ordered queue, a write's
//! resolving once its change is on disk. At most `sync.max_pending_writes`
//! answers wait at once; past that the peer is not read until one leaves.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::watch;

use super::SyncService;
use super::room::{Room, Update};
use crate::connection::Connection;
use crate::protocol::event::EventData;
use crate::protocol::frame::FrameError;
use crate::protocol::sync::{FrameKind, Path, PeerInfo, SyncMode, SyncRequest, SyncResponse, classify_frame};
use crate::protocol::{Channel, ErrorCode, WireError, decode_request};

type Answer = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What an answered request leads to.
enum Outcome {
    /// Send this response.
    Respond(SyncResponse),
    /// A replica's message is applied: answer with a sync message.
    Generate,
    /// A replica's changes are durable: answer with a sync message that
    /// carries the daemon's heads, which acknowledge them.
    Acknowledge,
    /// A replica's message failed: say why, and answer with a sync message.
    GenerateAfter(WireError),
}

/// A peer admitted to a room (or a control connection without one).
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) room: Option<Arc<Room>>,
    pub(crate) id: u64,
    pub(crate) mode: SyncMode,
}

/// Leaves the room when the connection ends, however it ends.
struct Membership {
    room: Option<Arc<Room>>,
    id: u64,
    events: Arc<crate::daemon::events::EventBus>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(room) = &self.room {
            room.leave(self.id);
            let left = EventData::SyncPeerLeft { doc: room.name.to_string(), peer: self.id };
            self.events.publish(Channel::Sync, left);
        }
    }
}

struct Watch {
    path: Path,
    cursor: u64,
    presence: watch::Receiver<u64>,
}

/// Why the loop ended.
enum End {
    /// The peer left or broke the framing, or the daemon stops.
    Quiet,
    /// Tell the peer this, then close.
    Error(WireError),
}

pub(crate) async fn serve(service: Arc<SyncService>, mut conn: Connection, admitted: Admitted) {
    let _member = Membership { room: admitted.room.clone(), id: admitted.id, events: service.rooms.events.clone() };
    let mut peer = Peer {
        service,
        room: admitted.room,
        id: admitted.id,
        mode: admitted.mode,
        watch: None,
        sync_state: automerge::sync::State::new(),
        pending: FuturesOrdered::new(),
    };
    let end = peer.run(&mut conn).await;
    // Out of the room first: the others see it gone at once.
    drop(_member);
    if let End::Error(error) = end {
        if error.code == ErrorCode::PeerTooSlow {
            super::bump(&peer.service.stats.peers_dropped_slow);
            tracing::info!(doc = ?peer.room.as_ref().map(|r| r.name.to_string()), peer = peer.id, "{}", error.message);
        }
        let timeout = peer.service.config.peer_write_timeout.0.min(Duration::from_secs(1));
        let _ = tokio::time::timeout(timeout, conn.write_json(&SyncResponse::Error(error))).await;
        linger(conn, timeout).await;
    }
}

/// Reads (and drops) what the peer still sends, briefly, before closing:
/// closing a Unix socket with unread data resets the peer, which could
/// then lose the error just written to it.
pub(crate) async fn linger(mut conn: Connection, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        let mut drained = 0usize;
        while drained < 1 << 20 {
            match conn.read_frame().await {
                Ok(Some(frame)) => drained += frame.len() + 4,
                _ => break,
            }
        }
    })
    .await;
}

struct Peer {
    service: Arc<SyncService>,
    room: Option<Arc<Room>>,
    id: u64,
    mode: SyncMode,
    watch: Option<Watch>,
    sync_state: automerge::sync::State,
    pending: FuturesOrdered<Answer>,
}

impl Peer {
    async fn run(&mut self, conn: &mut Connection) -> End {
        let stop = self.service.stop.clone();
        let closed = self.room.as_ref().map(|r| r.closed.clone());
        let mut durable = self.room.as_ref().map(|r| r.subscribe_durable());
        let max_pending = self.service.config.max_pending_writes as usize;
        if self.mode == SyncMode::Replica {
            // The daemon speaks first: its heads and what it has.
            if let Err(end) = self.send_sync(conn).await {
                return end;
            }
        }
        loop {
            let subscribed = self.mode == SyncMode::Replica || self.watch.is_some();
            let idle = (!subscribed && self.pending.is_empty()).then_some(self.service.idle_timeout);
            let answering = !self.pending.is_empty();
            let can_read = self.pending.len() < max_pending;
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    return End::Error(WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
                }
                Some(outcome) = self.pending.next(), if answering => {
                    if let Err(end) = self.deliver(conn, outcome).await {
                        return end;
                    }
                }
                () = cancelled(closed.as_ref()) => {
                    return self.finish_closed(conn).await;
                }
                changed = changed(durable.as_mut()), if subscribed => {
                    if changed.is_err() {
                        return End::Quiet;
                    }
                    if let Err(end) = self.push_updates(conn).await {
                        return end;
                    }
                }
                changed = presence_changed(self.watch.as_mut()) => {
                    if changed.is_ok() && let Err(end) = self.push_presence(conn).await {
                        return end;
                    }
                }
                read = read_with_idle(conn, idle), if can_read => {
                    match read {
                        Ok(Some(frame)) => self.frame(&frame),
                        Ok(None) => return End::Quiet,
                        Err(end) => return end,
                    }
                }
            }
        }
    }

    /// The room closed: answer what is still pending (closing waits for
    /// the disk, so these resolve), then say why.
    async fn finish_closed(&mut self, conn: &mut Connection) -> End {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(outcome)) = tokio::time::timeout_at(deadline, self.pending.next()).await {
            if let Outcome::Respond(response) = outcome
                && self.send_json(conn, &response).await.is_err()
            {
                return End::Quiet;
            }
        }
        End::Error(
            self.room
                .as_ref()
                .map_or_else(|| WireError::new(ErrorCode::RoomClosed, "the room was closed"), |r| r.close_reason()),
        )
    }

    fn ready(&mut self, response: SyncResponse) {
        self.pending.push_back(Box::pin(std::future::ready(Outcome::Respond(response))));
    }

    fn error(&mut self, error: WireError) {
        self.ready(SyncResponse::Error(error));
    }

    fn frame(&mut self, frame: &[u8]) {
        match classify_frame(frame) {
            FrameKind::Json => match decode_request::<SyncRequest>(frame) {
                Ok(request) => self.request(request),
                Err(error) => self.error(error),
            },
            FrameKind::SyncMessage => self.sync_message(frame),
        }
    }

    fn room(&self) -> Result<&Arc<Room>, WireError> {
        self.room.as_ref().ok_or_else(|| {
            WireError::new(ErrorCode::NoDocument, "this connection's handshake named no document (\"doc\")")
        })
    }

    fn request(&mut self, request: SyncRequest) {
        let service = self.service.clone();
        match request {
            SyncRequest::Get { path } => {
                let answer = self.room().and_then(|r| r.get(&path));
                match answer {
                    Ok((revision, value)) => self.ready(SyncResponse::Value { revision, value }),
                    Err(e) => self.error(e),
                }
            }
            SyncRequest::Watch { path, since } => {
                let started =
                    self.room().and_then(|r| Ok((r.watch_start(&path, since.as_ref())?, r.subscribe_presence())));
                match started {
                    Ok(((revision, value, patches, cursor), presence)) => {
                        self.watch = Some(Watch { path, cursor, presence });
                        self.ready(SyncResponse::Watching { revision, value, patches });
                    }
                    Err(e) => self.error(e),
                }
            }
            SyncRequest::Write { ops, base } => {
                super::bump(&self.service.stats.writes);
                let applied = self.room().and_then(|r| r.write(&service.rooms.writer, &ops, base.as_ref()));
                match applied {
                    Err(e) => self.error(e),
                    Ok(applied) => {
                        let response = SyncResponse::Written { revision: applied.revision, stale: applied.stale };
                        match applied.durable {
                            None => self.ready(response),
                            Some(durable) => self.pending.push_back(Box::pin(async move {
                                Outcome::Respond(match durable.await {
                                    Ok(Ok(())) => response,
                                    Ok(Err(e)) => {
                                        SyncResponse::Error(WireError::new(ErrorCode::StoreFailed, e.to_string()))
                                    }
                                    Err(_) => SyncResponse::Error(WireError::new(
                                        ErrorCode::ShuttingDown,
                                        "the sync store closed",
                                    )),
                                })
                            })),
                        }
                    }
                }
            }
            SyncRequest::Peers => match self.room() {
                Ok(room) => {
                    let peers = room.peers(Some(self.id));
                    self.ready(SyncResponse::Peers { peers });
                }
                Err(e) => self.error(e),
            },
            SyncRequest::List { prefix, after, limit } => {
                let limit = limit.unwrap_or(1000).clamp(1, 1000) as usize;
                self.pending.push_back(Box::pin(async move {
                    Outcome::Respond(match service.rooms.list(prefix.as_deref(), after.as_deref(), limit).await {
                        Ok((docs, next)) => SyncResponse::Docs { docs, next },
                        Err(e) => SyncResponse::Error(e),
                    })
                }));
            }
            SyncRequest::Inspect { doc } => {
                let doc = doc.or_else(|| self.room.as_ref().map(|r| r.name.clone()));
                match doc {
                    None => self.error(WireError::new(
                        ErrorCode::NoDocument,
                        "inspect needs \"doc\" on a connection without one",
                    )),
                    Some(doc) => match service.rooms.inspect(&doc, Some(self.id)) {
                        Ok(report) => self.ready(SyncResponse::Room(Box::new(report))),
                        Err(e) => self.error(e),
                    },
                }
            }
            SyncRequest::Close { doc } => {
                let doc = doc.or_else(|| self.room.as_ref().map(|r| r.name.clone()));
                let Some(doc) = doc else {
                    return self.error(WireError::new(
                        ErrorCode::NoDocument,
                        "close needs \"doc\" on a connection without one",
                    ));
                };
                self.pending.push_back(Box::pin(async move {
                    let room = service.rooms.loaded(&doc);
                    let peers = match &room {
                        Some(room) => {
                            let reason = WireError::new(
                                ErrorCode::RoomClosed,
                                format!("the room of {doc} was closed by a peer"),
                            );
                            service.rooms.unload(room, super::rooms::Unload::Evicted, reason).await
                        }
                        None => 0,
                    };
                    Outcome::Respond(SyncResponse::Closed { doc, peers, was_loaded: room.is_some() })
                }));
            }
        }
    }

    fn sync_message(&mut self, frame: &[u8]) {
        let room = match self.room() {
            Ok(room) => room.clone(),
            Err(e) => return self.error(e),
        };
        if self.mode != SyncMode::Replica {
            return self.error(WireError::new(
                ErrorCode::InvalidSyncMessage,
                "binary sync messages need a connection that joined with \"mode\":\"replica\"",
            ));
        }
        let max = self.service.config.max_sync_message.0;
        if frame.len() as u64 > max {
            return self.error(WireError::new(
                ErrorCode::SyncMessageTooLarge,
                format!("a sync message of {} bytes exceeds sync.max_sync_message ({max} bytes)", frame.len()),
            ));
        }
        super::bump(&self.service.stats.sync_messages);
        let message = match automerge::sync::Message::decode(frame) {
            Ok(message) => message,
            Err(e) => {
                return self.error(WireError::new(
                    ErrorCode::InvalidSyncMessage,
                    format!("the frame is not an Automerge sync message: {e}"),
                ));
            }
        };
        match room.receive(&self.service.rooms.writer, &mut self.sync_state, message, frame.len() as u64) {
            Err(e) => {
                // The sync state may expect an answer: send one after the error.
                self.pending.push_back(Box::pin(std::future::ready(Outcome::GenerateAfter(e))));
            }
            Ok(applied) => match applied.durable {
                None => self.pending.push_back(Box::pin(std::future::ready(Outcome::Generate))),
                Some(durable) => self.pending.push_back(Box::pin(async move {
                    // The answer carries the daemon's heads, which
                    // acknowledge the peer's changes: only once on disk.
                    match durable.await {
                        Ok(Ok(())) => Outcome::Acknowledge,
                        Ok(Err(e)) => {
                            Outcome::Respond(SyncResponse::Error(WireError::new(ErrorCode::StoreFailed, e.to_string())))
                        }
                        Err(_) => Outcome::Respond(SyncResponse::Error(WireError::new(
                            ErrorCode::ShuttingDown,
                            "the sync store closed",
                        ))),
                    }
                })),
            },
        }
    }

    async fn deliver(&mut self, conn: &mut Connection, outcome: Outcome) -> Result<(), End> {
        match outcome {
            Outcome::Respond(response) => self.send_json(conn, &response).await,
            Outcome::Generate => self.send_sync(conn).await,
            Outcome::Acknowledge => {
                // Automerge stays silent when the peer's last message
                // showed the same heads; the peer still needs to hear that
                // its changes are on disk, so the heads are sent anyway.
                self.sync_state.last_sent_heads.clear();
                self.send_sync(conn).await
            }
            Outcome::GenerateAfter(error) => {
                self.send_json(conn, &SyncResponse::Error(error)).await?;
                self.send_sync(conn).await
            }
        }
    }

    async fn send_sync(&mut self, conn: &mut Connection) -> Result<(), End> {
        let Some(room) = self.room.clone() else { return Ok(()) };
        let message = room.generate(&mut self.sync_state).map_err(End::Error)?;
        if let Some(message) = message {
            self.send_raw(conn, Bytes::from(message)).await?;
        }
        Ok(())
    }

    /// Sends what this peer lacks: its view's patches, or a sync message.
    async fn push_updates(&mut self, conn: &mut Connection) -> Result<(), End> {
        if self.mode == SyncMode::Replica {
            self.send_sync(conn).await?;
        }
        let Some(room) = self.room.clone() else { return Ok(()) };
        let max_bytes = self.service.max_frame / 2;
        while let Some(watch) = &mut self.watch {
            let update = room.update_for(watch.cursor, &watch.path, max_bytes).map_err(End::Error)?;
            let response = match update {
                Update::Nothing { upto } => {
                    watch.cursor = upto;
                    return Ok(());
                }
                Update::Patches { from, to, patches, upto } => {
                    watch.cursor = upto;
                    SyncResponse::Changed { from, revision: to, patches }
                }
                Update::Snapshot { revision, value, upto } => {
                    watch.cursor = upto;
                    SyncResponse::Snapshot { revision, value }
                }
            };
            self.send_json(conn, &response).await?;
        }
        Ok(())
    }

    async fn push_presence(&mut self, conn: &mut Connection) -> Result<(), End> {
        let Some(room) = self.room.clone() else { return Ok(()) };
        let peers: Vec<PeerInfo> = room.peers(Some(self.id));
        self.send_json(conn, &SyncResponse::Presence { peers }).await
    }

    async fn send_json(&mut self, conn: &mut Connection, response: &SyncResponse) -> Result<(), End> {
        let timeout = self.service.config.peer_write_timeout.0;
        match tokio::time::timeout(timeout, conn.write_json(response)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(FrameError::TooLarge { len, max })) => {
                let error = WireError::new(
                    ErrorCode::ViewTooLarge,
                    format!("the answer would be {len} bytes, over the maximum frame of {max}; read a smaller path"),
                );
                self.send_error_now(conn, error).await
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = self.id, "cannot write to the peer: {e}");
                Err(End::Quiet)
            }
            Err(_) => Err(self.too_slow(timeout)),
        }
    }

    async fn send_error_now(&mut self, conn: &mut Connection, error: WireError) -> Result<(), End> {
        let timeout = self.service.config.peer_write_timeout.0;
        match tokio::time::timeout(timeout, conn.write_json(&SyncResponse::Error(error))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Quiet),
            Err(_) => Err(self.too_slow(timeout)),
        }
    }

    async fn send_raw(&mut self, conn: &mut Connection, payload: Bytes) -> Result<(), End> {
        let timeout = self.service.config.peer_write_timeout.0;
        if payload.len() > conn.max_frame() {
            let error = WireError::new(
                ErrorCode::ViewTooLarge,
                format!("the sync message would be {} bytes, over the maximum frame", payload.len()),
            );
            self.send_error_now(conn, error.clone()).await?;
            return Err(End::Error(error));
        }
        match tokio::time::timeout(timeout, conn.write_raw(payload)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Quiet),
            Err(_) => Err(self.too_slow(timeout)),
        }
    }

    fn too_slow(&self, timeout: Duration) -> End {
        End::Error(WireError::new(
            ErrorCode::PeerTooSlow,
            format!("the peer took nothing for {timeout:?} (sync.peer_write_timeout); disconnected"),
        ))
    }
}

async fn cancelled(token: Option<&tokio_util::sync::CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn changed(rx: Option<&mut watch::Receiver<u64>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

async fn presence_changed(watch: Option<&mut Watch>) -> Result<(), watch::error::RecvError> {
    match watch {
        Some(w) => w.presence.changed().await,
        None => std::future::pending().await,
    }
}

/// The next frame; with `idle`, giving up (with `idle_timeout`) after that long.
async fn read_with_idle(conn: &mut Connection, idle: Option<Duration>) -> Result<Option<Bytes>, End> {
    let read = match idle {
        Some(idle) => match tokio::time::timeout(idle, conn.read_frame()).await {
            Ok(read) => read,
            Err(_) => {
                return Err(End::Error(WireError::new(
                    ErrorCode::IdleTimeout,
                    format!("closing a connection idle for {idle:?}"),
                )));
            }
        },
        None => conn.read_frame().await,
    };
    match read {
        Ok(frame) => Ok(frame),
        Err(FrameError::TooLarge { len, max }) => Err(End::Error(WireError::new(
            ErrorCode::FrameTooLarge,
            format!("a frame of {len} bytes exceeds the maximum frame size of {max} bytes"),
        ))),
        Err(e) => {
            tracing::debug!("closing sync connection: {e}");
            Err(End::Quiet)
        }
    }
}
