//! `hearth daemon install` and `hearth daemon uninstall`: hearthd as a login
//! service (systemd user unit, or launchd agent).

use std::path::{Path, PathBuf};
use std::process::Command;

use hearth::client::find_daemon_binary;
use hearth::daemon::fsutil;
use hearth::unit_files::{self, LAUNCHD_LABEL, MARKER, SYSTEMD_SERVICE, SYSTEMD_SOCKET, ServiceSpec};
use hearth::units::HumanDuration;
use serde::Serialize;

use crate::error::{CliError, EXIT_OK};
use crate::{Ctx, output};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Profile {
    /// launchd on macOS, systemd elsewhere
    Auto,
    /// A systemd user unit
    Systemd,
    /// A launchd agent (macOS)
    Launchd,
}

impl Profile {
    pub(crate) fn resolve(self) -> Profile {
        match self {
            Profile::Auto if cfg!(target_os = "macos") => Profile::Launchd,
            Profile::Auto => Profile::Systemd,
            other => other,
        }
    }

    pub(crate) fn supported_here(self) -> bool {
        let launchd = self.resolve() == Profile::Launchd;
        (launchd && cfg!(target_os = "macos")) || (!launchd && cfg!(target_os = "linux"))
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct Locations {
    /// Which service manager
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) profile: Profile,
    /// Where systemd user units go [default: $XDG_CONFIG_HOME/systemd/user, else ~/.config/systemd/user]
    #[arg(long, value_name = "DIR")]
    pub(crate) unit_dir: Option<PathBuf>,
    /// Where launchd agents go [default: ~/Library/LaunchAgents]
    #[arg(long, value_name = "DIR")]
    pub(crate) agent_dir: Option<PathBuf>,
    /// The launchd agent's label
    #[arg(long, default_value = LAUNCHD_LABEL)]
    pub(crate) label: String,
}

impl Locations {
    pub(crate) fn unit_dir(&self) -> Result<PathBuf, CliError> {
        if let Some(dir) = &self.unit_dir {
            return Ok(dir.clone());
        }
        let config = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).filter(|p| p.is_absolute());
        match config.or_else(|| home().map(|h| h.join(".config"))) {
            Some(dir) => Ok(dir.join("systemd/user")),
            None => Err(CliError::new("no_home", "HOME is not set").hint("pass --unit-dir")),
        }
    }

