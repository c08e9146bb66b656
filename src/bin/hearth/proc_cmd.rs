//! `hearth proc …`: supervised processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use hearth::client::ProcessClient;
use hearth::daemon::process::settings::ProcessEntry;
use hearth::protocol::process::{
    ProcessBrief, ProcessChannel, ProcessCheck, ProcessDefinition, ProcessRequest, ProcessResponse, ProcessSource,
    ProcessStatus, RestartPolicy, Selector,
};
use hearth::units::{ByteSize, HumanDuration};
use serde_json::json;

use crate::error::{CliError, EXIT_OK};
use crate::pool_cmd::{shell_words, split_words};
use crate::{Ctx, output};

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub(crate) enum ProcCommand {
    /// Define a process and start it; the daemon keeps it running (across its own restarts too)
    #[command(after_help = ADD_HELP)]
    Add(Box<AddArgs>),
    /// List the processes: state, pid, uptime, restarts, last exit, check
    Ls,
    /// Show one process in full: definition, state, last exit, last check, log files
    Show(NameArg),
    /// Start processes and wait until they are ready
    Start(StartArgs),
    /// Stop processes (stop signal, then SIGKILL after the grace); they stay stopped until started
    Stop(SelectArgs),
    /// Restart processes: all at once, or one at a time with --rolling
    Restart(RestartArgs),
    /// Print a process's output (stdout and stderr, as captured)
    Logs(LogsArgs),
    /// Stop a process and remove its definition (and its logs)
    Rm(NameArg),
}

const ADD_HELP: &str = "\
The command after `--` runs without a shell (use `sh -c '...'` for pipes
or `&&`), in --cwd (default: this directory), with the daemon's environment
plus the variables of --env, HEARTH_PROCESS=NAME and, for checks,
HEARTH_HEARTBEAT_FILE or NOTIFY_SOCKET. Its stdout and stderr go to its log
(`hearth proc logs NAME`).

Readiness and liveness (at most one):
  --heartbeat FILE --stale 30s  ready once FILE is touched; restarted when it is older than --stale
  --check-cmd 'COMMAND'         ready once it exits 0; restarted after --check-failures failures
  --notify [--watchdog 30s]     ready at READY=1 on $NOTIFY_SOCKET (sd_notify); WATCHDOG=1 keeps it alive

Examples:
  hearth proc add worker --restart on-failure --heartbeat /tmp/worker.beat --stale 30s -- python3 worker.py
  hearth proc add web --label frontend --check-cmd 'curl -fsS http://127.0.0.1:8080/health' -- ./serve
  hearth proc add --file procs.toml      # [process.<name>] tables, as in config.toml";

