//! One connection type owns the framing, on both sides of the socket.

use std::io::IoSlice;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::protocol::frame::{FrameCodec, FrameError, Json};

/// Raw payloads at least this large skip the write buffer.
const DIRECT_WRITE_MIN: usize = 64 * 1024;

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

    /// Resolves once the peer has closed its end or the connection broke,
    /// reading nothing: for a long wait that sends nothing until an event
    /// (`wait`, `logs --follow`), so that a client that gave up frees its
    /// connection at once rather than when the event comes. Never resolves
    /// while data from the peer waits unread: that is left to the next read.
    pub async fn peer_closed(&self) {
        if !self.framed.read_buffer().is_empty() {
            return std::future::pending().await;
        }
        let stream = self.framed.get_ref();
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            let peeked = stream
                .try_io(tokio::io::Interest::READABLE, || crate::sys::peek_byte(std::os::fd::AsFd::as_fd(stream)));
            match peeked {
                Ok(0) => return,
                Ok(_) => return std::future::pending().await,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
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

    /// Sends one raw frame and flushes it. A large payload is written
    /// straight from its buffer (vectored with its length prefix) instead of
    /// being copied into the write buffer first.
    pub async fn write_raw(&mut self, payload: Bytes) -> Result<(), FrameError> {
        if payload.len() < DIRECT_WRITE_MIN {
            return self.framed.send(payload).await;
        }
        let max = self.max_frame();
        if payload.len() > max {
            return Err(FrameError::TooLarge { len: payload.len() as u64, max });
        }
        // Whatever is queued goes first, so frames keep their order.
        SinkExt::<Bytes>::flush(&mut self.framed).await?;
        let header = (payload.len() as u32).to_be_bytes();
        let stream = self.framed.get_mut();
        let total = header.len() + payload.len();
        let mut written = 0;
        while written < total {
            let parts = if written < header.len() {
                [IoSlice::new(&header[written..]), IoSlice::new(&payload)]
            } else {
                [IoSlice::new(&payload[written - header.len()..]), IoSlice::new(&[])]
            };
            match stream.write_vectored(&parts).await? {
                0 => return Err(FrameError::Io(std::io::ErrorKind::WriteZero.into())),
                n => written += n,
            }
        }
        Ok(())
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
