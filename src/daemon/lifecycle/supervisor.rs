//! The daemon watching itself.
//!
//! Every tick the supervisor checks the daemon end to end: it connects to
//! its own socket and pings (proving the accept loop, the router and the
//! runtime all make progress), and asks every service to prove progress.
//! Only when that succeeds does it write `heartbeat.json` and send
//! `WATCHDOG=1`: a hung daemon stops both, so the service manager restarts
//! it and `hearth daemon status` reports the heartbeat as stale.
//!
//! The self-check also checks that the daemon answering on the socket is
//! this one (the pid in the handshake reply): a socket replaced by another
//! daemon's fails it.
//!
//! Between self-checks it watches the socket it bound: when the path no
//! longer leads to that socket (removed by hand, or with the directory
//! holding it, such as `$XDG_RUNTIME_DIR` at logout; or replaced by another
//! daemon's), no client can reach this daemon any more, so it stops, as
//! cleanly as on SIGTERM, and exits with its own status. The next client
//! that finds no daemon starts one, which binds the socket again; under a
//! service manager, the failure status restarts it. Rebinding in place is
//! not attempted: a removed runtime directory cannot be recreated by the
//! user, and another daemon's live socket is never taken over.
//!
//! It also runs idle exit: with `daemon.idle_timeout` set, a daemon with no
//! client connection, no queued or running job and no pool build for that
//! long stops itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::notify::Notifier;
use crate::client::{ConnectOptions, StatusClient};
use crate::daemon::{Shared, fsutil};
use crate::protocol::Channel;
use crate::protocol::event::EventData;
use crate::protocol::info::Heartbeat;
use crate::protocol::status::ConnectionStats;

/// The client name of the daemon's own self-check connections; they are
/// not counted in `connections.total`.
pub(crate) const SELF_CHECK_CLIENT: &str = "hearthd/self-check";

/// How often the bound socket's path is checked (one `lstat`).
const SOCKET_WATCH_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) async fn run(shared: Arc<Shared>, notifier: Notifier) {
    tokio::join!(supervise(shared.clone(), notifier), watch_socket(shared));
}

/// Stops the daemon once its socket path no longer leads to the socket it
/// bound (see the module docs). Returns at once for an adopted socket.
async fn watch_socket(shared: Arc<Shared>) {
    let Some(bound) = shared.bound_socket else { return };
    let mut warned = false;
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(SOCKET_WATCH_INTERVAL) => {}
        }
        let lost = match socket_lost(shared.paths.socket(), bound) {
            Ok(None) => {
                warned = false;
                continue;
            }
            Ok(Some(lost)) => lost,
            // Unreadable (a directory on the way changed modes): judged
            // again at the next look, and said once.
            Err(e) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(socket = %shared.paths.socket().display(), "cannot check the socket: {e}");
                }
                continue;
            }
        };
        tracing::error!(
            socket = %shared.paths.socket().display(),
            "{lost}: no client can reach this daemon; stopping so that the next client starts one that binds it again"
        );
        let _ = shared.socket_lost.set(lost.to_owned());
        shared.stop.cancel();
        return;
    }
}

/// What became of the socket at `path`, if it is no longer the one with
/// device and inode `bound`.
fn socket_lost(path: &std::path::Path, bound: (u64, u64)) -> std::io::Result<Option<&'static str>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == bound => Ok(None),
        Ok(_) => Ok(Some("the socket was replaced")),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            Ok(Some("the socket was removed"))
        }
        Err(e) => Err(e),
    }
}

