//! The services behind the channels, as data.
//!
//! Every channel is served by one [`Service`]. [`REGISTRY`] lists them; the
//! daemon starts each enabled one side by side and keeps a [`Slot`] per
//! channel: running, disabled by configuration, or failed with the reason.
//! The router, the supervisor, `status`, health, idle exit, draining and
//! shutdown all go through [`Services`], never through a particular service.
//!
//! A service that fails to start does not take the daemon down: the other
//! channels keep serving, its channel is refused with `channel_unavailable`
//! naming the failure, and health is `unhealthy` (`<channel>_unavailable`)
//! until a restart fixes it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Config;
use super::Shared;
use super::events::EventBus;
use super::lifecycle::notify::Notifier;
use crate::connection::Connection;
use crate::paths::Paths;
use crate::protocol::handshake::Handshake;
use crate::protocol::info::Endpoints;
use crate::protocol::status::{HealthCode, HealthReason, ServiceSummaries};
use crate::protocol::{Channel, WireError};

/// How much more time the service manager gives the services' start.
const START_EXTENSION: Duration = Duration::from_secs(90);

/// How long a service's probe may take before the self-check fails.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A boxed future, for the hooks that [`Service`] objects run.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Every service, in start order. Adding a channel adds one line here.
pub(crate) const REGISTRY: &[Registration] = &[
    Registration::of::<super::status::StatusService>(),
    Registration::of::<super::pool::PoolService>(),
    Registration::of::<super::queue::QueueService>(),
    Registration::of::<super::blob::BlobService>(),
    Registration::of::<super::sync::SyncService>(),
    Registration::of::<super::process::ProcessService>(),
];

/// What a service needs to start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartCtx<'a> {
    pub(crate) config: &'a Config,
    pub(crate) paths: &'a Paths,
    /// Cancelled when the daemon begins to stop.
    pub(crate) stop: &'a CancellationToken,
    /// The daemon's tracker: tasks spawned on it are waited for at shutdown.
    pub(crate) tracker: &'a TaskTracker,
    /// Where the service publishes what it does.
    pub(crate) events: &'a Arc<EventBus>,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// A directory or file of the service cannot be used.
    #[error("cannot use {path:?}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its part of the configuration is invalid.
    #[error("invalid configuration [{section}]: {message}")]
    Config {
        /// The section or table (`pool.venv`).
        section: String,
        /// What is wrong.
        message: String,
    },
    /// Its store cannot be opened.
    #[error("cannot open {what}: {source}")]
    Store {
        /// Which store (`the queue store`).
        what: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A thread or blocking task it needs could not run.
    #[error("{what}: {source}")]
    Runtime {
        /// What could not run.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl StartError {
    /// A blocking start-up task that panicked or was cancelled.
    pub(crate) fn join(what: &'static str, e: &tokio::task::JoinError) -> Self {
        StartError::Runtime { what, source: std::io::Error::other(e.to_string()) }
    }
}

/// How long a store's failure stays a health reason after it happened.
pub(crate) const STORE_ERROR_WINDOW: Duration = Duration::from_secs(10 * 60);

/// When something last failed, and why: a service reports it in health for
/// a while after (see [`STORE_ERROR_WINDOW`]).
#[derive(Debug, Default)]
pub(crate) struct LastFailure(std::sync::Mutex<Option<(u64, String)>>);

impl LastFailure {
    /// Remembers a failure at `at_ms` (ms since the epoch).
    pub(crate) fn record(&self, at_ms: u64, why: String) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((at_ms, why));
    }

    /// How long before `now_ms` the last failure was, and why, if it was
    /// within [`STORE_ERROR_WINDOW`].
    pub(crate) fn recent(&self, now_ms: u64) -> Option<(Duration, String)> {
        let last = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let (at, why) = last?;
        let ago = Duration::from_millis(now_ms.saturating_sub(at));
        (ago < STORE_ERROR_WINDOW).then_some((ago, why))
    }
}

