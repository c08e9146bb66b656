//! `hearthd`: the hearth daemon. Runs in the foreground; `--detach` forks it
//! into the background and returns once it is ready.
// The doc comments of the argument structs are clap's `--help` text, where
// `<state-dir>` is a placeholder, not an HTML tag.
#![allow(rustdoc::invalid_html_tags, reason = "these doc comments are --help text")]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hearth::daemon::config::Override;
use hearth::daemon::lifecycle::detach::{self, Forked, Reporter};
use hearth::daemon::lifecycle::logging::{self, LogTarget};
use hearth::daemon::lifecycle::{activation, permissions, signals};
use hearth::daemon::{Config, Daemon, Instance, StartupError, Stopped};
use hearth::paths::Paths;
use hearth::protocol::info::{LaunchCode, LaunchReport};
use hearth::units::{ByteSize, HumanDuration};

/// The hearth daemon: one per user, serving the status, pool, queue and blob
/// channels on a Unix socket.
///
/// Settings come from flags, then environment variables, then
/// <state-dir>/config.toml, then defaults; `--print-config` shows the result.
/// Logs go to stderr in the foreground and to <state-dir>/daemon.log when
/// detached; HEARTH_LOG (or RUST_LOG) sets the filter, e.g. HEARTH_LOG=debug.
///
/// Exit status: 0 after a clean stop, 1 when it cannot start, 3 when another
/// hearthd already runs for the state directory, 4 when it stopped because
/// its socket was removed or replaced while it ran (no client could reach
/// it; the next client's start binds the socket again).
#[derive(Debug, Parser)]
#[command(name = "hearthd", version, max_term_width = 100)]
struct Args {
    /// State directory [default: $XDG_STATE_HOME/hearth, else ~/.local/state/hearth]
    #[arg(long, env = "HEARTH_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Socket path [default: <state-dir>/hearth.sock]
    #[arg(long, env = "HEARTH_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Settings file [default: <state-dir>/config.toml, optional]
    #[arg(long, env = "HEARTH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Fork into the background; print one JSON launch report line on stdout
    /// once the daemon is ready (or could not start), and exit.
    #[arg(long)]
    detach: bool,

    /// With --detach: how long to wait for the daemon to report.
    #[arg(long, value_name = "DURATION", default_value = "30s", requires = "detach")]
    ready_timeout: HumanDuration,

    /// Print the resolved settings as config.toml and exit.
    #[arg(long)]
    print_config: bool,

    /// Log to <state-dir>/daemon.log (rotated) even in the foreground, as the
    /// launchd agent does; --detach implies it.
    #[arg(long)]
    log_to_file: bool,

    #[command(flatten)]
    server: ServerFlags,

    #[command(flatten)]
    lifecycle: LifecycleFlags,

    #[command(flatten)]
    pool: PoolFlags,

    #[command(flatten)]
    queue: QueueFlags,

    #[command(flatten)]
    blob: BlobFlags,
}

/// The daemon process (each also a `[daemon]` key in config.toml).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Lifecycle")]
struct LifecycleFlags {
    /// Exit after this long with no connection, job or pool build; 0s: never [default: 0s]
    #[arg(long, env = "HEARTH_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: Option<HumanDuration>,
    /// How often to self-check and rewrite heartbeat.json [default: 5s]
    #[arg(long, env = "HEARTH_HEARTBEAT_INTERVAL", value_name = "DURATION")]
    heartbeat_interval: Option<HumanDuration>,
}

