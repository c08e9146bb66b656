//! The accept loop: accept, then spawn. It never awaits a peer.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use super::router;
use crate::daemon::{Shared, bump};
use crate::protocol::{ErrorCode, WireError};

pub(crate) async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                dispatch(stream, &shared);
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning;
                // connections that close free what the next accept needs.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                if is_resource_exhaustion(&e) {
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                } else {
                    tracing::debug!("accept failed: {e}");
                }
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Hands a new connection to its own task, or refuses it when the daemon is
/// at its connection cap. The daemon's own self-check is served even then:
/// a daemon whose slots are all taken is busy, not hung, and must keep its
/// heartbeat and watchdog (its descriptor comes from the daemon's reserve).
fn dispatch(stream: UnixStream, shared: &Arc<Shared>) {
    let permit = match shared.connection_slots.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) if from_this_process(&stream) && shared.self_check_pass.swap(false, Ordering::SeqCst) => None,
        Err(_) => {
            refuse_busy(stream, shared);
            return;
        }
    };
    let shared_conn = shared.clone();
    shared.tracker.spawn(async move {
        router::serve_connection(stream, shared_conn).await;
        drop(permit);
    });
}

/// Whether the peer is this process. Only the self-check's pass makes
/// that count: a daemon run inside an app (or a test) must not exempt the
/// app's own clients from the cap.
fn from_this_process(stream: &UnixStream) -> bool {
    stream.peer_cred().ok().and_then(|cred| cred.pid()) == i32::try_from(std::process::id()).ok()
}

/// Refuses a connection over the cap with `too_many_connections`.
fn refuse_busy(stream: UnixStream, shared: &Arc<Shared>) {
    bump(&shared.stats.refused_busy);
    let Ok(slot) = shared.refusal_slots.clone().try_acquire_owned() else {
        return; // Dropping the stream closes it.
    };
    let error = WireError::new(
        ErrorCode::TooManyConnections,
        format!("the daemon is serving its maximum of {} connections; retry later", shared.max_connections),
    );
    let daemon = Some(shared.ident.clone());
    shared.tracker.spawn(async move {
        router::refuse(stream, error, daemon).await;
        drop(slot);
    });
}
