//! The services behind the channels, started and stopped together.
//!
//! A service that fails to start does not take the daemon down: the other
//! channels keep serving, its channel is refused with `channel_unavailable`
//! naming the failure, and health is `unhealthy` until a restart fixes it.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::blob::BlobService;
use crate::paths::Paths;
use crate::protocol::handshake::Channel;
use crate::protocol::info::Endpoints;
use crate::protocol::status::{HealthReason, HealthState, ServiceSummaries};

use super::Config;

/// Every service of one daemon.
#[derive(Debug, Default)]
pub(crate) struct Services {
    /// The blob store, unless disabled or failed.
    pub(crate) blob: Option<Arc<BlobService>>,
    /// Services that could not start, and why.
    failed: Vec<(Channel, String)>,
}

impl Services {
    /// Starts every enabled service. Their background tasks run on
    /// `tracker` and end when `stop` is cancelled.
    pub(crate) async fn start(
        config: &Config,
        paths: &Paths,
        stop: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Services {
        let mut services = Services::default();
        if config.blob.enabled {
            match BlobService::start(&config.blob, paths, stop, tracker).await {
                Ok(blob) => services.blob = Some(blob),
                Err(e) => services.fail(Channel::Blob, e),
            }
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
        if let Some(blob) = &self.blob {
            blob.health_reasons(reasons);
        }
    }

    /// One summary per running service.
    pub(crate) fn summaries(&self) -> ServiceSummaries {
        ServiceSummaries { blob: self.blob.as_ref().map(|b| b.usage()) }
    }

    /// Endpoints for `daemon.json` and `status`.
    pub(crate) fn endpoints(&self) -> Endpoints {
        Endpoints { blob_http: self.blob.as_ref().and_then(|b| b.http_url()).map(str::to_owned) }
    }

    /// Stops every service, after the connections have been drained.
    pub(crate) async fn shutdown(&self) {
        if let Some(blob) = &self.blob {
            blob.shutdown().await;
        }
    }
}