/// Limits (each also a `[server]` key in config.toml).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
struct ServerFlags {
    /// Largest frame after the handshake [default: 16MiB]
    #[arg(long, env = "HEARTH_MAX_FRAME", value_name = "SIZE")]
    max_frame: Option<ByteSize>,
    /// Largest frame before the handshake [default: 4KiB]
    #[arg(long, env = "HEARTH_HANDSHAKE_MAX_FRAME", value_name = "SIZE")]
    handshake_max_frame: Option<ByteSize>,
    /// Time allowed for the handshake [default: 5s]
    #[arg(long, env = "HEARTH_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    handshake_timeout: Option<HumanDuration>,
    /// Connections served at once [default: 1024]
    #[arg(long, env = "HEARTH_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<u64>,
    /// Close a connection idle this long [default: 10m]
    #[arg(long, env = "HEARTH_CONNECTION_IDLE_TIMEOUT", value_name = "DURATION")]
    connection_idle_timeout: Option<HumanDuration>,
    /// Close a connection that does not read a response this long [default: 30s]
    #[arg(long, env = "HEARTH_WRITE_TIMEOUT", value_name = "DURATION")]
    write_timeout: Option<HumanDuration>,
    /// Time in-flight requests get at shutdown [default: 10s]
    #[arg(long, env = "HEARTH_SHUTDOWN_GRACE", value_name = "DURATION")]
    shutdown_grace: Option<HumanDuration>,
}

impl ServerFlags {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        let mut put = |key, value: Option<String>| {
            if let Some(value) = value {
                out.push(Override { key, value });
            }
        };
        let s = |v: &Option<HumanDuration>| v.map(|d| d.to_string());
        put("server.max_frame", self.max_frame.map(|b| b.0.to_string()));
        put("server.handshake_max_frame", self.handshake_max_frame.map(|b| b.0.to_string()));
        put("server.handshake_timeout", s(&self.handshake_timeout));
        put("server.max_connections", self.max_connections.map(|n| n.to_string()));
        put("server.connection_idle_timeout", s(&self.connection_idle_timeout));
        put("server.write_timeout", s(&self.write_timeout));
        put("server.shutdown_grace", s(&self.shutdown_grace));
        out
    }
}

impl LifecycleFlags {
    fn overrides(&self) -> Vec<Override> {
        [("daemon.idle_timeout", self.idle_timeout), ("daemon.heartbeat_interval", self.heartbeat_interval)]
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| Override { key, value: v.to_string() }))
            .collect()
    }
}

/// Pools (each also a `[pool]` key in config.toml).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Pools")]
struct PoolFlags {
    /// Builds (and resets) running at once, all pools together [default: 1]
    #[arg(long, env = "HEARTH_POOL_MAX_CONCURRENT_BUILDS", value_name = "N")]
    pool_max_concurrent_builds: Option<u32>,
    /// Longest delay between retries of a failing build [default: 5m]
    #[arg(long, env = "HEARTH_POOL_RETRY_MAX", value_name = "DURATION")]
    pool_retry_max: Option<HumanDuration>,
}

impl PoolFlags {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        if let Some(n) = self.pool_max_concurrent_builds {
            out.push(Override { key: "pool.max_concurrent_builds", value: n.to_string() });
        }
        if let Some(d) = self.pool_retry_max {
            out.push(Override { key: "pool.retry_max", value: d.to_string() });
        }
        out
    }
}

/// The blob store (each also a `[blob]` key in config.toml).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Blob store")]
struct BlobFlags {
    /// Size budget: collection removes least-recently-used unpinned blobs above it [default: unlimited]
    #[arg(long, env = "HEARTH_BLOB_MAX_BYTES", value_name = "SIZE")]
    blob_max_bytes: Option<ByteSize>,
    /// Run the HTTP read server on 127.0.0.1 [default: true]
    #[arg(long, env = "HEARTH_BLOB_HTTP", value_name = "BOOL")]
    blob_http: Option<bool>,
    /// Its port; 0 picks any free port [default: the previous run's port if free]
    #[arg(long, env = "HEARTH_BLOB_HTTP_PORT", value_name = "PORT")]
    blob_http_port: Option<u16>,
}

impl BlobFlags {
    fn overrides(&self) -> Vec<Override> {
        let mut out = Vec::new();
        if let Some(size) = self.blob_max_bytes {
            out.push(Override { key: "blob.max_bytes", value: size.0.to_string() });
        }
        if let Some(http) = self.blob_http {
            out.push(Override { key: "blob.http", value: http.to_string() });
        }
        if let Some(port) = self.blob_http_port {
            out.push(Override { key: "blob.http_port", value: port.to_string() });
        }
        out
    }
}

