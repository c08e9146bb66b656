//! `hearth pool …`: prewarmed resources.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use hearth::client::PoolClient;
use hearth::daemon::config::PoolEntry;
use hearth::protocol::Channel;
use hearth::protocol::event::EventFilter;
use hearth::protocol::pool::{
    DefinitionSource, Lease, LeaseId, PoolChannel, PoolDefinition, PoolKind, PoolRequest, PoolResponse, PoolStatus,
    ReleaseOutcome,
};
use hearth::units::HumanDuration;
use serde_json::json;

use crate::error::{CliError, EXIT_OK};
use crate::progress::WaitBar;
use crate::watch::{EventFeed, reconnecting};
use crate::{Ctx, output};

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub(crate) enum PoolCommand {
    /// Show each pool: ready, building, taken, target, warm-hit rate, build times, failures
    Status(StatusArgs),
    /// Take a resource and print its path (the lease goes to stderr; --json prints both)
    Take(TakeArgs),
    /// Give a resource back by its lease: removed, or reset for reuse with --reuse
    Release(ReleaseArgs),
    /// List the resources handed out and not released
    Leases(LeasesArgs),
    /// Set how many ready resources a pool keeps
    Warm(WarmArgs),
    /// Remove a pool's ready resources and set its target to 0
    Drain(NameArg),
    /// Define or redefine a pool at run time (kept across restarts)
    Define(Box<DefineArgs>),
    /// Remove a run-time definition
    Undefine(NameArg),
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// Only this pool
    name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TakeArgs {
    /// The pool
    name: String,
    /// How long to wait for an on-demand build when none is ready; 0s takes
    /// only a ready one [default: 10m]
    #[arg(long, value_name = "DURATION")]
    timeout: Option<HumanDuration>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReleaseArgs {
    /// The lease that `take` printed (never a path)
    lease: String,
    /// Reset the resource and put it back in its pool, when the pool has a
    /// reset command and needs one; else it is removed
    #[arg(long)]
    reuse: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LeasesArgs {
    /// Only this pool's
    name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WarmArgs {
    /// The pool
    name: String,
    /// Ready resources to keep (0 keeps none; takes then build on demand)
    #[arg(long, value_name = "N")]
    size: u32,
    /// Return only once that many are ready (a bar on a terminal shows how
    /// many are); a failed build ends the wait with `build_failed`
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (the builds go on)
    #[arg(long, value_name = "DURATION", default_value = "10m", requires = "wait")]
    timeout: HumanDuration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct NameArg {
    /// The pool
    name: String,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Commands are split into words like a shell would (quotes respected) and run
without a shell: use `sh -c '...'` for pipes or `&&`. `{path}` stands for the
resource's fresh, empty directory, which is also the command's working
directory and $HEARTH_POOL_PATH.

Examples:
  hearth pool define scratch --create \"sh -c 'mkdir -p {path}/work'\" --size 4
  hearth pool define ml --kind venv --package numpy --package pandas --size 1
  hearth pool define --file pools.toml      # [pool.<name>] tables, as in config.toml")]
pub(crate) struct DefineArgs {
    /// The pool's name (letters, digits, '_' and '-')
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    name: Option<String>,
    /// Define every [pool.<name>] table of this TOML file (same keys as config.toml)
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// `command` (built by --create) or `venv` [default: command with --create, else venv]
    #[arg(long, value_parser = parse_kind)]
    kind: Option<PoolKind>,
    /// The command that builds a resource in {path}
    #[arg(long, value_name = "COMMAND")]
    create: Option<String>,
    /// A command that exits 0 when a ready resource is still good
    #[arg(long, value_name = "COMMAND")]
    check: Option<String>,
    /// A command that makes a released resource reusable
    #[arg(long, value_name = "COMMAND")]
    reset: Option<String>,
    /// venv: a package to install (repeatable)
    #[arg(long = "package", value_name = "REQUIREMENT")]
    packages: Vec<String>,
    /// venv: the interpreter [default: python3]
    #[arg(long, value_name = "PROGRAM")]
    python: Option<String>,
    /// Ready resources to keep
    #[arg(long, value_name = "N", default_value_t = 0)]
    size: u32,
    /// Rebuild ready resources older than this
    #[arg(long, value_name = "DURATION")]
    max_age: Option<HumanDuration>,
    /// Kill a build that takes longer [default: 10m]
    #[arg(long, value_name = "DURATION")]
    create_timeout: Option<HumanDuration>,
    /// How often to check ready resources [default: 15m]
    #[arg(long, value_name = "DURATION")]
    check_interval: Option<HumanDuration>,
    /// An environment variable for the pool's commands (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

fn parse_kind(s: &str) -> Result<PoolKind, String> {
    match s {
        "command" => Ok(PoolKind::Command),
        "venv" => Ok(PoolKind::Venv),
        _ => Err("expected command or venv".into()),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "expected KEY=VALUE".into())
}

pub(crate) async fn run(ctx: &Ctx, command: PoolCommand) -> Result<u8, CliError> {
    let mut client = ctx.connect_or_spawn::<PoolChannel>().await?;
    let result = match command {
        PoolCommand::Status(args) => status(ctx, &mut client, args.name.as_deref()).await,
        PoolCommand::Take(args) => take(ctx, &mut client, &args).await,
        PoolCommand::Release(args) => release(ctx, &mut client, &args).await,
        PoolCommand::Leases(args) => leases(ctx, &mut client, args.name.as_deref()).await,
        PoolCommand::Warm(args) => warm(ctx, &mut client, &args).await,
        PoolCommand::Drain(args) => drain(ctx, &mut client, &args.name).await,
        PoolCommand::Define(args) => define(ctx, &mut client, *args).await,
        PoolCommand::Undefine(args) => undefine(ctx, &mut client, &args.name).await,
    };
    result.map_err(with_hint)
}

/// Adds what to do next to the pool channel's errors.
fn with_hint(mut e: CliError) -> CliError {
    if e.hint.is_none() {
        e.hint = match e.code.as_str() {
            "unknown_pool" => Some("`hearth pool status` lists the pools; `hearth pool define` adds one"),
            "unknown_lease" => Some("`hearth pool leases` lists the leases held; a released lease is void"),
            "take_timeout" => {
                Some("its build goes on (see `hearth pool status NAME`); retry, or give a longer --timeout")
            }
            "build_failed" => Some("`hearth pool status NAME` shows the last error and the path of its build log"),
            "invalid_definition" => Some("`hearth pool define --help` describes each field"),
            "not_runtime_defined" => Some("edit or remove its [pool.<name>] table in config.toml instead"),
            "too_many_pools" => Some("`hearth pool undefine NAME` removes a pool you no longer need"),
            _ => None,
        }
        .map(str::to_owned);
    }
    e
}

async fn status(ctx: &Ctx, client: &mut PoolClient, name: Option<&str>) -> Result<u8, CliError> {
    let report = match client.request(&PoolRequest::Status { pool: name.map(str::to_owned) }).await? {
        PoolResponse::Status(report) => report,
        other => return Err(CliError::new("protocol_error", format!("expected status, got {other:?}"))),
    };
    if ctx.json {
        output::json(&report)?;
        return Ok(EXIT_OK);
    }
    let mut rows = vec![
        ["POOL", "SOURCE", "TARGET", "READY", "BUILDING", "TAKEN", "WAITING", "WARM HITS", "MEAN BUILD", "FAILURES"]
            .map(str::to_owned),
    ];
    for p in &report.pools {
        rows.push([
            p.name.clone(),
            p.source.map_or("(gone)", DefinitionSource::as_str).to_owned(),
            p.target.to_string(),
            p.ready.to_string(),
            building(p),
            p.taken.to_string(),
            p.waiting.to_string(),
            p.warm_hit_rate.map_or("-".into(), |r| format!("{:.0}% of {}", r * 100.0, p.takes)),
            p.mean_build_ms.map_or("-".into(), |ms| output::duration(Duration::from_millis(ms))),
            p.failures.to_string(),
        ]);
    }
    print_table(&rows);
    outln!("builds running: {} of at most {}", report.builds_running, report.max_concurrent_builds);
    for p in &report.pools {
        if let Some(e) = &p.last_error {
            outln!();
            outln!("{}: last error at {}:", p.name, e.at);
            for line in e.message.lines() {
                outln!("  {line}");
            }
            if let Some(log) = &e.log {
                outln!("  log: {}", log.display());
            }
            if let (Some(backoff), Some(at)) = (p.backoff_ms, &p.retry_at) {
                outln!("  next build at {at} (backing off {})", output::duration(Duration::from_millis(backoff)));
            }
        }
    }
    if name.is_some()
        && let Some(commands) = report.pools.first().and_then(|p| p.commands.as_ref())
    {
        outln!();
        for step in &commands.create {
            outln!("  create: {}", shell_words(step));
        }
        if let Some(check) = &commands.check {
            outln!("  check:  {}", shell_words(check));
        }
        if let Some(reset) = &commands.reset {
            outln!("  reset:  {}", shell_words(reset));
        }
    }
    Ok(EXIT_OK)
}

fn building(p: &PoolStatus) -> String {
    let mut parts = vec![p.building.to_string()];
    if p.checking > 0 {
        parts.push(format!("+{} checking", p.checking));
    }
    if p.resetting > 0 {
        parts.push(format!("+{} resetting", p.resetting));
    }
    parts.join(" ")
}

async fn take(ctx: &Ctx, client: &mut PoolClient, args: &TakeArgs) -> Result<u8, CliError> {
    let lease = match args.timeout {
        Some(t) => client.take_within(&args.name, t.0).await?,
        None => client.take(&args.name).await?,
    };
    if ctx.json {
        output::json(&lease)?;
    } else {
        // The path alone on stdout, so that `cd "$(hearth pool take NAME)"` works.
        outln!("{}", lease.path.display());
        let how = if lease.warm {
            "warm".to_owned()
        } else {
            format!("built on demand in {}", output::duration(Duration::from_millis(lease.build_ms)))
        };
        eprintln!("lease {} ({how}); give it back with: hearth pool release {}", lease.lease, lease.lease);
    }
    Ok(EXIT_OK)
}

async fn release(ctx: &Ctx, client: &mut PoolClient, args: &ReleaseArgs) -> Result<u8, CliError> {
    let lease = LeaseId::parse(args.lease.trim()).map_err(|e| {
        CliError::new("invalid_lease", format!("{:?}: {e}", args.lease))
            .hint("`hearth pool leases` lists the leases held")
    })?;
    let released = client.release(&lease, args.reuse).await?;
    if ctx.json {
        output::json(&json!({ "lease": lease, "outcome": released.outcome, "reason": released.reason }))?;
    } else {
        match (released.outcome, released.reason) {
            (ReleaseOutcome::Resetting, _) => outln!("released; resetting it for reuse"),
            (ReleaseOutcome::Removed, Some(reason)) => outln!("released and removed ({reason})"),
            (ReleaseOutcome::Removed, None) => outln!("released and removed"),
        }
    }
    Ok(EXIT_OK)
}

async fn leases(ctx: &Ctx, client: &mut PoolClient, name: Option<&str>) -> Result<u8, CliError> {
    let leases = client.leases(name).await?;
    if ctx.json {
        output::json(&leases)?;
        return Ok(EXIT_OK);
    }
    if leases.is_empty() {
        outln!("no leases");
        return Ok(EXIT_OK);
    }
    let mut rows = vec![["LEASE", "POOL", "TAKEN", "HOLDER", "PATH"].map(str::to_owned)];
    for l in &leases {
        rows.push([l.lease.to_string(), l.pool.clone(), l.taken_at.clone(), holder(l), l.path.display().to_string()]);
    }
    print_table(&rows);
    Ok(EXIT_OK)
}

fn holder(l: &Lease) -> String {
    match (&l.holder, l.holder_pid) {
        (Some(name), Some(pid)) => format!("{name} (pid {pid})"),
        (Some(name), None) => name.clone(),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => "-".into(),
    }
}

async fn warm(ctx: &Ctx, client: &mut PoolClient, args: &WarmArgs) -> Result<u8, CliError> {
    // Subscribed before the target changes: no build's end is missed.
    let feed = if args.wait {
        let filter =
            EventFilter { services: vec![Channel::Pool], ids: vec![args.name.clone()], ..EventFilter::default() };
        Some(EventFeed::start(&ctx.connect_options(), filter).await?)
    } else {
        None
    };
    let previous = client.warm(&args.name, args.size).await?;
    let ready = match feed {
        Some(feed) => Some(wait_ready(ctx, client, args, feed).await?),
        None => None,
    };
    if ctx.json {
        output::json(&json!({ "pool": args.name, "target": args.size, "previous": previous, "ready": ready }))?;
    } else {
        let now = ready.map_or_else(String::new, |ready| format!("; {ready} ready now"));
        outln!("pool {} keeps {} ready (was {previous}){now}", args.name, args.size);
    }
    Ok(EXIT_OK)
}

/// Waits until the pool has its target ready; returns how many are.
async fn wait_ready(ctx: &Ctx, client: &mut PoolClient, args: &WarmArgs, mut feed: EventFeed) -> Result<u32, CliError> {
    let mut pool = client.pool_status(&args.name).await?;
    let failed_before = pool.failures_total;
    let bar = WaitBar::new(format!("warming {}", args.name), "ready", u64::from(pool.target), ctx.json);
    let deadline = tokio::time::Instant::now() + args.timeout.0;
    while pool.ready < pool.target {
        if pool.failures_total > failed_before {
            let why = pool.last_error.as_ref().map_or_else(String::new, |e| format!(": {}", e.message.trim()));
            return Err(CliError::new("build_failed", format!("a build of pool {} failed{why}", args.name)));
        }
        bar.set(u64::from(pool.ready), u64::from(pool.target));
        bar.note(format!("{} building", pool.building));
        tokio::select! {
            notice = feed.next() => { notice?; }
            // Counts that move without an event of this pool (a redefinition) are seen too.
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = tokio::time::sleep_until(deadline) => {
                return Err(CliError::new(
                    "timeout",
                    format!("{} of {} ready after {}", pool.ready, pool.target, args.timeout),
                )
                .hint("the builds go on: `hearth pool status NAME` shows them")
                .exit(crate::error::EXIT_TIMEOUT));
            }
        }
        pool = reconnecting(&ctx.connect_options(), client, async |c| c.pool_status(&args.name).await).await?;
    }
    bar.finish();
    Ok(pool.ready)
}

async fn drain(ctx: &Ctx, client: &mut PoolClient, name: &str) -> Result<u8, CliError> {
    let removed = client.drain(name).await?;
    if ctx.json {
        output::json(&json!({ "pool": name, "removed": removed }))?;
    } else {
        outln!("pool {name} drained: {removed} ready resources removed, target 0");
    }
    Ok(EXIT_OK)
}

async fn define(ctx: &Ctx, client: &mut PoolClient, args: DefineArgs) -> Result<u8, CliError> {
    let definitions = match &args.file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::new("io_error", format!("cannot read {}: {e}", file.display())))?;
            PoolEntry::parse_file(&text)
                .map_err(|e| CliError::new("invalid_definition", format!("{}: {e}", file.display())))?
        }
        None => vec![definition_from_flags(args)?],
    };
    let mut results = Vec::new();
    for definition in definitions {
        let name = definition.name.clone();
        let defined = client.define(definition).await?;
        if !ctx.json {
            let what = if defined.changed { "defined" } else { "unchanged" };
            match defined.source {
                DefinitionSource::Config => {
                    outln!("pool {name}: {what}, but config.toml defines {name} too and its definition stays in force");
                }
                _ => outln!("pool {name}: {what}"),
            }
        }
        results.push(json!({ "pool": name, "source": defined.source, "changed": defined.changed }));
    }
    if ctx.json {
        output::json(&results)?;
    }
    Ok(EXIT_OK)
}

fn definition_from_flags(args: DefineArgs) -> Result<PoolDefinition, CliError> {
    let words = |flag: &str, s: Option<String>| -> Result<Option<Vec<String>>, CliError> {
        s.map(|s| split_words(&s).map_err(|e| CliError::new("invalid_definition", format!("--{flag}: {e}"))))
            .transpose()
    };
    let ms = |d: Option<HumanDuration>| d.map(|d| d.0.as_millis() as u64);
    Ok(PoolDefinition {
        name: args.name.unwrap_or_default(),
        kind: args.kind,
        create: words("create", args.create)?,
        check: words("check", args.check)?,
        reset: words("reset", args.reset)?,
        packages: args.packages,
        python: args.python,
        size: args.size,
        max_age_ms: ms(args.max_age),
        create_timeout_ms: ms(args.create_timeout),
        check_interval_ms: ms(args.check_interval),
        env: args.env.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

async fn undefine(ctx: &Ctx, client: &mut PoolClient, name: &str) -> Result<u8, CliError> {
    let source = client.undefine(name).await?;
    if ctx.json {
        output::json(&json!({ "pool": name, "source": source }))?;
    } else {
        match source {
            Some(source) => outln!("pool {name}: run-time definition removed; the {} one applies", source.as_str()),
            None => outln!("pool {name} removed (resources still taken stay with their holders)"),
        }
    }
    Ok(EXIT_OK)
}

/// Splits a command line into words the way a POSIX shell does for quotes
/// and backslashes (no expansions, no operators).
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("a trailing backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("no command given".into());
    }
    Ok(words)
}

/// The inverse of `split_words`, for display.
pub(crate) fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./{}=:,+@%".contains(&b)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:w$}")).collect();
        outln!("{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        let w = |s: &str| split_words(s).unwrap();
        assert_eq!(w("sh -c 'mkdir -p {path} && touch {path}/x'"), ["sh", "-c", "mkdir -p {path} && touch {path}/x"]);
        assert_eq!(w(r#"echo "a \"b\" \n" c\ d ''"#), ["echo", r#"a "b" \n"#, "c d", ""]);
        assert_eq!(w("  python3   -m venv {path} "), ["python3", "-m", "venv", "{path}"]);
        assert!(split_words("sh -c 'oops").is_err());
        assert!(split_words("   ").is_err());
        let argv = w("sh -c 'it'\\''s {path}'");
        assert_eq!(argv[2], "it's {path}");
        assert_eq!(split_words(&shell_words(&argv)).unwrap(), argv);
    }
}
