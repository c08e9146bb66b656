//! The daemon: singleton, accept loop, router and services.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth::daemon::StartupError> {
//! use hearth::daemon::{Config, Daemon, Instance};
//! use hearth::paths::Paths;
//!
//! let mut instance = Instance::acquire(Paths::new("/tmp/hearth-demo"))?;
//! let listener = instance.bind()?;
//! let daemon = Daemon::start(instance, listener, Config::default()).await?;
//! daemon.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::paths::Paths;
use crate::protocol::PROTOCOL_VERSION;
use crate::protocol::handshake::{Channel, DaemonIdent};
use crate::protocol::info::DaemonInfo;
use crate::protocol::status::{Health, HealthReason, HealthState, Limits};

mod blob;
pub mod child;
pub mod config;
pub mod detach;
pub mod fsutil;
pub mod logging;
pub mod notify;
pub mod pool;
pub mod queue;
pub mod random;
mod router;
mod server;
mod services;
mod session;
pub mod singleton;
mod status;
mod supervisor;
mod sync;

pub use config::Config;
pub use notify::Notifier;
pub use singleton::{Instance, StartupError};

/// This daemon's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Refusals (over the connection cap) being written at once; beyond this,
/// excess connections are closed without a word.
const MAX_PENDING_REFUSALS: usize = 64;

/// Descriptors the daemon needs whatever its load: its lock, log and
/// listeners, the queue store's writer, dispatcher and idle readers, the
/// files of atomic writes and directory syncs.
const BASE_FDS: u64 = 64;
/// Descriptors one running queue attempt holds at its peak: its pid and
/// gate pipes and stdio pipes while it is spawned, then two pipes, two log
/// files and a pidfd.
const FDS_PER_WORKER: u64 = 12;
/// Descriptors one pool build, check or reset holds at its peak.
const FDS_PER_BUILD: u64 = 10;
/// Descriptors one client connection holds at its peak: its socket, and a
/// blob put's temp file with a directory or sidecar being synced, or a
/// queue read's SQLite connection (its database and WAL files).
const FDS_PER_CONNECTION: u64 = 3;
/// Descriptors one blob HTTP connection holds: its socket and the blob it sends.
const FDS_PER_HTTP_CONNECTION: u64 = 2;

/// State shared by every task of one daemon.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) paths: Paths,
    pub(crate) ident: DaemonIdent,
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
    /// Cancelled when the daemon begins to stop.
    pub(crate) stop: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) connection_slots: Arc<Semaphore>,
    pub(crate) refusal_slots: Arc<Semaphore>,
    pub(crate) max_connections: u64,
    pub(crate) stats: ConnectionCounters,
    pub(crate) services: services::Services,
    /// Set once a draining shutdown has begun.
    pub(crate) draining: AtomicBool,
    /// Why the last self-check failed, if it did.
    pub(crate) self_check: Mutex<Option<String>>,
    /// Set while the self-check connects: one connection from this process
    /// may then be served beyond the connection cap.
    pub(crate) self_check_pass: AtomicBool,
}

#[derive(Debug, Default)]
pub(crate) struct ConnectionCounters {
    /// Client connections past their handshake (self-checks excluded).
    pub(crate) active: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) refused_busy: AtomicU64,
    pub(crate) refused_peer: AtomicU64,
}

impl Shared {
    pub(crate) fn limits(&self) -> Limits {
        let s = &self.config.server;
        Limits {
            max_frame: s.max_frame.0,
            handshake_max_frame: s.handshake_max_frame.0,
            handshake_timeout_ms: s.handshake_timeout.0.as_millis() as u64,
            max_connections: self.max_connections,
            connection_idle_timeout_ms: s.connection_idle_timeout.0.as_millis() as u64,
            write_timeout_ms: s.write_timeout.0.as_millis() as u64,
            shutdown_grace_ms: s.shutdown_grace.0.as_millis() as u64,
        }
    }

    /// Client connections open now (the daemon's own self-checks excluded).
    pub(crate) fn active_connections(&self) -> u64 {
        self.stats.active.load(Ordering::Relaxed)
    }

    /// Connection slots in use (every accepted connection, handshaked or not).
    pub(crate) fn slots_in_use(&self) -> u64 {
        self.max_connections - self.connection_slots.available_permits() as u64
    }

    /// The channels this daemon serves.
    pub(crate) fn channels(&self) -> Vec<Channel> {
        Channel::ALL.into_iter().filter(|c| router::route(self, *c).is_ok()).collect()
    }

