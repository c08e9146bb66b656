//! The `blob` channel's client: typed calls, and streaming helpers that
//! upload from any `AsyncRead` and download into any `AsyncWrite` without
//! ever holding a whole blob in memory.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth::client::ClientError> {
//! use hearth::client::{BlobClient, PutOptions};
//!
//! let mut blobs = BlobClient::connect("/run/user/1000/hearth.sock").await?;
//! let file = tokio::fs::File::open("photo.png").await.map_err(|e| hearth::client::ClientError::Io { what: "open", source: e })?;
//! let stored = blobs.put_reader(file, PutOptions::new().media_type("image/png")).await?;
//! println!("{} ({} bytes, already there: {})", stored.hash, stored.size, stored.existed);
//!
//! let mut out = tokio::fs::File::create("copy.png").await.map_err(|e| hearth::client::ClientError::Io { what: "create", source: e })?;
//! blobs.get_to_writer(&stored.hash, None, &mut out).await?;
//! # Ok(()) }
//! ```

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{Client, ClientError, closed_on_reset, unexpected};
use crate::protocol::Response;
use crate::protocol::blob::{
    BlobChannel, BlobHash, BlobInfo, BlobRequest, BlobResponse, Content, GcReport, GetRequest, PutRequest, Stored,
    Usage,
};
use crate::protocol::frame::FrameError;

/// A client of the `blob` channel.
pub type BlobClient = Client<BlobChannel>;

/// The largest data frame this client sends: big enough for full speed,
/// small enough that a transfer holds only a few MiB on either side.
pub const PUT_CHUNK: usize = 1024 * 1024;

/// What a put announces besides its data; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    request: PutRequest,
}

impl PutOptions {
    /// No expectations, no metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The expected content address: the put fails with `hash_mismatch`
    /// if the data hashes otherwise, and sends no data at all if the blob
    /// is already stored.
    pub fn sha256(mut self, hash: BlobHash) -> Self {
        self.request.sha256 = Some(hash);
        self
    }

    /// The expected length: the put fails with `size_mismatch` otherwise.
    pub fn size(mut self, size: u64) -> Self {
        self.request.size = Some(size);
        self
    }

    /// A media type such as `image/png`.
    pub fn media_type(mut self, media_type: impl Into<String>) -> Self {
        self.request.media_type = Some(media_type.into());
        self
    }

    /// A name for people.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.request.name = Some(name.into());
        self
    }

    /// Pin the blob so that collection never removes it.
    pub fn pin(mut self, pin: bool) -> Self {
        self.request.pin = pin;
        self
    }
}

/// One page of [`Client::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Blobs in ascending hash order.
    pub blobs: Vec<BlobInfo>,
    /// The cursor of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// Shuts the socket down if a streamed exchange ends early (an error, or
/// the future is dropped), so that the daemon discards the partial
/// transfer and no later request is mistaken for blob data.
struct StreamGuard {
    /// A duplicate of the connection's descriptor: shutting it down shuts
    /// the shared socket down, and it stays valid however the client moves.
    socket: Option<OwnedFd>,
}

impl StreamGuard {
    fn new(client: &BlobClient) -> Self {
        Self { socket: client.conn.stream().as_fd().try_clone_to_owned().ok() }
    }

    fn disarm(mut self) {
        self.socket = None;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(socket) = &self.socket {
            crate::sys::shutdown_socket(socket.as_fd());
        }
    }
}

