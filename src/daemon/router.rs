//! Per connection: check the peer, read the handshake, hand over to a channel.

use std::sync::Arc;

use tokio::net::UnixStream;

use super::pool::{PoolHolder, PoolService};
use super::session::Session;
use super::{Shared, blob, bump, pool, server, status};
use crate::connection::Connection;
use crate::protocol::frame::FrameError;
use crate::protocol::handshake::{Accepted, Channel, Handshake, HandshakeReply, Refused};
use crate::protocol::{ErrorCode, PROTOCOL_VERSION, WireError};

pub(crate) async fn serve_connection(stream: UnixStream, shared: Arc<Shared>) {
    // The peer's credentials come from the kernel; a peer of another user is
    // refused before anything it sends is read.
    let peer = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::debug!("cannot read peer credentials: {e}");
            return;
        }
    };
    if peer.uid() != super::fsutil::euid() {
        bump(&shared.stats.refused_peer);
        tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "refused a connection from another user");
        let error = WireError::new(ErrorCode::PermissionDenied, "this daemon serves only the user it runs as");
        server::refuse(stream, error, None).await;
        return;
    }

    let s = &shared.config.server;
    let mut conn = Connection::new(stream, s.handshake_max_frame.as_usize());
    let first = tokio::select! {
        biased;
        () = shared.stop.cancelled() => Err(WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down")),
        read = tokio::time::timeout(s.handshake_timeout.0, conn.read_frame()) => match read {
            Err(_) => Err(WireError::new(
                ErrorCode::HandshakeTimeout,
                format!("no handshake within {}", s.handshake_timeout),
            )),
            Ok(Ok(Some(frame))) => Ok(frame),
            Ok(Ok(None)) => return,
            Ok(Err(FrameError::TooLarge { len, max })) => Err(WireError::new(
                ErrorCode::FrameTooLarge,
                format!("a handshake frame of {len} bytes exceeds the pre-handshake limit of {max} bytes"),
            )),
            Ok(Err(e)) => {
                tracing::debug!("connection failed before its handshake: {e}");
                return;
            }
        },
    };
    let routed = first.and_then(|frame| Handshake::parse(&frame)).and_then(|hs| Ok((route(&shared, hs.channel)?, hs)));
    let (route, handshake) = match routed {
        Ok(routed) => routed,
        Err(error) => {
            tracing::debug!(code = %error.code, "handshake refused: {}", error.message);
            let reply = HandshakeReply::Refused(Refused {
                protocol: PROTOCOL_VERSION,
                daemon: Some(shared.ident.clone()),
                error,
            });
            let _ = tokio::time::timeout(s.write_timeout.0, conn.write_json(&reply)).await;
            return;
        }
    };
    tracing::debug!(
        channel = %handshake.channel,
        client = handshake.client.as_deref().unwrap_or("-"),
        pid = ?peer.pid(),
        "connection opened"
    );
    let _counted = (handshake.client.as_deref() != Some(super::supervisor::SELF_CHECK_CLIENT)).then(|| {
        bump(&shared.stats.total);
        ActiveGuard::new(&shared)
    });
    conn.set_max_frame(s.max_frame.as_usize());
    let reply = HandshakeReply::Accepted(Accepted {
        protocol: PROTOCOL_VERSION,
        daemon: shared.ident.clone(),
        channel: handshake.channel,
        max_frame: s.max_frame.0,
    });
    match tokio::time::timeout(s.write_timeout.0, conn.write_json(&reply)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    match route {
        Route::Status => status::serve(Session::new(conn, shared)).await,
        Route::Pool(service) => {
            let holder = PoolHolder { client: handshake.client, pid: peer.pid().and_then(|p| u32::try_from(p).ok()) };
            pool::serve(Session::new(conn, shared), service, holder).await;
        }
        Route::Queue(queue) => super::queue::serve(Session::new(conn, shared), queue).await,
        Route::Blob(service) => blob::serve(Session::new(conn, shared), service).await,
    }
}

/// The handler a channel's connections go to.
pub(crate) enum Route {
    Status,
    Pool(Arc<PoolService>),
    Queue(Arc<super::queue::QueueService>),
    Blob(Arc<blob::BlobService>),
}

/// Where `channel` goes, or why it cannot be opened: this is the one place
/// that decides which channels a daemon serves.
pub(crate) fn route(shared: &Shared, channel: Channel) -> Result<Route, WireError> {
    if let Some(failure) = shared.services.failure(channel) {
        return Err(WireError::new(
            ErrorCode::ChannelUnavailable,
            format!("the {channel} service could not start: {failure}"),
        ));
    }
    match channel {
        Channel::Status => Ok(Route::Status),
        Channel::Pool if shared.services.pool.is_some() => {
            Ok(Route::Pool(shared.services.pool.clone().expect("checked")))
        }
        Channel::Queue if shared.services.queue.is_some() => {
            Ok(Route::Queue(shared.services.queue.clone().expect("checked")))
        }
        Channel::Blob if shared.services.blob.is_some() => {
            Ok(Route::Blob(shared.services.blob.clone().expect("checked")))
        }
        Channel::Pool | Channel::Queue | Channel::Blob | Channel::Sync => {
            let disabled = match channel {
                Channel::Pool => !shared.config.pool.enabled,
                Channel::Queue => !shared.config.queue.enabled,
                Channel::Blob => !shared.config.blob.enabled,
                Channel::Status | Channel::Sync => false,
            };
            let message = if disabled {
                format!("the {channel} channel is disabled in this daemon's configuration ({channel}.enabled = false)")
            } else {
                format!("the {channel} channel is not available in hearthd {}", super::VERSION)
            };
            Err(WireError::new(ErrorCode::ChannelUnavailable, message))
        }
    }
}

/// Counts a client connection as active for as long as it lives.
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        bump(&shared.stats.active);
        ActiveGuard(shared.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