    pub(crate) fn plist_path(&self) -> Result<PathBuf, CliError> {
        let dir = match &self.agent_dir {
            Some(dir) => dir.clone(),
            None => home()
                .map(|h| h.join("Library/LaunchAgents"))
                .ok_or_else(|| CliError::new("no_home", "HOME is not set").hint("pass --agent-dir"))?,
        };
        Ok(dir.join(format!("{}.plist", self.label)))
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    #[command(flatten)]
    locations: Locations,
    /// Let systemd own the socket: also write hearth.socket (systemd only)
    #[arg(long)]
    socket_activation: bool,
    /// Show what would be written and run; change nothing
    #[arg(long)]
    dry_run: bool,
    /// The hearthd to run [default: next to this hearth, else HEARTH_DAEMON_BIN, else on PATH]
    #[arg(long, value_name = "PATH")]
    hearthd: Option<PathBuf>,
    /// The systemd watchdog (WatchdogSec=); hearthd pings at half of it while it makes progress
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    watchdog: HumanDuration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UninstallArgs {
    #[command(flatten)]
    locations: Locations,
    /// Show what would be removed and run; change nothing
    #[arg(long)]
    dry_run: bool,
}

/// What install or uninstall did.
#[derive(Debug, Serialize)]
struct Outcome {
    profile: Profile,
    dry_run: bool,
    files: Vec<FileChange>,
    commands: Vec<Ran>,
    /// What the service manager says about the service afterwards.
    state: Option<String>,
    /// Commands to run by hand when no service manager answered.
    manual: Vec<String>,
}

impl Outcome {
    fn new(profile: Profile, dry_run: bool) -> Self {
        Self { profile, dry_run, files: Vec::new(), commands: Vec::new(), state: None, manual: Vec::new() }
    }
}

#[derive(Debug, Serialize)]
struct FileChange {
    path: PathBuf,
    /// `written`, `unchanged`, `removed`, `kept` (not ours) or `would_write`/`would_remove`.
    action: &'static str,
    /// The content written (install only).
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

#[derive(Debug, Serialize)]
struct Ran {
    command: String,
    ok: bool,
    output: String,
}

fn run(program: &str, args: &[&str]) -> Ran {
    let command = format!("{program} {}", args.join(" "));
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ran { command, ok: out.status.success(), output: text.trim().to_owned() }
        }
        Err(e) => Ran { command, ok: false, output: e.to_string() },
    }
}

fn hearthd_path(explicit: Option<&Path>) -> Result<PathBuf, CliError> {
    let bin = find_daemon_binary(explicit)?;
    let bin = std::fs::canonicalize(&bin)
        .map_err(|e| CliError::new("daemon_binary_not_found", format!("{}: {e}", bin.display())))?;
    Ok(bin)
}

/// Writes `content` to `path` atomically unless it already holds exactly that.
fn write_file(path: &Path, content: &[u8], mode: u32, dry_run: bool) -> Result<FileChange, CliError> {
    let text = Some(String::from_utf8_lossy(content).into_owned());
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(FileChange { path: path.to_owned(), action: "unchanged", content: text });
    }
    if dry_run {
        return Ok(FileChange { path: path.to_owned(), action: "would_write", content: text });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    fsutil::write_atomic(path, content, mode, true)
        .map_err(|e| CliError::new("install_failed", format!("cannot write {}: {e}", path.display())))?;
    Ok(FileChange { path: path.to_owned(), action: "written", content: text })
}

/// Removes `path` if install wrote it (it carries the marker).
fn remove_ours(path: &Path, dry_run: bool) -> Option<FileChange> {
    let text = std::fs::read_to_string(path).ok()?;
    if !text.contains(MARKER) {
        return Some(FileChange { path: path.to_owned(), action: "kept", content: None });
    }
    if dry_run {
        return Some(FileChange { path: path.to_owned(), action: "would_remove", content: None });
    }
    let action = if std::fs::remove_file(path).is_ok() { "removed" } else { "kept" };
    Some(FileChange { path: path.to_owned(), action, content: None })
}

/// Whether a systemd user manager answers.
fn systemd_user_manager() -> Result<(), String> {
    let ran = run("systemctl", &["--user", "show-environment"]);
    if ran.ok { Ok(()) } else { Err(ran.output) }
}

pub(crate) async fn install(ctx: &Ctx, args: &InstallArgs) -> Result<u8, CliError> {
    let profile = args.locations.profile.resolve();
    if !profile.supported_here() && !args.dry_run {
        return Err(profile_not_supported(profile));
    }
    let spec = ServiceSpec {
        hearthd: hearthd_path(args.hearthd.as_deref())?,
        state_dir: ctx.paths.state_dir().to_owned(),
        socket: ctx.paths.socket().to_owned(),
        watchdog: args.watchdog.0,
        socket_activation: args.socket_activation,
        label: args.locations.label.clone(),
    };
    let mut outcome = Outcome::new(profile, args.dry_run);
    match profile {
        Profile::Launchd => install_launchd(&spec, &args.locations, &mut outcome)?,
        _ => install_systemd(&spec, &args.locations, &mut outcome)?,
    }
    report(ctx, &outcome)
}

fn install_systemd(spec: &ServiceSpec, loc: &Locations, out: &mut Outcome) -> Result<(), CliError> {
    let dir = loc.unit_dir()?;
    let service_path = dir.join(SYSTEMD_SERVICE);
    let socket_path = dir.join(SYSTEMD_SOCKET);
    let service = out.files.len();
    out.files.push(write_file(&service_path, unit_files::systemd_service(spec).as_bytes(), 0o644, out.dry_run)?);
    if spec.socket_activation {
        out.files.push(write_file(&socket_path, unit_files::systemd_socket(spec).as_bytes(), 0o644, out.dry_run)?);
    } else if let Some(change) = remove_ours(&socket_path, out.dry_run) {
        // Installed with socket activation before: that socket unit goes.
        out.files.push(change);
    }
    let changed = out.files[service].action == "written";
    let unit = if spec.socket_activation { SYSTEMD_SOCKET } else { SYSTEMD_SERVICE };
    let mut steps: Vec<Vec<&str>> = vec![vec!["--user", "daemon-reload"]];
    if spec.socket_activation {
        steps.push(vec!["--user", "enable", "--now", SYSTEMD_SOCKET]);
        steps.push(vec!["--user", "enable", SYSTEMD_SERVICE]);
    } else {
        steps.push(vec!["--user", "enable", "--now", SYSTEMD_SERVICE]);
    }
    if changed {
        // A running service keeps its old binary until restarted.
        steps.push(vec!["--user", "try-restart", SYSTEMD_SERVICE]);
    }
    let manual: Vec<String> = steps.iter().map(|s| format!("systemctl {}", s.join(" "))).collect();
    if out.dry_run {
        out.manual = manual;
        return Ok(());
    }
    if let Err(why) = systemd_user_manager() {
        out.state = Some(format!("no systemd user manager answered ({why})"));
        out.manual = manual;
        return Ok(());
    }
    for step in &steps {
        let ran = run("systemctl", step);
        let ok = ran.ok;
        out.commands.push(ran);
        if !ok {
            return Err(CliError::new("install_failed", format!("`{}` failed", out.commands.last().unwrap().command))
                .hint("`systemctl --user status hearth` and `journalctl --user -u hearth` say why"));
        }
    }
    let state = run("systemctl", &["--user", "is-active", unit]);
    out.state = Some(format!("{unit}: {}", state.output));
    out.commands.push(state);
    Ok(())
}

fn install_launchd(spec: &ServiceSpec, loc: &Locations, out: &mut Outcome) -> Result<(), CliError> {
    let plist_path = loc.plist_path()?;
    let plist = unit_files::launchd_plist(spec).map_err(|e| CliError::new("install_failed", e.to_string()))?;
    out.files.push(write_file(&plist_path, &plist, 0o644, out.dry_run)?);
    let uid = hearth::sys::uid();
    let domain = format!("gui/{uid}");
    let target = format!("{domain}/{}", spec.label);
    let plist_arg = plist_path.display().to_string();
    // bootout first, so an upgrade never keeps the old binary loaded.
    let steps: Vec<Vec<String>> =
        vec![vec!["bootout".into(), target.clone()], vec!["bootstrap".into(), domain, plist_arg]];
    if out.dry_run {
        out.manual = steps.iter().map(|s| format!("launchctl {}", s.join(" "))).collect();
        return Ok(());
    }
    for (i, step) in steps.iter().enumerate() {
        let args: Vec<&str> = step.iter().map(String::as_str).collect();
        let ran = run("launchctl", &args);
        let ok = ran.ok;
        out.commands.push(ran);
        // bootout of an agent that is not loaded fails harmlessly.
        if !ok && i > 0 {
            return Err(CliError::new("install_failed", format!("`{}` failed", out.commands.last().unwrap().command))
                .hint("`launchctl print gui/$(id -u)/<label>` shows what launchd thinks"));
        }
    }
    let print = run("launchctl", &["print", &target]);
    let state = print
        .output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("state = ") || l.starts_with("pid = ") || l.starts_with("last exit code = "))
        .collect::<Vec<_>>()
        .join(", ");
    out.state = Some(if state.is_empty() { "launchd did not report a state".into() } else { state });
    out.commands.push(print);
    Ok(())
}

