//! The HTTP read server: `GET` and `HEAD` of `/blob/sha256:<hex>` on
//! 127.0.0.1, for web views and tools that load blobs by URL.
//!
//! Only a well-formed hash maps to a file, so no path (encoded or not)
//! reaches anything outside the store. Requests must name a loopback host
//! with this server's port (`Host: 127.0.0.1:<port>`, `localhost:<port>`,
//! `[::1]:<port>`): a page on another origin that rebinds its DNS name to
//! 127.0.0.1 is refused. Every connection is bounded: a cap on connections,
//! a deadline for request headers (which also ends idle keep-alive
//! connections), and a deadline for a client that stops reading.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::media;
use super::store::{Store, StoreError, spawn_reader};
use crate::daemon::config::BlobConfig;
use crate::daemon::fsutil;
use crate::protocol::blob::BlobHash;

/// Where the port of the previous run is remembered, inside `blobs/`.
const PORT_FILE: &str = "http-port";

/// Body chunk size read from disk.
const CHUNK: usize = 256 * 1024;

/// The path prefix of every blob URL.
pub(crate) const BLOB_PATH: &str = "/blob/";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

type Body = BoxBody<Bytes, io::Error>;

#[derive(Debug)]
struct Ctx {
    store: Arc<Store>,
    /// `127.0.0.1:<port>`, `localhost:<port>`, `[::1]:<port>`.
    hosts: [String; 3],
    cors_origins: Vec<String>,
}

/// Binds the server and starts serving; returns its base URL.
pub(super) async fn start(
    store: Arc<Store>,
    config: &BlobConfig,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> io::Result<String> {
    let listener = bind(store.root(), config.http_port)?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let ctx = Arc::new(Ctx {
        store,
        hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")],
        cors_origins: config.http_cors_origins.clone(),
    });
    let limits = Limits {
        connections: Arc::new(Semaphore::new(usize::try_from(config.http_max_connections).unwrap_or(usize::MAX))),
        header_timeout: config.http_header_timeout.0,
        write_timeout: config.http_write_timeout.0,
    };
    let url = format!("http://127.0.0.1:{port}");
    tracing::info!(%url, "blob HTTP server listening");
    tracker.spawn(accept_loop(listener, ctx, limits, stop, tracker.clone()));
    Ok(url)
}

/// The configured port; or, when none is configured, the previous run's
/// port if it is free, else any free port (remembered for the next run).
fn bind(root: &Path, configured: Option<u16>) -> io::Result<std::net::TcpListener> {
    let any = || std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
    if let Some(port) = configured {
        return std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind 127.0.0.1:{port} (blob.http_port): {e}")));
    }
    let file = root.join(PORT_FILE);
    let last = fsutil::read_small(&file, 16)
        .ok()
        .and_then(|b| String::from_utf8(b).ok()?.trim().parse::<u16>().ok())
        .filter(|p| *p != 0);
    let listener = match last {
        Some(port) => std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).or_else(|e| {
            tracing::warn!("the blob HTTP port of the previous run, {port}, is not available ({e}); choosing another");
            any()
        })?,
        None => any()?,
    };
    let port = listener.local_addr()?.port();
    if last != Some(port)
        && let Err(e) = fsutil::write_atomic(&file, port.to_string().as_bytes(), 0o600, false)
    {
        tracing::warn!("cannot remember the blob HTTP port: {e}");
    }
    Ok(listener)
}