#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// The process's name (letters, digits, '_' and '-')
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    name: Option<String>,
    /// Define every [process.<name>] table of this TOML file (same keys as config.toml)
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// When to start it again after it ends: always, on-failure or never [default: always]
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    restart: Option<RestartPolicy>,
    /// A file the process touches while it makes progress (relative: to this directory)
    #[arg(long, value_name = "FILE", group = "check", requires = "stale")]
    heartbeat: Option<PathBuf>,
    /// With --heartbeat: older than this, the process is restarted
    #[arg(long, value_name = "DURATION", requires = "heartbeat")]
    stale: Option<HumanDuration>,
    /// A command that exits 0 while the process is healthy
    #[arg(long, value_name = "COMMAND", group = "check")]
    check_cmd: Option<String>,
    /// With --check-cmd: how often it runs once ready [default: 10s]
    #[arg(long, value_name = "DURATION", requires = "check_cmd")]
    check_interval: Option<HumanDuration>,
    /// With --check-cmd: a run taking longer fails [default: 5s]
    #[arg(long, value_name = "DURATION", requires = "check_cmd")]
    check_timeout: Option<HumanDuration>,
    /// With --check-cmd: failures in a row that restart the process [default: 3]
    #[arg(long, value_name = "N", requires = "check_cmd")]
    check_failures: Option<u32>,
    /// The process tells its readiness with sd_notify (READY=1 on $NOTIFY_SOCKET)
    #[arg(long, group = "check")]
    notify: bool,
    /// With --notify: restarted without a WATCHDOG=1 for this long
    #[arg(long, value_name = "DURATION", requires = "notify")]
    watchdog: Option<HumanDuration>,
    /// With a check: restarted when not ready within this long [default: 1m]
    #[arg(long, value_name = "DURATION")]
    start_timeout: Option<HumanDuration>,
    /// Working directory [default: the current directory]
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// An environment variable (K=V); repeatable
    #[arg(long, short = 'e', value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// A label, to start, stop or restart a group with --label; repeatable
    #[arg(long, short = 'l', value_name = "LABEL")]
    label: Vec<String>,
    /// The signal that asks it to stop: TERM, INT, HUP, QUIT, USR1, USR2 or KILL [default: TERM]
    #[arg(long, value_name = "SIGNAL")]
    stop_signal: Option<String>,
    /// Time it has to stop before SIGKILL [default: 10s]
    #[arg(long, value_name = "DURATION")]
    stop_grace: Option<HumanDuration>,
    /// Restarts allowed within --restart-window; one more and it is failed [default: 5]
    #[arg(long, value_name = "N")]
    max_restarts: Option<u32>,
    /// The window of --max-restarts [default: 1m]
    #[arg(long, value_name = "DURATION")]
    restart_window: Option<HumanDuration>,
    /// The delay before the first restart after a failure; it doubles [default: 1s]
    #[arg(long, value_name = "DURATION")]
    backoff: Option<HumanDuration>,
    /// The longest delay between restarts [default: 1m]
    #[arg(long, value_name = "DURATION")]
    backoff_max: Option<HumanDuration>,
    /// Rotate its log at this size [default: the daemon's process.log_max, 10MiB]
    #[arg(long, value_name = "SIZE")]
    log_max: Option<ByteSize>,
    /// Rotated logs to keep [default: the daemon's process.log_keep, 3]
    #[arg(long, value_name = "N")]
    log_keep: Option<u32>,
    /// Define it, but do not start it
    #[arg(long)]
    no_start: bool,
    /// The program and its arguments (after `--`)
    #[arg(last = true, value_name = "CMD", required_unless_present = "file", conflicts_with = "file")]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct NameArg {
    /// The process
    name: String,
}

#[derive(Debug, clap::Args)]
#[group(id = "which", required = true, multiple = false)]
pub(crate) struct SelectArgs {
    /// The process
    name: Option<String>,
    /// Every process with this label
    #[arg(long, short = 'l', value_name = "LABEL")]
    label: Option<String>,
    /// Every process
    #[arg(long)]
    all: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Answer once started, without waiting for readiness
    #[arg(long)]
    no_wait: bool,
}

