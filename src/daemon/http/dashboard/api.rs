//! `GET /dashboard/api/<section>`: what the page shows, as JSON.
//!
//! The dashboard asks the services exactly what a client would (`status`,
//! `list`, `get`, `logs`, `usage`, ...) over an in-process socket pair
//! served by the channel's own handler: it shows what `hearth status` and
//! `hearth queue list` show, through the same limits, with no second read
//! path to keep in step. The answers are the protocol's own JSON
//! (proto-docs/ describes every field).
//!
//! A section is one line of [`SECTIONS`] and one function; the page learns
//! which ones this daemon has from `api/sections`.

use std::sync::Arc;
use std::time::Duration;

use hyper::header;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::connection::Connection;
use crate::daemon::Shared;
use crate::daemon::conn::router::route;
use crate::daemon::http::reply::{self, Body};
use crate::daemon::services::{BoxFuture, Opened};
use crate::protocol::blob::{BlobChannel, BlobRequest, BlobResponse};
use crate::protocol::handshake::Handshake;
use crate::protocol::pool::{PoolChannel, PoolRequest, PoolResponse};
use crate::protocol::queue::{JobState, ListFilter, LogStream, LogsRequest, QueueChannel, QueueRequest, QueueResponse};
use crate::protocol::status::{StatusChannel, StatusRequest, StatusResponse};
use crate::protocol::{Channel, ChannelProtocol, Response as _};

/// The `client` of the dashboard's in-process connections, in the log.
const CLIENT: &str = concat!("hearth-dashboard/", env!("CARGO_PKG_VERSION"));
/// The most one section may take to gather.
const DEADLINE: Duration = Duration::from_secs(10);
/// Jobs per list (the latest, and the dead-letter queue).
const JOBS_SHOWN: u32 = 50;
/// Blobs listed.
const BLOBS_SHOWN: u32 = 20;
/// The end of each log shown with a job.
const LOG_TAIL: u64 = 16 * 1024;

type Gather = for<'a> fn(&'a Arc<Shared>, &'a str) -> BoxFuture<'a, Result<Value, ApiError>>;

/// Every section: its name, the channel it needs, how it is gathered.
const SECTIONS: &[(&str, Channel, Gather)] = &[
    ("overview", Channel::Status, |s, _| Box::pin(overview(s))),
    ("queue", Channel::Queue, |s, _| Box::pin(queue(s))),
    ("job", Channel::Queue, |s, id| Box::pin(job(s, id))),
    ("pools", Channel::Pool, |s, _| Box::pin(pools(s))),
    ("blobs", Channel::Blob, |s, _| Box::pin(blobs(s))),
];

/// Why a section could not be gathered.
#[derive(Debug)]
enum ApiError {
    /// The request names no such thing (`404`).
    NotFound(String),
    /// The service said no, or could not be reached (`502` or `503`).
    Service(StatusCode, String),
}

pub(super) async fn respond(shared: &Arc<Shared>, path: &str, head: bool) -> Response<Body> {
    let (name, arg) = path.split_once('/').unwrap_or((path, ""));
    let result = if name == "sections" && arg.is_empty() {
        Ok(sections(shared))
    } else {
        match SECTIONS.iter().find(|(n, _, _)| *n == name) {
            Some((_, _, gather)) => match tokio::time::timeout(DEADLINE, gather(shared, arg)).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::Service(StatusCode::GATEWAY_TIMEOUT, format!("{name} took over {DEADLINE:?}"))),
            },
            None => Err(ApiError::NotFound(format!("no section {name:?}"))),
        }
    };
    let (status, value) = match result {
        Ok(value) => (StatusCode::OK, value),
        Err(ApiError::NotFound(message)) => (StatusCode::NOT_FOUND, json!({ "error": message })),
        Err(ApiError::Service(status, message)) => (status, json!({ "error": message })),
    };
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    let builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, bytes.len());
    reply::finish(builder, if head { reply::empty() } else { reply::full(bytes) })
}

/// The sections whose channel this daemon serves.
fn sections(shared: &Shared) -> Value {
    let channels = shared.services.channels();
    // `job` is one job's detail, not a card of its own.
    let names: Vec<&str> =
        SECTIONS.iter().filter(|(n, c, _)| *n != "job" && channels.contains(c)).map(|(n, _, _)| *n).collect();
    json!({ "sections": names })
}

async fn overview(shared: &Arc<Shared>) -> Result<Value, ApiError> {
    let mut c = InProcess::<StatusChannel>::open(shared)?;
    match c.ask(&StatusRequest::Status).await? {
        StatusResponse::Status(report) => Ok(json!({ "status": report })),
        other => Err(unexpected(&other)),
    }
}

async fn queue(shared: &Arc<Shared>) -> Result<Value, ApiError> {
    let mut c = InProcess::<QueueChannel>::open(shared)?;
    let QueueResponse::Stats(stats) = c.ask(&QueueRequest::Stats).await? else { return Err(ApiError::unexpected()) };
    let latest = ListFilter { limit: Some(JOBS_SHOWN), ..ListFilter::default() };
    let QueueResponse::Jobs { jobs, .. } = c.ask(&QueueRequest::List(latest)).await? else {
        return Err(ApiError::unexpected());
    };
    let dead = ListFilter { states: vec![JobState::Dead], limit: Some(JOBS_SHOWN), ..ListFilter::default() };
    let QueueResponse::Jobs { jobs: dead, .. } = c.ask(&QueueRequest::List(dead)).await? else {
        return Err(ApiError::unexpected());
    };
    Ok(json!({ "stats": stats, "jobs": jobs, "dead": dead }))
}

