//! `hearth queue …` and `hearth run`: the queue channel.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use hearth::client::{Notice, QueueClient};
use hearth::protocol::Channel;
use hearth::protocol::ErrorCode;
use hearth::protocol::event::{Event, EventData, EventFilter, EventKind, MAX_FILTER_ENTRIES};
use hearth::protocol::queue::{
    Attempt, Job, JobSpec, JobState, ListFilter, LogStream, LogsRequest, Outcome, QueueChannel, QueueStats, Selection,
};
use hearth::units::HumanDuration;
use serde_json::json;

use crate::error::{CliError, EXIT_OK};
use crate::progress::WaitBar;
use crate::watch::{EventFeed, reconnecting};
use crate::{Ctx, output};

/// Exit status of `queue wait` and `run` for a canceled job.
const EXIT_CANCELED: u8 = 125;
/// ... for a job whose last attempt timed out (as timeout(1)).
const EXIT_TIMED_OUT: u8 = 124;
/// ... for a job whose program could not be started (as a shell).
const EXIT_SPAWN_FAILED: u8 = 127;

pub(crate) const JOB_EXIT_HELP: &str = "\
Exit status: the job's own when it ended by exiting (0 when it succeeded),
128+N when a signal N ended it, 124 when its last attempt timed out, 125 when
it was canceled, 127 when its program could not be started; 1, 3 or 4 when
hearth itself failed (see `hearth --help`; --json tells the cases apart).";

const WAIT_EXIT_HELP: &str = "\
Exit status: the job's own when it ended by exiting (0 when it succeeded),
128+N when a signal N ended it, 124 when its last attempt timed out, 125 when
it was canceled, 127 when its program could not be started; 1, 3 or 4 when
hearth itself failed (see `hearth --help`; --json tells the cases apart).

With several jobs: 0 when every one succeeded, else the status above of the
first job named on the command line that did not. On a terminal, stderr shows
how many have ended.";

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub(crate) enum QueueCommand {
    /// Add a job and print its id at once (the daemon runs it in the background)
    Submit(SubmitArgs),
    /// Follow jobs until they end; exit with their exit status
    #[command(after_help = WAIT_EXIT_HELP)]
    Wait(WaitArgs),
    /// Jobs that are queued, running or waiting for a retry
    Ps(PageArgs),
    /// Jobs in any state, newest first
    List(ListArgs),
    /// One job and its attempts
    Show(IdArg),
    /// Print a job's captured output
    Logs(LogsArgs),
    /// Cancel a queued or running job (a running one's process group is killed)
    Cancel(IdArg),
    /// Counts per state and queue, backlog, throughput
    Stats,
    /// The dead-letter queue: jobs whose every attempt failed
    Dlq(PageArgs),
    /// Requeue dead jobs with a fresh budget of attempts
    Retry(SelectArgs),
    /// Delete dead jobs and their logs
    Purge(SelectArgs),
}

