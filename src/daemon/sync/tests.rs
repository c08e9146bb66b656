//! The service over a real socket, in-process: a minimal accept loop
//! (handshake, admit, serve) in front of [`SyncService`], and the real
//! clients. The daemon's own router is tested by `tests/sync.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use automerge::ReadDoc;
use automerge::transaction::Transactable;
use serde_json::{Value, json};
use tokio::net::UnixListener;

use super::*;
use crate::client::{ConnectOptions, ReplicaClient, SyncClient, SyncEvent};
use crate::daemon::config::ServerConfig;
use crate::protocol::handshake::{Accepted, Channel, DaemonIdent, HandshakeReply};
use crate::protocol::sync::{PathElem, Revision, SyncRequest, SyncResponse, ValueKind, apply_patch};

struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    service: Arc<SyncService>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Harness {
    async fn start(config: SyncConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config).await
    }

    async fn start_in(dir: tempfile::TempDir, config: SyncConfig) -> Harness {
        let paths = Paths::new(dir.path().join("state"));
        crate::daemon::fsutil::create_private_dir(paths.state_dir()).unwrap();
        let socket = dir.path().join("s.sock");
        let _ = std::fs::remove_file(&socket);
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let server = ServerConfig::default();
        let service =
            SyncService::open(&config, &server, &paths, &stop, &tracker, &Arc::new(EventBus::new(64))).await.unwrap();
        let listener = UnixListener::bind(&socket).unwrap();
        let svc = service.clone();
        let stop2 = stop.clone();
        tracker.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop2.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let svc = svc.clone();
                tokio::spawn(async move {
                    let mut conn = Connection::new(stream, 1 << 24);
                    let Ok(Some(frame)) = conn.read_frame().await else { return };
                    let Ok(handshake) = crate::protocol::handshake::Handshake::parse(&frame) else { return };
                    let reply = HandshakeReply::Accepted(Accepted {
                        protocol: 1,
                        daemon: DaemonIdent { version: "0".into(), pid: 1 },
                        channel: Channel::Sync,
                        max_frame: 1 << 24,
                    });
                    conn.write_json(&reply).await.unwrap();
                    svc.serve_connection(conn, &handshake.params, Some("test".into()), None).await;
                });
            }
        });
        Harness { _dir: dir, socket, service, stop, tracker }
    }

    async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        self.service.stop_all().await;
        self.tracker.close();
        self.tracker.wait().await;
        self._dir
    }

    async fn view(&self, doc: &str) -> SyncClient {
        SyncClient::open(&self.socket, doc).await.unwrap()
    }

    async fn replica(&self, doc: &str) -> ReplicaClient {
        let mut r = ReplicaClient::open(&self.socket, doc).await.unwrap();
        within(r.sync()).await.unwrap();
        r
    }
}

fn k(s: &str) -> PathElem {
    PathElem::Key(s.into())
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("no answer within 20s")
}