pub(crate) async fn uninstall(ctx: &Ctx, args: &UninstallArgs) -> Result<u8, CliError> {
    let profile = args.locations.profile.resolve();
    let mut out = Outcome::new(profile, args.dry_run);
    match profile {
        Profile::Launchd => {
            let plist_path = args.locations.plist_path()?;
            if profile.supported_here() {
                let uid = hearth::sys::uid();
                let target = format!("gui/{uid}/{}", args.locations.label);
                if args.dry_run {
                    out.manual.push(format!("launchctl bootout {target}"));
                } else if plist_path.exists() {
                    out.commands.push(run("launchctl", &["bootout", &target]));
                }
            }
            out.files.extend(remove_ours(&plist_path, args.dry_run));
        }
        _ => {
            let dir = args.locations.unit_dir()?;
            let units: Vec<PathBuf> = [SYSTEMD_SOCKET, SYSTEMD_SERVICE].iter().map(|u| dir.join(u)).collect();
            let ours: Vec<&str> = [SYSTEMD_SOCKET, SYSTEMD_SERVICE]
                .into_iter()
                .zip(&units)
                .filter(|(_, p)| std::fs::read_to_string(p).is_ok_and(|t| t.contains(MARKER)))
                .map(|(u, _)| u)
                .collect();
            let mut steps: Vec<Vec<&str>> = Vec::new();
            if !ours.is_empty() {
                let mut disable = vec!["--user", "disable", "--now"];
                disable.extend(&ours);
                steps.push(disable);
            }
            if args.dry_run {
                out.manual = steps.iter().map(|s| format!("systemctl {}", s.join(" "))).collect();
                out.manual.push("systemctl --user daemon-reload".into());
            } else if systemd_user_manager().is_ok() {
                for step in &steps {
                    out.commands.push(run("systemctl", step));
                }
            } else if !steps.is_empty() {
                out.state = Some("no systemd user manager answered; nothing to disable".into());
            }
            for unit in &units {
                out.files.extend(remove_ours(unit, args.dry_run));
            }
            if !args.dry_run && systemd_user_manager().is_ok() {
                out.commands.push(run("systemctl", &["--user", "daemon-reload"]));
            }
        }
    }
    report(ctx, &out)
}

fn profile_not_supported(profile: Profile) -> CliError {
    let name = match profile {
        Profile::Launchd => "launchd",
        _ => "systemd",
    };
    CliError::new("profile_not_supported_on_host", format!("the {name} profile does not run on this system"))
        .hint("use --profile auto, or --dry-run to only see the files")
}

fn report(ctx: &Ctx, out: &Outcome) -> Result<u8, CliError> {
    if ctx.json {
        output::json(out)?;
        return Ok(EXIT_OK);
    }
    for f in &out.files {
        outln!("{} {}", f.action.replace('_', " "), f.path.display());
        if out.dry_run
            && f.action == "would_write"
            && let Some(content) = &f.content
        {
            outln!("{}", content.trim_end().lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n"));
        }
    }
    for c in &out.commands {
        outln!("ran: {} ({})", c.command, if c.ok { "ok" } else { "failed" });
        if !c.ok && !c.output.is_empty() {
            outln!("    {}", c.output.replace('\n', "\n    "));
        }
    }
    if let Some(state) = &out.state {
        outln!("{state}");
    }
    if !out.manual.is_empty() {
        outln!("{}", if out.dry_run { "would run:" } else { "run these to finish:" });
        for m in &out.manual {
            outln!("  {m}");
        }
    }
    Ok(EXIT_OK)
}