/// The job queue (each also a `[queue]` key in config.toml).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Queue")]
struct QueueFlags {
    /// Attempts run at once; 0 means the number of CPUs [default: 0]
    #[arg(long, env = "HEARTH_QUEUE_WORKERS", value_name = "N")]
    queue_workers: Option<u32>,
    /// Attempts before a job is dead, unless its submit says [default: 3]
    #[arg(long, env = "HEARTH_QUEUE_MAX_ATTEMPTS", value_name = "N")]
    queue_max_attempts: Option<u32>,
    /// Per-attempt timeout unless the submit says; 0s for none [default: 0s]
    #[arg(long, env = "HEARTH_QUEUE_TIMEOUT", value_name = "DURATION")]
    queue_timeout: Option<HumanDuration>,
    /// Output kept per stream and attempt [default: 16MiB]
    #[arg(long, env = "HEARTH_QUEUE_LOG_MAX", value_name = "SIZE")]
    queue_log_max: Option<ByteSize>,
    /// How long an idempotency key stays taken [default: 24h]
    #[arg(long, env = "HEARTH_QUEUE_KEY_RETENTION", value_name = "DURATION")]
    queue_key_retention: Option<HumanDuration>,
    /// Delete succeeded and canceled jobs this long after they end [default: 7d]
    #[arg(long, env = "HEARTH_QUEUE_KEEP_FINISHED", value_name = "DURATION")]
    queue_keep_finished: Option<HumanDuration>,
}

impl QueueFlags {
    fn overrides(&self) -> Vec<Override> {
        let d = |v: Option<HumanDuration>| v.map(|d| d.to_string());
        [
            ("queue.workers", self.queue_workers.map(|n| n.to_string())),
            ("queue.max_attempts", self.queue_max_attempts.map(|n| n.to_string())),
            ("queue.timeout", d(self.queue_timeout)),
            ("queue.log_max", self.queue_log_max.map(|b| b.0.to_string())),
            ("queue.key_retention", d(self.queue_key_retention)),
            ("queue.keep_finished", d(self.queue_keep_finished)),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some(Override { key, value: value? }))
        .collect()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let paths = match Paths::resolve(args.state_dir.clone(), args.socket.clone()) {
        Ok(paths) => paths,
        Err(e) => return fail(args.detach, LaunchCode::StateDirUnusable, &e.to_string()),
    };
    // Absolute, as the detached daemon reads it from `/`.
    let (config_file, required) = match &args.config {
        Some(file) => match std::path::absolute(file) {
            Ok(file) => (file, true),
            Err(e) => return fail(args.detach, LaunchCode::ConfigInvalid, &format!("{}: {e}", file.display())),
        },
        None => (paths.config_file(), false),
    };
    let mut overrides = args.server.overrides();
    overrides.extend(args.lifecycle.overrides());
    overrides.extend(args.pool.overrides());
    overrides.extend(args.queue.overrides());
    overrides.extend(args.blob.overrides());
    if args.print_config {
        let config = match Config::load(&config_file, required, &overrides) {
            Ok(config) => config,
            Err(e) => return fail(false, LaunchCode::ConfigInvalid, &e.to_string()),
        };
        println!("# state_dir = {:?}", paths.state_dir());
        println!("# socket = {:?}", paths.socket());
        println!("# config file = {config_file:?}");
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }

    // Forked before anything is read or locked, so that whatever start-up
    // waits for (the settings file, the lock, the services' stores) is
    // within the parent's --ready-timeout.
    let mut reporter = if args.detach {
        match detach::fork(args.ready_timeout.0) {
            Ok(Forked::Parent(status)) => return ExitCode::from(status),
            Ok(Forked::Child(reporter)) => reporter,
            Err(e) => return fail(true, LaunchCode::StartupFailed, &format!("cannot fork: {e}")),
        }
    } else {
        Reporter::foreground()
    };

    let started = Config::load(&config_file, required, &overrides)
        .map_err(StartupError::from)
        .and_then(|config| start_and_run(paths, config, &mut reporter, args.detach || args.log_to_file));
    match started {
        Ok(Stopped::SocketLost(_)) => ExitCode::from(EXIT_SOCKET_LOST),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let report = match e {
                StartupError::AlreadyRunning { pid } => LaunchReport::AlreadyRunning { pid },
                _ => LaunchReport::Failed { code: e.code(), message: e.to_string() },
            };
            tracing::error!("{e}");
            eprintln!("hearthd: {e} ({})", e.code());
            reporter.report(&report);
            ExitCode::from(detach::exit_status(&report))
        }
    }
}