#[derive(Debug, Clone)]
struct Limits {
    connections: Arc<Semaphore>,
    header_timeout: Duration,
    write_timeout: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    limits: Limits,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
                    tracing::debug!("blob HTTP server at its connection limit; closing a new connection");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (ctx, limits, stop) = (ctx.clone(), limits.clone(), stop.clone());
                tracker.spawn(async move {
                    serve_connection(stream, ctx, &limits, stop).await;
                    drop(permit);
                });
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tracing::debug!("blob HTTP accept failed: {e}; retrying in {backoff:?}");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, ctx: Arc<Ctx>, limits: &Limits, stop: CancellationToken) {
    let io = TokioIo::new(StallGuard::new(stream, limits.write_timeout));
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(respond(&ctx, &req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(16 * 1024)
        .serve_connection(io, service);
    tokio::select! {
        () = stop.cancelled() => {}
        result = conn => if let Err(e) = result {
            tracing::debug!("blob HTTP connection ended: {e}");
        },
    }
}

async fn respond(ctx: &Ctx, req: &Request<Incoming>) -> Response<Body> {
    if !ctx.host_allowed(req) {
        return text(
            StatusCode::FORBIDDEN,
            "requests must name 127.0.0.1, localhost or [::1] with this server's port\n",
        );
    }
    let cors = ctx.cors_origin(req.headers());
    if req.method() == Method::OPTIONS && cors.is_some() {
        return preflight(ctx, cors);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // The raw path: percent-encoding is never decoded, so only the literal
    // form of a well-formed hash matches.
    let Some(hash) = req.uri().path().strip_prefix(BLOB_PATH).and_then(|h| BlobHash::parse(h).ok()) else {
        return text(StatusCode::NOT_FOUND, "not found: blobs are at /blob/sha256:<64 lowercase hex digits>\n");
    };
    let Some(info) = ctx.store.info(&hash) else {
        return text(StatusCode::NOT_FOUND, "no such blob\n");
    };
    let etag = format!("\"{hash}\"");
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, IMMUTABLE)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if let Some(headers) = builder.headers_mut() {
        ctx.add_cors(headers, cors);
    }
    if etag_matches(req.headers().get(header::IF_NONE_MATCH), &etag) {
        return finish(builder.status(StatusCode::NOT_MODIFIED), empty());
    }
    let span = requested_span(req.headers(), &etag, info.size);
    let (status, start, length) = match span {
        Span::Whole => (StatusCode::OK, 0, info.size),
        Span::Part { start, length } => {
            let end = start + length - 1;
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{}", info.size));
            (StatusCode::PARTIAL_CONTENT, start, length)
        }
        Span::Unsatisfiable => {
            let builder = builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", info.size))
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
            return finish(builder, full("range not satisfiable\n"));
        }
    };
    let builder = builder
        .status(status)
        .header(header::CONTENT_TYPE, media::served(info.media_type.as_deref()))
        .header(header::CONTENT_LENGTH, length);
    if req.method() == Method::HEAD {
        return finish(builder, empty());
    }
    let store = ctx.store.clone();
    let opened = tokio::task::spawn_blocking(move || store.open_blob(&hash).map(|(file, _)| (file, hash))).await;
    match opened {
        Ok(Ok((file, hash))) => {
            ctx.store.touch(&hash);
            let body = FileBody { chunks: spawn_reader(file, start, length, CHUNK), remaining: length };
            finish(builder, body.boxed())
        }
        Ok(Err(StoreError::NotFound(_))) => text(StatusCode::NOT_FOUND, "no such blob\n"),
        Ok(Err(e)) => {
            tracing::error!("blob HTTP: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the blob\n")
        }
        Err(e) => {
            tracing::error!("blob HTTP: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the blob\n")
        }
    }
}

impl Ctx {
    /// Exactly one `Host`, naming loopback with this port (and an
    /// absolute-form target, if any, naming the same).
    fn host_allowed(&self, req: &Request<Incoming>) -> bool {
        let known = |h: &str| self.hosts.iter().any(|k| k.eq_ignore_ascii_case(h));
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let (Some(host), None) = (hosts.next(), hosts.next()) else { return false };
        host.to_str().is_ok_and(known) && req.uri().authority().is_none_or(|a| known(a.as_str()))
    }

    /// The `Access-Control-Allow-Origin` value for this request, if CORS is configured and allows it.
    fn cors_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        if self.cors_origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.cors_origins.iter().any(|o| o.eq_ignore_ascii_case(text)).then(|| origin.clone())
    }

    fn add_cors(&self, headers: &mut HeaderMap, origin: Option<HeaderValue>) {
        if !self.cors_origins.is_empty() && !self.cors_origins.iter().any(|o| o == "*") {
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("Content-Length, Content-Range, Accept-Ranges, ETag"),
            );
        }
    }
}

fn preflight(ctx: &Ctx, origin: Option<HeaderValue>) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    ctx.add_cors(headers, origin);
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Range, If-None-Match, If-Range"));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    response
}

