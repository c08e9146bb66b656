//! The blob service: a content-addressed store under `<state-dir>/blobs/`,
//! its socket channel, its HTTP read server, and background upkeep
//! (collection against the size budget, batched last-access writes).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::daemon::Config;
use crate::daemon::config::BlobConfig;
use crate::daemon::events::EventBus;
use crate::daemon::services::{
    BoxFuture, LastFailure, Opened, PROBE_TIMEOUT, Service, StartCtx, StartError, StartService,
};
use crate::paths::Paths;
use crate::protocol::Channel;
use crate::protocol::blob::{GcReport, Stored, Usage};
use crate::protocol::event::EventData;
use crate::protocol::info::Endpoints;
use crate::protocol::status::{HealthCode, HealthReason, ServiceSummaries};

mod handler;
mod http;
mod ingest;
mod media;
mod store;

use store::Store;

/// How often changed last-access times are written to the sidecars.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// The running blob service.
#[derive(Debug)]
pub(crate) struct BlobService {
    store: Arc<Store>,
    max_blob_size: Option<u64>,
    http_url: Option<String>,
    /// Why the HTTP server is not running although it is enabled.
    http_failure: Option<String>,
    collect_now: Notify,
    /// When the store last failed with an I/O error (a full disk included),
    /// and why: reported as `blob_store_errors` in health for a while.
    last_store_error: LastFailure,
    /// Where puts, deletes and collections are told.
    events: Arc<EventBus>,
}

impl BlobService {
    /// Opens the store, starts the HTTP server and the upkeep task.
    pub(crate) async fn open(
        config: &BlobConfig,
        paths: &Paths,
        stop: &CancellationToken,
        tracker: &TaskTracker,
        events: Arc<EventBus>,
    ) -> Result<Arc<BlobService>, StartError> {
        let root = paths.state_dir().join("blobs");
        let budget = config.max_bytes.map(|b| b.0);
        let store = tokio::task::spawn_blocking(move || Store::open(&root, budget))
            .await
            .map_err(|e| StartError::join("the blob store's opening", &e))?
            .map_err(|e| StartError::Store { what: "the blob store", source: Box::new(e) })?;
        let store = Arc::new(store);
        let (http_url, http_failure) = if config.http {
            match http::start(store.clone(), config, stop.clone(), tracker.clone()).await {
                Ok(url) => (Some(url), None),
                Err(e) => {
                    tracing::error!("the blob HTTP server cannot start: {e}");
                    (None, Some(e.to_string()))
                }
            }
        } else {
            (None, None)
        };
        let service = Arc::new(BlobService {
            store,
            max_blob_size: config.max_blob_size.map(|b| b.0),
            http_url,
            http_failure,
            collect_now: Notify::new(),
            last_store_error: LastFailure::default(),
            events,
        });
        tracker.spawn(upkeep(service.clone(), stop.clone(), config.gc_interval.0));
        Ok(service)
    }

    /// The store's totals and the HTTP URL.
    pub(crate) fn usage(&self) -> Usage {
        Usage { http_url: self.http_url.clone(), ..self.store.usage() }
    }

    /// Tells subscribers what a collection removed, if anything.
    fn collected(&self, report: &GcReport) {
        if report.removed > 0 {
            let event = EventData::BlobGc { removed: report.removed, bytes: report.freed_bytes };
            self.events.publish(Channel::Blob, event);
        }
    }

    /// Tells subscribers about a put.
    fn put_event(&self, stored: &Stored) {
        let event = EventData::BlobPut { hash: stored.hash.to_string(), size: stored.size, existed: stored.existed };
        self.events.publish(Channel::Blob, event);
    }

    /// Remembers that the store failed, for health.
    fn store_failed(&self, error: String) {
        self.last_store_error.record(crate::time::now_ms(), error);
    }

    /// Called after a put stored new content.
    fn after_put(&self) {
        if self.store.over_budget() {
            self.collect_now.notify_one();
        }
    }
}

impl StartService for BlobService {
    const CHANNEL: Channel = Channel::Blob;

    fn enabled(config: &Config) -> bool {
        config.blob.enabled
    }

