//! `hearth ping`, `hearth status`, `hearth shutdown`: the status channel.

use std::time::{Duration, Instant};

use hearth::protocol::status::{StatusChannel, StatusReport};
use serde_json::json;

use crate::error::{CliError, EXIT_OK};
use crate::{Ctx, output};

#[derive(Debug, clap::Args)]
pub(crate) struct PingArgs {
    /// Pings to send on the one connection
    #[arg(long, short = 'c', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ShutdownArgs {
    /// Why; written to the daemon's log
    #[arg(long)]
    reason: Option<String>,
    /// Let running jobs and builds finish first (the daemon keeps serving meanwhile)
    #[arg(long)]
    drain: bool,
}

pub(crate) async fn ping(ctx: &Ctx, args: &PingArgs) -> Result<u8, CliError> {
    let mut client = ctx.connect::<StatusChannel>().await?;
    let mut rtts = Vec::with_capacity(args.count as usize);
    for _ in 0..args.count {
        let start = Instant::now();
        client.ping().await?;
        rtts.push(start.elapsed());
    }
    let daemon = client.daemon();
    let best = rtts.iter().min().copied().unwrap_or_default();
    if ctx.json {
        let rtt_us: Vec<u64> = rtts.iter().map(|d| d.as_micros() as u64).collect();
        output::json(&json!({ "pid": daemon.pid, "version": daemon.version, "rtt_us": rtt_us }))?;
    } else {
        let shown = if rtts.len() > 1 { format!("best of {}: ", rtts.len()) } else { String::new() };
        outln!("pong from hearthd {} (pid {}) in {shown}{}", daemon.version, daemon.pid, micros(best));
    }
    Ok(EXIT_OK)
}

fn micros(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) async fn status(ctx: &Ctx) -> Result<u8, CliError> {
    let mut client = ctx.connect::<StatusChannel>().await?;
    let report = client.status().await?;
    if ctx.json {
        output::json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(EXIT_OK)
}

pub(crate) fn print_report(r: &StatusReport) {
    outln!("hearthd {} (pid {}), protocol {}", r.version, r.pid, r.protocol);
    let mut rows = vec![
        ("health", r.health.state.as_str().to_owned()),
        ("uptime", format!("{} (since {})", output::duration(Duration::from_millis(r.uptime_ms)), r.started_at)),
        ("socket", r.socket.display().to_string()),
        ("state dir", r.state_dir.display().to_string()),
        (
            "connections",
            format!(
                "{} active of {}, {} since start (refused: {} busy, {} other user)",
                r.connections.active,
                r.limits.max_connections,
                r.connections.total,
                r.connections.refused_busy,
                r.connections.refused_peer
            ),
        ),
        ("channels", r.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")),
    ];
    rows.extend(service_rows(r));
    for reason in &r.health.reasons {
        rows.push(("reason", format!("{} [{}]: {}", reason.code, reason.severity.as_str(), reason.message)));
    }
    output::fields(&rows);
}

/// One row per service that runs, named as in `status`: `hearth top` shows
/// the same rows, so a service summarised here is summarised there too.
pub(crate) fn service_rows(r: &StatusReport) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    if let Some(pool) = &r.services.pool {
        let pools: Vec<String> = pool
            .pools
            .iter()
            .filter(|(_, p)| p.target + p.ready + p.building + p.taken > 0 || p.failures > 0)
            .map(|(name, p)| {
                let failing =
                    if p.failures > 0 { format!(", {} failed builds in a row", p.failures) } else { String::new() };
                format!("{name} {}/{} ready, {} taken{failing}", p.ready, p.target, p.taken)
            })
            .collect();
        let shown = if pools.is_empty() { "none in use".to_owned() } else { pools.join("; ") };
        rows.push(("pools", shown));
    }
    if let Some(q) = &r.services.queue {
        rows.push((
            "queue",
            format!("{} pending, {} running, {} dead; {} workers", q.pending, q.running, q.dead, q.workers),
        ));
    }
    if let Some(blob) = &r.services.blob {
        let budget = blob.budget_bytes.map_or_else(|| "no budget".into(), |b| format!("budget {}", output::bytes(b)));
        let http = blob.http_url.as_deref().unwrap_or("no HTTP");
        rows.push((
            "blob",
            format!(
                "{} blobs, {} ({budget}), {} pinned, {http}",
                blob.count,
                output::bytes(blob.bytes),
                blob.pinned_count
            ),
        ));
    }
    if let Some(sync) = &r.services.sync {
        rows.push((
            "sync",
            format!(
                "{} rooms, {} peers; {} writes, {} sync messages, {} commits since start",
                sync.rooms, sync.peers, sync.writes, sync.sync_messages, sync.commits
            ),
        ));
    }
    if let Some(procs) = &r.services.process {
        let listed: Vec<String> = procs
            .processes
            .iter()
            .map(|(name, p)| {
                let pid = p.pid.map(|pid| format!(" pid {pid}")).unwrap_or_default();
                let restarts = if p.restarts > 0 { format!(", {} restarts", p.restarts) } else { String::new() };
                format!("{name} {}{pid}{restarts}", p.state)
            })
            .collect();
        let shown = if listed.is_empty() { "none defined".to_owned() } else { listed.join("; ") };
        rows.push(("processes", shown));
    }
    rows
}

pub(crate) async fn shutdown(ctx: &Ctx, args: ShutdownArgs) -> Result<u8, CliError> {
    let mut client = ctx.connect::<StatusChannel>().await?;
    let pid = client.daemon().pid;
    let (grace, what) = if args.drain {
        (client.drain_and_shutdown(args.reason).await?, "draining, then shutting down")
    } else {
        (client.shutdown(args.reason).await?, "shutting down")
    };
    if ctx.json {
        output::json(&json!({ "pid": pid, "grace_ms": grace.as_millis() as u64, "drain": args.drain }))?;
    } else {
        outln!("hearthd (pid {pid}) is {what} (within {})", output::duration(grace));
    }
    Ok(EXIT_OK)
}
