//! A handshaked connection to one channel: reads requests with the idle
//! timeout, answers decode errors itself, and writes with the write timeout.
//!
//! Every request of every channel passes here, so request latency is
//! measured here, once: from the moment its frame is read to the moment
//! the first frame of its answer is written.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::connection::Connection;
use crate::daemon::Shared;
use crate::daemon::metrics::request_type;
use crate::daemon::services::Opened;
use crate::protocol::frame::FrameError;
use crate::protocol::{ChannelProtocol, ErrorCode, Response, WireError, decode_request};

/// The peer is gone or too slow: end the session.
#[derive(Debug)]
pub(crate) struct Closed;

pub(crate) struct Session<C: ChannelProtocol> {
    conn: Connection,
    shared: Arc<Shared>,
    /// The request being answered (its type) and when its frame was read,
    /// until the first frame of its answer is written.
    pending: Option<(&'static str, Instant)>,
    /// The size of the frame read last, whose request is done when the next is asked for.
    last_frame: usize,
    _channel: PhantomData<C>,
}

/// A request frame at least this large has the allocator give its free
/// memory back to the system once the request is done (see `Shared::trim_heap_soon`).
const TRIM_AFTER: usize = 4 * 1024 * 1024;

impl<C: ChannelProtocol> Session<C> {
    pub(crate) fn new(conn: Connection, shared: Arc<Shared>) -> Self {
        Self { conn, shared, pending: None, last_frame: 0, _channel: PhantomData }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The next request, or `None` when the session should end: the peer
    /// closed, stayed idle too long, broke the framing, or the daemon is
    /// stopping. A request that does not decode is answered with an error
    /// and the session goes on.
    pub(crate) async fn next_request(&mut self) -> Option<C::Request> {
        loop {
            // A request never answered (a stream the peer ended) is not timed.
            self.pending = None;
            let frame = self.next_frame().await?;
            let arrived = Instant::now();
            match decode_request::<C::Request>(&frame) {
                Ok(request) => {
                    self.pending = request_type::<C::Request>(&frame).map(|kind| (kind, arrived));
                    return Some(request);
                }
                Err(error) => {
                    if self.send(&C::Response::from_error(error)).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// The next frame as it is (the raw data frames of a streamed
    /// exchange), with the idle timeout, frame limit and stop handling of
    /// [`Session::next_request`]; `None` when the session should end. A
    /// large frame waits for its share of the daemon's read budget (see
    /// [`crate::connection::ReadBudget`]); the previous frame's share goes
    /// back as this one is asked for.
    pub(crate) async fn next_frame(&mut self) -> Option<Bytes> {
        let idle = self.shared.config.server.connection_idle_timeout.0;
        self.read_frame_within(idle).await
    }

    /// The next frame while the daemon is the one streaming (a
    /// subscription): no idle timeout, since the peer has nothing to say.
    /// Cancel-safe: a frame half read stays buffered for the next call.
    pub(crate) async fn next_frame_while_streaming(&mut self) -> Option<Bytes> {
        self.read_frame_within(Duration::MAX).await
    }

    async fn read_frame_within(&mut self, idle: Duration) -> Option<Bytes> {
        if std::mem::take(&mut self.last_frame) >= TRIM_AFTER {
            self.shared.trim_heap_soon();
        }
        let idle_text = crate::units::HumanDuration(idle);
        let read = tokio::select! {
            biased;
            () = self.shared.stop.cancelled() => return None,
            read = within_or_forever(idle, self.conn.read_frame()) => read,
        };
        let frame = match read {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => return None,
            Err(_) => {
                let message = format!("closing a connection idle for {idle_text}");
                self.send_error(WireError::new(ErrorCode::IdleTimeout, message)).await;
                return None;
            }
            Ok(Err(FrameError::TooLarge { len, max })) => {
                let message = format!("a frame of {len} bytes exceeds the maximum frame size of {max} bytes");
                self.send_error(WireError::new(ErrorCode::FrameTooLarge, message)).await;
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!("closing connection: {e}");
                return None;
            }
        };
        self.last_frame = frame.len();
        Some(frame)
    }

    /// Resolves once the peer is gone (see [`Connection::peer_closed`]).
    pub(crate) async fn peer_closed(&self) {
        self.conn.peer_closed().await;
    }

    /// Writes one raw frame, giving up after the write timeout.
    pub(crate) async fn send_frame(&mut self, payload: Bytes) -> Result<(), Closed> {
        let timeout = self.shared.config.server.write_timeout.0;
        within(timeout, self.conn.write_raw(payload)).await?;
        self.answered();
        Ok(())
    }

    /// Times the pending request, if any: its answer's first frame is out.
    fn answered(&mut self) {
        if let Some((kind, arrived)) = self.pending.take() {
            self.shared.metrics.request(C::CHANNEL, kind, arrived.elapsed());
        }
    }

    /// Writes several raw frames with one flush, giving up after the write
    /// timeout: a stream's backlog goes out in one write.
    pub(crate) async fn send_frames(&mut self, frames: Vec<Bytes>) -> Result<(), Closed> {
        let timeout = self.shared.config.server.write_timeout.0;
        let conn = &mut self.conn;
        within(timeout, async move {
            for frame in frames {
                conn.feed_raw(frame).await?;
            }
            conn.flush().await
        })
        .await?;
        self.answered();
        Ok(())
    }

    /// Writes one response, giving up after the write timeout. A response
    /// larger than the maximum frame size is never written: a
    /// `response_too_large` error goes in its place (see [`Session::deliver`]).
    pub(crate) async fn send<T: Serialize + ?Sized>(&mut self, response: &T) -> Result<(), Closed> {
        self.deliver(response).await.map(drop)
    }

    /// [`Session::send`], saying whether the response itself went out: a
    /// stream whose next frame was refused must end there.
    ///
    /// Every response of every channel goes through here, so this is where
    /// the daemon keeps its promise never to write a frame above the
    /// maximum: the encoder stops keeping bytes at the maximum (an answer
    /// too large costs at most one frame of memory) and names the full size.
    pub(crate) async fn deliver<T: Serialize + ?Sized>(&mut self, response: &T) -> Result<Sent, Closed> {
        let timeout = self.shared.config.server.write_timeout.0;
        let sent = match tokio::time::timeout(timeout, self.conn.write_json(response)).await {
            Ok(Err(FrameError::TooLarge { len, max })) => {
                tracing::warn!(len, max, "an answer larger than the maximum frame size was refused");
                let message = format!(
                    "the answer is {len} bytes, more than the maximum frame size of {max} bytes (server.max_frame); \
                     it was not sent"
                );
                let refusal = C::Response::from_error(WireError::new(ErrorCode::ResponseTooLarge, message));
                within(timeout, self.conn.write_json(&refusal)).await?;
                Sent::Refused
            }
            written => finished(timeout, written).map(|()| Sent::Delivered)?,
        };
        self.answered();
        Ok(sent)
    }

    async fn send_error(&mut self, error: WireError) {
        let _ = self.send(&C::Response::from_error(error)).await;
    }
}

/// `read`, with a timeout unless `idle` is `Duration::MAX`.
async fn within_or_forever<T>(idle: Duration, read: impl Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
    if idle == Duration::MAX { Ok(read.await) } else { tokio::time::timeout(idle, read).await }
}

/// What became of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// It was written.
    Delivered,
    /// It did not fit in a frame: a `response_too_large` error went in its place.
    Refused,
}

/// Runs one write, giving up after `timeout`: a peer that does not read is dropped.
async fn within(timeout: Duration, write: impl Future<Output = Result<(), FrameError>>) -> Result<(), Closed> {
    finished(timeout, tokio::time::timeout(timeout, write).await)
}

fn finished(
    timeout: Duration,
    written: Result<Result<(), FrameError>, tokio::time::error::Elapsed>,
) -> Result<(), Closed> {
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!("cannot write to the peer: {e}");
            Err(Closed)
        }
        Err(_) => {
            tracing::debug!("peer did not read within {timeout:?}; closing");
            Err(Closed)
        }
    }
}

impl Opened {
    /// The connection as a session of channel `C`.
    pub(crate) fn session<C: ChannelProtocol>(self) -> Session<C> {
        Session::new(self.conn, self.shared)
    }
}
