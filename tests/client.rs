//! The client library: typed calls and errors against an in-process daemon
//! (the library's own `Daemon::start` on a real socket), and
//! `ensure_daemon_running` against the real `hearthd` binary.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{StateDir, hearthd_bin, wait_for};
use hearth::client::{self, ClientError, EnsureOptions, ReplacePolicy, StatusClient, ensure_daemon_running};
use hearth::connection::Connection;
use hearth::daemon::{Config, Daemon, Instance};
use hearth::paths::Paths;
use hearth::protocol::ErrorCode;
use hearth::protocol::handshake::{Accepted, DaemonIdent, Handshake, HandshakeReply};
use hearth::protocol::status::{StatusRequest, StatusResponse};
use tokio::sync::oneshot;

/// Starts a daemon in this process; returns a sender that stops it and the
/// task that finishes when it has stopped.
async fn in_process(paths: &Paths, config: Config) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut instance = Instance::acquire(paths.clone()).expect("lock");
    let listener = instance.bind().expect("bind");
    let daemon = Daemon::start(instance, listener, config).await.expect("start");
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(daemon.run_until(async {
        let _ = rx.await;
    }));
    (tx, task)
}

fn ensure_options(state: &StateDir) -> EnsureOptions {
    EnsureOptions::new(state.paths.clone()).daemon_bin(hearthd_bin()).timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn typed_calls_against_an_in_process_daemon() {
    let state = StateDir::new();
    let (stop, task) = in_process(&state.paths, Config::default()).await;
    let mut client = StatusClient::connect(state.socket()).await.unwrap();
    assert_eq!(client.daemon().pid, std::process::id());
    client.ping().await.unwrap();
    let report = client.status().await.unwrap();
    assert_eq!(report.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(report.connections.active, 1);
    assert_eq!(report.state_dir, state.state_dir());

    // A second connection sees two active.
    let mut other = StatusClient::connect(state.socket()).await.unwrap();
    assert_eq!(other.status().await.unwrap().connections.active, 2);
    drop(other);

    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!state.socket().exists());
    let err = StatusClient::connect(state.socket()).await.unwrap_err();
    assert!(err.is_not_running(), "{err:?}");
}

#[tokio::test]
async fn shutdown_request_stops_the_in_process_daemon() {
    let state = StateDir::new();
    let (_stop, task) = in_process(&state.paths, Config::default()).await;
    let mut client = StatusClient::connect(state.socket()).await.unwrap();
    let grace = client.shutdown(Some("client test".into())).await.unwrap();
    assert_eq!(grace, Duration::from_secs(10));
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("stopped").unwrap();
    assert!(
        hearth::daemon::lifecycle::singleton::probe_lock(&state.paths).unwrap()
            == hearth::daemon::lifecycle::singleton::LockState::Free
    );
}

#[tokio::test]
async fn errors_are_typed() {
    let state = StateDir::new();
    // Nothing runs.
    assert!(matches!(StatusClient::connect(state.socket()).await, Err(ClientError::NotRunning { .. })));

    let mut config = Config::default();
    config.server.max_connections = 1;
    let (stop, task) = in_process(&state.paths, config).await;
    let _held = StatusClient::connect(state.socket()).await.unwrap();
    match StatusClient::connect(state.socket()).await {
        Err(ClientError::Refused { error, daemon }) => {
            assert_eq!(error.code, ErrorCode::TooManyConnections);
            assert_eq!(daemon.unwrap().pid, std::process::id());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn ensure_spawns_once_then_connects() {
    let state = StateDir::new();
    let first = ensure_daemon_running(&ensure_options(&state)).await.unwrap();
    assert!(first.spawned);
    let second = ensure_daemon_running(&ensure_options(&state)).await.unwrap();
    assert!(!second.spawned);
    assert_eq!(first.daemon, second.daemon);
    let mut client = StatusClient::connect(state.socket()).await.unwrap();
    client.shutdown(None).await.unwrap();
    assert!(wait_for(Duration::from_secs(10), || !state.socket().exists()));
}

#[tokio::test]
async fn ensure_returns_the_daemons_own_startup_error() {
    let state = StateDir::new();
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    match ensure_daemon_running(&ensure_options(&state)).await {
        Err(ClientError::StartFailed { code, message }) => {
            assert_eq!(code, hearth::protocol::info::LaunchCode::StateDirInsecure);
            assert!(message.contains("writable by group or others"), "{message}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let options = ensure_options(&state).daemon_bin("/nonexistent/hearthd");
    assert!(matches!(ensure_daemon_running(&options).await, Err(ClientError::Spawn { .. })));
}

/// A daemon of an older release, speaking protocol 1: it answers handshakes
/// with version 0.0.1 and stops on `shutdown`.
async fn old_daemon(socket: std::path::PathBuf) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = Connection::new(stream, 1 << 20);
            let Ok(Some(frame)) = conn.read_frame().await else { continue };
            let hs = Handshake::parse(&frame).unwrap();
            let reply = HandshakeReply::Accepted(Accepted {
                protocol: 1,
                daemon: DaemonIdent { version: "0.0.1".into(), pid: 1 },
                channel: hs.channel,
                max_frame: 1 << 20,
            });
            conn.write_json(&reply).await.unwrap();
            while let Ok(Some(frame)) = conn.read_frame().await {
                let request: StatusRequest = serde_json::from_slice(&frame).unwrap();
                if let StatusRequest::Shutdown { .. } = request {
                    conn.write_json(&StatusResponse::ShuttingDown { grace_ms: 0, drain_ms: Some(0) }).await.unwrap();
                    std::fs::remove_file(&socket).unwrap();
                    return;
                }
                conn.write_json(&StatusResponse::Pong).await.unwrap();
            }
        }
    })
}

#[tokio::test]
async fn an_older_daemon_is_replaced_only_when_asked() {
    let state = StateDir::new();
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let old = old_daemon(state.socket().to_owned()).await;

    let kept = ensure_daemon_running(&ensure_options(&state)).await.unwrap();
    assert_eq!(kept.daemon.version, "0.0.1", "the default policy keeps what runs");
    assert!(!kept.spawned);

    let replaced = ensure_daemon_running(&ensure_options(&state).replace(ReplacePolicy::IfOlder)).await.unwrap();
    old.await.unwrap();
    assert_eq!(replaced.replaced.unwrap().version, "0.0.1");
    assert!(replaced.spawned);
    assert_eq!(replaced.daemon.version, env!("CARGO_PKG_VERSION"));
    let mut client = StatusClient::connect(state.socket()).await.unwrap();
    client.shutdown(None).await.unwrap();
}

#[test]
fn blocking_wrapper_works_without_a_runtime() {
    let state = StateDir::new();
    let ensured = client::blocking::ensure_daemon_running(&ensure_options(&state)).unwrap();
    let mut client = client::blocking::StatusClient::connect(state.socket()).unwrap();
    assert_eq!(client.daemon(), &ensured.daemon);
    client.ping().unwrap();
    assert_eq!(client.status().unwrap().pid, ensured.daemon.pid);
    let pong = client.call(async |c| c.request(&StatusRequest::Ping).await).unwrap();
    assert_eq!(pong, StatusResponse::Pong);
    client.shutdown(Some("blocking test".into())).unwrap();
    assert!(wait_for(Duration::from_secs(10), || !state.socket().exists()));
}
