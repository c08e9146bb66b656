//! `hearth`: the command line of the hearth daemon.
// The doc comments of the argument structs are clap's `--help` text, where
// `<state-dir>` is a placeholder, not an HTML tag.
#![allow(rustdoc::invalid_html_tags, reason = "these doc comments are --help text")]
#![deny(
    clippy::print_stdout,
    reason = "stdout is written through output::Stdout (`outln!`), which ends quietly on EPIPE"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Subcommand};
use hearth::client::{Client, ConnectOptions, EnsureOptions, ensure_daemon_running};
use hearth::paths::Paths;
use hearth::protocol::ChannelProtocol;

// First: its `outln!` is for every module below.
#[macro_use]
mod output;

mod blob_cmd;
mod daemon_cmd;
mod doctor_cmd;
mod error;
mod events_cmd;
mod install_cmd;
mod pool_cmd;
mod proc_cmd;
mod progress;
mod queue_cmd;
mod shell_cmd;
mod status_cmd;
mod stdin_read;
mod sync_cmd;
mod top_cmd;
mod watch;

use error::CliError;

const CLIENT_NAME: &str = concat!("hearth-cli/", env!("CARGO_PKG_VERSION"));

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  the command failed (the error's code is printed)
  2  usage error
  3  no daemon is running (ping, status, shutdown, events, top never start one)
  4  no answer within the deadline
  5  daemon stop/restart refused to signal a process it could not prove to be the daemon
  141  stdout was closed before everything was written (e.g. `| head`); nothing more is printed
  `hearth daemon status` has its own (see its --help).";

/// Talk to the hearth daemon: one per user, shared by every app, CLI and
/// script over one Unix socket.
///
/// `ping`, `status` and `shutdown` never start a daemon. The pool, queue,
/// blob, sync, settings and proc commands start one when none runs, unless --no-spawn.
#[derive(Debug, clap::Parser)]
#[command(name = "hearth", version, max_term_width = 100, after_help = EXIT_STATUS_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Global {
    /// State directory [default: $XDG_STATE_HOME/hearth, else ~/.local/state/hearth]
    #[arg(long, global = true, env = "HEARTH_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Socket path [default: <state-dir>/hearth.sock]
    #[arg(long, global = true, env = "HEARTH_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Print JSON (errors too, on stderr)
    #[arg(long, global = true)]
    json: bool,

    /// Never start the daemon; fail when none runs
    #[arg(long, global = true)]
    no_spawn: bool,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
enum Command {
    /// Check that the daemon answers (never starts one)
    Ping(status_cmd::PingArgs),
    /// Show the daemon's health, identity, connections and services (never starts one)
    Status,
    /// Ask the daemon to stop gracefully (never starts one)
    Shutdown(status_cmd::ShutdownArgs),
    /// Print what the daemon's services do as it happens: job states, pool
    /// builds and takes, blob puts, health changes (never starts one)
    Events(events_cmd::EventsArgs),
    /// Watch the daemon live in the terminal: health, connections, jobs,
    /// pools, throughput; cancel or retry jobs (never starts one)
    #[command(after_help = top_cmd::TOP_HELP)]
    Top,
    /// Start, stop and inspect the daemon process; install it as a service
    #[command(subcommand)]
    Daemon(daemon_cmd::DaemonCommand),
    /// Check a state directory and a service install; print each problem and its fix
    Doctor(doctor_cmd::DoctorArgs),
    /// Prewarmed resources (Python environments, scratch directories): take, release, warm, define
    #[command(subcommand)]
    Pool(pool_cmd::PoolCommand),
    /// The durable job queue: submit commands to run in the background, with retries
    #[command(subcommand)]
    Queue(queue_cmd::QueueCommand),
    /// Run a command through the queue and stream its output here; exit with its status
    #[command(after_help = queue_cmd::RUN_HELP)]
    Run(queue_cmd::SubmitArgs),
    /// The content-addressed blob store: put, get, list, pin, collect
    #[command(subcommand)]
    Blob(blob_cmd::BlobCommand),
    /// Live documents shared by every window: list, get, set, watch, inspect, close
    #[command(subcommand)]
    Sync(sync_cmd::SyncCommand),
    /// The shared settings document (`hearth sync … settings`): get, set, watch
    #[command(subcommand)]
    Settings(sync_cmd::SettingsCommand),
    /// Supervised processes: add, start, stop, restart (rolling), logs; kept alive by policy and checks
    #[command(subcommand)]
    Proc(proc_cmd::ProcCommand),
    /// Print a shell's tab-completion script (e.g. `hearth completions bash > ~/.local/share/bash-completion/completions/hearth`)
    Completions(shell_cmd::CompletionsArgs),
}

/// What every command needs: where the daemon is and how to print.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) paths: Paths,
    pub(crate) json: bool,
    pub(crate) no_spawn: bool,
}