/// A handshaked connection, handed to its channel's service.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    pub(crate) shared: Arc<Shared>,
    /// The handshake, with its client name and the channel's extra fields.
    pub(crate) handshake: Handshake,
    /// The peer's pid, from the kernel.
    pub(crate) peer_pid: Option<u32>,
}

/// One channel's service, once started. Only [`Service::serve`] and
/// [`Service::shutdown`] must be written; the other hooks default to "nothing
/// to say".
pub(crate) trait Service: std::fmt::Debug + Send + Sync + 'static {
    /// Checks a handshake's channel-specific fields (`params`) before it is
    /// accepted: an error refuses the handshake with its code.
    fn check_handshake(&self, _handshake: &Handshake) -> Result<(), WireError> {
        Ok(())
    }

    /// Serves one handshaked connection until it ends.
    fn serve(self: Arc<Self>, opened: Opened) -> BoxFuture<'static, ()>;

    /// Fills in this service's entry of `status`'s `services`.
    fn summarize(&self, _summaries: &mut ServiceSummaries) {}

    /// Adds what is wrong with the service.
    fn health(&self, _reasons: &mut Vec<HealthReason>) {}

    /// Proves the service makes progress (its threads and tasks answer);
    /// the supervisor withholds the heartbeat while it fails.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// What keeps the daemon from being idle (queued work, builds), if anything.
    fn busy(&self) -> Option<String> {
        None
    }

    /// Appends a short summary to the service manager's `STATUS=` line.
    fn status_line(&self, _line: &mut String) {}

    /// Adds the endpoints it serves besides the socket (for `daemon.json`).
    fn endpoints(&self, _endpoints: &mut Endpoints) {}

    /// A draining shutdown: start no new work and let running work finish,
    /// until `deadline`.
    fn drain(&self, _deadline: Instant) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Stops the service, after the connections have been drained.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// How a service comes to be: its channel, whether the configuration
/// enables it, and its start.
pub(crate) trait StartService: Service + Sized {
    /// The channel it serves.
    const CHANNEL: Channel;

    /// Whether `config` enables it.
    fn enabled(config: &Config) -> bool;

    /// Descriptors it needs whatever its load (workers, builds), reserved
    /// before connections get theirs (see `daemon::fit_open_file_limit`).
    fn reserved_fds(_config: &Config) -> u64 {
        0
    }

    /// Opens its store, recovers what a previous daemon left, starts its tasks.
    fn start(ctx: StartCtx<'_>) -> impl Future<Output = Result<Arc<Self>, StartError>> + Send;
}

/// One line of [`REGISTRY`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registration {
    pub(crate) channel: Channel,
    pub(crate) enabled: fn(&Config) -> bool,
    pub(crate) reserved_fds: fn(&Config) -> u64,
    start: StartFn,
}

/// A type-erased [`StartService::start`].
type StartFn = for<'a> fn(StartCtx<'a>) -> BoxFuture<'a, Result<Arc<dyn Service>, StartError>>;

impl Registration {
    /// The registration of the service `S`.
    pub(crate) const fn of<S: StartService>() -> Registration {
        Registration { channel: S::CHANNEL, enabled: S::enabled, reserved_fds: S::reserved_fds, start: start::<S> }
    }
}

fn start<S: StartService>(ctx: StartCtx<'_>) -> BoxFuture<'_, Result<Arc<dyn Service>, StartError>> {
    Box::pin(async move { Ok(S::start(ctx).await? as Arc<dyn Service>) })
}

/// A channel's service, as the daemon holds it.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Turned off in the configuration (`<channel>.enabled = false`).
    Disabled,
    /// It could not start; the channel is refused with this reason.
    Failed(StartError),
    Running(Arc<dyn Service>),
}

/// Every service of one daemon.
#[derive(Debug, Default)]
pub(crate) struct Services {
    slots: BTreeMap<Channel, Slot>,
}

