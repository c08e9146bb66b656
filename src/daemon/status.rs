//! The `status` channel: a service like the others, always running.

use std::sync::Arc;

use super::conn::session::Session;
use super::services::{BoxFuture, Opened, Service, StartCtx, StartError, StartService};
use super::{Config, Shared, uptime};
use crate::protocol::status::{ConnectionStats, StatusChannel, StatusReport, StatusRequest, StatusResponse};
use crate::protocol::{Channel, PROTOCOL_VERSION};

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

async fn serve(mut session: Session<StatusChannel>) {
    while let Some(request) = session.next_request().await {
        let response = handle(session.shared(), request);
        if session.send(&response).await.is_err() {
            break;
        }
    }
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