impl SelectArgs {
    fn selector(&self) -> Selector {
        Selector { name: self.name.clone(), label: self.label.clone(), all: self.all }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestartArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// One at a time, by name, each ready before the next is stopped; stop at the first that is not
    #[arg(long, conflicts_with = "no_wait")]
    rolling: bool,
    /// Answer once started, without waiting for readiness
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// The process
    name: String,
    /// Only the last N lines [default: all of the current log; 10 with --follow]
    #[arg(long, short = 'n', value_name = "N")]
    lines: Option<u32>,
    /// Keep printing what it writes (across its restarts), until interrupted
    #[arg(long, short = 'f')]
    follow: bool,
}

fn parse_policy(s: &str) -> Result<RestartPolicy, String> {
    match s {
        "always" => Ok(RestartPolicy::Always),
        "on-failure" | "on_failure" => Ok(RestartPolicy::OnFailure),
        "never" => Ok(RestartPolicy::Never),
        _ => Err("expected always, on-failure or never".into()),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "expected K=V".into())
}

pub(crate) async fn run(ctx: &Ctx, command: ProcCommand) -> Result<u8, CliError> {
    let mut client = ctx.connect_or_spawn::<ProcessChannel>().await?;
    let result = match command {
        ProcCommand::Add(args) => add(ctx, &mut client, *args).await,
        ProcCommand::Ls => ls(ctx, &mut client).await,
        ProcCommand::Show(args) => show(ctx, &mut client, &args.name).await,
        ProcCommand::Start(args) => {
            let done = client.start_with(args.select.selector(), !args.no_wait).await?;
            report(ctx, "started", &done)
        }
        ProcCommand::Stop(args) => {
            let done = client.stop(args.selector()).await?;
            report(ctx, "stopped", &done)
        }
        ProcCommand::Restart(args) => restart(ctx, &mut client, &args).await,
        ProcCommand::Logs(args) => logs(ctx, &mut client, &args).await,
        ProcCommand::Rm(args) => rm(ctx, &mut client, &args.name).await,
    };
    result.map_err(with_hint)
}

/// Adds what to do next to the process channel's errors.
fn with_hint(mut e: CliError) -> CliError {
    if e.hint.is_none() {
        e.hint = match e.code.as_str() {
            "unknown_process" => Some("`hearth proc ls` lists the processes; `hearth proc add` defines one"),
            "invalid_definition" => Some("`hearth proc add --help` describes each option"),
            "too_many_processes" => Some("`hearth proc rm NAME` removes one, or raise process.max_processes"),
            "not_runtime_defined" => Some("edit or remove its [process.<name>] table in config.toml instead"),
            "start_failed" | "restart_storm" | "not_ready" => {
                Some("`hearth proc show NAME` has its last exit and check; `hearth proc logs NAME` its output")
            }
            _ => None,
        }
        .map(str::to_owned);
    }
    e
}

async fn add(ctx: &Ctx, client: &mut ProcessClient, args: AddArgs) -> Result<u8, CliError> {
    let start = !args.no_start;
    let definitions = match &args.file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::new("io_error", format!("cannot read {}: {e}", file.display())))?;
            ProcessEntry::parse_file(&text)
                .map_err(|e| CliError::new("invalid_definition", format!("{}: {e}", file.display())))?
        }
        None => vec![definition_from_flags(args)?],
    };
    let mut results = Vec::new();
    for definition in definitions {
        let name = definition.name.clone();
        let defined = client.define_with(definition, start).await?;
        let brief = if start { client.start(name.as_str()).await?.remove(&name) } else { None };
        let state = brief.as_ref().map_or(defined.state, |b| b.state);
        if !ctx.json {
            let what = if defined.changed { "defined" } else { "unchanged" };
            let pid = brief.as_ref().and_then(|b| b.pid).map(|p| format!(" (pid {p})")).unwrap_or_default();
            match defined.source {
                ProcessSource::Config => outln!(
                    "process {name}: {what}, but config.toml defines {name} too and its definition stays in force; {state}{pid}"
                ),
                ProcessSource::Runtime => outln!("process {name}: {what}; {state}{pid}"),
            }
        }
        results.push(json!({
            "name": name, "source": defined.source, "changed": defined.changed, "state": state,
            "pid": brief.as_ref().and_then(|b| b.pid),
        }));
    }
    if ctx.json {
        output::json(&results)?;
    }
    Ok(EXIT_OK)
}