fn local(what: &'static str) -> impl FnOnce(io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

impl Client<BlobChannel> {
    /// Stores everything `reader` yields, streamed in frames of at most
    /// [`PUT_CHUNK`] bytes. If the daemon rejects the put part-way (a size
    /// mismatch, a full disk), the upload stops early and the daemon's error
    /// is returned. If reading fails, the connection is closed (the daemon
    /// then discards what it received) and [`ClientError::Io`] is returned.
    pub async fn put_reader<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        options: PutOptions,
    ) -> Result<Stored, ClientError> {
        match self.request(&BlobRequest::Put(options.request)).await? {
            BlobResponse::Ready => {}
            // The named content is already stored: nothing to send.
            BlobResponse::Stored(stored) => return Ok(stored),
            other => return Err(unexpected("ready", other)),
        }
        let guard = StreamGuard::new(self);
        let chunk = usize::try_from(self.max_frame()).unwrap_or(usize::MAX).clamp(1, PUT_CHUNK);
        loop {
            let mut buf = BytesMut::with_capacity(chunk);
            while buf.len() < chunk {
                let room = chunk - buf.len();
                // While the reader has nothing (a pipe whose writer is slow
                // or idle), watch the connection: a daemon that gives up on
                // the put, or goes away, ends it now rather than whenever
                // the reader next yields.
                let mut window = (&mut buf).limit(room);
                let n = tokio::select! {
                    read = reader.read_buf(&mut window) => {
                        read.map_err(local("cannot read the data to put"))?
                    }
                    frame = self.conn.read_frame() => return Err(self.end_put_early(guard, frame).await),
                };
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            if let Some(frame) = self.conn.read_frame().now_or_never() {
                return Err(self.end_put_early(guard, frame).await);
            }
            self.conn.write_raw(buf.freeze()).await.map_err(closed_on_reset)?;
        }
        self.conn.write_raw(Bytes::new()).await.map_err(closed_on_reset)?;
        guard.disarm();
        match self.recv().await? {
            BlobResponse::Stored(stored) => Ok(stored),
            other => Err(unexpected("stored", other)),
        }
    }

    /// A response that arrived while the data was still being sent: always
    /// an error (the daemon answers a good put only after the end marker).
    /// `Err` when the connection itself failed or closed.
    fn early_error(frame: Result<Option<Bytes>, FrameError>) -> Result<ClientError, ClientError> {
        let frame = frame.map_err(closed_on_reset)?.ok_or(ClientError::Closed)?;
        let response: BlobResponse = serde_json::from_slice(&frame)
            .map_err(|e| ClientError::Protocol(format!("cannot decode response: {e}")))?;
        Ok(match response.into_result() {
            Err(error) => ClientError::Daemon(error),
            Ok(other) => unexpected("nothing before the end of the put", other),
        })
    }

    /// A frame arrived before the end of the put: the daemon gave up on it
    /// and discards frames up to the end marker. Sends the marker, so the
    /// connection stays usable, and returns the daemon's error; if the
    /// connection itself failed, `guard` shuts it down.
    async fn end_put_early(&mut self, guard: StreamGuard, frame: Result<Option<Bytes>, FrameError>) -> ClientError {
        let early = match Self::early_error(frame) {
            Ok(early) => early,
            Err(broken) => return broken,
        };
        if let Err(e) = self.conn.write_raw(Bytes::new()).await {
            return closed_on_reset(e);
        }
        guard.disarm();
        early
    }

    /// Stores `data` (announcing its size).
    pub async fn put_bytes(&mut self, data: &[u8], options: PutOptions) -> Result<Stored, ClientError> {
        self.put_reader(data, options.size(data.len() as u64)).await
    }

    /// Streams a blob, or `length` bytes of it from `offset`, into `writer`;
    /// returns the header (size, range, media type). A failure part-way is
    /// returned as the daemon's error after the bytes that did arrive.
    pub async fn get_range_to_writer<W: AsyncWrite + Unpin>(
        &mut self,
        request: GetRequest,
        mut writer: W,
    ) -> Result<Content, ClientError> {
        let content = match self.request(&BlobRequest::Get(request)).await? {
            BlobResponse::Content(content) => content,
            other => return Err(unexpected("content", other)),
        };
        let guard = StreamGuard::new(self);
        let mut received = 0u64;
        loop {
            let frame = self.conn.read_frame().await.map_err(closed_on_reset)?.ok_or(ClientError::Closed)?;
            if frame.is_empty() {
                break;
            }
            received += frame.len() as u64;
            if received > content.length {
                return Err(ClientError::Protocol(format!("the daemon sent more than {} bytes", content.length)));
            }
            writer.write_all(&frame).await.map_err(local("cannot write the blob"))?;
        }
        guard.disarm();
        if received < content.length {
            // An early end marker announces an error frame.
            return Err(match self.recv().await {
                Err(e) => e,
                Ok(other) => unexpected("an error after a short get", other),
            });
        }
        writer.flush().await.map_err(local("cannot write the blob"))?;
        Ok(content)
    }

    /// Streams a blob into `writer`; `range` is `(offset, length)`.
    pub async fn get_to_writer<W: AsyncWrite + Unpin>(
        &mut self,
        hash: &BlobHash,
        range: Option<(u64, u64)>,
        writer: W,
    ) -> Result<Content, ClientError> {
        let request = GetRequest { hash: hash.clone(), offset: range.map(|r| r.0), length: range.map(|r| r.1) };
        self.get_range_to_writer(request, writer).await
    }

    /// A whole blob in memory (for small blobs; stream big ones with
    /// [`Client::get_to_writer`]).
    pub async fn get_bytes(&mut self, hash: &BlobHash) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.get_to_writer(hash, None, &mut out).await?;
        Ok(out)
    }

    /// A blob's metadata.
    pub async fn stat(&mut self, hash: &BlobHash) -> Result<BlobInfo, ClientError> {
        match self.request(&BlobRequest::Stat { hash: hash.clone() }).await? {
            BlobResponse::Stat(info) => Ok(info),
            other => Err(unexpected("stat", other)),
        }
    }

    /// Whether a blob is stored.
    pub async fn has(&mut self, hash: &BlobHash) -> Result<bool, ClientError> {
        match self.request(&BlobRequest::Has { hash: hash.clone() }).await? {
            BlobResponse::Has { present, .. } => Ok(present),
            other => Err(unexpected("has", other)),
        }
    }

    /// Removes a blob (a pinned one only with `force`); returns the bytes freed.
    pub async fn delete(&mut self, hash: &BlobHash, force: bool) -> Result<u64, ClientError> {
        match self.request(&BlobRequest::Delete { hash: hash.clone(), force }).await? {
            BlobResponse::Deleted { size, .. } => Ok(size),
            other => Err(unexpected("deleted", other)),
        }
    }

    /// One page of blobs in hash order, after `cursor`.
    pub async fn list(&mut self, cursor: Option<String>, limit: Option<u32>) -> Result<ListPage, ClientError> {
        match self.request(&BlobRequest::List { cursor, limit }).await? {
            BlobResponse::List { blobs, next_cursor } => Ok(ListPage { blobs, next_cursor }),
            other => Err(unexpected("list", other)),
        }
    }

    /// Pins (`true`) or unpins (`false`) a blob.
    pub async fn set_pinned(&mut self, hash: &BlobHash, pinned: bool) -> Result<(), ClientError> {
        let request =
            if pinned { BlobRequest::Pin { hash: hash.clone() } } else { BlobRequest::Unpin { hash: hash.clone() } };
        match self.request(&request).await? {
            BlobResponse::PinState { .. } => Ok(()),
            other => Err(unexpected("pin_state", other)),
        }
    }

    /// Collects least-recently-used unpinned blobs down to `target_bytes`
    /// (default: the configured budget).
    pub async fn gc(&mut self, target_bytes: Option<u64>) -> Result<GcReport, ClientError> {
        match self.request(&BlobRequest::Gc { target_bytes }).await? {
            BlobResponse::Gc(report) => Ok(report),
            other => Err(unexpected("gc", other)),
        }
    }

    /// The store's totals, budget and HTTP URL.
    pub async fn usage(&mut self) -> Result<Usage, ClientError> {
        match self.request(&BlobRequest::Usage).await? {
            BlobResponse::Usage(usage) => Ok(usage),
            other => Err(unexpected("usage", other)),
        }
    }
}