    async fn start(ctx: StartCtx<'_>) -> Result<Arc<Self>, StartError> {
        BlobService::open(&ctx.config.blob, ctx.paths, ctx.stop, ctx.tracker, ctx.events.clone()).await
    }
}

impl Service for BlobService {
    fn serve(self: Arc<Self>, opened: Opened) -> BoxFuture<'static, ()> {
        Box::pin(handler::serve(opened.session(), self))
    }

    fn summarize(&self, summaries: &mut ServiceSummaries) {
        summaries.blob = Some(self.usage());
    }

    fn health(&self, reasons: &mut Vec<HealthReason>) {
        if let Some(failure) = &self.http_failure {
            let message = format!("the blob HTTP server could not start: {failure}");
            reasons.push(HealthReason::new(HealthCode::BlobHttpUnavailable, message));
        }
        if let Some((ago, message)) = self.last_store_error.recent(crate::time::now_ms()) {
            let message = format!("the blob store failed {}s ago: {message}", ago.as_secs());
            reasons.push(HealthReason::new(HealthCode::BlobStoreErrors, message));
        }
        let usage = self.store.usage();
        if let Some(budget) = usage.budget_bytes.filter(|b| usage.pinned_bytes > *b) {
            let message = format!(
                "pinned blobs hold {} bytes, more than the budget of {budget} bytes; unpin some or raise blob.max_bytes",
                usage.pinned_bytes
            );
            reasons.push(HealthReason::new(HealthCode::BlobPinnedOverBudget, message));
        }
    }

    /// Proves the HTTP server answers: a `HEAD` of a blob that cannot exist
    /// must come back as a `404` within `timeout`.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Some(url) = &self.http_url else { return Ok(()) };
            let authority = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
            let check = async {
                let mut stream = tokio::net::TcpStream::connect(&authority).await?;
                let request = format!(
                    "HEAD /blob/sha256:{} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n",
                    "0".repeat(64)
                );
                stream.write_all(request.as_bytes()).await?;
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).await?;
                Ok::<_, std::io::Error>(head)
            };
            match tokio::time::timeout(PROBE_TIMEOUT, check).await {
                Ok(Ok(head)) if head.starts_with(b"HTTP/1.1 404") => Ok(()),
                Ok(Ok(head)) => Err(format!("the blob HTTP server answered {:?}", String::from_utf8_lossy(&head))),
                Ok(Err(e)) => Err(format!("the blob HTTP server: {e}")),
                Err(_) => Err(format!("the blob HTTP server did not answer within {PROBE_TIMEOUT:?}")),
            }
        })
    }

    /// `; blobs: 12 (3.4 MiB)` for a `STATUS=` line.
    fn status_line(&self, line: &mut String) {
        let usage = self.store.usage();
        if usage.count > 0 {
            line.push_str(&format!("; blobs: {} ({} bytes)", usage.count, usage.bytes));
        }
    }

    fn endpoints(&self, endpoints: &mut Endpoints) {
        endpoints.blob_http.clone_from(&self.http_url);
    }

    /// Writes the last-access times still held in memory.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.flush_access()).await;
        })
    }
}

/// Collection (at start, every `gc_interval`, and when a put goes over
/// budget) and the batched last-access writes, until the daemon stops.
async fn upkeep(service: Arc<BlobService>, stop: CancellationToken, gc_interval: Duration) {
    let mut gc_tick = tokio::time::interval(gc_interval);
    let mut flush_tick = tokio::time::interval(ACCESS_FLUSH_INTERVAL);
    flush_tick.tick().await;
    loop {
        let collect = tokio::select! {
            () = stop.cancelled() => return,
            _ = gc_tick.tick() => true,
            () = service.collect_now.notified() => true,
            _ = flush_tick.tick() => false,
        };
        let store = service.store.clone();
        let work = tokio::task::spawn_blocking(move || {
            if !collect {
                store.flush_access();
                None
            } else if store.over_budget() {
                Some(store.collect(None))
            } else {
                None
            }
        });
        if let Ok(Some(report)) = work.await {
            service.collected(&report);
        }
    }
}
