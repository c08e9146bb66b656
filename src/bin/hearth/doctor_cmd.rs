//! `hearth doctor`: checks a state directory and a service install, and
//! prints each problem with a stable reason code and the fix.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth::client::{ConnectOptions, StatusClient};
use hearth::daemon::fsutil;
use hearth::daemon::lifecycle::permissions::check_route;
use hearth::daemon::lifecycle::singleton::{LockState, probe_lock};
use hearth::paths::Paths;
use hearth::protocol::info::{DaemonInfo, Heartbeat};
use hearth::unit_files::{SYSTEMD_SERVICE, SYSTEMD_SOCKET};
use serde::Serialize;

use crate::error::{CliError, EXIT_FAILED, EXIT_OK};
use crate::install_cmd::{Locations, Profile};
use crate::{Ctx, output};

const DOCTOR_HELP: &str = "\
Reason codes: state_dir_not_writable, state_dir_insecure, socket_dir_insecure, socket_stale,
socket_path_too_long, lock_held_by_other_process, info_file_stale,
version_mismatch, daemon_not_responding, heartbeat_stale, process_failing,
process_untracked, service_file_missing, service_points_to_missing_executable,
profile_not_supported_on_host.

Exit status: 0 when nothing worse than `info` was found, 1 otherwise.";

#[derive(Debug, clap::Args)]
#[command(after_help = DOCTOR_HELP)]
pub(crate) struct DoctorArgs {
    #[command(flatten)]
    locations: Locations,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Serialize)]
struct Problem {
    code: &'static str,
    severity: Severity,
    message: String,
    fix: String,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    state_dir: PathBuf,
    socket: PathBuf,
    problems: Vec<Problem>,
}

pub(crate) async fn doctor(ctx: &Ctx, args: &DoctorArgs) -> Result<u8, CliError> {
    let mut problems = Vec::new();
    check_state(ctx, &mut problems).await;
    check_service(&args.locations, &mut problems);
    problems.sort_by_key(|p| std::cmp::Reverse(p.severity));
    let ok = problems.iter().all(|p| p.severity == Severity::Info);
    let report =
        Report { ok, state_dir: ctx.paths.state_dir().to_owned(), socket: ctx.paths.socket().to_owned(), problems };
    if ctx.json {
        output::json(&report)?;
    } else if report.problems.is_empty() {
        outln!("no problems found in {}", ctx.paths.state_dir().display());
    } else {
        for p in &report.problems {
            let severity = match p.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Info => "info",
            };
            outln!("{severity}: {} ({})", p.message, p.code);
            outln!("  fix: {}", p.fix);
        }
    }
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}

fn problem(code: &'static str, severity: Severity, message: String, fix: impl Into<String>) -> Problem {
    Problem { code, severity, message, fix: fix.into() }
}

async fn check_state(ctx: &Ctx, problems: &mut Vec<Problem>) {
    let paths = &ctx.paths;
    check_routes(paths, problems);
    if !check_state_dir(paths.state_dir(), problems) {
        return;
    }
    let answered = check_version(paths, problems).await;
    match probe_lock(paths).unwrap_or(LockState::Free) {
        LockState::Held { pid } => check_holder(paths, pid, answered, problems),
        LockState::Free => check_leftovers(paths, answered, problems),
    }
    check_processes(paths, answered, problems).await;
}