fn replica_json(r: &ReplicaClient) -> Value {
    doc::to_json(r.doc(), &[], None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_writes_reach_watchers_and_replicas_and_back() {
    let h = Harness::start(SyncConfig::default()).await;
    let mut writer = h.view("notebook/a").await;
    let mut watcher = h.view("notebook/a").await;
    let mut replica = h.replica("notebook/a").await;
    let (_, start) = watcher.watch(&[], None).await.unwrap();
    let mut mirror = start.unwrap();
    assert_eq!(mirror, json!({}));

    writer.put(&[k("title")], json!("hello")).await.unwrap();
    writer.put_as(&[k("body")], json!("text"), ValueKind::Text).await.unwrap();
    loop {
        match within(watcher.next_event()).await.unwrap() {
            SyncEvent::Changed { patches, .. } => {
                for p in &patches {
                    apply_patch(&mut mirror, &[], p).unwrap();
                }
            }
            SyncEvent::Snapshot { value, .. } => mirror = value,
            SyncEvent::Presence(_) => {}
        }
        if mirror == json!({"title": "hello", "body": "text"}) {
            break;
        }
    }
    while replica_json(&replica) != mirror {
        within(replica.next_change()).await.unwrap();
    }
    // The replica writes; the view sees it.
    let body = match replica.doc().get(automerge::ROOT, "body").unwrap().unwrap() {
        (automerge::Value::Object(_), id) => id,
        other => panic!("{other:?}"),
    };
    replica.doc_mut().splice_text(&body, 4, 0, "!").unwrap();
    replica.doc_mut().commit();
    within(replica.push()).await.unwrap();
    let (_, value) = writer.get(&[]).await.unwrap();
    assert_eq!(value, json!({"title": "hello", "body": "text!"}));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_base_is_merged_and_reported() {
    let h = Harness::start(SyncConfig::default()).await;
    let mut a = h.view("d").await;
    let mut b = h.view("d").await;
    a.put(&[k("list")], json!([1, 2, 3])).await.unwrap();
    let (base, _) = b.get(&[]).await.unwrap();
    a.delete(&[k("list"), PathElem::Index(0)]).await.unwrap();
    // b inserts after what it saw as element 1 (the "2"): index 2 of its base.
    let op = serde_json::from_value(json!({"op": "insert", "path": ["list", 2], "values": ["x"]})).unwrap();
    let written = b.write(vec![op], Some(base)).await.unwrap();
    assert!(written.stale);
    assert_eq!(b.get(&[k("list")]).await.unwrap().1, json!([2, "x", 3]));
    let fresh = b.write(vec![], None).await.unwrap();
    assert!(!fresh.stale);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_restart_and_an_evicted_room_reloads() {
    let h = Harness::start(SyncConfig::default()).await;
    let mut a = h.view("notebook/x").await;
    for i in 0..20 {
        a.put(&[k("n")], json!(i)).await.unwrap();
    }
    let mut control = SyncClient::control(&ConnectOptions::new(&h.socket)).await.unwrap();
    assert_eq!(control.close("notebook/x").await.unwrap(), 1);
    let err = within(a.get(&[])).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::RoomClosed), "{err}");
    let mut b = h.view("notebook/x").await;
    assert_eq!(b.get(&[k("n")]).await.unwrap().1, json!(19));
    let docs = control.list(None).await.unwrap();
    assert!(docs.iter().any(|d| d.doc.as_str() == "notebook/x" && d.loaded), "{docs:?}");
    let dir = h.stop().await;
    let h = Harness::start_in(dir, SyncConfig::default()).await;
    let mut c = h.view("notebook/x").await;
    assert_eq!(c.get(&[k("n")]).await.unwrap().1, json!(19));
    assert!(c.get(&[]).await.unwrap().0.0.len() == 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_and_slows_no_one() {
    let timeout = crate::units::HumanDuration(Duration::from_secs(2));
    let h = Harness::start(SyncConfig { peer_write_timeout: timeout, ..SyncConfig::default() }).await;
    // The stalled peer watches, then never reads again.
    let mut stalled = h.view("busy").await;
    stalled.watch(&[], None).await.unwrap();
    let mut writer = h.view("busy").await;
    let mut fast = h.view("busy").await;
    let (_, value) = fast.watch(&[], None).await.unwrap();
    let mut mirror = value.unwrap();
    let big = "x".repeat(64 * 1024);
    // 200 writes of 64 KiB: far more than the stalled peer's socket holds.
    for i in 0..200 {
        let want = json!(format!("{i}{big}"));
        writer.put(&[k("v")], want.clone()).await.unwrap();
        while mirror.get("v") != Some(&want) {
            match within(fast.next_event()).await.unwrap() {
                SyncEvent::Changed { patches, .. } => {
                    for p in &patches {
                        apply_patch(&mut mirror, &[], p).unwrap();
                    }
                }
                SyncEvent::Snapshot { value, .. } => mirror = value,
                SyncEvent::Presence(_) => {}
            }
        }
    }
    // The stalled one is dropped with its own error once its timeout passes.
    within(async {
        while h.service.stats.peers_dropped_slow.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(writer.peers().await.unwrap().len(), 2);
    drop(stalled);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_the_connection_goes_on() {
    let config = SyncConfig { max_value_size: crate::units::ByteSize(1024), ..SyncConfig::default() };
    let h = Harness::start(config).await;
    let mut a = h.view("d").await;
    a.put(&[k("s")], json!("scalar")).await.unwrap();
    let code = |e: crate::client::ClientError| e.code().cloned();
    assert_eq!(code(a.put(&[k("nope"), k("x")], json!(1)).await.unwrap_err()), Some(ErrorCode::PathNotFound));
    assert_eq!(code(a.put(&[k("s"), k("x")], json!(1)).await.unwrap_err()), Some(ErrorCode::NotAContainer));
    assert_eq!(code(a.increment(&[k("s")], 1).await.unwrap_err()), Some(ErrorCode::WrongType));
    assert_eq!(code(a.put(&[k("big")], json!("x".repeat(2000))).await.unwrap_err()), Some(ErrorCode::ValueTooLarge));
    let unknown = Revision(vec!["0".repeat(64)]);
    assert_eq!(code(a.write(vec![], Some(unknown)).await.unwrap_err()), Some(ErrorCode::UnknownRevision));
    // Binary frames on a view connection.
    a.connection().write_raw(bytes::Bytes::from_static(&[0x42, 1, 2])).await.unwrap();
    a.connection().write_json(&SyncRequest::Peers).await.unwrap();
    let first: SyncResponse = serde_json::from_slice(&a.connection().read_frame().await.unwrap().unwrap()).unwrap();
    assert!(matches!(first, SyncResponse::Error(ref e) if e.code == ErrorCode::InvalidSyncMessage), "{first:?}");
    let second: SyncResponse = serde_json::from_slice(&a.connection().read_frame().await.unwrap().unwrap()).unwrap();
    assert!(matches!(second, SyncResponse::Peers { .. }), "{second:?}");
    // A replica sending garbage.
    let mut r = h.replica("d").await;
    r.client().connection().write_raw(bytes::Bytes::from_static(&[0x42, 0xff, 0xff, 0xff])).await.unwrap();
    let err = within(r.request(&SyncRequest::Peers)).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidSyncMessage), "{err}");
    assert_eq!(within(r.request(&SyncRequest::Peers)).await.map(|_| ()).ok(), Some(()));
    // Bad names are refused at the handshake.
    let refused = SyncClient::open(&h.socket, "../etc").await.unwrap_err();
    assert_eq!(refused.code(), Some(&ErrorCode::InvalidDocName));
    assert_eq!(a.get(&[k("s")]).await.unwrap().1, json!("scalar"));
    h.stop().await;
}

/// splitmix64
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_peers_converge_to_the_stored_document() {
    let h = Harness::start(SyncConfig::default()).await;
    let n = 8;
    let mut tasks = Vec::new();
    for p in 0..n {
        let socket = h.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(p as u64 + 1);
            if p % 2 == 0 {
                let mut v = SyncClient::open(&socket, "conv").await.unwrap();
                for _ in 0..20 {
                    let key = format!("k{}", rng.next() % 5);
                    v.put(&[PathElem::Key(key)], json!(rng.next() % 100)).await.unwrap();
                }
                None
            } else {
                let mut r = ReplicaClient::open(&socket, "conv").await.unwrap();
                r.sync().await.unwrap();
                for _ in 0..20 {
                    let key = format!("k{}", rng.next() % 5);
                    r.doc_mut().put(automerge::ROOT, key, (rng.next() % 100) as i64).unwrap();
                    r.doc_mut().commit();
                    r.push().await.unwrap();
                }
                Some(r)
            }
        }));
    }
    let mut replicas = Vec::new();
    for t in tasks {
        if let Some(r) = within(t).await.unwrap() {
            replicas.push(r);
        }
    }
    let mut view = h.view("conv").await;
    let (_, truth) = view.get(&[]).await.unwrap();
    for r in &mut replicas {
        within(r.sync()).await.unwrap();
        assert_eq!(replica_json(r), truth);
    }
    let dir = h.stop().await;
    let h = Harness::start_in(dir, SyncConfig::default()).await;
    let mut after = h.view("conv").await;
    assert_eq!(after.get(&[]).await.unwrap().1, truth);
    h.stop().await;
}