// What to run and how; shared by `queue submit` and `run` (a `//` comment:
// a doc comment would replace their help text).
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// Queue to add the job to
    #[arg(long, short = 'q', value_name = "QUEUE", default_value = "default")]
    queue: String,
    /// Higher runs first
    #[arg(long, short = 'p', value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Idempotency key: a second submit with the same key (in this queue,
    /// within the retention window) returns the first job
    #[arg(long, short = 'k', value_name = "KEY")]
    key: Option<String>,
    /// Attempts before the job is dead [default: the daemon's queue.max_attempts]
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Per-attempt timeout, e.g. 30s or 10m [default: the daemon's queue.timeout]
    #[arg(long, value_name = "DURATION")]
    timeout: Option<HumanDuration>,
    /// Backoff before the first retry; it doubles per retry, with jitter
    #[arg(long, value_name = "DURATION")]
    backoff_base: Option<HumanDuration>,
    /// The longest backoff
    #[arg(long, value_name = "DURATION")]
    backoff_cap: Option<HumanDuration>,
    /// Earliest start: RFC 3339 (2026-11-22T18:00:00Z, or with an offset) or ms since the epoch
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    at: Option<String>,
    /// Earliest start, from now
    #[arg(long, value_name = "DURATION")]
    delay: Option<HumanDuration>,
    /// Add an environment variable (K=V), or pass on this shell's value of K; repeatable
    #[arg(long, short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory [default: the current directory]
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Feed FILE (or `-` for this command's stdin) to the job's stdin; UTF-8 text
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// The program and its arguments (after `--`)
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct IdArg {
    /// The job id
    id: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WaitArgs {
    /// The job ids
    #[arg(required = true, value_name = "ID")]
    ids: Vec<u64>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PageArgs {
    /// Only this queue
    #[arg(long, short = 'q', value_name = "QUEUE")]
    queue: Option<String>,
    /// At most this many jobs (1 to 1000)
    #[arg(long, short = 'n', value_name = "N", default_value_t = 50)]
    limit: u32,
    /// Only jobs with a smaller id (the next page starts below the last id shown)
    #[arg(long, value_name = "ID")]
    before: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Only jobs in this state (queued, running, retry_wait, succeeded, dead, canceled); repeatable
    #[arg(long, short = 's', value_name = "STATE", value_parser = parse_state)]
    state: Vec<JobState>,
    #[command(flatten)]
    page: PageArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// The job id
    id: u64,
    /// Keep printing as the job writes, until it ends
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print stderr instead of stdout
    #[arg(long)]
    stderr: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SelectArgs {
    /// Dead jobs to act on
    #[arg(value_name = "ID", required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<u64>,
    /// Every dead job (of --queue, if given)
    #[arg(long)]
    all: bool,
    /// With --all: only this queue
    #[arg(long, short = 'q', value_name = "QUEUE", requires = "all")]
    queue: Option<String>,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::from_name(s).ok_or_else(|| {
        let names: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state {s:?}; one of {}", names.join(", "))
    })
}

pub(crate) async fn run(ctx: &Ctx, command: QueueCommand) -> Result<u8, CliError> {
    let mut client = ctx.connect_or_spawn::<QueueChannel>().await?;
    match command {
        QueueCommand::Submit(args) => submit(ctx, &mut client, args).await,
        QueueCommand::Wait(args) => match args.ids.as_slice() {
            [id] => wait(ctx, &mut client, *id).await,
            ids => wait_all(ctx, &mut client, ids).await,
        },
        QueueCommand::Ps(page) => {
            let states = vec![JobState::Queued, JobState::Running, JobState::RetryWait];
            list(ctx, &mut client, states, page).await
        }
        QueueCommand::List(args) => list(ctx, &mut client, args.state, args.page).await,
        QueueCommand::Dlq(page) => list(ctx, &mut client, vec![JobState::Dead], page).await,
        QueueCommand::Show(args) => show(ctx, &mut client, args.id).await,
        QueueCommand::Logs(args) => logs(&mut client, &args).await,
        QueueCommand::Cancel(args) => {
            let job = client.cancel(args.id).await?;
            if ctx.json {
                output::json(&job)?;
            } else {
                outln!("canceled job {}", job.id);
            }
            Ok(EXIT_OK)
        }
        QueueCommand::Stats => {
            let stats = client.stats().await?;
            if ctx.json {
                output::json(&stats)?;
            } else {
                print_stats(&stats);
            }
            Ok(EXIT_OK)
        }
        QueueCommand::Retry(args) => {
            let ids = client.retry(selection(args)).await?;
            report_ids(ctx, "requeued", &ids)
        }
        QueueCommand::Purge(args) => {
            let ids = client.purge(selection(args)).await?;
            report_ids(ctx, "purged", &ids)
        }
    }
}

fn selection(args: SelectArgs) -> Selection {
    Selection { ids: args.ids, all: args.all, queue: args.queue }
}

fn report_ids(ctx: &Ctx, verb: &str, ids: &[u64]) -> Result<u8, CliError> {
    if ctx.json {
        output::json(&json!({ "ids": ids }))?;
    } else {
        let shown: Vec<String> = ids.iter().map(u64::to_string).collect();
        let suffix = if ids.is_empty() { String::new() } else { format!(": {}", shown.join(" ")) };
        outln!("{verb} {} job{}{suffix}", ids.len(), if ids.len() == 1 { "" } else { "s" });
    }
    Ok(EXIT_OK)
}

/// The spec a submit sends: the command, this shell's cwd, and the options.
fn spec(args: SubmitArgs) -> Result<JobSpec, CliError> {
    let usage = |m: String| CliError::new("invalid_argument", m).exit(2);
    let mut env = BTreeMap::new();
    for item in &args.env {
        match item.split_once('=') {
            Some((k, v)) => env.insert(k.to_owned(), v.to_owned()),
            None => match std::env::var(item) {
                Ok(v) => env.insert(item.clone(), v),
                Err(_) => return Err(usage(format!("--env {item}: not set in this environment; write {item}=VALUE"))),
            },
        };
    }
    let cwd = match args.cwd {
        Some(dir) => std::path::absolute(&dir)?,
        None => std::env::current_dir()?,
    };
    let cwd = cwd.into_os_string().into_string().map_err(|_| usage("the working directory is not UTF-8".into()))?;
    let input = match args.input {
        None => None,
        Some(path) => {
            let bytes = if path.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&path).map_err(|e| CliError::new("io_error", format!("cannot read {path:?}: {e}")))?
            };
            let text = String::from_utf8(bytes).map_err(|_| usage("--input must be UTF-8 text".into()))?;
            Some(serde_json::Value::String(text))
        }
    };
    let run_at_ms = match (args.at, args.delay) {
        (Some(at), _) => Some(parse_time(&at).map_err(|m| usage(format!("--at {at}: {m}")))?),
        (None, Some(delay)) => Some(hearth::time::now_ms() + delay.0.as_millis() as u64),
        (None, None) => None,
    };
    let ms = |d: Option<HumanDuration>| d.map(|d| d.0.as_millis() as u64);
    Ok(JobSpec {
        argv: args.command,
        env,
        cwd: Some(cwd),
        input,
        queue: Some(args.queue),
        priority: Some(args.priority),
        key: args.key,
        max_attempts: args.max_attempts,
        timeout_ms: ms(args.timeout),
        backoff_base_ms: ms(args.backoff_base),
        backoff_cap_ms: ms(args.backoff_cap),
        run_at_ms,
    })
}

/// RFC 3339 (`2026-11-22T18:00:00Z`, `2026-11-22T19:00:00.5+01:00`) or ms since the epoch.
fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || "expected RFC 3339, like 2026-11-22T18:00:00Z, or ms since the epoch".to_string();
    let num = |a: usize, b: usize| s.get(a..b).and_then(|t| t.parse::<i64>().ok()).ok_or_else(bad);
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return Err(bad());
    }
    let (y, mo, d, h, mi, sec) = (num(0, 4)?, num(5, 7)?, num(8, 10)?, num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut rest = &s[19..];
    let mut frac_ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.chars().take_while(char::is_ascii_digit).count();
        let padded: String = frac[..digits].chars().chain("000".chars()).take(3).collect();
        frac_ms = padded.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let hh: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let mm: i64 = rest[4..6].parse().map_err(|_| bad())?;
            sign * (hh * 60 + mm)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + h * 3600 + mi * 60 + sec) - offset_min * 60) * 1000 + frac_ms;
    u64::try_from(ms).map_err(|_| "before 1970".to_string())
}

