//! `hearth daemon …`: the daemon process itself.

use std::time::{Duration, Instant};

use clap::Subcommand;
use hearth::client::{ClientError, ConnectOptions, ReplacePolicy, StatusClient, ensure_daemon_running};
use hearth::daemon::lifecycle::owner;
use hearth::daemon::lifecycle::singleton::{LockState, probe_lock};
use hearth::paths::Paths;
use hearth::protocol::info::DaemonInfo;
use hearth::protocol::status::{HealthCode, HealthReason, HealthState, StatusReport};
use hearth::units::HumanDuration;
use serde::Serialize;

use crate::error::{CliError, EXIT_OK, EXIT_REFUSED, EXIT_TIMEOUT};
use crate::progress::WaitBar;
use crate::{Ctx, install_cmd, output, status_cmd};

const DAEMON_STATUS_HELP: &str = "\
A heartbeat older than three intervals means the daemon is alive but not
progressing (reported as the health reason heartbeat_stale).

Exit status:
  0  running and healthy
  1  stale: not running, but a crashed daemon left its files (the next start recovers them)
  3  stopped
  4  not responding: a process holds the lock but the socket does not answer
  5  running, degraded
  6  running, unhealthy";

const DAEMON_STOP_HELP: &str = "\
Only this state directory's daemon is asked or signalled. The daemon that
answers on the socket is asked to stop only if it holds daemon.lock. Before
any signal, the process the kernel shows holding the lock must be named by
daemon.lock and daemon.json, run hearthd, serve this state directory, and
not have started after daemon.json's started_at; its start time is checked
again right before each signal. Otherwise the stop is refused.

Exit status:
  0  stopped, or none was running
  1  failed
  4  still running after --timeout with --no-force, or after SIGKILL
  5  refused: the lock's holder could not be proven to be this state
     directory's hearthd; nothing was signalled";

