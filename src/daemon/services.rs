//! The services behind the channels, started and stopped together.
//!
//! A service that fails to start does not take the daemon down: the other
//! channels keep serving, its channel is refused with `channel_unavailable`
//! naming the failure, and health is `unhealthy` until a restart fixes it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::blob::BlobService;
use super::pool::PoolService;
use super::queue::{QueueService, SystemClock};
use crate::paths::Paths;
use crate::protocol::handshake::Channel;
use crate::protocol::info::Endpoints;
use crate::protocol::status::{HealthReason, HealthState, ServiceSummaries};

use super::Config;
use super::lifecycle::notify::Notifier;

/// How much more time the service manager gives each service's start.
const START_EXTENSION: Duration = Duration::from_secs(90);

/// Every service of one daemon.
#[derive(Debug, Default)]
pub(crate) struct Services {
    /// The job queue, when enabled and started.
    pub(crate) queue: Option<Arc<QueueService>>,
    /// The blob store, unless disabled or failed.
    pub(crate) blob: Option<Arc<BlobService>>,
    /// Services that could not start, and why.
    failed: Vec<(Channel, String)>,
    /// Prewarmed resources.
    pub(crate) pool: Option<Arc<PoolService>>,
}

impl Services {
    /// Starts every enabled service. Their background tasks run on
    /// `tracker` and end when `stop` is cancelled; their start-up work (the
    /// queue's recovery of a crashed daemon's jobs, the pools' adoption of
    /// ready resources, the blob store's repair) extends the service
    /// manager's start-up timeout.
    pub(crate) async fn start(
        config: &Config,
        paths: &Paths,
        notifier: &Notifier,
        stop: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Services {
        // The services start side by side: a fresh state directory's store
        // creation (the queue's SQLite file, the pools' and blobs'
        // directories) costs the longest of them, not their sum.
        if config.queue.enabled || config.pool.enabled || config.blob.enabled {
            notifier.extend_timeout(START_EXTENSION);
        }
        let queue = async {
            match config.queue.enabled {
                true => Some(QueueService::start(&config.queue, paths.state_dir(), Arc::new(SystemClock)).await),
                false => None,
            }
        };
        let pool = async {
            match config.pool.enabled {
                true => Some(PoolService::start(config, paths).await),
                false => None,
            }
        };
        let blob = async {
            match config.blob.enabled {
                true => Some(BlobService::start(&config.blob, paths, stop, tracker).await),
                false => None,
            }
        };
        let (queue, pool, blob) = tokio::join!(queue, pool, blob);
        let mut services = Services::default();
        match queue {
            Some(Ok(queue)) => services.queue = Some(queue),
            Some(Err(e)) => services.fail(Channel::Queue, e),
            None => {}
        }
        match pool {
            Some(Ok(pool)) => services.pool = Some(pool),
            Some(Err(e)) => services.fail(Channel::Pool, e),
            None => {}
        }
        match blob {
            Some(Ok(blob)) => services.blob = Some(blob),
            Some(Err(e)) => services.fail(Channel::Blob, e),
            None => {}
        }
        services
    }

    /// Records that `channel`'s service could not start.
    fn fail(&mut self, channel: Channel, error: impl std::fmt::Display) {
        let message = error.to_string();
        tracing::error!(channel = %channel, "the {channel} service cannot start: {message}");
        self.failed.push((channel, message));
    }

    /// Why `channel`'s service is not running, if it failed to start.
    pub(crate) fn failure(&self, channel: Channel) -> Option<&str> {
        self.failed.iter().find(|(c, _)| *c == channel).map(|(_, m)| m.as_str())
    }

    /// What is wrong with the services.
    pub(crate) fn health_reasons(&self, reasons: &mut Vec<HealthReason>) {
        for (channel, message) in &self.failed {
            reasons.push(HealthReason {
                code: format!("{channel}_unavailable"),
                severity: HealthState::Unhealthy,
                message: format!("the {channel} service could not start: {message}"),
            });
        }
        if let Some(pool) = &self.pool {
            pool.health_reasons(reasons);
        }
        if let Some(queue) = &self.queue {
            queue.health_reasons(reasons);
        }
        if let Some(blob) = &self.blob {
            blob.health_reasons(reasons);
        }
    }

    /// One summary per running service.
    pub(crate) fn summaries(&self) -> ServiceSummaries {
        ServiceSummaries {
            pool: self.pool.as_ref().map(|p| p.summary()),
            queue: self.queue.as_ref().map(|q| q.summary()),
            blob: self.blob.as_ref().map(|b| b.usage()),
        }
    }

    /// Endpoints for `daemon.json` and `status`.
    pub(crate) fn endpoints(&self) -> Endpoints {
        Endpoints { blob_http: self.blob.as_ref().and_then(|b| b.http_url()).map(str::to_owned) }
    }

    /// What keeps the daemon from being idle (running or queued jobs, pool
    /// builds), if anything.
    pub(crate) fn busy(&self) -> Option<String> {
        let reasons: Vec<String> =
            [self.queue.as_ref().and_then(|q| q.busy()), self.pool.as_ref().and_then(|p| p.busy())]
                .into_iter()
                .flatten()
                .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Proves every service makes progress (its loops answer).
    pub(crate) async fn probe(&self) -> Result<(), String> {
        if let Some(queue) = &self.queue {
            queue.probe().await?;
        }
        if let Some(pool) = &self.pool {
            pool.probe().await?;
        }
        if let Some(blob) = &self.blob {
            blob.probe(Duration::from_secs(2)).await?;
        }
        Ok(())
    }

    /// Appends a short summary of each service to a `STATUS=` line.
    pub(crate) fn status_line(&self, line: &mut String) {
        if let Some(queue) = &self.queue {
            queue.status_line(line);
        }
        if let Some(pool) = &self.pool {
            pool.status_line(line);
        }
        if let Some(blob) = &self.blob {
            blob.status_line(line);
        }
    }

    /// Lets running work finish (no new work starts), for at most `timeout`.
    pub(crate) async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let queue = async {
            if let Some(queue) = &self.queue {
                queue.drain(deadline).await;
            }
        };
        let pool = async {
            if let Some(pool) = &self.pool {
                pool.drain_builds(deadline).await;
            }
        };
        tokio::join!(queue, pool);
    }

    /// Stops every service, after the connections have been drained.
    pub(crate) async fn shutdown(&self) {
        if let Some(queue) = &self.queue {
            queue.shutdown().await;
        }
        if let Some(pool) = &self.pool {
            pool.shutdown().await;
        }
        if let Some(blob) = &self.blob {
            blob.shutdown().await;
        }
    }
}
