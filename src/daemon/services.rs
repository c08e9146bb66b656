//! The services behind the channels, started and stopped together.
//!
//! A service that fails to start does not take the daemon down: the other
//! channels keep serving, its channel is refused with `channel_unavailable`
//! naming the failure, and health is `unhealthy` until a restart fixes it.

use std::sync::Arc;

use super::pool::PoolService;
use crate::paths::Paths;
use crate::protocol::handshake::Channel;
use crate::protocol::info::Endpoints;
use crate::protocol::status::{HealthReason, HealthState, ServiceSummaries};

use super::Config;
use super::notify::Notifier;

/// Every service of one daemon.
#[derive(Debug, Default)]
pub(crate) struct Services {
    /// Services that could not start, and why.
    failed: Vec<(Channel, String)>,
    /// Prewarmed resources.
    pub(crate) pool: Option<Arc<PoolService>>,
}

impl Services {
    /// Starts every enabled service. Long recovery work extends the service
    /// manager's start-up timeout through `notifier`.
    pub(crate) async fn start(config: &Config, paths: &Paths, _notifier: &Notifier) -> Services {
        let mut services = Services::default();
        match PoolService::start(config, paths).await {
            Ok(pool) => services.pool = Some(pool),
            Err(e) => services.fail(Channel::Pool, e),
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
    }

    /// One summary per running service.
    pub(crate) fn summaries(&self) -> ServiceSummaries {
        ServiceSummaries { pool: self.pool.as_ref().map(|p| p.summary()) }
    }

    /// Endpoints for `daemon.json` and `status`.
    pub(crate) fn endpoints(&self) -> Endpoints {
        Endpoints {}
    }

    /// What keeps the daemon from being idle (running or queued jobs, pool
    /// builds), if anything.
    pub(crate) fn busy(&self) -> Option<String> {
        self.pool.as_ref().and_then(|p| p.busy())
    }

    /// Proves every service makes progress (its loops answer).
    pub(crate) async fn probe(&self) -> Result<(), String> {
        if let Some(pool) = &self.pool {
            pool.probe().await?;
        }
        Ok(())
    }

    /// Appends a short summary of each service to a `STATUS=` line.
    pub(crate) fn status_line(&self, line: &mut String) {
        if let Some(pool) = &self.pool {
            pool.status_line(line);
        }
    }

    /// Lets running work finish (no new work starts), for at most `timeout`.
    pub(crate) async fn drain(&self, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(pool) = &self.pool {
            pool.drain_builds(deadline).await;
        }
    }

    /// Stops every service, after the connections have been drained.
    pub(crate) async fn shutdown(&self) {
        if let Some(pool) = &self.pool {
            pool.shutdown().await;
        }
    }
}