async fn supervise(shared: Arc<Shared>, notifier: Notifier) {
    let heartbeat_every = shared.config.daemon.heartbeat_interval.0;
    let watchdog_every = notifier.watchdog().map(|w| w / 2);
    let idle_timeout = Some(shared.config.daemon.idle_timeout.0).filter(|d| !d.is_zero());
    // Tick often enough for the watchdog, the heartbeat and idle exit.
    let mut tick = heartbeat_every;
    if let Some(w) = watchdog_every {
        tick = tick.min(w);
    }
    if let Some(idle) = idle_timeout {
        tick = tick.min((idle / 4).max(Duration::from_millis(50)));
    }
    let mut cycle = 0u64;
    let mut last_heartbeat: Option<Instant> = None;
    let mut last_watchdog: Option<Instant> = None;
    let mut last_status = String::new();
    let mut last_health = shared.health().state;
    let mut idle_since: Option<Instant> = None;

    loop {
        // Idle is sampled before the self-check opens its own connection.
        let idle_now = shared.active_connections() == 0 && shared.services.busy().is_none() && !shared.is_draining();
        match self_check(&shared, tick.max(Duration::from_secs(1))).await {
            Ok(()) => {
                shared.set_self_check(None);
                cycle += 1;
                if watchdog_every.is_some_and(|w| last_watchdog.is_none_or(|t| t.elapsed() + tick / 2 >= w)) {
                    notifier.watchdog_ping();
                    last_watchdog = Some(Instant::now());
                }
                if last_heartbeat.is_none_or(|t| t.elapsed() + tick / 2 >= heartbeat_every) {
                    if let Err(e) = write_heartbeat(&shared, cycle) {
                        tracing::warn!("cannot write the heartbeat: {e}");
                    }
                    last_heartbeat = Some(Instant::now());
                }
                let status = shared.status_line();
                if status != last_status {
                    notifier.status(&status);
                    last_status = status;
                }
            }
            Err(e) => {
                tracing::warn!("self-check failed: {e}; withholding heartbeat and watchdog");
                shared.set_self_check(Some(e));
            }
        }

        let health = shared.health();
        if health.state != last_health {
            let codes = health.reasons.iter().map(|r| r.code.clone()).collect();
            let changed = EventData::HealthChanged { from: last_health, to: health.state, codes };
            shared.events.publish(Channel::Status, changed);
            last_health = health.state;
        }

        if let Some(idle) = idle_timeout {
            if idle_now {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= idle {
                    tracing::info!("idle for {}; exiting (daemon.idle_timeout)", crate::units::HumanDuration(idle));
                    shared.stop.cancel();
                    return;
                }
            } else {
                idle_since = None;
            }
        }

        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
    }
}

/// Proves the daemon makes progress: its own socket answers a ping, and
/// every service answers its probe, within `deadline`.
async fn self_check(shared: &Shared, deadline: Duration) -> Result<(), String> {
    let check = async {
        let options = ConnectOptions::new(shared.paths.socket()).client_name(SELF_CHECK_CLIENT).timeout(deadline);
        // The accept loop serves this one connection beyond the cap (see
        // `server::dispatch`); a pass it did not need is withdrawn.
        shared.self_check_pass.store(true, Ordering::SeqCst);
        let connected = StatusClient::connect_with(&options).await;
        shared.self_check_pass.store(false, Ordering::SeqCst);
        let mut client = connected.map_err(|e| format!("own socket: {e}"))?;
        let answering = client.daemon().pid;
        if answering != shared.ident.pid {
            return Err(format!(
                "own socket: another daemon (pid {answering}) answers on {}; clients reach it, not this one",
                shared.paths.socket().display()
            ));
        }
        client.ping().await.map_err(|e| format!("own socket: {e}"))?;
        shared.services.probe().await
    };
    match tokio::time::timeout(deadline, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("no progress within {deadline:?}")),
    }
}

fn write_heartbeat(shared: &Shared, cycle: u64) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let now = crate::time::now_ms();
    let heartbeat = Heartbeat {
        pid: shared.ident.pid,
        version: shared.ident.version.clone(),
        written_at: crate::time::rfc3339_ms(now),
        written_at_ms: now,
        cycle,
        interval_ms: shared.config.daemon.heartbeat_interval.0.as_millis() as u64,
        connections: ConnectionStats {
            active: shared.active_connections(),
            total: shared.stats.total.load(Relaxed),
            refused_busy: shared.stats.refused_busy.load(Relaxed),
            refused_peer: shared.stats.refused_peer.load(Relaxed),
        },
        health: shared.health(),
        services: shared.services.summaries(),
    };
    let mut json = serde_json::to_vec_pretty(&heartbeat).map_err(std::io::Error::other)?;
    json.push(b'\n');
    fsutil::write_atomic(&shared.paths.heartbeat_file(), &json, 0o600, false)
}
