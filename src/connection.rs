//! One connection type owns the framing, on both sides of the socket.
//!
//! Reads keep their state in the connection, never in the future that
//! reads: a `read_frame` dropped half-way (by a `select!` or a timeout)
//! leaves the bytes it got in the read buffer, and the next call goes on
//! from there.
//!
//! Memory: a frame's bytes arrive in the read buffer and leave it as the
//! frame; a buffer that grew for a large frame (or a large answer) is
//! given back once that frame is done, so an idle connection costs a few
//! KiB whatever it carried before. On the daemon's side a [`ReadBudget`]
//! bounds the bytes of large frames held at once by all connections.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Decoder, Encoder};

use crate::protocol::frame::{FrameCodec, FrameError, HEADER_LEN, Json};

/// Raw payloads at least this large skip the write buffer.
const DIRECT_WRITE_MIN: usize = 64 * 1024;

/// What a buffer starts with, and shrinks back to after a large frame.
const BUFFER_START: usize = 8 * 1024;

/// A buffer with more capacity than this is replaced once its frame is done.
const BUFFER_KEEP: usize = 64 * 1024;

/// Bytes the daemon may hold at once for the large frames of every
/// connection: a frame larger than [`ReadBudget::exempt`] is read only once
/// its whole length is reserved here, and keeps its share until the
/// connection reads its next frame (its request has been answered by then).
///
/// A frame waits, unread, while the budget is taken (the peer's writes block
/// meanwhile); reservations are served in order, and an admitted frame never
/// waits for another, so every frame is read eventually.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl ReadBudget {
    /// Frames up to this many bytes never wait for the budget.
    pub const EXEMPT: usize = 16 * 1024;

    /// A budget of `total` bytes (at least the largest frame it must admit).
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self { permits: Arc::new(Semaphore::new(total)), total }
    }

    /// The budget's size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.total - self.permits.available_permits()
    }

    /// Frames up to this many bytes do not draw on the budget.
    pub fn exempt(&self) -> usize {
        Self::EXEMPT
    }

    async fn reserve(&self, len: usize) -> OwnedSemaphorePermit {
        let want = u32::try_from(len.min(self.total)).unwrap_or(u32::MAX);
        match self.permits.clone().acquire_many_owned(want).await {
            Ok(permit) => permit,
            // Never closed: the budget lives as long as its clones.
            Err(_) => unreachable!("the read budget's semaphore is never closed"),
        }
    }
}

/// A framed Unix-socket connection.
///
/// `read_frame` returns `Ok(None)` for a clean end of stream between frames;
/// an end of stream inside a frame is [`FrameError::Truncated`].
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    codec: FrameCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    budget: Option<ReadBudget>,
    /// The budget's share of the frame being read.
    reading: Option<OwnedSemaphorePermit>,
    /// The budget's share of the last frame returned, held until the next read.
    returned: Option<OwnedSemaphorePermit>,
}

impl Connection {
    /// Wraps a stream, accepting frames up to `max_frame` bytes.
    pub fn new(stream: UnixStream, max_frame: usize) -> Self {
        Self {
            stream,
            codec: FrameCodec::new(max_frame),
            read_buf: BytesMut::with_capacity(BUFFER_START),
            write_buf: BytesMut::with_capacity(BUFFER_START),
            budget: None,
            reading: None,
            returned: None,
        }
    }

    /// Makes large frames wait for their share of `budget` before they are read.
    pub fn set_budget(&mut self, budget: ReadBudget) {
        self.budget = Some(budget);
    }