async fn submit(ctx: &Ctx, client: &mut QueueClient, args: SubmitArgs) -> Result<u8, CliError> {
    let submitted = client.submit(spec(args)?).await?;
    if ctx.json {
        output::json(&json!({ "job": submitted.job, "deduplicated": submitted.deduplicated }))?;
    } else {
        outln!("{}", submitted.job.id);
        if submitted.deduplicated {
            eprintln!(
                "hearth: the key matched job {} ({}); nothing new was queued",
                submitted.job.id, submitted.job.state
            );
        }
    }
    Ok(EXIT_OK)
}

/// The exit status `wait` and `run` end with (see [`JOB_EXIT_HELP`]).
pub(crate) fn job_exit_status(job: &Job, last: Option<&Attempt>) -> u8 {
    match job.state {
        JobState::Succeeded => 0,
        JobState::Canceled => EXIT_CANCELED,
        _ => match last.and_then(|a| a.outcome) {
            Some(Outcome::TimedOut) => EXIT_TIMED_OUT,
            Some(Outcome::SpawnFailed) => EXIT_SPAWN_FAILED,
            _ => match (job.exit_code, job.signal) {
                (Some(code), _) => u8::try_from(code).unwrap_or(1).max(1),
                (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
                (None, None) => 1,
            },
        },
    }
}

async fn wait(ctx: &Ctx, client: &mut QueueClient, id: u64) -> Result<u8, CliError> {
    let json = ctx.json;
    let job = client
        .wait(id, |job| {
            if json {
                outln!("{}", json!({ "job": job }));
            } else {
                eprintln!("job {}: {}", job.id, describe(job));
            }
        })
        .await?;
    let (_, attempts) = client.get(job.id).await?;
    Ok(job_exit_status(&job, attempts.last()))
}

/// Waits for several jobs, from the event stream: one subscription
/// whatever their number, a `get` for each job only when it ends.
async fn wait_all(ctx: &Ctx, client: &mut QueueClient, ids: &[u64]) -> Result<u8, CliError> {
    let mut unique = ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    // Named one by one while the daemon's filter takes them; past that,
    // every job_state event comes and this side picks.
    let filter = EventFilter {
        services: vec![Channel::Queue],
        kinds: vec![EventKind::JobState],
        ids: if unique.len() <= MAX_FILTER_ENTRIES { unique.iter().map(u64::to_string).collect() } else { vec![] },
    };
    // Subscribed before the jobs are read: an end between the two is not missed.
    let mut feed = EventFeed::start(&ctx.connect_options(), filter).await?;
    let total = unique.len() as u64;
    let bar = WaitBar::new("waiting", "jobs ended", total, ctx.json);
    let mut ended: BTreeMap<u64, u8> = BTreeMap::new();
    for &id in &unique {
        let (job, attempts) = client.get(id).await?;
        if job.state.is_final() {
            ended.insert(id, report_end(ctx, &bar, &job, attempts.last()));
        }
    }
    while (ended.len() as u64) < total {
        bar.set(ended.len() as u64, total);
        let check: Vec<u64> = match feed.next().await? {
            Notice::Event(Event { data: EventData::JobState { id, to, .. }, .. }) => {
                let wanted = unique.binary_search(&id).is_ok() && !ended.contains_key(&id);
                if wanted && to.is_none_or(JobState::is_final) { vec![id] } else { vec![] }
            }
            Notice::Event(_) => vec![],
            // Some ends may be among what was missed: ask about every job still waited for.
            Notice::Lagged { .. } => unique.iter().copied().filter(|id| !ended.contains_key(id)).collect(),
        };
        for id in check {
            match reconnecting(&ctx.connect_options(), client, async |c| c.get(id).await).await {
                Ok((job, attempts)) if job.state.is_final() => {
                    ended.insert(id, report_end(ctx, &bar, &job, attempts.last()));
                }
                Ok(_) => {}
                Err(e) if e.code() == Some(&ErrorCode::JobNotFound) => {
                    bar.println(&format!("hearth: job {id} was purged while waited for"));
                    ended.insert(id, crate::error::EXIT_FAILED);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    bar.finish();
    // The first job named that did not succeed decides.
    Ok(ids.iter().map(|id| ended[id]).find(|&status| status != 0).unwrap_or(EXIT_OK))
}

/// Says that a job ended; returns its exit status.
fn report_end(ctx: &Ctx, bar: &WaitBar, job: &Job, last: Option<&Attempt>) -> u8 {
    if ctx.json {
        outln!("{}", json!({ "job": job }));
    } else {
        bar.println(&format!("job {}: {}", job.id, describe(job)));
    }
    job_exit_status(job, last)
}

fn describe(job: &Job) -> String {
    match job.state {
        JobState::Running => format!("running (attempt {} of {})", job.attempts, job.max_attempts),
        JobState::RetryWait => format!(
            "waiting to retry ({} of {} attempts failed: {})",
            job.attempts,
            job.max_attempts,
            job.last_error.as_deref().unwrap_or("?")
        ),
        JobState::Dead => format!("dead: {}", job.last_error.as_deref().unwrap_or("?")),
        JobState::Succeeded => "succeeded".into(),
        other => other.to_string(),
    }
}

async fn list(ctx: &Ctx, client: &mut QueueClient, states: Vec<JobState>, page: PageArgs) -> Result<u8, CliError> {
    let filter = ListFilter { states, queue: page.queue, limit: Some(page.limit), before_id: page.before };
    let page = client.list(filter).await?;
    if ctx.json {
        output::json(&json!({ "jobs": page.jobs, "next_before_id": page.next_before_id }))?;
        return Ok(EXIT_OK);
    }
    if page.jobs.is_empty() {
        outln!("no jobs");
        return Ok(EXIT_OK);
    }
    let now = hearth::time::now_ms();
    let rows: Vec<[String; 7]> = page
        .jobs
        .iter()
        .map(|j| {
            [
                j.id.to_string(),
                j.state.to_string(),
                j.queue.clone(),
                j.priority.to_string(),
                format!("{}/{}", j.attempts, j.max_attempts),
                output::duration(Duration::from_millis(now.saturating_sub(j.created_at_ms))),
                shorten(&command_line(&j.argv), 60),
            ]
        })
        .collect();
    table(&["ID", "STATE", "QUEUE", "PRI", "TRIES", "AGE", "COMMAND"], &rows);
    if let Some(next) = page.next_before_id {
        outln!("(more: --before {next})");
    }
    Ok(EXIT_OK)
}

fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:w$}")).collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn time(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), hearth::time::rfc3339_ms)
}

async fn show(ctx: &Ctx, client: &mut QueueClient, id: u64) -> Result<u8, CliError> {
    let (job, attempts) = client.get(id).await?;
    if ctx.json {
        output::json(&json!({ "job": job, "attempts": attempts }))?;
        return Ok(EXIT_OK);
    }
    outln!("job {} ({})", job.id, job.state);
    let mut rows = vec![
        ("command", command_line(&job.argv)),
        ("queue", job.queue.clone()),
        ("priority", job.priority.to_string()),
        ("attempts", format!("{} of {}", job.attempts, job.max_attempts)),
        ("cwd", job.cwd.clone()),
        ("created", time(Some(job.created_at_ms))),
        ("run at", time(Some(job.run_at_ms))),
        ("finished", time(job.finished_at_ms)),
    ];
    if let Some(key) = &job.key {
        rows.push(("key", key.clone()));
    }
    if let Some(t) = job.timeout_ms {
        rows.push(("timeout", output::duration(Duration::from_millis(t))));
    }
    for (k, v) in &job.env {
        rows.push(("env", format!("{k}={v}")));
    }
    if job.input_bytes > 0 {
        rows.push(("input", format!("{} bytes", job.input_bytes)));
    }
    if let Some(e) = &job.last_error {
        rows.push(("last error", e.clone()));
    }
    output::fields(&rows);
    if !attempts.is_empty() {
        outln!();
        let rows: Vec<[String; 6]> = attempts
            .iter()
            .map(|a| {
                let took = a.ended_at_ms.map(|e| output::duration(Duration::from_millis(e - a.started_at_ms)));
                let mut error = a.error.clone().unwrap_or_default();
                if a.truncated {
                    error = format!("{error} (output truncated)").trim().to_owned();
                }
                if !a.counted {
                    error = format!("{error} (not counted)").trim().to_owned();
                }
                [
                    a.n.to_string(),
                    a.outcome.map_or("running", Outcome::as_str).to_owned(),
                    time(Some(a.started_at_ms)),
                    took.unwrap_or_else(|| "-".into()),
                    a.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    error,
                ]
            })
            .collect();
        table(&["#", "OUTCOME", "STARTED", "TOOK", "PID", "ERROR"], &rows);
    }
    Ok(EXIT_OK)
}

async fn logs(client: &mut QueueClient, args: &LogsArgs) -> Result<u8, CliError> {
    let stream = if args.stderr { LogStream::Stderr } else { LogStream::Stdout };
    let request = LogsRequest { id: args.id, stream, offset: 0, follow: args.follow };
    client.logs(request, output::bytes_out).await?;
    Ok(EXIT_OK)
}

fn print_stats(s: &QueueStats) {
    let counts = |c: &hearth::protocol::queue::StateCounts| {
        JobState::ALL.iter().map(|st| format!("{} {}", c.get(*st), st)).collect::<Vec<_>>().join(", ")
    };
    let mut rows = vec![
        ("jobs", counts(&s.states)),
        ("workers", format!("{} of {} busy", s.busy_workers, s.workers)),
        (
            "oldest waiting",
            s.oldest_queued_ms.map_or_else(|| "-".into(), |ms| output::duration(Duration::from_millis(ms))),
        ),
        ("finished", format!("{} in the last minute", s.finished_last_minute)),
        ("store", s.store.clone()),
    ];
    if let Some(r) = &s.store_recovered {
        rows.push(("RECOVERED", format!("a corrupt store was moved to {} ({})", r.moved_to, r.reason)));
    }
    output::fields(&rows);
    for (queue, c) in &s.queues {
        outln!("  queue {queue}: {}", counts(c));
    }
}

/// `hearth run`: submit, stream the job's output here, exit with its status.
pub(crate) async fn run_attached(ctx: &Ctx, args: SubmitArgs) -> Result<u8, CliError> {
    let mut client = ctx.connect_or_spawn::<QueueChannel>().await?;
    let submitted = client.submit(spec(args)?).await?;
    let id = submitted.job.id;
    let mut out_client = ctx.connect::<QueueChannel>().await?;
    let mut err_client = ctx.connect::<QueueChannel>().await?;
    let follow = |stream| LogsRequest { id, stream, offset: 0, follow: true };
    let stdout = out_client.logs(follow(LogStream::Stdout), |data| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(data).and_then(|()| out.flush());
    });
    let stderr = err_client.logs(follow(LogStream::Stderr), |data| {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(data).and_then(|()| err.flush());
    });
    let (a, b) = tokio::join!(stdout, stderr);
    a?;
    b?;
    let (job, attempts) = client.get(id).await?;
    if ctx.json {
        output::json(&json!({ "job": job, "attempts": attempts }))?;
    } else if job.state != JobState::Succeeded {
        eprintln!("hearth: job {id} {}", describe(&job));
    }
    Ok(job_exit_status(&job, attempts.last()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1795000000123"), Ok(1_795_000_000_123));
        assert_eq!(parse_time("2026-11-18T11:06:40.123Z"), Ok(1_795_000_000_123));
        assert_eq!(parse_time("2026-11-18T12:06:40.123+01:00"), Ok(1_795_000_000_123));
        assert_eq!(parse_time("2026-11-18T11:06:40Z"), Ok(1_795_000_000_000));
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        assert!(parse_time("tomorrow").is_err());
        assert!(parse_time("2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn command_lines_quote_what_needs_it() {
        let argv = ["sh", "-c", "echo 'hi there'"].map(String::from);
        assert_eq!(command_line(&argv), r#"sh -c 'echo '\''hi there'\'''"#);
    }
}