fn definition_from_flags(args: AddArgs) -> Result<ProcessDefinition, CliError> {
    let invalid = |m: String| CliError::new("invalid_definition", m);
    let here = std::env::current_dir().map_err(|e| CliError::new("io_error", format!("the current directory: {e}")))?;
    let cwd = absolute(&here, args.cwd.unwrap_or_else(|| here.clone()));
    let ms = |d: Option<HumanDuration>| d.map(|d| d.0.as_millis() as u64);
    let start_timeout_ms = ms(args.start_timeout);
    let check = if let Some(file) = args.heartbeat {
        let stale = args.stale.ok_or_else(|| invalid("--heartbeat needs --stale".into()))?;
        Some(ProcessCheck::Heartbeat {
            path: absolute(&here, file),
            stale_ms: stale.0.as_millis() as u64,
            start_timeout_ms,
        })
    } else if let Some(command) = args.check_cmd {
        Some(ProcessCheck::Command {
            argv: split_words(&command).map_err(|e| invalid(format!("--check-cmd: {e}")))?,
            interval_ms: ms(args.check_interval),
            timeout_ms: ms(args.check_timeout),
            failures: args.check_failures,
            start_timeout_ms,
        })
    } else if args.notify {
        Some(ProcessCheck::Notify { watchdog_ms: ms(args.watchdog), start_timeout_ms })
    } else if start_timeout_ms.is_some() {
        return Err(invalid("--start-timeout needs a check (--heartbeat, --check-cmd or --notify)".into()));
    } else {
        None
    };
    Ok(ProcessDefinition {
        name: args.name.unwrap_or_default(),
        argv: args.command,
        cwd: Some(cwd),
        env: args.env.into_iter().collect::<BTreeMap<_, _>>(),
        labels: args.label,
        restart: args.restart,
        backoff_base_ms: ms(args.backoff),
        backoff_max_ms: ms(args.backoff_max),
        max_restarts: args.max_restarts,
        restart_window_ms: ms(args.restart_window),
        stop_signal: args.stop_signal,
        stop_grace_ms: ms(args.stop_grace),
        check,
        log_max: args.log_max.map(|b| b.0),
        log_keep: args.log_keep,
    })
}

fn absolute(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() { path } else { base.join(path) }
}