impl Services {
    /// Starts every enabled service, side by side: a fresh state
    /// directory's store creation costs the longest of them, not their sum.
    /// Their start-up work (recovering a crashed daemon's jobs, adopting
    /// ready resources, repairing the blob store) extends the service
    /// manager's start-up timeout.
    pub(crate) async fn start(ctx: StartCtx<'_>, notifier: &Notifier) -> Services {
        notifier.extend_timeout(START_EXTENSION);
        let starts = REGISTRY.iter().map(|r| async move {
            if !(r.enabled)(ctx.config) {
                return (r.channel, Slot::Disabled);
            }
            match (r.start)(ctx).await {
                Ok(service) => (r.channel, Slot::Running(service)),
                Err(e) => {
                    tracing::error!(channel = %r.channel, "the {} service cannot start: {e}", r.channel);
                    (r.channel, Slot::Failed(e))
                }
            }
        });
        Services { slots: futures_util::future::join_all(starts).await.into_iter().collect() }
    }

    /// The descriptors every enabled service reserves.
    pub(crate) fn reserved_fds(config: &Config) -> u64 {
        REGISTRY.iter().filter(|r| (r.enabled)(config)).map(|r| (r.reserved_fds)(config)).sum()
    }

    /// The slot of `channel`; `None` when this daemon has no service for it.
    pub(crate) fn slot(&self, channel: Channel) -> Option<&Slot> {
        self.slots.get(&channel)
    }

    fn running(&self) -> impl Iterator<Item = &Arc<dyn Service>> {
        self.slots.values().filter_map(|slot| match slot {
            Slot::Running(service) => Some(service),
            Slot::Disabled | Slot::Failed(_) => None,
        })
    }

    /// The channels this daemon serves.
    pub(crate) fn channels(&self) -> Vec<Channel> {
        let mut channels: Vec<Channel> =
            self.slots.iter().filter(|(_, s)| matches!(s, Slot::Running(_))).map(|(c, _)| *c).collect();
        channels.sort_by_key(|c| Channel::ALL.iter().position(|a| a == c));
        channels
    }

    /// What is wrong with the services.
    pub(crate) fn health(&self, reasons: &mut Vec<HealthReason>) {
        for (channel, slot) in &self.slots {
            if let Slot::Failed(e) = slot {
                let message = format!("the {channel} service could not start: {e}");
                reasons.push(HealthReason::new(HealthCode::Unavailable(*channel), message));
            }
        }
        for service in self.running() {
            service.health(reasons);
        }
    }

    /// One summary per running service.
    pub(crate) fn summaries(&self) -> ServiceSummaries {
        let mut summaries = ServiceSummaries::default();
        for service in self.running() {
            service.summarize(&mut summaries);
        }
        summaries
    }

    /// Endpoints for `daemon.json` and `status`.
    pub(crate) fn endpoints(&self) -> Endpoints {
        let mut endpoints = Endpoints::default();
        for service in self.running() {
            service.endpoints(&mut endpoints);
        }
        endpoints
    }

    /// What keeps the daemon from being idle, if anything.
    pub(crate) fn busy(&self) -> Option<String> {
        let reasons: Vec<String> = self.running().filter_map(|s| s.busy()).collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Proves every service makes progress.
    pub(crate) async fn probe(&self) -> Result<(), String> {
        for service in self.running() {
            service.probe().await?;
        }
        Ok(())
    }

    /// Appends a short summary of each service to a `STATUS=` line.
    pub(crate) fn status_line(&self, line: &mut String) {
        for service in self.running() {
            service.status_line(line);
        }
    }

    /// Lets running work finish (no new work starts), for at most `timeout`.
    pub(crate) async fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        futures_util::future::join_all(self.running().map(|s| s.drain(deadline))).await;
    }

    /// Stops every service, after the connections have been drained.
    pub(crate) async fn shutdown(&self) {
        futures_util::future::join_all(self.running().map(|s| s.shutdown())).await;
    }
}
