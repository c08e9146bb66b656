//! The services behind the channels, started and stopped together.
//!
//! A service that fails to start does not take the daemon down: the other
//! channels keep serving, its channel is refused with `channel_unavailable`
//! naming the failure, and health is `unhealthy` until a restart fixes it.

use std::sync::Arc;

use super::queue::{QueueService, SystemClock};
use crate::paths::Paths;
use crate::protocol::handshake::Channel;
use crate::protocol::info::Endpoints;
use crate::protocol::status::{HealthReason, HealthState, ServiceSummaries};

use super::Config;

/// Every service of one daemon.
#[derive(Debug, Default)]
pub(crate) struct Services {
    /// The job queue, when enabled and started.
    pub(crate) queue: Option<Arc<QueueService>>,
    /// Services that could not start, and why.
    failed: Vec<(Channel, String)>,
}

impl Services {
    /// Starts every enabled service.
    pub(crate) async fn start(config: &Config, paths: &Paths) -> Services {
        let mut services = Services::default();
        if config.queue.enabled {
            match QueueService::start(&config.queue, paths.state_dir(), Arc::new(SystemClock)).await {
                Ok(queue) => services.queue = Some(queue),
                Err(e) => services.fail(Channel::Queue, e),
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
        if let Some(queue) = &self.queue {
            queue.health_reasons(reasons);
        }
    }

    /// One summary per running service.
    pub(crate) fn summaries(&self) -> ServiceSummaries {
        ServiceSummaries { queue: self.queue.as_ref().map(|q| q.summary()) }
    }

    /// Endpoints for `daemon.json` and `status`.
    pub(crate) fn endpoints(&self) -> Endpoints {
        Endpoints {}
    }

    /// Stops every service, after the connections have been drained.
    pub(crate) async fn shutdown(&self) {
        if let Some(queue) = &self.queue {
            queue.shutdown().await;
        }
    }
}