/// Supervised processes: failed ones (asking the daemon), or, with no
/// daemon, processes a daemon that stopped unexpectedly left running.
async fn check_processes(paths: &Paths, answered: bool, problems: &mut Vec<Problem>) {
    if answered {
        let options = ConnectOptions::new(paths.socket()).timeout(Duration::from_secs(2));
        let status = async { StatusClient::connect_with(&options).await?.status().await };
        let Ok(report) = status.await else { return };
        let Some(procs) = report.services.process else { return };
        for (name, p) in procs.processes.iter().filter(|(_, p)| p.error.is_some()) {
            problems.push(problem(
                "process_failing",
                Severity::Warning,
                format!("the supervised process {name} is failed: {}", p.error.as_deref().unwrap_or("")),
                format!("`hearth proc logs {name}` shows its output; fix it, then `hearth proc start {name}`"),
            ));
        }
        return;
    }
    if probe_lock(paths).is_ok_and(|l| matches!(l, LockState::Free)) {
        for left in hearth::daemon::process::store::untracked(paths.state_dir()) {
            problems.push(problem(
                "process_untracked",
                Severity::Warning,
                format!(
                    "the supervised process {} (pid {}) still runs, left by a daemon that stopped unexpectedly; \
                     nothing supervises it now",
                    left.name, left.pid
                ),
                "`hearth daemon start`: the daemon ends it and starts it again under supervision",
            ));
        }
    }
}

/// The socket path's length and the directories on the way to the state
/// directory and to the socket, as hearthd checks them before it starts.
fn check_routes(paths: &Paths, problems: &mut Vec<Problem>) {
    let dir = paths.state_dir();
    if let Err(e) = paths.check_socket_len() {
        problems.push(problem(
            "socket_path_too_long",
            Severity::Error,
            e.to_string(),
            "set --socket or HEARTH_SOCKET to a shorter path, e.g. $XDG_RUNTIME_DIR/hearth.sock",
        ));
    }
    if let Err(step) = check_route(dir, true) {
        problems.push(problem(
            "state_dir_insecure",
            Severity::Error,
            format!("another user could replace the state directory: {step}"),
            "move the state directory under a directory only you (or root) can write (--state-dir)",
        ));
    }
    if let Err(step) = check_route(paths.socket(), false) {
        problems.push(problem(
            "socket_dir_insecure",
            Severity::Error,
            format!("another user could replace the socket: {step}"),
            "put the socket in a directory only you (or root) can write (--socket)",
        ));
    }
}

/// The state directory itself: whether the rest of the checks can go on.
fn check_state_dir(dir: &Path, problems: &mut Vec<Problem>) -> bool {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let me = hearth::sys::euid();
            let mode = meta.permissions().mode() & 0o7777;
            if !meta.is_dir() {
                problems.push(problem(
                    "state_dir_not_writable",
                    Severity::Error,
                    format!("{} is not a directory", dir.display()),
                    "choose another state directory with --state-dir",
                ));
                return false;
            }
            if meta.uid() != me {
                problems.push(problem(
                    "state_dir_insecure",
                    Severity::Error,
                    format!("{} is owned by uid {}, not by you (uid {me})", dir.display(), meta.uid()),
                    "use a state directory of your own (--state-dir)",
                ));
            } else if mode & 0o022 != 0 {
                problems.push(problem(
                    "state_dir_insecure",
                    Severity::Error,
                    format!("{} is writable by group or others (mode {mode:04o})", dir.display()),
                    format!("chmod 700 {}", dir.display()),
                ));
            }
            if let Err(e) = probe_writable(dir) {
                problems.push(problem(
                    "state_dir_not_writable",
                    Severity::Error,
                    format!("cannot create files in {}: {e}", dir.display()),
                    "make it writable by you, or choose another with --state-dir",
                ));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Fine if it can be created: the first start does.
            let creatable =
                dir.ancestors().skip(1).find(|a| a.exists()).is_some_and(|a| a.is_dir() && probe_writable(a).is_ok());
            if !creatable {
                problems.push(problem(
                    "state_dir_not_writable",
                    Severity::Error,
                    format!("{} does not exist and cannot be created", dir.display()),
                    "choose a state directory under a directory you can write (--state-dir)",
                ));
            }
            false
        }
        Err(e) => {
            problems.push(problem(
                "state_dir_not_writable",
                Severity::Error,
                format!("cannot use {}: {e}", dir.display()),
                "choose another state directory with --state-dir",
            ));
            false
        }
    }
}