async fn job(shared: &Arc<Shared>, id: &str) -> Result<Value, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound(format!("{id:?} is not a job id")))?;
    let mut c = InProcess::<QueueChannel>::open(shared)?;
    let (job, attempts) = match c.ask(&QueueRequest::Get { id }).await {
        Ok(QueueResponse::Job { job, attempts }) => (job, attempts),
        Ok(_) => return Err(ApiError::unexpected()),
        Err(ApiError::Service(_, message)) if message.contains("job_not_found") => {
            return Err(ApiError::NotFound(format!("no job {id}")));
        }
        Err(e) => return Err(e),
    };
    // Each attempt's output follows a one-line header in the log: reading
    // from a little before the tail's start finds it whatever their length.
    let kept = |bytes: fn(&crate::protocol::queue::Attempt) -> u64| {
        attempts.iter().map(|a| bytes(a) + 512).sum::<u64>().saturating_sub(LOG_TAIL)
    };
    let stdout = c.log_tail(id, LogStream::Stdout, kept(|a| a.stdout_bytes)).await?;
    let stderr = c.log_tail(id, LogStream::Stderr, kept(|a| a.stderr_bytes)).await?;
    Ok(json!({ "job": job, "attempts": attempts, "stdout": stdout, "stderr": stderr }))
}

async fn pools(shared: &Arc<Shared>) -> Result<Value, ApiError> {
    let mut c = InProcess::<PoolChannel>::open(shared)?;
    let PoolResponse::Status(report) = c.ask(&PoolRequest::Status { pool: None }).await? else {
        return Err(ApiError::unexpected());
    };
    let PoolResponse::Leases { leases } = c.ask(&PoolRequest::Leases { pool: None }).await? else {
        return Err(ApiError::unexpected());
    };
    Ok(json!({ "pools": report, "leases": leases }))
}

async fn blobs(shared: &Arc<Shared>) -> Result<Value, ApiError> {
    let mut c = InProcess::<BlobChannel>::open(shared)?;
    let BlobResponse::Usage(usage) = c.ask(&BlobRequest::Usage).await? else { return Err(ApiError::unexpected()) };
    let list = BlobRequest::List { cursor: None, limit: Some(BLOBS_SHOWN) };
    let BlobResponse::List { blobs, next_cursor } = c.ask(&list).await? else { return Err(ApiError::unexpected()) };
    Ok(json!({ "usage": usage, "blobs": blobs, "more": next_cursor.is_some() }))
}

impl ApiError {
    fn unexpected() -> Self {
        ApiError::Service(StatusCode::BAD_GATEWAY, "unexpected answer from the service".into())
    }
}

fn unexpected(response: &impl std::fmt::Debug) -> ApiError {
    tracing::error!("dashboard: unexpected answer {response:?}");
    ApiError::unexpected()
}

/// A connection to a channel's handler inside this process.
struct InProcess<C: ChannelProtocol> {
    conn: Connection,
    _channel: std::marker::PhantomData<C>,
}

impl<C: ChannelProtocol> InProcess<C> {
    /// Hands one end of a socket pair to the channel's service, as the
    /// router does with a handshaked connection.
    fn open(shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let service =
            route(shared, C::CHANNEL).map_err(|e| ApiError::Service(StatusCode::SERVICE_UNAVAILABLE, e.message))?;
        let (ours, theirs) = tokio::net::UnixStream::pair()
            .map_err(|e| ApiError::Service(StatusCode::SERVICE_UNAVAILABLE, format!("socket pair: {e}")))?;
        let max_frame = shared.config.server.max_frame.as_usize();
        let opened = Opened {
            conn: Connection::new(theirs, max_frame),
            shared: shared.clone(),
            handshake: Handshake::new(C::CHANNEL, Some(CLIENT.into())),
            peer_pid: Some(std::process::id()),
        };
        shared.tracker.spawn(service.serve(opened));
        Ok(Self { conn: Connection::new(ours, max_frame), _channel: std::marker::PhantomData })
    }

    async fn ask(&mut self, request: &C::Request) -> Result<C::Response, ApiError> {
        self.conn.write_json(request).await.map_err(broken)?;
        self.recv().await
    }

    async fn recv(&mut self) -> Result<C::Response, ApiError> {
        let frame = self.conn.read_frame().await.map_err(broken)?.ok_or_else(|| broken("closed"))?;
        let response: C::Response = serde_json::from_slice(&frame).map_err(broken)?;
        response
            .into_result()
            .map_err(|e| ApiError::Service(StatusCode::BAD_GATEWAY, format!("{}: {}", e.code, e.message)))
    }
}

impl InProcess<QueueChannel> {
    /// The end of a job's log from `from`: its text (lossy UTF-8), where it
    /// starts, and whether the log has more before it.
    async fn log_tail(&mut self, id: u64, stream: LogStream, from: u64) -> Result<Value, ApiError> {
        let request = QueueRequest::Logs(LogsRequest { id, stream, offset: from, follow: false });
        self.conn.write_json(&request).await.map_err(broken)?;
        let mut bytes: Vec<u8> = Vec::new();
        let start = loop {
            match self.recv().await? {
                QueueResponse::LogData { data, .. } => bytes.extend_from_slice(&data.0),
                QueueResponse::LogEnd { offset, .. } => {
                    let cut = bytes.len().saturating_sub(LOG_TAIL as usize);
                    bytes.drain(..cut);
                    break offset.saturating_sub(bytes.len() as u64);
                }
                other => return Err(unexpected(&other)),
            }
        };
        Ok(json!({ "text": String::from_utf8_lossy(&bytes), "offset": start, "more_before": start > 0 }))
    }
}

fn broken(e: impl std::fmt::Display) -> ApiError {
    ApiError::Service(StatusCode::SERVICE_UNAVAILABLE, format!("the service's connection failed: {e}"))
}
