//! `ensure_daemon_running`: connect to the daemon, starting it if needed.
//!
//! The daemon's singleton lock decides who runs: every caller that finds no
//! daemon runs `hearthd --detach`, and all but one of those report
//! `already_running` at once. So any number of concurrent callers, in any
//! number of processes, end with exactly one daemon.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{ClientError, ConnectOptions, DEFAULT_CLIENT_NAME, StatusClient};
use crate::paths::Paths;
use crate::protocol::handshake::DaemonIdent;
use crate::protocol::info::{LaunchCode, LaunchReport};

/// Environment variable naming the `hearthd` binary to spawn.
pub const ENV_DAEMON_BIN: &str = "HEARTH_DAEMON_BIN";

/// What to do when the running daemon is older than this library.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplacePolicy {
    /// Use whatever daemon runs (the default: never interrupt other clients).
    #[default]
    Never,
    /// Ask an older daemon to drain (let its running jobs and builds
    /// finish, up to its drain timeout) and stop, then start this library's
    /// version in its place. The call waits for the drain, within its own
    /// deadline.
    IfOlder,
}

/// Options for [`ensure_daemon_running`].
#[derive(Debug, Clone)]
pub struct EnsureOptions {
    /// The daemon's state directory and socket.
    pub paths: Paths,
    /// The `hearthd` to spawn; else `HEARTH_DAEMON_BIN`, else next to the
    /// current executable, else on `PATH`.
    pub daemon_bin: Option<PathBuf>,
    /// Overall deadline (default 10 s).
    pub timeout: Duration,
    /// Whether to replace an older daemon.
    pub replace: ReplacePolicy,
    /// `<name>/<version>` for handshakes.
    pub client_name: String,
    /// Extra arguments for a spawned `hearthd`.
    pub daemon_args: Vec<OsString>,
}

impl EnsureOptions {
    /// Defaults for `paths`.
    pub fn new(paths: Paths) -> Self {
        Self {
            paths,
            daemon_bin: None,
            timeout: Duration::from_secs(10),
            replace: ReplacePolicy::Never,
            client_name: DEFAULT_CLIENT_NAME.into(),
            daemon_args: Vec::new(),
        }
    }

    /// Sets the `hearthd` binary.
    pub fn daemon_bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.daemon_bin = Some(bin.into());
        self
    }

    /// Sets the overall deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the replacement policy.
    pub fn replace(mut self, policy: ReplacePolicy) -> Self {
        self.replace = policy;
        self
    }

    /// Sets the client name.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }
}

/// The daemon that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// Its version and pid.
    pub daemon: DaemonIdent,
    /// True when this call started it.
    pub spawned: bool,
    /// The older daemon this call replaced, if any.
    pub replaced: Option<DaemonIdent>,
}

/// Connects to the daemon, starting it when none runs.
///
/// Returns once the daemon answers a handshake. When `hearthd` cannot start,
/// the error is its own startup error ([`ClientError::StartFailed`]), not a
/// timeout.
pub async fn ensure_daemon_running(options: &EnsureOptions) -> Result<Ensured, ClientError> {
    let deadline = Instant::now() + options.timeout;
    let connect = ConnectOptions::new(options.paths.socket()).client_name(options.client_name.clone());
    let mut spawned = false;
    let mut replaced: Option<DaemonIdent> = None;
    let mut wait_window = Duration::from_millis(250);
    let mut draining_delay = Duration::from_millis(5);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let what = if replaced.is_some() { "the older daemon to drain and stop" } else { "the daemon to answer" };
            return Err(ClientError::Timeout { what, after: options.timeout });
        }
        match StatusClient::connect_with(&connect.clone().timeout(remaining)).await {
            Ok(mut client) => {
                let daemon = client.daemon().clone();
                if replaced.as_ref().is_some_and(|old| old.pid == daemon.pid) {
                    // The old daemon still serves while it drains its running
                    // work; wait for it to go.
                    drop(client);
                    tokio::time::sleep(draining_delay.min(remaining)).await;
                    draining_delay = (draining_delay * 2).min(Duration::from_millis(200));
                    continue;
                }
                let older = options.replace == ReplacePolicy::IfOlder
                    && replaced.is_none()
                    && version_less(&daemon.version, env!("CARGO_PKG_VERSION"));
                if !older {
                    return Ok(Ensured { daemon, spawned, replaced });
                }
                let reason = format!("replaced by a newer client ({})", options.client_name);
                client.drain_and_shutdown(Some(reason)).await?;
                replaced = Some(daemon);
                continue;
            }
            Err(e) if e.is_not_running() => {}
            Err(e) => return Err(e),
        }
        match launch(options, deadline).await? {
            LaunchReport::Ready { .. } => spawned = true,
            LaunchReport::AlreadyRunning { .. } => {
                // Another caller won the race, or an old daemon is still
                // draining: give it a moment to answer before trying again.
                let until = (Instant::now() + wait_window).min(deadline);
                wait_window = (wait_window * 2).min(Duration::from_secs(2));
                if let Some(daemon) = poll_until(&connect, until).await
                    && replaced.as_ref().is_none_or(|old| old.pid != daemon.pid)
                {
                    return Ok(Ensured { daemon, spawned, replaced });
                }
            }
            LaunchReport::Failed { code, message } => {
                return Err(ClientError::StartFailed { code, message });
            }
        }
    }
}