/// Whatever answers on the socket: is it this release? Whether anything answered.
async fn check_version(paths: &Paths, problems: &mut Vec<Problem>) -> bool {
    let options = ConnectOptions::new(paths.socket()).timeout(Duration::from_secs(2));
    match StatusClient::connect_with(&options).await {
        Ok(client) => {
            let version = &client.daemon().version;
            if version != env!("CARGO_PKG_VERSION") {
                problems.push(problem(
                    "version_mismatch",
                    Severity::Warning,
                    format!("the running hearthd is {version}, this hearth is {}", env!("CARGO_PKG_VERSION")),
                    "`hearth daemon restart` runs the installed version (after draining running jobs)",
                ));
            }
            true
        }
        Err(_) => false,
    }
}

fn read_info(paths: &Paths) -> Option<DaemonInfo> {
    std::fs::read(paths.info_file()).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// A held lock: is its holder a hearthd that answers and makes progress?
fn check_holder(paths: &Paths, pid: Option<u32>, answered: bool, problems: &mut Vec<Problem>) {
    let comm = pid.and_then(process_name);
    if comm.as_deref() != Some("hearthd") {
        let who = match (pid, &comm) {
            (Some(pid), Some(name)) => format!("process {pid} ({name})"),
            (Some(pid), None) => format!("process {pid}"),
            (None, _) => "a process that did not write its pid".into(),
        };
        problems.push(problem(
            "lock_held_by_other_process",
            Severity::Error,
            format!("{who} holds {}, so no daemon can start", paths.lock_file().display()),
            "stop that process; `fuser -v` or `lsof` on the lock file shows it",
        ));
    }
    if let Some(info) = &read_info(paths)
        && pid.is_some_and(|p| p != info.pid)
    {
        problems.push(stale_info(&paths.info_file(), info.pid));
    }
    if !answered && comm.as_deref() == Some("hearthd") {
        problems.push(problem(
            "daemon_not_responding",
            Severity::Error,
            format!("hearthd (pid {}) holds the lock but its socket does not answer", pid.unwrap_or(0)),
            "`hearth daemon stop` escalates to SIGTERM and SIGKILL; then `hearth daemon start`",
        ));
    }
    let heartbeat: Option<Heartbeat> =
        std::fs::read(paths.heartbeat_file()).ok().and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(hb) = heartbeat.filter(|h| pid.is_none_or(|p| p == h.pid)) {
        let now = hearth::time::now_ms();
        if hb.is_stale(now) {
            problems.push(problem(
                "heartbeat_stale",
                Severity::Error,
                format!(
                    "the daemon's last heartbeat is {} old (interval {}): alive but not progressing",
                    output::duration(Duration::from_millis(now.saturating_sub(hb.written_at_ms))),
                    output::duration(Duration::from_millis(hb.interval_ms))
                ),
                "`hearth daemon restart`; if it recurs, `hearth daemon logs` shows what it was doing",
            ));
        }
    }
}

/// No daemon: what the last one left behind.
fn check_leftovers(paths: &Paths, answered: bool, problems: &mut Vec<Problem>) {
    let socket_exists = std::fs::symlink_metadata(paths.socket()).is_ok_and(|m| m.file_type().is_socket());
    if socket_exists && !answered {
        problems.push(problem(
            "socket_stale",
            Severity::Warning,
            format!("{} is left from a daemon that is gone", paths.socket().display()),
            "harmless: the next `hearth daemon start` removes it",
        ));
    }
    if let Some(info) = &read_info(paths) {
        problems.push(stale_info(&paths.info_file(), info.pid));
    }
}

fn stale_info(path: &Path, pid: u32) -> Problem {
    problem(
        "info_file_stale",
        Severity::Warning,
        format!("{} names pid {pid}, which does not hold the lock", path.display()),
        "harmless: the next start rewrites it",
    )
}

/// Creates and removes a file in `dir`.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".hearth-doctor-{}", std::process::id()));
    fsutil::create_new(&probe, 0o600)?;
    std::fs::remove_file(&probe)
}

