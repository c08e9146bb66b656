//! The blob route of the daemon's HTTP server: `GET` and `HEAD` of
//! `/blob/sha256:<hex>`, for web views and tools that load blobs by URL.
//!
//! Only a well-formed hash maps to a file, so no path (encoded or not)
//! reaches anything outside the store. The server in front of it
//! (`daemon/http/`) checks the `Host`, caps connections and times out slow
//! clients; this route adds CORS for the configured origins.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::media;
use super::store::{Store, StoreError, spawn_reader};
use crate::daemon::http::Body;
use crate::daemon::http::reply::{empty, finish, full, text};
use crate::daemon::metrics::{Metrics, Via};
use crate::protocol::blob::BlobHash;

/// Body chunk size read from disk.
const CHUNK: usize = 256 * 1024;

/// The path prefix of every blob URL.
pub(crate) const BLOB_PATH: &str = "/blob/";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What the blob route needs.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) store: Arc<Store>,
    pub(super) cors_origins: Vec<String>,
    pub(super) metrics: Arc<Metrics>,
}

/// Answers one request under [`BLOB_PATH`] (the server checked its `Host`).
pub(super) async fn respond(ctx: &Ctx, req: &Request<Incoming>) -> Response<Body> {
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
            ctx.metrics.blob_get(Via::Http);
            let chunks = spawn_reader(file, start, length, CHUNK);
            let body = FileBody { chunks, remaining: length, metrics: ctx.metrics.clone() };
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

/// A response body streamed from disk by a blocking reader, a few chunks
/// ahead of the socket.
struct FileBody {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
    metrics: Arc<Metrics>,
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
                self.metrics.blob_sent(Via::Http, bytes.len() as u64);
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
