//! The daemon: singleton, accept loop, router and services.
//!
//! # Where things are
//!
//! - `mod.rs` (here): [`Daemon`] (start, serve until stopped, stop) and the
//!   state every task shares: configuration, connection counters, health.
//! - [`lifecycle`]: the process's own life: the singleton lock and socket,
//!   the permission audit, socket activation, signals, `--detach`,
//!   `sd_notify`, the log file, and the supervisor (self-check, heartbeat,
//!   watchdog, idle exit).
//! - `conn/`: the connection path: the accept loop (`server.rs`), the peer
//!   check and handshake (`router.rs`), and the `Session` a channel's
//!   handler reads requests from and writes responses to (`session.rs`).
//! - `services.rs`: the `Service` trait every channel's service
//!   implements, the registry, and the slots (running, disabled, failed)
//!   that the router, `status`, health, idle exit and shutdown iterate.
//! - One folder (or file) per service: `status.rs`, `pool/`, `queue/`, `blob/`, `process/`.
//! - Shared helpers: `config.rs` (settings), `fsutil.rs` (atomic writes,
//!   private directories), `child.rs` (how every child process is started
//!   and killed), `random.rs` (ids). The system calls are in [`crate::sys`].
//!
//! # Adding a channel
//!
//! A new channel (say `sync`) touches exactly these places:
//!
//! 1. `src/protocol/sync.rs`: its request and response enums, its
//!    `ChannelProtocol` type and wire limits; one line in the `channels!`
//!    list of `src/protocol/channel.rs` (with its status summary type, if it
//!    has one), and `pub mod sync;` in `src/protocol/mod.rs`. Its error codes
//!    join the `error_codes!` list in `src/protocol/error.rs`, its health
//!    codes the `health_codes!` list in `src/protocol/status.rs`.
//! 2. `src/daemon/sync/`: the service, implementing `Service` and
//!    `StartService`; one line in `REGISTRY` (`src/daemon/services.rs`) and
//!    `mod sync;` here. Its settings are a struct in its folder and one
//!    field of [`Config`] (`[sync]` in config.toml).
//! 3. `src/client/sync.rs`: its client, and `pub mod sync;` in `src/client/mod.rs`.
//! 4. `src/bin/hearth/sync_cmd.rs`: its CLI group, and one variant of the
//!    `Command` enum in `src/bin/hearth/main.rs`.
//! 5. `proto-docs/sync.md` (plus rows in `errors.md` and `status.md`), and
//!    a line in `proto-docs/README.md`'s table.
//!
//! Everything else follows from the `channels!` list and the registry: the
//! handshake's list of channels, routing and refusals, `status`'s channels,
//! summaries and health (`sync_unavailable`), the supervisor's probe, idle
//! exit, draining and shutdown, proto-docs' and golden frames' checks, and
//! the request fuzz target.
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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::paths::Paths;
use crate::protocol::PROTOCOL_VERSION;
use crate::protocol::handshake::DaemonIdent;
use crate::protocol::info::DaemonInfo;
use crate::protocol::status::{Health, HealthCode, HealthReason, Limits};

mod blob;
pub mod child;
pub mod config;
mod conn;
mod events;
pub mod fsutil;
pub mod lifecycle;
pub mod pool;
pub mod process;
pub mod queue;
pub mod random;
pub(crate) mod services;
mod status;
mod sync;

pub use config::Config;
use conn::server;
pub use lifecycle::StartupError;
pub use lifecycle::notify::Notifier;
pub use lifecycle::singleton::Instance;
use lifecycle::supervisor;

/// This daemon's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Refusals (over the connection cap) being written at once; beyond this,
/// excess connections are closed without a word.
const MAX_PENDING_REFUSALS: usize = 64;