fn process_name(pid: u32) -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_owned())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let out = std::process::Command::new("ps").args(["-o", "comm=", "-p", &pid.to_string()]).output().ok()?;
        let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Path::new(&name).file_name().map(|n| n.to_string_lossy().into_owned())
    }
}

fn check_service(loc: &Locations, problems: &mut Vec<Problem>) {
    let profile = loc.profile.resolve();
    let name = if profile == Profile::Launchd { "launchd" } else { "systemd" };
    if !profile.supported_here() {
        problems.push(problem(
            "profile_not_supported_on_host",
            Severity::Error,
            format!("the {name} profile does not run on this system"),
            "use --profile auto",
        ));
        return;
    }
    let (file, program) = match profile {
        Profile::Launchd => {
            let Ok(path) = loc.plist_path() else { return };
            let program = plist::Value::from_file(&path).ok().and_then(|v| {
                let args = v.as_dictionary()?.get("ProgramArguments")?.as_array()?.clone();
                args.first()?.as_string().map(PathBuf::from)
            });
            (path, program)
        }
        _ => {
            if which("systemctl").is_none() {
                problems.push(problem(
                    "profile_not_supported_on_host",
                    Severity::Error,
                    "systemctl is not installed, so a systemd user unit cannot run here".into(),
                    "run hearthd another way (apps start it on demand), or install systemd",
                ));
                return;
            }
            let Ok(dir) = loc.unit_dir() else { return };
            let path = dir.join(SYSTEMD_SERVICE);
            let program = std::fs::read_to_string(&path).ok().and_then(|t| exec_start_program(&t));
            if !path.exists() && dir.join(SYSTEMD_SOCKET).exists() {
                problems.push(problem(
                    "service_file_missing",
                    Severity::Error,
                    format!("{} exists but {} does not", dir.join(SYSTEMD_SOCKET).display(), path.display()),
                    "`hearth daemon install --socket-activation` writes both",
                ));
                return;
            }
            (path, program)
        }
    };
    if !file.exists() {
        problems.push(problem(
            "service_file_missing",
            Severity::Info,
            format!("no {name} service is installed ({} does not exist); apps start hearthd on demand", file.display()),
            "`hearth daemon install` runs hearthd at login",
        ));
        return;
    }
    match program {
        Some(program) if !program.exists() => problems.push(problem(
            "service_points_to_missing_executable",
            Severity::Error,
            format!("{} runs {}, which does not exist", file.display(), program.display()),
            "`hearth daemon install` again points it at this hearthd",
        )),
        Some(_) => {}
        None => problems.push(problem(
            "service_points_to_missing_executable",
            Severity::Error,
            format!("{} names no program to run", file.display()),
            "`hearth daemon install` rewrites it",
        )),
    }
}

/// The program of a unit's `ExecStart=` (first word, quotes removed).
fn exec_start_program(unit: &str) -> Option<PathBuf> {
    let value = unit.lines().find_map(|l| l.trim().strip_prefix("ExecStart="))?.trim();
    let value = value.trim_start_matches(['-', '@', ':', '+', '!']);
    let word = if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => break,
                c => out.push(c),
            }
        }
        out
    } else {
        value.split_whitespace().next()?.to_owned()
    };
    Some(PathBuf::from(word.replace("%%", "%")))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_parsing() {
        let unit = "[Service]\nExecStart=\"/a b/hearthd\" --state-dir /s\n";
        assert_eq!(exec_start_program(unit), Some(PathBuf::from("/a b/hearthd")));
        let unit = "ExecStart=/usr/bin/hearthd --x\n";
        assert_eq!(exec_start_program(unit), Some(PathBuf::from("/usr/bin/hearthd")));
        assert_eq!(exec_start_program("[Service]\n"), None);
    }
}
