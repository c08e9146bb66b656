//! The `status` channel: a service like the others, always running.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::conn::session::{Closed, Session};
use super::events::{Published, Subscription};
use super::services::{BoxFuture, Opened, Service, StartCtx, StartError, StartService};
use super::{Config, Shared, uptime};
use crate::protocol::event::Subscribe;
use crate::protocol::status::{ConnectionStats, StatusChannel, StatusReport, StatusRequest, StatusResponse};
use crate::protocol::{Channel, ErrorCode, PROTOCOL_VERSION, WireError, decode_request};

/// Liveness, health and a graceful stop.
#[derive(Debug)]
pub(crate) struct StatusService;

impl StartService for StatusService {
    const CHANNEL: Channel = Channel::Status;

    fn enabled(_config: &Config) -> bool {
        true
    }

    async fn start(_ctx: StartCtx<'_>) -> Result<Arc<Self>, StartError> {
        Ok(Arc::new(StatusService))
    }
}

impl Service for StatusService {
    fn serve(self: Arc<Self>, opened: Opened) -> BoxFuture<'static, ()> {
        Box::pin(serve(opened.session()))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Events sent in one write at most, when a subscriber has a backlog.
const EVENT_BATCH: usize = 256;

/// A subscriber is written to at most this often while events stream in;
/// the first event after a quiet spell goes out at once. Under a steady
/// stream, each write carries every event of the interval: a hundred
/// subscribers then cost a hundred writes per interval, not per event.
const EVENT_COALESCE: std::time::Duration = std::time::Duration::from_millis(5);

async fn serve(mut session: Session<StatusChannel>) {
    while let Some(request) = session.next_request().await {
        let result = match request {
            StatusRequest::Subscribe(request) => subscribe(&mut session, &request).await,
            other => {
                let response = handle(session.shared(), other);
                session.send(&response).await
            }
        };
        if result.is_err() {
            break;
        }
    }
}

/// Streams events until the peer sends `unsubscribe` (the session then
/// takes requests again) or goes away, or the daemon stops.
async fn subscribe(session: &mut Session<StatusChannel>, request: &Subscribe) -> Result<(), Closed> {
    let filter = &request.filter;
    if let Err(message) = filter.check() {
        return session.send(&error(ErrorCode::InvalidRequest, message)).await;
    }
    let Subscription { seq, missed, replay, live: mut rx } = session.shared().events.subscribe(request.since);
    session.send(&StatusResponse::Subscribed { seq }).await?;
    let mut frames = Vec::new();
    if missed > 0 {
        frames.push(encode(&StatusResponse::Lagged { missed }));
    }
    let wanted = |e: &Published| filter.matches(e.service, &e.kind, e.subject.as_deref());
    frames.extend(replay.into_iter().filter(wanted).map(|e| e.frame));
    for chunk in frames.chunks(EVENT_BATCH) {
        session.send_frames(chunk.to_vec()).await?;
    }
    let mut last_write: Option<tokio::time::Instant> = None;
    loop {
        let next = tokio::select! {
            frame = session.next_frame_while_streaming() => {
                let Some(frame) = frame else {
                    if session.shared().stop.is_cancelled() {
                        session.send(&error(ErrorCode::ShuttingDown, "the daemon is shutting down")).await?;
                    }
                    return Err(Closed);
                };
                match decode_request::<StatusRequest>(&frame) {
                    Ok(StatusRequest::Unsubscribe) => return session.send(&StatusResponse::Unsubscribed).await,
                    Ok(_) => {
                        let message = "a subscription is running: only unsubscribe is accepted until it ends";
                        session.send(&error(ErrorCode::InvalidRequest, message)).await?;
                    }
                    Err(e) => session.send(&StatusResponse::Error(e)).await?,
                }
                continue;
            }
            next = rx.recv() => next,
        };
        // This event and whatever else comes within the coalescing
        // interval since the last write, in one write.
        let mut frames = Vec::new();
        let mut next = Some(next);
        let mut waited = false;
        while let Some(received) = next.take() {
            match received {
                Ok(event) => {
                    if wanted(&event) {
                        frames.push(event.frame);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    frames.push(encode(&StatusResponse::Lagged { missed }));
                }
                Err(broadcast::error::RecvError::Closed) => return Err(Closed),
            }
            if !waited && !frames.is_empty() {
                waited = true;
                if let Some(at) = last_write.map(|t| t + EVENT_COALESCE).filter(|at| *at > tokio::time::Instant::now())
                {
                    tokio::time::sleep_until(at).await;
                }
            }
            if frames.len() < EVENT_BATCH {
                next = match rx.try_recv() {
                    Ok(event) => Some(Ok(event)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                    Err(_) => None,
                };
            }
        }
        if !frames.is_empty() {
            session.send_frames(frames).await?;
            last_write = Some(tokio::time::Instant::now());
        }
    }
}

fn encode(response: &StatusResponse) -> bytes::Bytes {
    serde_json::to_vec(response).unwrap_or_default().into()
}

fn error(code: ErrorCode, message: impl Into<String>) -> StatusResponse {
    StatusResponse::Error(WireError::new(code, message))
}

fn handle(shared: &std::sync::Arc<Shared>, request: StatusRequest) -> StatusResponse {
    match request {
        StatusRequest::Ping => StatusResponse::Pong,
        StatusRequest::Status => StatusResponse::Status(Box::new(report(shared))),
        StatusRequest::Shutdown { reason, drain } => {
            let reason = reason.as_deref().map(|r| r.chars().take(512).collect::<String>());
            let reason = reason.as_deref().unwrap_or("none given");
            let grace_ms = shared.config.server.shutdown_grace.0.as_millis() as u64;
            if drain {
                tracing::info!(reason, "draining shutdown requested");
                shared.begin_drain();
                let drain_ms = shared.config.daemon.drain_timeout.0.as_millis() as u64;
                StatusResponse::ShuttingDown { grace_ms, drain_ms: Some(drain_ms) }
            } else {
                tracing::info!(reason, "shutdown requested");
                shared.stop.cancel();
                StatusResponse::ShuttingDown { grace_ms, drain_ms: None }
            }
        }
        StatusRequest::Unsubscribe => error(ErrorCode::InvalidRequest, "no subscription is running on this connection"),
        StatusRequest::Subscribe(_) => unreachable!("subscribe is streamed by serve"),
    }
}

fn report(shared: &Shared) -> StatusReport {
    use std::sync::atomic::Ordering::Relaxed;
    StatusReport {
        pid: shared.ident.pid,
        version: shared.ident.version.clone(),
        protocol: PROTOCOL_VERSION,
        uptime_ms: uptime(shared).as_millis() as u64,
        started_at: crate::time::rfc3339(shared.started_at),
        socket: shared.paths.socket().to_owned(),
        state_dir: shared.paths.state_dir().to_owned(),
        connections: ConnectionStats {
            active: shared.active_connections(),
            total: shared.stats.total.load(Relaxed),
            refused_busy: shared.stats.refused_busy.load(Relaxed),
            refused_peer: shared.stats.refused_peer.load(Relaxed),
        },
        channels: shared.services.channels(),
        health: shared.health(),
        limits: shared.limits(),
        services: shared.services.summaries(),
    }
}