    /// Resolves once the peer has closed its end or the connection broke,
    /// reading nothing: for a long wait that sends nothing until an event
    /// (`wait`, `logs --follow`), so that a client that gave up frees its
    /// connection at once rather than when the event comes. Never resolves
    /// while data from the peer waits unread: that is left to the next read.
    pub async fn peer_closed(&self) {
        if !self.read_buf.is_empty() {
            return std::future::pending().await;
        }
        let stream = &self.stream;
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
    ///
    /// Cancel-safe: see the module docs.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        // The caller is done with the frame it had: its share goes back.
        self.returned = None;
        loop {
            if let Some(frame) = self.codec.decode(&mut self.read_buf)? {
                self.returned = self.reading.take();
                if self.read_buf.capacity() > BUFFER_KEEP {
                    // The frame shares the buffer's allocation: with a fresh
                    // buffer, that memory goes as soon as the frame does.
                    let rest = std::mem::replace(&mut self.read_buf, BytesMut::with_capacity(BUFFER_START));
                    self.read_buf.extend_from_slice(&rest);
                }
                return Ok(Some(frame));
            }
            // Once a frame is admitted, its whole length is reserved at once
            // (no doubling as it arrives; pages never written are never
            // resident); before its prefix is in, a little.
            let want = match self.announced() {
                Some(len) => {
                    self.admit(len).await;
                    HEADER_LEN + len - self.read_buf.len()
                }
                None => BUFFER_START,
            };
            self.read_buf.reserve(want);
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return self.codec.decode_eof(&mut self.read_buf);
            }
        }
    }

    /// The length the frame at the head of the read buffer announces, once
    /// its prefix is in (the codec refuses one above the maximum).
    fn announced(&self) -> Option<usize> {
        let header: [u8; HEADER_LEN] = self.read_buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(u32::from_be_bytes(header) as usize)
    }

    /// Waits until the frame being read has its share of the budget.
    async fn admit(&mut self, len: usize) {
        let Some(budget) = &self.budget else { return };
        if self.reading.is_some() || len <= budget.exempt() || len > self.codec.max_frame() {
            return;
        }
        // Only the permit is kept in `self`: a wait cut short reserves nothing.
        self.reading = Some(budget.reserve(len).await);
    }

    /// Sends one JSON frame and flushes it.
    pub async fn write_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FrameError> {
        self.feed_json(value).await?;
        self.flush().await
    }

    /// Queues one JSON frame without flushing (see [`Connection::flush`]).
    pub async fn feed_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), FrameError> {
        let encoded = self.codec.encode(Json(value), &mut self.write_buf);
        if encoded.is_err() {
            self.shrink_write_buffer();
        }
        encoded
    }

    /// Sends one raw frame and flushes it. A large payload is written
    /// straight from its buffer (vectored with its length prefix) instead of
    /// being copied into the write buffer first.
    pub async fn write_raw(&mut self, payload: Bytes) -> Result<(), FrameError> {
        if payload.len() < DIRECT_WRITE_MIN {
            self.feed_raw(payload).await?;
            return self.flush().await;
        }
        let max = self.max_frame();
        if payload.len() > max {
            return Err(FrameError::TooLarge { len: payload.len() as u64, max });
        }
        // Whatever is queued goes first, so frames keep their order.
        self.flush().await?;
        let header = (payload.len() as u32).to_be_bytes();
        let total = header.len() + payload.len();
        let mut written = 0;
        while written < total {
            let parts = if written < header.len() {
                [IoSlice::new(&header[written..]), IoSlice::new(&payload)]
            } else {
                [IoSlice::new(&payload[written - header.len()..]), IoSlice::new(&[])]
            };
            match self.stream.write_vectored(&parts).await? {
                0 => return Err(FrameError::Io(std::io::ErrorKind::WriteZero.into())),
                n => written += n,
            }
        }
        Ok(())
    }

    /// Queues one raw frame without flushing.
    pub async fn feed_raw(&mut self, payload: Bytes) -> Result<(), FrameError> {
        self.codec.encode(payload, &mut self.write_buf)
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        while self.write_buf.has_remaining() {
            match self.stream.write(&self.write_buf).await? {
                0 => return Err(FrameError::Io(std::io::ErrorKind::WriteZero.into())),
                n => self.write_buf.advance(n),
            }
        }
        self.shrink_write_buffer();
        Ok(())
    }

    fn shrink_write_buffer(&mut self) {
        if self.write_buf.capacity() > BUFFER_KEEP && self.write_buf.is_empty() {
            self.write_buf = BytesMut::with_capacity(BUFFER_START);
        }
    }

    /// The largest frame this side accepts.
    pub fn max_frame(&self) -> usize {
        self.codec.max_frame()
    }

    /// Changes the largest frame this side accepts (and sends).
    pub fn set_max_frame(&mut self, max: usize) {
        self.codec.set_max_frame(max);
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(max: usize) -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::new(a, max), b)
    }

    #[tokio::test]
    async fn a_read_cut_short_loses_nothing() {
        let (mut conn, mut peer) = pair(1024);
        peer.write_all(&[0, 0, 0, 5, b'h', b'e']).await.unwrap();
        let cut = tokio::time::timeout(std::time::Duration::from_millis(20), conn.read_frame()).await;
        assert!(cut.is_err(), "half a frame is not a frame");
        peer.write_all(b"llo").await.unwrap();
        assert_eq!(&conn.read_frame().await.unwrap().unwrap()[..], b"hello");
        drop(peer);
        assert!(conn.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn buffers_grown_for_a_large_frame_are_given_back() {
        let (mut conn, peer) = pair(4 << 20);
        let (mut from_peer, mut to_peer) = peer.into_split();
        let payload = vec![7u8; 3 << 20];
        let frame = crate::protocol::frame::encode_frame(&payload);
        let writer = tokio::spawn(async move { to_peer.write_all(&frame).await.unwrap() });
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            from_peer.read_to_end(&mut sink).await.unwrap();
            sink.len()
        });
        let frame = conn.read_frame().await.unwrap().unwrap();
        assert_eq!(frame.len(), 3 << 20);
        assert!(conn.read_buf.capacity() <= BUFFER_KEEP, "read buffer kept {}", conn.read_buf.capacity());
        conn.write_raw(frame).await.unwrap();
        conn.write_json(&vec!["x"; 100_000]).await.unwrap();
        assert!(conn.write_buf.capacity() <= BUFFER_KEEP, "write buffer kept {}", conn.write_buf.capacity());
        writer.await.unwrap();
        drop(conn);
        assert_eq!(reader.await.unwrap(), 4 + (3 << 20) + 4 + 400_001);
    }

    #[tokio::test]
    async fn large_frames_wait_for_their_share_of_the_budget() {
        let budget = ReadBudget::new(1 << 20);
        let (mut a, mut pa) = pair(1 << 20);
        let (mut b, mut pb) = pair(1 << 20);
        a.set_budget(budget.clone());
        b.set_budget(budget.clone());
        let big = crate::protocol::frame::encode_frame(&vec![1u8; 700 << 10]);
        let again = big.clone();
        let writer_a = tokio::spawn(async move {
            pa.write_all(&big).await.unwrap();
            pa
        });
        let first = a.read_frame().await.unwrap().unwrap();
        let mut pa = writer_a.await.unwrap();
        assert_eq!(budget.in_use(), 700 << 10, "the frame holds its share while its request is handled");
        let writer_b = tokio::spawn(async move {
            pb.write_all(&again).await.unwrap();
            pb
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), b.read_frame()).await;
        assert!(waited.is_err(), "a second large frame waits while the budget is taken");
        // Small frames never wait.
        pa.write_all(&crate::protocol::frame::encode_frame(b"{}")).await.unwrap();
        drop(first);
        assert_eq!(&a.read_frame().await.unwrap().unwrap()[..], b"{}");
        assert_eq!(budget.in_use(), 0, "reading the next frame gives the share back");
        assert_eq!(b.read_frame().await.unwrap().unwrap().len(), 700 << 10);
        drop(writer_b.await.unwrap());
    }
}
