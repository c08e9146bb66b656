//! `GET /dashboard/events`: the event bus as server-sent events.
//!
//! Each event is one SSE message whose `id` is its sequence number and
//! whose `data` is the very `event` frame a socket subscriber gets (one
//! line of JSON). A browser that loses the stream reconnects by itself and
//! sends the last id it saw as `Last-Event-ID`; that is the bus's `since`,
//! so the events it missed are replayed (or counted in a `lagged` message
//! when the bus no longer keeps them).
//!
//! ```text
//! retry: 2000
//! : hearth events after 118
//!
//! id: 119
//! data: {"type":"event","seq":119,"at_ms":…,"service":"queue","kind":"job_state",…}
//!
//! event: lagged
//! data: {"missed":310}
//! ```
//!
//! A first connection may ask for the last events too (`?recent=40`).
//! Streams are capped (`http.max_event_streams`); a comment every
//! [`KEEPALIVE`] shows a dead client to the write timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use crate::daemon::Shared;
use crate::daemon::events::{Published, Subscription};
use crate::daemon::http::reply::{self, Body};

/// How long a quiet stream waits before it sends a comment.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a browser waits before it reconnects a lost stream.
const RETRY_MS: u64 = 2000;
/// Events written at most in one chunk.
const BATCH: usize = 256;
/// The most past events a first connection may ask for.
const MAX_RECENT: u64 = 1000;

pub(super) fn respond(shared: &Arc<Shared>, req: &Request<Incoming>, streams: &Arc<Semaphore>) -> Response<Body> {
    let since = match (last_event_id(req), recent(req.uri().query())) {
        (Ok(Some(since)), Ok(_)) => Some(since),
        (Ok(None), Ok(recent)) => recent.map(|n| shared.events.last_seq().saturating_sub(n)),
        (Err(message), _) | (_, Err(message)) => return reply::text(StatusCode::BAD_REQUEST, message),
    };
    let Ok(permit) = streams.clone().try_acquire_owned() else {
        let mut response = reply::text(StatusCode::SERVICE_UNAVAILABLE, "too many dashboard event streams are open\n");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return response;
    };
    let Subscription { seq, missed, replay, live } = shared.events.subscribe(since);
    let mut first = BytesMut::new();
    first.put_slice(format!("retry: {RETRY_MS}\n: hearth events after {}\n\n", since.unwrap_or(seq)).as_bytes());
    if missed > 0 {
        lagged(&mut first, missed);
    }
    let mut pending = VecDeque::from([first.freeze()]);
    for chunk in replay.chunks(BATCH) {
        let mut buf = BytesMut::new();
        for event in chunk {
            message(&mut buf, event);
        }
        pending.push_back(buf.freeze());
    }
    let stream = Stream { pending, live, stop: shared.stop.clone(), _permit: permit };
    let body = StreamBody::new(futures_util::stream::unfold(stream, Stream::next)).boxed();
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header("x-accel-buffering", "no");
    reply::finish(builder, body)
}

/// The `since` a reconnecting browser asks for (`Last-Event-ID`), if any.
fn last_event_id(req: &Request<Incoming>) -> Result<Option<u64>, &'static str> {
    let mut values = req.headers().get_all("last-event-id").iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) if v.is_empty() => Ok(None),
        (Some(v), None) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or("Last-Event-ID must be the sequence number of an event\n"),
        (Some(_), Some(_)) => Err("one Last-Event-ID at most\n"),
    }
}

/// `?recent=N` (at most [`MAX_RECENT`]): a first connection that wants the
/// last N events the bus keeps before the live ones.
fn recent(query: Option<&str>) -> Result<Option<u64>, &'static str> {
    let Some(query) = query.filter(|q| !q.is_empty()) else { return Ok(None) };
    let value = query.strip_prefix("recent=").ok_or("the event stream takes only ?recent=N\n")?;
    match value.parse::<u64>() {
        Ok(n) if n <= MAX_RECENT && value.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err("recent must be a number of events from 0 to 1000\n"),
    }
}

fn message(buf: &mut BytesMut, event: &Published) {
    buf.put_slice(b"id: ");
    buf.put_slice(event.seq.to_string().as_bytes());
    buf.put_slice(b"\ndata: ");
    buf.put_slice(&event.frame);
    buf.put_slice(b"\n\n");
}

fn lagged(buf: &mut BytesMut, missed: u64) {
    buf.put_slice(format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n").as_bytes());
}

/// One open stream: what is still to send, and the bus.
struct Stream {
    pending: VecDeque<Bytes>,
    live: broadcast::Receiver<Published>,
    stop: CancellationToken,
    /// Its place among the open streams, given back when it ends.
    _permit: OwnedSemaphorePermit,
}

impl Stream {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, std::io::Error>, Self)> {
        if let Some(chunk) = self.pending.pop_front() {
            return Some((Ok(Frame::data(chunk)), self));
        }
        let first = tokio::select! {
            () = self.stop.cancelled() => return None,
            () = tokio::time::sleep(KEEPALIVE) => {
                return Some((Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n"))), self));
            }
            first = self.live.recv() => first,
        };
        let mut buf = BytesMut::new();
        let mut next = Some(first);
        let mut sent = 0;
        while let Some(received) = next.take() {
            match received {
                Ok(event) => message(&mut buf, &event),
                Err(broadcast::error::RecvError::Lagged(missed)) => lagged(&mut buf, missed),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
            sent += 1;
            if sent < BATCH {
                next = match self.live.try_recv() {
                    Ok(event) => Some(Ok(event)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                    Err(_) => None,
                };
            }
        }
        Some((Ok(Frame::data(buf.freeze())), self))
    }
}