/// Exit status: the daemon stopped because its socket was removed or replaced.
const EXIT_SOCKET_LOST: u8 = 4;

fn start_and_run(
    paths: Paths,
    config: Config,
    reporter: &mut Reporter,
    to_file: bool,
) -> Result<Stopped, StartupError> {
    // A SIGTERM during start-up must stop cleanly once the socket can be
    // seen: the stop signals wait until the handlers are installed. Held
    // before any thread starts (the log writer's is the first), since a
    // thread that does not block them would take them with the default
    // action.
    let held = signals::HeldSignals::hold();
    // The lock comes first: a second daemon leaves before touching anything
    // of the first one, its log included.
    // Nothing is created before every directory on the way to the state
    // directory and to the socket is known to be safe from other users. A
    // socket the service manager passed is the manager's: its path is not
    // judged.
    let activated = activation::activated_listener()?;
    permissions::check_state_dir(paths.state_dir())?;
    if activated.is_none() {
        permissions::check_socket_dir(paths.socket())?;
    }
    let log_file = paths.log_file();
    let mut instance = Instance::acquire(paths)?;
    let target = if to_file {
        LogTarget::File { path: log_file.clone(), max_size: config.log.max_size.0, keep: config.log.keep as usize }
    } else {
        LogTarget::Stderr
    };
    let log = logging::init(&target, &config.log.filter)
        .map_err(|e| StartupError::Other(format!("cannot open {log_file:?}: {e}")))?;
    // Bound (or adopted from the service manager) before any thread starts:
    // binding adjusts the process umask.
    let listener = match activated {
        Some(listener) => instance.adopt(listener)?,
        None => instance.bind()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hearthd")
        .build()
        .map_err(|e| StartupError::Other(format!("cannot start the runtime: {e}")))?;
    let stopped = runtime.block_on(async {
        // Handlers first, so that a SIGTERM during start-up still stops cleanly.
        let stop = stop_signal().map_err(|e| StartupError::Other(format!("cannot install signal handlers: {e}")))?;
        reopen_log_on_sighup(log).map_err(|e| StartupError::Other(format!("cannot install signal handlers: {e}")))?;
        held.release();
        let daemon = Daemon::start(instance, listener, config).await?;
        let info = daemon.info();
        reporter.report(&LaunchReport::Ready {
            pid: info.pid,
            version: info.version.clone(),
            socket: info.socket.clone(),
        });
        Ok::<_, StartupError>(daemon.serve_until(stop).await)
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(stopped)
}

/// SIGHUP reopens the log file (after logrotate moved it away).
fn reopen_log_on_sighup(log: logging::LogGuard) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match log.reopen() {
                Ok(()) => tracing::info!("SIGHUP: log file reopened"),
                Err(e) => tracing::error!("SIGHUP: cannot reopen the log file: {e}"),
            }
        }
    });
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}

/// Reports a failure that happened before the daemon could start.
fn fail(detach: bool, code: LaunchCode, message: &str) -> ExitCode {
    eprintln!("hearthd: {message} ({code})");
    let report = LaunchReport::Failed { code, message: message.into() };
    if detach && let Ok(line) = serde_json::to_string(&report) {
        println!("{line}");
    }
    ExitCode::from(detach::exit_status(&report))
}