async fn ls(ctx: &Ctx, client: &mut ProcessClient) -> Result<u8, CliError> {
    let report = client.status().await?;
    if ctx.json {
        output::json(&report)?;
        return Ok(EXIT_OK);
    }
    if report.processes.is_empty() {
        outln!("no processes; `hearth proc add NAME -- CMD` defines one");
        return Ok(EXIT_OK);
    }
    let mut rows = vec![["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "CHECK"].map(str::to_owned)];
    for p in &report.processes {
        rows.push([
            p.name.clone(),
            p.state.to_string(),
            p.pid.map_or("-".into(), |pid| pid.to_string()),
            p.uptime_ms.map_or("-".into(), |ms| output::duration(Duration::from_millis(ms))),
            p.restarts.to_string(),
            p.last_exit.as_ref().map_or("-".into(), |e| e.message.clone()),
            p.last_check.as_ref().map_or("-".into(), |c| if c.ok { "ok".into() } else { "failing".into() }),
        ]);
    }
    output::table(&rows);
    if report.truncated {
        outln!("(some processes were left out to fit one answer; `hearth proc show NAME` shows each)");
    }
    Ok(EXIT_OK)
}

async fn show(ctx: &Ctx, client: &mut ProcessClient, name: &str) -> Result<u8, CliError> {
    let p = client.process(name).await?;
    if ctx.json {
        output::json(&p)?;
        return Ok(EXIT_OK);
    }
    print_status(&p);
    Ok(EXIT_OK)
}

fn print_status(p: &ProcessStatus) {
    outln!("{}: {}", p.name, p.state);
    let mut rows: Vec<(&str, String)> = Vec::new();
    if let Some(def) = &p.definition {
        rows.push(("command", shell_words(&def.argv)));
        if let Some(cwd) = &def.cwd {
            rows.push(("cwd", cwd.display().to_string()));
        }
        if !def.labels.is_empty() {
            rows.push(("labels", def.labels.join(", ")));
        }
        rows.push(("restart", def.restart.map_or("always", RestartPolicy::as_str).to_owned()));
        if let Some(check) = &def.check {
            rows.push(("check", describe_check(check)));
        }
    }
    if let Some(source) = p.source {
        rows.push(("defined in", if source.as_str() == "config" { "config.toml".into() } else { "run time".into() }));
    }
    if let (Some(pid), Some(since)) = (p.pid, &p.started_at) {
        let up = p.uptime_ms.map(|ms| output::duration(Duration::from_millis(ms))).unwrap_or_default();
        rows.push(("pid", format!("{pid}, up {up} (since {since})")));
    }
    rows.push((
        "restarts",
        format!("{} since the daemon started, {} within the window", p.restarts, p.recent_restarts),
    ));
    if let (Some(delay), Some(at)) = (p.backoff_ms, &p.retry_at) {
        rows.push(("next start", format!("{at} (backing off {})", output::duration(Duration::from_millis(delay)))));
    }
    if let Some(e) = &p.last_exit {
        rows.push(("last exit", format!("{} at {}", e.message, e.at)));
    }
    if let Some(c) = &p.last_check {
        rows.push(("last check", format!("{} at {}: {}", if c.ok { "ok" } else { "failed" }, c.at, c.message)));
    }
    if let Some(status) = &p.notify_status {
        rows.push(("status", status.clone()));
    }
    if let Some(error) = &p.error {
        rows.push(("error", error.clone()));
    }
    rows.push(("log", p.log.display().to_string()));
    for rotated in &p.rotated_logs {
        rows.push(("older log", rotated.display().to_string()));
    }
    output::fields(&rows);
}

fn describe_check(check: &ProcessCheck) -> String {
    let d = |ms: u64| HumanDuration(Duration::from_millis(ms)).to_string();
    match check {
        ProcessCheck::Heartbeat { path, stale_ms, .. } => {
            format!("heartbeat {} (stale after {})", path.display(), d(*stale_ms))
        }
        ProcessCheck::Command { argv, interval_ms, .. } => {
            format!("command {} (every {})", shell_words(argv), d(interval_ms.unwrap_or(10_000)))
        }
        ProcessCheck::Notify { watchdog_ms: Some(ms), .. } => format!("notify (watchdog {})", d(*ms)),
        ProcessCheck::Notify { watchdog_ms: None, .. } => "notify".into(),
    }
}

fn report(ctx: &Ctx, what: &str, done: &BTreeMap<String, ProcessBrief>) -> Result<u8, CliError> {
    if ctx.json {
        output::json(done)?;
        return Ok(EXIT_OK);
    }
    if done.is_empty() {
        outln!("no process is defined");
    }
    for (name, b) in done {
        let pid = b.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        outln!("{name}: {what}; {}{pid}", b.state);
    }
    Ok(EXIT_OK)
}

async fn restart(ctx: &Ctx, client: &mut ProcessClient, args: &RestartArgs) -> Result<u8, CliError> {
    let select = args.select.selector();
    let done = if args.rolling {
        client.rolling_restart(select).await?
    } else {
        let request = ProcessRequest::Restart { select, rolling: false, no_wait: args.no_wait };
        match client.request(&request).await? {
            ProcessResponse::Restarted { processes } => processes,
            other => return Err(CliError::new("protocol_error", format!("expected restarted, got {other:?}"))),
        }
    };
    report(ctx, "restarted", &done)
}

async fn logs(ctx: &Ctx, client: &mut ProcessClient, args: &LogsArgs) -> Result<u8, CliError> {
    let lines = args.lines.or(args.follow.then_some(10));
    let json = ctx.json;
    let state = client
        .logs(&args.name, lines, args.follow, |data| {
            if json {
                outln!("{}", json!({ "output": String::from_utf8_lossy(data) }));
            } else {
                output::bytes_out(data);
            }
        })
        .await?;
    if json {
        outln!("{}", json!({ "end": true, "state": state }));
    }
    Ok(EXIT_OK)
}

async fn rm(ctx: &Ctx, client: &mut ProcessClient, name: &str) -> Result<u8, CliError> {
    let source = client.remove(name).await?;
    if ctx.json {
        output::json(&json!({ "name": name, "source": source }))?;
    } else {
        match source {
            Some(_) => outln!("process {name}: run-time definition removed; the one in config.toml applies"),
            None => outln!("process {name} stopped and removed"),
        }
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_in_both_spellings() {
        assert_eq!(parse_policy("on-failure"), Ok(RestartPolicy::OnFailure));
        assert_eq!(parse_policy("on_failure"), Ok(RestartPolicy::OnFailure));
        assert!(parse_policy("sometimes").is_err());
    }
}
