//! Per connection: check the peer, read the handshake, hand over to a channel.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::connection::Connection;
use crate::daemon::services::{Opened, Service, Slot};
use crate::daemon::{Shared, bump};
use crate::protocol::frame::{FrameCodec, FrameError, Json};
use crate::protocol::handshake::{Accepted, Channel, DaemonIdent, Handshake, HandshakeReply, Refused};
use crate::protocol::{ErrorCode, PROTOCOL_VERSION, WireError};

/// How long a refusal may take to write before the connection is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

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
    if peer.uid() != crate::sys::euid() {
        bump(&shared.stats.refused_peer);
        tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "refused a connection from another user");
        let error = WireError::new(ErrorCode::PermissionDenied, "this daemon serves only the user it runs as");
        refuse(stream, error, None).await;
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
    let routed = first.and_then(|frame| Handshake::parse(&frame)).and_then(|hs| {
        let service = route(&shared, hs.channel)?;
        service.check_handshake(&hs)?;
        Ok((service, hs))
    });
    let (service, handshake) = match routed {
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
    let _counted = (handshake.client.as_deref() != Some(crate::daemon::supervisor::SELF_CHECK_CLIENT)).then(|| {
        bump(&shared.stats.total);
        ActiveGuard::new(&shared, handshake.channel)
    });
    conn.set_max_frame(s.max_frame.as_usize());
    conn.set_budget(shared.read_budget.clone());
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
    let peer_pid = peer.pid().and_then(|p| u32::try_from(p).ok());
    service.serve(Opened { conn, shared, handshake, peer_pid }).await;
}

/// The service `channel`'s connections go to, or why the channel cannot be
/// opened: this is the one place that decides which channels a daemon serves.
pub(crate) fn route(shared: &Shared, channel: Channel) -> Result<Arc<dyn Service>, WireError> {
    let message = match shared.services.slot(channel) {
        Some(Slot::Running(service)) => return Ok(service.clone()),
        Some(Slot::Disabled) => {
            format!("the {channel} channel is disabled in this daemon's configuration ({channel}.enabled = false)")
        }
        Some(Slot::Failed(e)) => format!("the {channel} service could not start: {e}"),
        None => format!("the {channel} channel is not available in hearthd {}", crate::daemon::VERSION),
    };
    Err(WireError::new(ErrorCode::ChannelUnavailable, message))
}

/// Writes a refused handshake reply, then closes the connection.
pub(crate) async fn refuse(mut stream: UnixStream, error: WireError, daemon: Option<DaemonIdent>) {
    use tokio_util::codec::Encoder;
    let reply = HandshakeReply::Refused(Refused { protocol: PROTOCOL_VERSION, daemon, error });
    let mut buf = bytes::BytesMut::new();
    if FrameCodec::default().encode(Json(&reply), &mut buf).is_err() {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&buf).await?;
        stream.shutdown().await?;
        // Read what the peer already sent before closing: closing a Unix
        // socket with unread data resets the peer, which could then miss
        // the refusal.
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// Counts a client connection as active, in all and on its channel, for
/// as long as it lives.
struct ActiveGuard(Arc<Shared>, Channel);

impl ActiveGuard {
    fn new(shared: &Arc<Shared>, channel: Channel) -> Self {
        bump(&shared.stats.active);
        shared.metrics.channel_opened(channel);
        ActiveGuard(shared.clone(), channel)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.metrics.channel_closed(self.1);
    }
}