/// A blocking `Read` or `Write` (a `std::fs::File`, stdin, stdout) as an
/// `AsyncRead` or `AsyncWrite`, for the source or destination of a
/// transfer on a runtime that runs nothing else, like the blocking
/// client's or a command-line tool's. Each poll blocks the runtime's
/// thread for one read or write; in exchange no buffer is copied between
/// threads, which costs a fraction of the CPU of tokio's blocking-pool file
/// I/O. Do not use it on a runtime that serves other tasks.
#[derive(Debug)]
pub struct BlockingIo<T>(pub T);

impl<R: io::Read + Unpin> AsyncRead for BlockingIo<R> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // Initialising only what one read can fill keeps short reads (pipes) cheap.
        let n = self.0.read(buf.initialize_unfilled_to(buf.remaining().min(256 * 1024)))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<W: io::Write + Unpin> AsyncWrite for BlockingIo<W> {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(self.0.write(buf))
    }
    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.flush())
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl super::blocking::Client<BlobChannel> {
    /// [`Client::put_reader`] from a blocking reader (a `std::fs::File`, stdin).
    pub fn put_reader<R: io::Read + Unpin>(&mut self, reader: R, options: PutOptions) -> Result<Stored, ClientError> {
        self.call(async |c| c.put_reader(BlockingIo(reader), options).await)
    }

    /// [`Client::put_bytes`].
    pub fn put_bytes(&mut self, data: &[u8], options: PutOptions) -> Result<Stored, ClientError> {
        self.call(async |c| c.put_bytes(data, options).await)
    }

    /// [`Client::get_to_writer`] into a blocking writer.
    pub fn get_to_writer<W: io::Write + Unpin>(
        &mut self,
        hash: &BlobHash,
        range: Option<(u64, u64)>,
        writer: W,
    ) -> Result<Content, ClientError> {
        self.call(async |c| c.get_to_writer(hash, range, BlockingIo(writer)).await)
    }

    /// [`Client::get_bytes`].
    pub fn get_bytes(&mut self, hash: &BlobHash) -> Result<Vec<u8>, ClientError> {
        self.call(async |c| c.get_bytes(hash).await)
    }

    /// [`Client::stat`].
    pub fn stat(&mut self, hash: &BlobHash) -> Result<BlobInfo, ClientError> {
        self.call(async |c| c.stat(hash).await)
    }

    /// [`Client::has`].
    pub fn has(&mut self, hash: &BlobHash) -> Result<bool, ClientError> {
        self.call(async |c| c.has(hash).await)
    }
}