/// How long a daemon gets to answer `status` or `shutdown` (connect,
/// handshake and request together) before it counts as not responding.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub(crate) enum DaemonCommand {
    /// Start the daemon in the background, or report the one running (idempotent)
    Start(StartArgs),
    /// Stop the daemon: ask, wait, then SIGTERM, then SIGKILL; returns once its lock is released
    #[command(after_help = DAEMON_STOP_HELP)]
    Stop(StopArgs),
    /// Tell running, stopped, stale and not responding apart, even when the socket does not answer
    #[command(after_help = DAEMON_STATUS_HELP)]
    Status,
    /// Stop (draining running work first) and start again
    #[command(after_help = DAEMON_STOP_HELP)]
    Restart(RestartArgs),
    /// Show the daemon's log (daemon.log, or the systemd journal)
    Logs(LogsArgs),
    /// Run hearthd as a login service (systemd user unit or launchd agent)
    Install(install_cmd::InstallArgs),
    /// Remove what `install` wrote, and nothing else
    Uninstall(install_cmd::UninstallArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestartArgs {
    /// How long running work may take to drain, then the stop escalates like `stop`
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    timeout: HumanDuration,
    /// Do not wait for running jobs and builds (they are recovered by the new daemon)
    #[arg(long)]
    no_drain: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// Lines to show
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
    /// Keep printing new lines (follows rotation)
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StartArgs {
    /// How long to wait for the daemon to answer
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    timeout: HumanDuration,
    /// Replace a running daemon older than this hearth (graceful shutdown, then start)
    #[arg(long)]
    replace_older: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StopArgs {
    /// How long the daemon gets to stop gracefully before it is signalled
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    timeout: HumanDuration,
    /// Never signal: fail if the daemon has not stopped within --timeout
    #[arg(long)]
    no_force: bool,
    /// Let running jobs and builds finish first (the daemon keeps serving meanwhile)
    #[arg(long)]
    drain: bool,
}

pub(crate) async fn run(ctx: &Ctx, command: DaemonCommand) -> Result<u8, CliError> {
    match command {
        DaemonCommand::Start(args) => start(ctx, &args).await,
        DaemonCommand::Stop(args) => stop(ctx, &args).await,
        DaemonCommand::Status => status(ctx).await,
        DaemonCommand::Restart(args) => restart(ctx, &args).await,
        DaemonCommand::Logs(args) => logs(ctx, &args).await,
        DaemonCommand::Install(args) => install_cmd::install(ctx, &args).await,
        DaemonCommand::Uninstall(args) => install_cmd::uninstall(ctx, &args).await,
    }
}

async fn start(ctx: &Ctx, args: &StartArgs) -> Result<u8, CliError> {
    let mut options = ctx.ensure_options().timeout(args.timeout.0);
    if args.replace_older {
        options = options.replace(ReplacePolicy::IfOlder);
    }
    let ensured = ensure_daemon_running(&options).await?;
    if ctx.json {
        output::json(&serde_json::json!({
            "pid": ensured.daemon.pid,
            "version": ensured.daemon.version,
            "started": ensured.spawned,
            "replaced": ensured.replaced,
            "socket": ctx.paths.socket(),
        }))?;
    } else {
        let d = &ensured.daemon;
        match (&ensured.replaced, ensured.spawned) {
            (Some(old), _) => {
                outln!("replaced hearthd {} (pid {}) with {} (pid {})", old.version, old.pid, d.version, d.pid);
            }
            (None, true) => outln!("started hearthd {} (pid {})", d.version, d.pid),
            (None, false) => outln!("hearthd {} is already running (pid {})", d.version, d.pid),
        }
    }
    Ok(EXIT_OK)
}

/// How a stop ended.
#[derive(Debug, Serialize)]
struct Stopped {
    /// The daemon that was stopped, if one ran.
    pid: Option<u32>,
    /// `none` (it was not running), `request`, `sigterm` or `sigkill`.
    how: &'static str,
}

async fn stop(ctx: &Ctx, args: &StopArgs) -> Result<u8, CliError> {
    let stopped = stop_daemon(&ctx.paths, args.timeout.0, !args.no_force, args.drain, ctx.json).await?;
    if ctx.json {
        output::json(&stopped)?;
    } else {
        match (stopped.pid, stopped.how) {
            (_, "none") => outln!("hearthd is not running"),
            (Some(pid), "request") => outln!("stopped hearthd (pid {pid})"),
            (pid, how) => {
                outln!("stopped hearthd (pid {}) with {how}", pid.map_or_else(|| "unknown".into(), |p| p.to_string()));
            }
        }
    }
    Ok(EXIT_OK)
}

/// Asks for a graceful shutdown, waits up to `timeout` for the lock to be
/// released, then (with `force`) sends SIGTERM and finally SIGKILL.
///
/// Only this state directory's daemon is asked or signalled: the daemon
/// answering on the socket is asked only if it is the lock's holder (see
/// [`answers_for_the_lock`]), and a signal goes only to a process proven to
/// be the hearthd that owns the state directory ([`owner::verify_owner`]);
/// when that cannot be proven, nothing is signalled and the stop is refused.
async fn stop_daemon(
    paths: &Paths,
    timeout: Duration,
    force: bool,
    drain: bool,
    json: bool,
) -> Result<Stopped, CliError> {
    let LockState::Held { pid: named } = probe_lock(paths)? else {
        return Ok(Stopped { pid: None, how: "none" });
    };
    let holder = owner::lock_holder(&paths.lock_file()).ok().flatten();
    let mut pid = None;
    let mut foreign = None;
    // The whole exchange is bounded: a daemon that stopped answering (hung,
    // or SIGSTOPped between our handshake and our request) is signalled below.
    let ask = async {
        let options = ConnectOptions::new(paths.socket()).timeout(ANSWER_TIMEOUT);
        let mut client = StatusClient::connect_with(&options).await?;
        let daemon = client.daemon().pid;
        if !answers_for_the_lock(&client, holder, named) {
            return Ok((daemon, None));
        }
        let asked = if drain {
            client.drain_and_shutdown(Some("hearth daemon stop --drain".into())).await.map(drop)
        } else {
            client.shutdown(Some("hearth daemon stop".into())).await.map(drop)
        };
        Ok::<_, ClientError>((daemon, Some(asked)))
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, ask).await {
        Ok(Ok((daemon, Some(asked)))) => {
            pid = Some(daemon);
            match asked {
                Ok(()) | Err(ClientError::Closed) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Ok((daemon, None))) => foreign = Some(daemon),
        _ => {}
    }
    let mut watch = (drain && pid.is_some()).then(|| DrainWatch::new(paths, json));
    let released = wait_for_release(paths, timeout, watch.as_mut()).await?;
    drop(watch);
    if released {
        return Ok(Stopped { pid, how: "request" });
    }
    if !force {
        return Err(CliError::new(
            "stop_timeout",
            format!("the daemon did not stop within {}", HumanDuration(timeout)),
        )
        .hint("run without --no-force to signal it")
        .exit(EXIT_TIMEOUT));
    }
    let owner = match owner::verify_owner(paths) {
        Ok(owner) => owner,
        Err(_) if probe_lock(paths)? == LockState::Free => return Ok(Stopped { pid, how: "request" }),
        Err(doubt) => return Err(refused(paths, &doubt, foreign)),
    };
    for (signal, name, wait) in
        [(libc::SIGTERM, "sigterm", Duration::from_secs(3)), (libc::SIGKILL, "sigkill", Duration::from_secs(5))]
    {
        let pid = owner.pid();
        let sent =
            owner.signal(signal).map_err(|e| CliError::new("stop_failed", format!("cannot signal pid {pid}: {e}")))?;
        if wait_for_release(paths, wait, None).await? {
            return Ok(Stopped { pid: Some(pid), how: name });
        }
        if !sent {
            return Err(CliError::new(
                "stop_failed",
                format!("pid {pid} has ended, but another process holds the lock now; nothing more was signalled"),
            )
            .hint("a new daemon may have started: `hearth daemon status` shows it; run the stop again"));
        }
    }
    Err(CliError::new("stop_failed", format!("pid {} still holds the lock after SIGKILL", owner.pid()))
        .exit(EXIT_TIMEOUT))
}

/// Whether the daemon that answered on the socket is the one holding the
/// state directory's lock: the kernel's holder is the socket's listener
/// (its pid as the kernel records it, which holds across pid namespaces)
/// or the pid the daemon gives (for a socket a service manager passed, the
/// listener is the manager). Where the kernel names no holder, the lock
/// file's pid must be the daemon's.
fn answers_for_the_lock(client: &StatusClient, holder: Option<u32>, named: Option<u32>) -> bool {
    let daemon = client.daemon().pid;
    match holder {
        Some(holder) => daemon == holder || client.peer_pid() == Some(holder),
        None => named == Some(daemon),
    }
}

fn refused(paths: &Paths, doubt: &owner::NotOwner, foreign: Option<u32>) -> CliError {
    let mut message = format!("refusing to signal anything: {doubt}");
    if let Some(pid) = foreign {
        message.push_str(&format!(
            "; the daemon answering on {} (pid {pid}) does not hold this state directory's lock, \
             so it was not asked to stop",
            paths.socket().display()
        ));
    }
    CliError::new("stop_refused", message)
        .hint(
            "nothing was signalled; `hearth daemon status` and `hearth doctor` show what holds the state \
             directory; stop that process yourself if it is the daemon",
        )
        .exit(EXIT_REFUSED)
}

async fn wait_for_release(
    paths: &Paths,
    timeout: Duration,
    mut watch: Option<&mut DrainWatch>,
) -> Result<bool, CliError> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    loop {
        if probe_lock(paths)? == LockState::Free {
            return Ok(true);
        }
        if let Some(watch) = watch.as_deref_mut() {
            watch.update().await;
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// The bar of `daemon stop --drain`: the running work the daemon has left,
/// from its `status` (it keeps answering while it drains).
struct DrainWatch {
    socket: std::path::PathBuf,
    client: Option<StatusClient>,
    bar: WaitBar,
    /// The most work seen running: the bar's whole.
    most: u64,
    asked: Option<Instant>,
    /// The daemon stopped answering: it is past its drain.
    gone: bool,
}

impl DrainWatch {
    /// How often the daemon is asked.
    const EVERY: Duration = Duration::from_millis(200);

    fn new(paths: &Paths, json: bool) -> Self {
        let bar = WaitBar::new("draining", "running jobs and builds ended", 0, json);
        let gone = !bar.is_shown();
        Self { socket: paths.socket().to_owned(), client: None, bar, most: 0, asked: None, gone }
    }

    async fn update(&mut self) {
        if self.gone || self.asked.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        self.asked = Some(Instant::now());
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
            if self.client.is_none() {
                let options = ConnectOptions::new(&self.socket).timeout(ANSWER_TIMEOUT);
                self.client = Some(StatusClient::connect_with(&options).await?);
            }
            match self.client.as_mut() {
                Some(client) => client.status().await,
                None => Err(ClientError::Closed),
            }
        })
        .await;
        let Ok(Ok(report)) = answer else {
            self.gone = true;
            self.client = None;
            return;
        };
        let jobs = report.services.queue.as_ref().map_or(0, |q| q.running);
        let builds = report.services.pool.as_ref().map_or(0, |p| u64::from(p.builds_running));
        let left = jobs + builds;
        self.most = self.most.max(left);
        self.bar.set(self.most - left, self.most);
        let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        self.bar.note(format!("{} and {} still running", plural(jobs, "job"), plural(builds, "build")));
    }
}

async fn restart(ctx: &Ctx, args: &RestartArgs) -> Result<u8, CliError> {
    let info: Option<DaemonInfo> =
        std::fs::read(ctx.paths.info_file()).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let stopped = stop_daemon(&ctx.paths, args.timeout.0, true, !args.no_drain, ctx.json).await?;
    let systemd = info.as_ref().and_then(|i| i.managed_by.as_deref()) == Some("systemd");
    let pid = if systemd {
        // It stopped cleanly, so systemd will not restart it by itself.
        let out = std::process::Command::new("systemctl")
            .args(["--user", "start", hearth::unit_files::SYSTEMD_SERVICE])
            .output()
            .map_err(|e| CliError::new("restart_failed", format!("systemctl: {e}")))?;
        if !out.status.success() {
            return Err(CliError::new("restart_failed", String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
        let client = ctx.connect::<hearth::protocol::status::StatusChannel>().await?;
        client.daemon().pid
    } else {
        ensure_daemon_running(&ctx.ensure_options()).await?.daemon.pid
    };
    if ctx.json {
        output::json(
            &serde_json::json!({ "stopped": stopped, "pid": pid, "managed_by": info.and_then(|i| i.managed_by) }),
        )?;
    } else {
        match stopped.pid {
            Some(old) => outln!("restarted hearthd: pid {old} -> {pid}"),
            None => outln!("started hearthd (pid {pid}); none was running"),
        }
    }
    Ok(EXIT_OK)
}

async fn logs(ctx: &Ctx, args: &LogsArgs) -> Result<u8, CliError> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let path = ctx.paths.log_file();
    let Ok(mut file) = std::fs::File::open(&path) else {
        let unit = install_cmd::Locations {
            profile: install_cmd::Profile::Systemd,
            unit_dir: None,
            agent_dir: None,
            label: String::new(),
        }
        .unit_dir()
        .map(|d| d.join(hearth::unit_files::SYSTEMD_SERVICE));
        if unit.is_ok_and(|u| u.exists()) {
            let mut cmd = std::process::Command::new("journalctl");
            cmd.args(["--user", "-u", hearth::unit_files::SYSTEMD_SERVICE, "-n", &args.lines.to_string()]);
            if args.follow {
                cmd.arg("-f");
            }
            let status = cmd.status().map_err(|e| CliError::new("logs_unavailable", format!("journalctl: {e}")))?;
            return Ok(if status.success() { EXIT_OK } else { crate::error::EXIT_FAILED });
        }
        return Err(CliError::new("logs_unavailable", format!("no log at {}", path.display()))
            .hint("a foreground hearthd logs to its stderr; a detached one to daemon.log in its state directory"));
    };
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(args.lines)..] {
        outln!("{line}");
    }
    if !args.follow {
        return Ok(EXIT_OK);
    }
    let mut pos = file.stream_position()?;
    let mut ino = file.metadata()?.ino();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Rotated or reopened: start over on the new file.
        if let Ok(meta) = std::fs::metadata(&path)
            && (meta.ino() != ino || meta.len() < pos)
        {
            file = std::fs::File::open(&path)?;
            ino = meta.ino();
            pos = 0;
        }
        file.seek(SeekFrom::Start(pos))?;
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk)?;
        if !chunk.is_empty() {
            pos += chunk.len() as u64;
            output::bytes_out(&chunk);
        }
    }
}

/// The heartbeat as `daemon status` reports it.
#[derive(Debug, Serialize)]
struct HeartbeatAge {
    age_ms: u64,
    stale: bool,
    cycle: u64,
    interval_ms: u64,
}

/// What `hearth daemon status` found.
#[derive(Debug, Serialize)]
struct DaemonState {
    /// `running`, `stopped`, `stale` or `not_responding`.
    state: &'static str,
    pid: Option<u32>,
    /// `daemon.json`, when present and readable.
    info: Option<DaemonInfo>,
    /// The daemon's own status report, when it answered.
    status: Option<StatusReport>,
    /// Leftovers of a crashed daemon.
    stale_files: Vec<String>,
    /// The heartbeat's age, when a daemon holds the lock and has written one.
    heartbeat: Option<HeartbeatAge>,
}

async fn status(ctx: &Ctx) -> Result<u8, CliError> {
    let paths = &ctx.paths;
    let info: Option<DaemonInfo> =
        std::fs::read(paths.info_file()).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let lock = probe_lock(paths)?;
    let mut state =
        DaemonState { state: "stopped", pid: None, info, status: None, stale_files: Vec::new(), heartbeat: None };
    let exit = match lock {
        LockState::Held { pid } => {
            state.pid = pid;
            let heartbeat: Option<hearth::protocol::info::Heartbeat> =
                std::fs::read(paths.heartbeat_file()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let now = hearth::time::now_ms();
            state.heartbeat = heartbeat.filter(|h| pid.is_none_or(|p| p == h.pid)).map(|h| HeartbeatAge {
                age_ms: now.saturating_sub(h.written_at_ms),
                stale: h.is_stale(now),
                cycle: h.cycle,
                interval_ms: h.interval_ms,
            });
            let ask = async {
                let options = ConnectOptions::new(paths.socket()).timeout(ANSWER_TIMEOUT);
                StatusClient::connect_with(&options).await?.status().await
            };
            let answered = tokio::time::timeout(ANSWER_TIMEOUT, ask).await.ok().and_then(Result::ok);
            match answered {
                Some(mut report) => {
                    state.state = "running";
                    state.pid = Some(report.pid);
                    if let Some(hb) = state.heartbeat.as_ref().filter(|h| h.stale) {
                        let mut reasons = std::mem::take(&mut report.health.reasons);
                        let message = format!(
                            "the last heartbeat is {} old (interval {}): alive but not progressing",
                            output::duration(Duration::from_millis(hb.age_ms)),
                            output::duration(Duration::from_millis(hb.interval_ms))
                        );
                        reasons.push(HealthReason::new(HealthCode::HeartbeatStale, message));
                        report.health = hearth::protocol::status::Health::from_reasons(reasons);
                    }
                    let exit = match report.health.state {
                        HealthState::Healthy => 0,
                        HealthState::Degraded => 5,
                        HealthState::Unhealthy => 6,
                    };
                    state.status = Some(report);
                    exit
                }
                None => {
                    state.state = "not_responding";
                    4
                }
            }
        }
        LockState::Free => {
            for path in [paths.info_file(), paths.socket().to_owned()] {
                if std::fs::symlink_metadata(&path).is_ok() {
                    state.stale_files.push(path.display().to_string());
                }
            }
            state.pid = state.info.as_ref().map(|i| i.pid);
            if state.stale_files.is_empty() {
                3
            } else {
                state.state = "stale";
                1
            }
        }
    };
    if ctx.json {
        output::json(&state)?;
        return Ok(exit);
    }
    match state.state {
        "running" => {
            if let Some(report) = &state.status {
                status_cmd::print_report(report);
            }
            print_heartbeat(state.heartbeat.as_ref());
        }
        "not_responding" => outln!(
            "hearthd (pid {}) holds the lock but its socket {} does not answer; \
             it may be hung: `hearth daemon stop` signals it",
            state.pid.map_or_else(|| "unknown".into(), |p| p.to_string()),
            paths.socket().display()
        ),

        "stale" => outln!(
            "hearthd is not running; a daemon{} crashed and left {}; the next start cleans up",
            state.pid.map_or_else(String::new, |p| format!(" (pid {p})")),
            state.stale_files.join(", ")
        ),
        _ => outln!("hearthd is not running (state dir {})", paths.state_dir().display()),
    }
    Ok(exit)
}

fn print_heartbeat(heartbeat: Option<&HeartbeatAge>) {
    match heartbeat {
        Some(h) if h.stale => outln!(
            "  heartbeat:    STALE, {} old (cycle {}): alive but not progressing",
            output::duration(Duration::from_millis(h.age_ms)),
            h.cycle
        ),
        Some(h) => {
            outln!("  heartbeat:    {} ago (cycle {})", output::duration(Duration::from_millis(h.age_ms)), h.cycle);
        }
        None => outln!("  heartbeat:    none yet"),
    }
}