    pub(crate) fn health(&self) -> Health {
        let mut reasons = Vec::new();
        let active = self.slots_in_use();
        if active * 10 >= self.max_connections * 9 {
            reasons.push(HealthReason {
                code: "connections_near_limit".into(),
                severity: HealthState::Degraded,
                message: format!("{active} of {} connections in use", self.max_connections),
            });
        }
        match fsutil::free_space(self.paths.state_dir()) {
            Ok(free) => {
                let h = &self.config.health;
                let severity = if free < h.disk_free_unhealthy.0 {
                    Some(("disk_space_critical", HealthState::Unhealthy))
                } else if free < h.disk_free_degraded.0 {
                    Some(("disk_space_low", HealthState::Degraded))
                } else {
                    None
                };
                if let Some((code, severity)) = severity {
                    reasons.push(HealthReason {
                        code: code.into(),
                        severity,
                        message: format!(
                            "{} free in {}",
                            crate::units::ByteSize(free),
                            self.paths.state_dir().display()
                        ),
                    });
                }
            }
            Err(e) => tracing::debug!("statvfs: {e}"),
        }
        if let Some(failure) = self.self_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            reasons.push(HealthReason {
                code: "self_check_failed".into(),
                severity: HealthState::Degraded,
                message: failure,
            });
        }
        if self.is_draining() {
            reasons.push(HealthReason {
                code: "draining".into(),
                severity: HealthState::Degraded,
                message: "a draining shutdown is waiting for running work".into(),
            });
        }
        self.services.health_reasons(&mut reasons);
        Health::from_reasons(reasons)
    }

    pub(crate) fn set_self_check(&self, failure: Option<String>) {
        *self.self_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = failure;
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts a draining shutdown: the services let running work finish (up
    /// to the drain timeout) while the daemon keeps serving; then it stops.
    pub(crate) fn begin_drain(self: &Arc<Self>) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.clone();
        self.tracker.spawn(async move {
            let timeout = shared.config.daemon.drain_timeout.0;
            tokio::select! {
                () = shared.stop.cancelled() => {}
                () = shared.services.drain(timeout) => {
                    tracing::info!("drained; stopping");
                    shared.stop.cancel();
                }
            }
        });
    }

    /// One line for `STATUS=`: health, connections, services.
    pub(crate) fn status_line(&self) -> String {
        let mut line = format!("{}; {} connections", self.health().state.as_str(), self.active_connections());
        self.services.status_line(&mut line);
        line
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    shared: Arc<Shared>,
    instance: Instance,
    accept_loop: JoinHandle<()>,
    supervisor: JoinHandle<()>,
    notifier: Notifier,
    info: DaemonInfo,
}

impl Daemon {
    /// Starts the services, starts accepting on `listener`, and writes
    /// `daemon.json`. Must run inside a tokio runtime.
    pub async fn start(
        mut instance: Instance,
        listener: std::os::unix::net::UnixListener,
        mut config: Config,
    ) -> Result<Daemon, StartupError> {
        let paths = instance.paths().clone();
        fit_open_file_limit(&mut config, raise_nofile_limit());
        let max_connections = config.server.max_connections;
        let started_at = SystemTime::now();
        let notifier = Notifier::from_env();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let services = services::Services::start(&config, &paths, &notifier, &stop, &tracker).await;
        let shared = Arc::new(Shared {
            ident: DaemonIdent { version: VERSION.into(), pid: std::process::id() },
            started: Instant::now(),
            started_at,
            stop,
            tracker,
            connection_slots: Arc::new(Semaphore::new(max_connections as usize)),
            refusal_slots: Arc::new(Semaphore::new(MAX_PENDING_REFUSALS)),
            max_connections,
            stats: ConnectionCounters::default(),
            services,
            draining: AtomicBool::new(false),
            self_check: Mutex::new(None),
            self_check_pass: AtomicBool::new(false),
            paths: paths.clone(),
            config,
        });
        listener.set_nonblocking(true).map_err(|e| StartupError::Other(format!("socket: {e}")))?;
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|e| StartupError::Other(format!("socket: {e}")))?;
        let info = DaemonInfo {
            pid: shared.ident.pid,
            version: VERSION.into(),
            protocol: PROTOCOL_VERSION,
            socket: paths.socket().to_owned(),
            state_dir: paths.state_dir().to_owned(),
            started_at: crate::time::rfc3339(started_at),
            endpoints: shared.services.endpoints(),
            managed_by: service_manager().map(str::to_owned),
        };
        // Published before the first accept (connections wait in the
        // listen backlog meanwhile): whoever gets an answer finds daemon.json.
        if let Err(e) = instance.publish(&info) {
            shared.services.shutdown().await;
            return Err(e);
        }
        let accept_loop = tokio::spawn(server::accept_loop(listener, shared.clone()));
        tracing::info!(
            pid = info.pid,
            version = VERSION,
            socket = %paths.socket().display(),
            max_connections,
            "hearthd ready"
        );
        notifier.ready(&shared.status_line());
        let supervisor = tokio::spawn(supervisor::run(shared.clone(), notifier.clone()));
        Ok(Daemon { shared, instance, accept_loop, supervisor, notifier, info })
    }

    /// What `daemon.json` says.
    pub fn info(&self) -> &DaemonInfo {
        &self.info
    }

    /// A token that starts a graceful stop when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.shared.stop.clone()
    }

    /// Serves until `signal` resolves or a client asks for shutdown; then
    /// stops accepting, gives in-flight requests the grace period, and
    /// removes the socket and info file and releases the lock.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        let Daemon { shared, instance, accept_loop, supervisor, notifier, .. } = self;
        tokio::select! {
            () = signal => tracing::info!("stop signal received; shutting down"),
            () = shared.stop.cancelled() => {}
        }
        shared.stop.cancel();
        notifier.stopping("stopping");
        let _ = supervisor.await;
        // The accept loop returns at once and drops the listener: from here
        // on new connections are refused by the kernel.
        let _ = accept_loop.await;
        shared.tracker.close();
        let grace = shared.config.server.shutdown_grace.0;
        if tokio::time::timeout(grace, shared.tracker.wait()).await.is_err() {
            tracing::warn!(
                remaining = shared.tracker.len(),
                "in-flight work did not finish within the {grace:?} grace period; stopping anyway"
            );
        }
        shared.services.shutdown().await;
        let _ = std::fs::remove_file(shared.paths.heartbeat_file());
        instance.release();
        tracing::info!("hearthd stopped");
        if let Err(e) = notifier.barrier(Duration::from_secs(5)) {
            tracing::debug!("sd_notify barrier: {e}");
        }
    }
}