/// Polls the socket with backoff until a daemon answers or `until` passes.
async fn poll_until(connect: &ConnectOptions, until: Instant) -> Option<DaemonIdent> {
    let mut delay = Duration::from_micros(500);
    loop {
        let remaining = until.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return None;
        }
        if let Ok(client) = StatusClient::connect_with(&connect.clone().timeout(remaining)).await {
            return Some(client.daemon().clone());
        }
        tokio::time::sleep(delay.min(until.saturating_duration_since(Instant::now()))).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// Runs `hearthd --detach` and reads its launch report.
///
/// The report is the line the detaching parent prints once the daemon is
/// ready (or could not start); it is taken as soon as it arrives. The
/// parent exits right after printing it, but its exit (the teardown of a
/// large process, then the end of its pipes and `SIGCHLD`) would otherwise
/// add to every cold start: it is not waited for, and tokio reaps it in the
/// background. Only without a report are its stderr and exit status
/// collected, for the error.
async fn launch(options: &EnsureOptions, deadline: Instant) -> Result<LaunchReport, ClientError> {
    let bin = find_daemon_binary(options.daemon_bin.as_deref())?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut command = tokio::process::Command::new(&bin);
    command
        .arg("--detach")
        .arg("--ready-timeout")
        .arg(format!("{}ms", remaining.as_millis().max(1)))
        .arg("--state-dir")
        .arg(options.paths.state_dir())
        .arg("--socket")
        .arg(options.paths.socket())
        .args(&options.daemon_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| ClientError::Spawn { bin: bin.clone(), source })?;
    let timeout = || ClientError::Timeout { what: "hearthd to start", after: options.timeout };
    if let Some(stdout) = child.stdout.take() {
        match tokio::time::timeout(remaining, read_report(stdout)).await {
            Ok(Some(report)) => return Ok(report),
            Ok(None) => {}
            Err(_) => {
                let _ = child.start_kill();
                return Err(timeout());
            }
        }
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    let output = match tokio::time::timeout(remaining, child.wait_with_output()).await {
        Ok(output) => output.map_err(|source| ClientError::Spawn { bin: bin.clone(), source })?,
        // Dropped with the future: tokio reaps it once it exits.
        Err(_) => return Err(timeout()),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    Ok(LaunchReport::Failed {
        code: LaunchCode::LaunchFailed,
        message: format!(
            "{} --detach exited with {} without a launch report: {}",
            bin.display(),
            output.status,
            stderr.trim()
        ),
    })
}

/// The first line of `stdout` that is a launch report; `None` at its end.
async fn read_report(stdout: tokio::process::ChildStdout) -> Option<LaunchReport> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(report) = serde_json::from_str::<LaunchReport>(&line) {
            return Some(report);
        }
    }
    None
}

/// Finds `hearthd`: `explicit`, else `HEARTH_DAEMON_BIN`, else next to the
/// current executable, else on `PATH`.
pub fn find_daemon_binary(explicit: Option<&Path>) -> Result<PathBuf, ClientError> {
    if let Some(bin) = explicit {
        return Ok(bin.to_owned());
    }
    if let Some(bin) = std::env::var_os(ENV_DAEMON_BIN).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let mut searched = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let candidate = dir.join("hearthd");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate.display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("hearthd");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
        searched.push("$PATH".into());
    }
    Err(ClientError::DaemonBinaryNotFound { searched: searched.join(", ") })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `a < b` for `major.minor.patch[-pre]` versions; a pre-release sorts before
/// its release. Unparseable versions never compare as older.
fn version_less(a: &str, b: &str) -> bool {
    fn parse(v: &str) -> Option<([u64; 3], bool)> {
        let (core, pre) = match v.split_once(['-', '+']) {
            Some((core, rest)) => (core, v[core.len()..].starts_with('-') && !rest.is_empty()),
            None => (v, false),
        };
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let triple = [parts.next()??, parts.next()??, parts.next()??];
        parts.next().is_none().then_some((triple, pre))
    }
    match (parse(a), parse(b)) {
        (Some((ta, pa)), Some((tb, pb))) => ta < tb || (ta == tb && pa && !pb),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::version_less;

    #[test]
    fn versions() {
        assert!(version_less("0.1.0", "0.2.0"));
        assert!(version_less("0.9.9", "0.10.0"));
        assert!(version_less("1.0.0-rc.1", "1.0.0"));
        assert!(!version_less("1.0.0", "1.0.0"));
        assert!(!version_less("1.0.0", "1.0.0-rc.1"));
        assert!(!version_less("2.0.0", "1.9.9"));
        assert!(!version_less("garbage", "1.0.0"));
        assert!(!version_less("1.0.0+build", "1.0.0"));
    }
}
