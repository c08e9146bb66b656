//! One connection type owns the framing, on both sides of the socket.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::protocol::frame::{FrameCodec, FrameError, Json};

/// A framed Unix-socket connection.
///
/// `read_frame` returns `Ok(None)` for a clean end of stream between frames;
/// an end of stream inside a frame is [`FrameError::Truncated`].
#[derive(Debug)]
pub struct Connection {
    framed: Framed<UnixStream, FrameCodec>,
}

impl Connection {
    /// Wraps a stream, accepting frames up to `max_frame` bytes.
    pub fn new(stream: UnixStream, max_frame: usize) -> Self {
        Self { framed: Framed::new(stream, FrameCodec::new(max_frame)) }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        self.framed.next().await.transpose()
    }

    /// Sends one JSON frame and flushes it.
    pub async fn write_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FrameError> {
        self.framed.send(Json(value)).await
    }

    /// Queues one JSON frame without flushing (see [`Connection::flush`]).
    pub async fn feed_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FrameError> {
        self.framed.feed(Json(value)).await
    }

    /// Sends one raw frame and flushes it.
    pub async fn write_raw(&mut self, payload: Bytes) -> Result<(), FrameError> {
        self.framed.send(payload).await
    }

    /// Queues one raw frame without flushing.
    pub async fn feed_raw(&mut self, payload: Bytes) -> Result<(), FrameError> {
        self.framed.feed(payload).await
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        SinkExt::<Bytes>::flush(&mut self.framed).await
    }

    /// The largest frame this side accepts.
    pub fn max_frame(&self) -> usize {
        self.framed.codec().max_frame()
    }

    /// Changes the largest frame this side accepts (and sends).
    pub fn set_max_frame(&mut self, max: usize) {
        self.framed.codec_mut().set_max_frame(max);
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        self.framed.get_ref()
    }
}