/// The service manager this process runs under, from the variables each sets.
fn service_manager() -> Option<&'static str> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
    if set("NOTIFY_SOCKET") || set("INVOCATION_ID") {
        Some("systemd")
    } else if set("XPC_SERVICE_NAME") {
        Some("launchd")
    } else {
        None
    }
}

/// Lowers `server.max_connections` and `blob.http_max_connections` (in
/// the same proportion) until every connection at its peak, every queue
/// worker and every pool build fit the open-file limit `limit` together,
/// so that clients can never take the descriptors a job, a build or the
/// store needs: a full daemon refuses connections instead of failing work.
fn fit_open_file_limit(config: &mut Config, limit: u64) {
    let workers = u64::from(config.queue.effective_workers()) * u64::from(config.queue.enabled);
    let builds = u64::from(config.pool.max_concurrent_builds) * u64::from(config.pool.enabled);
    let reserved = BASE_FDS + workers * FDS_PER_WORKER + builds * FDS_PER_BUILD;
    let available = limit.saturating_sub(reserved);
    if available == 0 {
        tracing::warn!(
            open_file_limit = limit,
            reserved,
            "the open-file limit is too low for queue.workers and pool.max_concurrent_builds; raise it (ulimit -n)"
        );
    }
    let connections = config.server.max_connections;
    let http = if config.blob.enabled && config.blob.http { config.blob.http_max_connections } else { 0 };
    let wanted = connections * FDS_PER_CONNECTION + http * FDS_PER_HTTP_CONNECTION;
    if wanted <= available {
        return;
    }
    let scale =
        |n: u64| if n == 0 { 0 } else { ((u128::from(n) * u128::from(available) / u128::from(wanted)) as u64).max(1) };
    config.server.max_connections = scale(connections);
    tracing::warn!(
        configured = connections,
        open_file_limit = limit,
        reserved,
        "max_connections lowered to {} to fit the open-file limit",
        config.server.max_connections
    );
    if http > 0 {
        config.blob.http_max_connections = scale(http);
        tracing::warn!(
            configured = http,
            "blob.http_max_connections lowered to {} to fit the open-file limit",
            config.blob.http_max_connections
        );
    }
}

#[allow(unsafe_code)]
fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    child::remember_nofile_limit(rl.rlim_cur, rl.rlim_max);
    let wanted = rl.rlim_max.min(1 << 20);
    if rl.rlim_cur < wanted {
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: rl.rlim_max };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            rl.rlim_cur = wanted;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    let current = rl.rlim_cur as u64;
    current
}

/// How long ago the daemon started.
pub(crate) fn uptime(shared: &Shared) -> Duration {
    shared.started.elapsed()
}

/// Counter increment shorthand.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fitted(limit: u64, edit: impl FnOnce(&mut Config)) -> (u64, u64) {
        let mut config = Config::default();
        config.queue.workers = 4;
        edit(&mut config);
        fit_open_file_limit(&mut config, limit);
        (config.server.max_connections, config.blob.http_max_connections)
    }

    #[test]
    fn connections_fit_the_open_file_limit_beside_the_workers_and_builds() {
        let reserved = BASE_FDS + 4 * FDS_PER_WORKER + FDS_PER_BUILD;
        assert_eq!(fitted(1 << 20, |_| {}), (1024, 128), "a generous limit changes nothing");
        for limit in [256, 1024, 2048] {
            let (connections, http) = fitted(limit, |_| {});
            assert!(connections < 1024 && http < 128, "{limit}: ({connections}, {http})");
            let peak = reserved + connections * FDS_PER_CONNECTION + http * FDS_PER_HTTP_CONNECTION;
            assert!(peak <= limit, "{limit}: {peak} descriptors at the peak");
        }
        // Without the HTTP server, the socket gets all of it.
        let (alone, _) = fitted(1024, |c| c.blob.http = false);
        assert_eq!(alone, (1024 - reserved) / FDS_PER_CONNECTION);
        // A limit below the reserve still serves one connection of each kind.
        assert_eq!(fitted(16, |_| {}), (1, 1));
    }
}