impl Ctx {
    pub(crate) fn connect_options(&self) -> ConnectOptions {
        ConnectOptions::new(self.paths.socket()).client_name(CLIENT_NAME)
    }

    pub(crate) fn ensure_options(&self) -> EnsureOptions {
        EnsureOptions::new(self.paths.clone()).client_name(CLIENT_NAME)
    }

    /// Connects to a running daemon; never starts one.
    pub(crate) async fn connect<C: ChannelProtocol>(&self) -> Result<Client<C>, CliError> {
        Ok(Client::connect_with(&self.connect_options()).await?)
    }

    /// Connects, starting the daemon first when none runs (unless --no-spawn).
    pub(crate) async fn connect_or_spawn<C: ChannelProtocol>(&self) -> Result<Client<C>, CliError> {
        match Client::connect_with(&self.connect_options()).await {
            Err(e) if e.is_not_running() && !self.no_spawn => {
                ensure_daemon_running(&self.ensure_options()).await?;
                Ok(Client::connect_with(&self.connect_options()).await?)
            }
            other => Ok(other?),
        }
    }
}

fn main() -> ExitCode {
    let cli = parse_args();
    let json = cli.global.json;
    let result = match Paths::resolve(cli.global.state_dir, cli.global.socket) {
        Ok(paths) => {
            let ctx = Ctx { paths, json, no_spawn: cli.global.no_spawn };
            output::catching_stdout_end(|| run(&ctx, cli.command))
        }
        Err(e) => Err(CliError::new("state_dir_unusable", e.to_string())),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            output::error(&e, json);
            ExitCode::from(e.exit)
        }
    }
}

/// `Cli::parse()`, without freeing clap's tree on the way out.
///
/// clap builds a `Command` with an `Arg` for every flag of every subcommand
/// (the global flags are copied into each) to parse one command line. The
/// process ends right after the command runs, and giving those allocations
/// back one by one cost about a sixth of `hearth ping`'s own instructions;
/// the kernel takes them back at exit at no cost. A usage error exits here,
/// as `parse()` does.
fn parse_args() -> Cli {
    let mut command = Cli::command();
    let mut matches = command.get_matches_mut();
    let cli = Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut command).exit());
    std::mem::forget(matches);
    std::mem::forget(command);
    cli
}

fn run(ctx: &Ctx, command: Command) -> Result<u8, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new("internal", format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        match command {
            Command::Ping(args) => status_cmd::ping(ctx, &args).await,
            Command::Status => status_cmd::status(ctx).await,
            Command::Shutdown(args) => status_cmd::shutdown(ctx, args).await,
            Command::Events(args) => events_cmd::events(ctx, &args).await,
            Command::Top => top_cmd::top(ctx).await,
            Command::Daemon(command) => daemon_cmd::run(ctx, command).await,
            Command::Doctor(args) => doctor_cmd::doctor(ctx, &args).await,
            Command::Pool(command) => pool_cmd::run(ctx, command).await,
            Command::Queue(command) => queue_cmd::run(ctx, command).await,
            Command::Run(args) => queue_cmd::run_attached(ctx, args).await,
            Command::Blob(command) => blob_cmd::run(ctx, command).await,
            Command::Sync(command) => sync_cmd::run(ctx, command).await,
            Command::Settings(command) => sync_cmd::settings(ctx, command).await,
            Command::Proc(command) => proc_cmd::run(ctx, command).await,
            Command::Completions(args) => shell_cmd::completions(&args),
        }
    })
}