fn etag_matches(if_none_match: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(value) = if_none_match.and_then(|v| v.to_str().ok()) else { return false };
    value.split(',').map(str::trim).any(|tag| tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag))
}

/// What part of a blob a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Span {
    Whole,
    Part { start: u64, length: u64 },
    Unsatisfiable,
}

/// A single `Range: bytes=…` (honoured unless an `If-Range` names another
/// validator). Several ranges, or a malformed one, get the whole blob, as
/// RFC 9110 allows.
fn requested_span(headers: &HeaderMap, etag: &str, size: u64) -> Span {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Span::Whole };
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.to_str().map(str::trim).ok() != Some(etag)
    {
        return Span::Whole;
    }
    parse_range(range, size).unwrap_or(Span::Whole)
}

fn parse_range(value: &str, size: u64) -> Option<Span> {
    let value = value.trim();
    let spec = value.get(..6).filter(|unit| unit.eq_ignore_ascii_case("bytes="))?;
    let spec = value[spec.len()..].trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    if first.trim().is_empty() {
        let suffix = number(last)?;
        if suffix == 0 || size == 0 {
            return Some(Span::Unsatisfiable);
        }
        let length = suffix.min(size);
        return Some(Span::Part { start: size - length, length });
    }
    let start = number(first)?;
    let end = if last.trim().is_empty() { None } else { Some(number(last)?) };
    if end.is_some_and(|end| end < start) {
        return None;
    }
    if start >= size {
        return Some(Span::Unsatisfiable);
    }
    let end = end.map_or(size - 1, |end| end.min(size - 1));
    Some(Span::Part { start, length: end - start + 1 })
}

fn finish(builder: hyper::http::response::Builder, body: Body) -> Response<Body> {
    builder.body(body).unwrap_or_else(|e| {
        tracing::error!("blob HTTP: cannot build a response: {e}");
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes())).map_err(|never| match never {}).boxed()
}

/// A short plain-text answer (errors), never cached.
fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    let builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-store");
    finish(builder, full(message))
}

/// A response body streamed from disk by a blocking reader, a few chunks
/// ahead of the socket.
struct FileBody {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(match ready!(self.chunks.poll_recv(cx)) {
            Some(Ok(bytes)) => {
                self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                Ok(Frame::data(bytes))
            }
            Some(Err(e)) => Err(e),
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the blob reader stopped early")),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Fails a write that makes no progress for `limit` (a client that stopped
/// reading), so a stalled download does not hold a connection forever.
struct StallGuard<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit, stalled: None }
    }

    fn progress<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let deadline = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no data for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let part = |start, length| Some(Span::Part { start, length });
        assert_eq!(parse_range("bytes=0-0", 10), part(0, 1));
        assert_eq!(parse_range("bytes=9-9", 10), part(9, 1));
        assert_eq!(parse_range("bytes=9-", 10), part(9, 1));
        assert_eq!(parse_range("bytes=-3", 10), part(7, 3));
        assert_eq!(parse_range("bytes=-30", 10), part(0, 10));
        assert_eq!(parse_range("bytes=2-100", 10), part(2, 8));
        assert_eq!(parse_range("BYTES=2-3", 10), part(2, 2));
        assert_eq!(parse_range("bytes=10-", 10), Some(Span::Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 10), Some(Span::Unsatisfiable));
        assert_eq!(parse_range("bytes=0-", 0), Some(Span::Unsatisfiable));
        for ignored in ["bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=+1-2", "bytes=a-", "bytes=", "bytes=-"] {
            assert_eq!(parse_range(ignored, 10), None, "{ignored}");
        }
    }

    #[test]
    fn etags() {
        let tag = "\"sha256:ab\"";
        assert!(etag_matches(Some(&HeaderValue::from_static("\"sha256:ab\"")), tag));
        assert!(etag_matches(Some(&HeaderValue::from_static("\"x\", W/\"sha256:ab\"")), tag));
        assert!(etag_matches(Some(&HeaderValue::from_static("*")), tag));
        assert!(!etag_matches(Some(&HeaderValue::from_static("\"sha256:ac\"")), tag));
        assert!(!etag_matches(None, tag));
    }
}