/// Descriptors the daemon needs whatever its load: its lock, log and
/// listeners, the queue store's writer, dispatcher and idle readers, the
/// files of atomic writes and directory syncs.
const BASE_FDS: u64 = 64;
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
    /// What the services did, for subscribers.
    pub(crate) events: Arc<events::EventBus>,
    /// Set once a draining shutdown has begun.
    pub(crate) draining: AtomicBool,
    /// Why the last self-check failed, if it did.
    pub(crate) self_check: Mutex<Option<String>>,
    /// Set while the self-check connects: one connection from this process
    /// may then be served beyond the connection cap.
    pub(crate) self_check_pass: AtomicBool,
    /// Device and inode of the socket this daemon bound (not one the
    /// service manager passed), which the supervisor watches.
    pub(crate) bound_socket: Option<(u64, u64)>,
    /// Set when the daemon stops because its socket was removed or replaced.
    pub(crate) socket_lost: OnceLock<String>,
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

    pub(crate) fn health(&self) -> Health {
        let mut reasons = Vec::new();
        let active = self.slots_in_use();
        if active * 10 >= self.max_connections * 9 {
            let message = format!("{active} of {} connections in use", self.max_connections);
            reasons.push(HealthReason::new(HealthCode::ConnectionsNearLimit, message));
        }
        match crate::sys::free_space(self.paths.state_dir()) {
            Ok(free) => {
                let h = &self.config.health;
                let code = if free < h.disk_free_unhealthy.0 {
                    Some(HealthCode::DiskSpaceCritical)
                } else if free < h.disk_free_degraded.0 {
                    Some(HealthCode::DiskSpaceLow)
                } else {
                    None
                };
                if let Some(code) = code {
                    let message =
                        format!("{} free in {}", crate::units::ByteSize(free), self.paths.state_dir().display());
                    reasons.push(HealthReason::new(code, message));
                }
            }
            Err(e) => tracing::debug!("statvfs: {e}"),
        }
        if let Some(failure) = self.self_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            reasons.push(HealthReason::new(HealthCode::SelfCheckFailed, failure));
        }
        if self.is_draining() {
            let message = "a draining shutdown is waiting for running work";
            reasons.push(HealthReason::new(HealthCode::Draining, message));
        }
        self.services.health(&mut reasons);
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
        let events = Arc::new(events::EventBus::new(config.daemon.event_buffer as usize));
        let ctx =
            services::StartCtx { config: &config, paths: &paths, stop: &stop, tracker: &tracker, events: &events };
        let services = services::Services::start(ctx, &notifier).await;
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
            events,
            draining: AtomicBool::new(false),
            self_check: Mutex::new(None),
            self_check_pass: AtomicBool::new(false),
            bound_socket: instance.bound_socket(),
            socket_lost: OnceLock::new(),
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
        self.serve_until(signal).await;
    }

    /// [`run_until`](Self::run_until), and says why the daemon stopped.
    pub async fn serve_until(self, signal: impl Future<Output = ()>) -> Stopped {
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
        match shared.socket_lost.get() {
            Some(what) => Stopped::SocketLost(what.clone()),
            None => Stopped::Requested,
        }
    }
}

/// Why a daemon stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// It was asked to: a signal, a `shutdown` request, idle exit.
    Requested,
    /// The socket it bound was removed or replaced while it ran (what
    /// happened, in words): clients could no longer reach it, so it
    /// stopped, and the next client's start binds the socket again.
    SocketLost(String),
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
    let reserved = BASE_FDS + services::Services::reserved_fds(config);
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

/// Raises the open-file soft limit to the hard limit (at most 2^20) and
/// returns the limit now in force; the original is remembered for children.
fn raise_nofile_limit() -> u64 {
    let Ok((soft, hard)) = crate::sys::nofile_limit() else { return 1024 };
    child::remember_nofile_limit(soft, hard);
    let wanted = hard.min(1 << 20);
    let current = if soft < wanted && crate::sys::set_nofile_limit(wanted, hard).is_ok() { wanted } else { soft };
    #[allow(clippy::unnecessary_cast, reason = "rlim_t is u64 here but not on every platform (so not `expect`)")]
    let current = current as u64;
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
        let mut config = Config::default();
        config.queue.workers = 4;
        let reserved = BASE_FDS + services::Services::reserved_fds(&config);
        assert!(reserved >= BASE_FDS + 4 * 10, "every worker reserves its descriptors: {reserved}");
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
