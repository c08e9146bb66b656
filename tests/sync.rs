//! The sync channel on the real `hearthd`: raw frames, the client library
//! (view and replica mode together), and the CLI, on temp state directories.

mod common;

use std::io::Write;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use common::{Daemon, RawConn, StateDir, stdout, wait_for};
use hearth::client::{ReplicaClient, SyncClient, SyncEvent};
use hearth::protocol::sync::{PatchOp, PathElem, apply_patch};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

fn key(k: &str) -> PathElem {
    PathElem::Key(k.into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Runs `f` with a deadline that names what it waited for.
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f).await.unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
}

/// A raw connection joined to `doc` in `mode`; returns it and the `joined` frame.
fn raw_join(socket: &std::path::Path, doc: &str, mode: &str) -> (RawConn, Value) {
    let mut conn = RawConn::connect(socket);
    conn.send_json(&json!({"channel": "sync", "protocol": 1, "client": "tests/1", "doc": doc, "mode": mode}));
    let reply = conn.read_json().expect("handshake reply");
    assert_eq!(reply["ok"], json!(true), "{reply}");
    let joined = conn.read_json().expect("joined or error");
    (conn, joined)
}

/// The JSON of an Automerge document, as view mode shows it.
fn replica_json(doc: &automerge::AutoCommit) -> Value {
    fn obj(doc: &automerge::AutoCommit, id: &automerge::ObjId, ty: ObjType) -> Value {
        match ty {
            ObjType::Map | ObjType::Table => Value::Object(
                doc.keys(id).map(|k| (k.clone(), val(doc, doc.get(id, k.as_str()).unwrap().unwrap()))).collect(),
            ),
            ObjType::List => {
                Value::Array((0..doc.length(id)).map(|i| val(doc, doc.get(id, i).unwrap().unwrap())).collect())
            }
            ObjType::Text => Value::String(doc.text(id).unwrap()),
        }
    }
    fn val(doc: &automerge::AutoCommit, (v, id): (automerge::Value<'_>, automerge::ObjId)) -> Value {
        match v {
            automerge::Value::Object(ty) => obj(doc, &id, ty),
            automerge::Value::Scalar(s) => match s.as_ref() {
                automerge::ScalarValue::Int(n) => json!(n),
                automerge::ScalarValue::Uint(n) => json!(n),
                automerge::ScalarValue::Str(s) => json!(s.to_string()),
                automerge::ScalarValue::Boolean(b) => json!(b),
                automerge::ScalarValue::Counter(c) => json!(i64::from(c)),
                automerge::ScalarValue::F64(f) => json!(f),
                _ => Value::Null,
            },
        }
    }
    obj(doc, &ROOT, ObjType::Map)
}

#[test]
fn raw_frames_join_read_write_and_refuse_bad_input() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let (mut conn, joined) = raw_join(state.socket(), "notebook/raw", "view");
    assert_eq!(joined["type"], json!("joined"), "{joined}");
    assert_eq!(joined["doc"], json!("notebook/raw"));
    let written = conn.request(&json!({"type": "write", "ops": [{"op": "put", "path": ["a"], "value": [1, 2]}]}));
    assert_eq!(written["type"], json!("written"), "{written}");
    let value = conn.request(&json!({"type": "get"}));
    assert_eq!(value["value"], json!({"a": [1, 2]}));
    assert_eq!(value["revision"], written["revision"]);
    // Bad input: each gets its code, and the connection goes on.
    for (request, code) in [
        (json!({"type": "write", "ops": [{"op": "put", "path": ["a", "x"], "value": 1}]}), "wrong_type"),
        (json!({"type": "write", "ops": [{"op": "put", "path": ["a", 0, "x"], "value": 1}]}), "not_a_container"),
        (json!({"type": "write", "ops": [{"op": "delete", "path": ["zz"]}]}), "path_not_found"),
        (json!({"type": "write", "ops": [{"op": "increment", "path": ["a", 0], "by": 1}]}), "wrong_type"),
        (json!({"type": "write", "ops": [{"op": "teleport", "path": ["a"]}]}), "invalid_request"),
        (json!({"type": "write", "ops": [], "base": ["ab".repeat(32)]}), "unknown_revision"),
        (json!({"type": "inspect", "doc": "no/such"}), "doc_not_found"),
        (json!({"type": "inspect", "doc": "../x"}), "invalid_request"),
        (json!({"type": "frobnicate"}), "unknown_request"),
    ] {
        let answer = conn.request(&request);
        assert_eq!(answer["code"], json!(code), "{request} -> {answer}");
    }
    conn.send_frame(&[0x42, 0x01, 0x02]);
    let answer = conn.read_json().expect("an answer");
    assert_eq!(answer["code"], json!("invalid_sync_message"), "{answer}");
    assert_eq!(conn.request(&json!({"type": "get", "path": ["a", 1]}))["value"], json!(2));

    // A bad name or mode refuses the handshake itself.
    for (doc, mode, code) in
        [("../../etc/passwd", "view", "invalid_doc_name"), ("notebook/x", "both", "invalid_handshake")]
    {
        let mut bad = RawConn::connect(state.socket());
        bad.send_json(&json!({"channel": "sync", "protocol": 1, "doc": doc, "mode": mode}));
        let reply = bad.read_json().expect("a handshake reply");
        assert_eq!((reply["ok"].clone(), reply["error"]["code"].clone()), (json!(false), json!(code)), "{reply}");
        assert!(bad.is_closed());
    }
    // A replica gets the daemon's first sync message right after `joined`.
    let (mut replica, joined) = raw_join(state.socket(), "notebook/raw", "replica");
    assert_eq!(joined["mode"], json!("replica"));
    let message = replica.read_frame().expect("a sync message");
    assert!(matches!(message.first(), Some(0x42 | 0x43)), "first byte {:?}", message.first());
    // Garbage from a replica: typed error, then a fresh sync message, and it goes on.
    replica.send_frame(&[0x42, 0xff, 0xff]);
    let error: Value = serde_json::from_slice(&replica.read_frame().unwrap()).unwrap();
    assert_eq!(error["code"], json!("invalid_sync_message"), "{error}");
    let peers = loop {
        let frame = replica.request_frame(&json!({"type": "peers"}));
        if frame.first() == Some(&b'{') {
            break serde_json::from_slice::<Value>(&frame).unwrap();
        }
    };
    assert_eq!(peers["peers"].as_array().map(Vec::len), Some(2), "{peers}");
}

trait RequestFrame {
    fn request_frame(&mut self, value: &Value) -> Vec<u8>;
}

impl RequestFrame for RawConn {
    /// Sends `value` unless the last call left frames to read; returns the next frame.
    fn request_frame(&mut self, value: &Value) -> Vec<u8> {
        self.send_json(value);
        self.read_frame().expect("a frame")
    }
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

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `peers` peers, half view and half replica, make random concurrent edits
/// of maps, a list and a text; then every peer holds the same JSON, and the
/// daemon, restarted, holds it too.
fn converge(peers: usize, edits: usize) {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let socket = state.socket().to_owned();
    let rt = runtime();
    let doc = format!("converge/{peers}");
    let truth = rt.block_on(async {
        let mut setup = SyncClient::open(&socket, &doc).await.unwrap();
        setup
            .write(
                vec![
                    PatchOp::Put { path: vec![key("list")], value: json!([]), kind: None },
                    PatchOp::Put {
                        path: vec![key("text")],
                        value: json!(""),
                        kind: Some(hearth::protocol::sync::ValueKind::Text),
                    },
                ],
                None,
            )
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for p in 0..peers {
            let socket = socket.clone();
            let doc = doc.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(p as u64 * 7919 + 1);
                if p % 2 == 0 {
                    let mut view = SyncClient::open(&socket, &doc).await.unwrap();
                    let (_, value) = view.watch(&[], None).await.unwrap();
                    let mirror = value.unwrap();
                    for _ in 0..edits {
                        let op = match rng.below(4) {
                            0 => PatchOp::Put {
                                path: vec![key(&format!("k{}", rng.below(6)))],
                                value: json!(rng.below(1000)),
                                kind: None,
                            },
                            1 => {
                                PatchOp::Insert { path: vec![key("list"), PathElem::Index(0)], values: vec![json!(p)] }
                            }
                            2 => {
                                PatchOp::Splice { path: vec![key("text")], index: 0, delete: 0, insert: format!("{p}") }
                            }
                            _ => PatchOp::Put {
                                path: vec![key(&format!("m{p}"))],
                                value: json!({"n": rng.below(9)}),
                                kind: None,
                            },
                        };
                        view.write(vec![op], None).await.unwrap();
                    }
                    (Some((view, mirror)), None)
                } else {
                    let mut replica = ReplicaClient::open(&socket, &doc).await.unwrap();
                    within("a replica's first sync", replica.sync()).await.unwrap();
                    for _ in 0..edits {
                        let d = replica.doc_mut();
                        match rng.below(3) {
                            0 => {
                                d.put(ROOT, format!("k{}", rng.below(6)), rng.below(1000) as i64).unwrap();
                            }
                            1 => {
                                let list = d.get(ROOT, "list").unwrap().unwrap().1;
                                d.insert(&list, 0, p as i64).unwrap();
                            }
                            _ => {
                                let text = d.get(ROOT, "text").unwrap().unwrap().1;
                                d.splice_text(&text, 0, 0, &format!("{p}")).unwrap();
                            }
                        }
                        d.commit();
                        within("a replica's push", replica.push()).await.unwrap();
                    }
                    (None, Some(replica))
                }
            }));
        }
        let mut views = Vec::new();
        let mut replicas = Vec::new();
        for task in tasks {
            let (view, replica) = within("a peer's edits", task).await.unwrap();
            views.extend(view);
            replicas.extend(replica);
        }
        let (_, truth) = setup.get(&[]).await.unwrap();
        for replica in &mut replicas {
            within("a replica's final sync", replica.sync()).await.unwrap();
            assert_eq!(replica_json(replica.doc()), truth, "a replica differs");
        }
        // Every view's copy, kept by its events alone, reaches the same value.
        let (revision, _) = setup.get(&[]).await.unwrap();
        for (view, mirror) in &mut views {
            let mut at = None;
            while at.as_ref() != Some(&revision) {
                match within("a view's events to catch up", view.next_event()).await.unwrap() {
                    SyncEvent::Changed { patches, revision, .. } => {
                        for patch in &patches {
                            apply_patch(mirror, &[], patch).unwrap();
                        }
                        at = Some(revision);
                    }
                    SyncEvent::Snapshot { value, revision } => {
                        *mirror = value;
                        at = Some(revision);
                    }
                    SyncEvent::Presence(_) => {}
                }
            }
            assert_eq!(*mirror, truth, "a view's patched copy differs");
            assert_eq!(view.get(&[]).await.unwrap().1, truth);
        }
        let list = truth["list"].as_array().unwrap().len();
        let text = truth["text"].as_str().unwrap().len();
        assert!(list + text > 0 && list + text <= peers * edits, "list {list} text {text}");
        truth
    });
    daemon.stop();
    drop(daemon);
    let _again = state.start(&[]);
    let after = rt.block_on(async { SyncClient::open(&socket, &doc).await.unwrap().get(&[]).await.unwrap().1 });
    assert_eq!(after, truth, "the stored document differs after a restart");
}

#[test]
fn two_peers_converge() {
    converge(2, 40);
}

#[test]
fn eight_peers_converge() {
    converge(8, 20);
}

#[test]
fn thirty_two_peers_converge() {
    converge(32, 8);
}

#[test]
fn kill_9_during_a_burst_loses_no_acknowledged_write() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let socket = state.socket().to_owned();
    let rt = runtime();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(usize, u64)>::new()));
    let pid = daemon.pid();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..8usize {
            let socket = socket.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = SyncClient::open(&socket, "burst").await.unwrap();
                for n in 0u64.. {
                    let op = PatchOp::Put { path: vec![key(&format!("w{w}"))], value: json!(n), kind: None };
                    if client.write(vec![op], None).await.is_err() {
                        return;
                    }
                    acked.lock().unwrap().push((w, n));
                }
            }));
        }
        // Kill once every writer has had some writes acknowledged.
        within("acknowledged writes from every writer", async {
            loop {
                let seen: std::collections::HashSet<usize> = acked.lock().unwrap().iter().map(|(w, _)| *w).collect();
                if seen.len() == 8 && acked.lock().unwrap().len() > 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        // SAFETY: kill has no memory-safety preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        for task in tasks {
            within("writers to notice the kill", task).await.unwrap();
        }
    });
    daemon.kill9();
    let _again = state.start(&[]);
    let value = rt.block_on(async { SyncClient::open(&socket, "burst").await.unwrap().get(&[]).await.unwrap().1 });
    let acked = acked.lock().unwrap();
    for w in 0..8 {
        let last = acked.iter().filter(|(x, _)| *x == w).map(|(_, n)| *n).max().unwrap();
        let stored = value[format!("w{w}")].as_u64().unwrap_or_else(|| panic!("writer {w} lost: {value}"));
        assert!(stored >= last, "writer {w}: acknowledged {last}, stored {stored}");
    }
}

#[test]
fn a_stalled_peer_does_not_slow_the_others_and_is_dropped() {
    let state = StateDir::new();
    state.write_config("[sync]\npeer_write_timeout = \"2s\"\n");
    let _daemon = state.start(&[]);
    let socket = state.socket().to_owned();
    // The stalled peer: a raw socket that watches, then never reads.
    let (mut stalled, _) = raw_join(&socket, "stall", "view");
    stalled.send_json(&json!({"type": "watch"}));
    let rt = runtime();
    rt.block_on(async {
        let mut writer = SyncClient::open(&socket, "stall").await.unwrap();
        let mut reader = SyncClient::open(&socket, "stall").await.unwrap();
        let (_, value) = reader.watch(&[], None).await.unwrap();
        let mut mirror = value.unwrap();
        let big = "x".repeat(32 * 1024);
        // 300 × 32 KiB: far more than the stalled peer's socket can hold.
        for i in 0..300 {
            let want = json!(format!("{i}{big}"));
            writer.put(&[key("v")], want.clone()).await.unwrap();
            while mirror.get("v") != Some(&want) {
                match within("the reader to see each write", reader.next_event()).await.unwrap() {
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
        within("the stalled peer to be dropped", async {
            loop {
                if writer.peers().await.unwrap().len() == 2 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    });
    let status = state.run(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["services"]["sync"]["peers_dropped_slow"], json!(1), "{status}");
}

#[test]
fn reconnect_storms_leave_no_duplicate_peers_and_idle_rooms_unload() {
    let state = StateDir::new();
    state.write_config("[sync]\nidle_unload = \"300ms\"\n");
    let _daemon = state.start(&[]);
    let socket = state.socket().to_owned();
    let rt = runtime();
    rt.block_on(async {
        let mut keeper = SyncClient::open(&socket, "storm").await.unwrap();
        keeper.put(&[key("kept")], json!(true)).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let socket = socket.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    let mut c = SyncClient::open(&socket, "storm").await.unwrap();
                    c.watch(&[], None).await.unwrap();
                    drop(c);
                }
            }));
        }
        for t in tasks {
            within("the storm", t).await.unwrap();
        }
        within("the storm's peers to leave", async {
            while keeper.peers().await.unwrap().len() != 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        drop(keeper);
        let options = hearth::client::ConnectOptions::new(&socket);
        let mut control = SyncClient::control(&options).await.unwrap();
        within("the idle room to unload", async {
            while control.inspect(Some("storm")).await.unwrap().loaded {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    });
}

#[test]
fn an_evicted_room_reloads_with_its_data() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let socket = state.socket().to_owned();
    let rt = runtime();
    rt.block_on(async {
        let mut a = SyncClient::open(&socket, "evict/me").await.unwrap();
        a.put(&[key("x")], json!(1)).await.unwrap();
        let out = state.run(&["sync", "close", "evict/me"]);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout(&out).contains("1 peers disconnected"), "{}", stdout(&out));
        let err = within("the evicted peer's error", a.get(&[])).await.unwrap_err();
        assert_eq!(err.code().map(hearth::protocol::ErrorCode::as_str), Some("room_closed"), "{err}");
        let mut b = SyncClient::open(&socket, "evict/me").await.unwrap();
        assert_eq!(b.get(&[key("x")]).await.unwrap().1, json!(1));
    });
}

#[test]
fn an_unreadable_store_file_is_moved_aside_and_reported() {
    let state = StateDir::new();
    state.write_config("");
    let sync_dir = state.state_dir().join("sync");
    std::fs::create_dir_all(&sync_dir).unwrap();
    let garbage = b"HSYNC\0\0\x01\0\0\0\x05hello";
    std::fs::write(sync_dir.join("broken.am"), garbage).unwrap();
    let _daemon = state.start(&[]);
    let out = state.run(&["sync", "get", "broken"]);
    assert_eq!(stdout(&out).trim(), "{}", "{out:?}");
    let aside: Vec<_> = std::fs::read_dir(&sync_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("broken.am.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), garbage, "kept byte for byte");
    let status: Value = serde_json::from_slice(&state.run(&["status", "--json"]).stdout).unwrap();
    let codes: Vec<&str> =
        status["health"]["reasons"].as_array().unwrap().iter().filter_map(|r| r["code"].as_str()).collect();
    assert!(codes.contains(&"sync_store_moved_aside"), "{status}");
}

fn settings_json(state: &StateDir) -> Value {
    serde_json::from_slice(&std::fs::read(state.state_dir().join("settings.json")).unwrap_or_default())
        .unwrap_or(Value::Null)
}

#[test]
fn settings_mirror_merges_edits_and_refuses_malformed_ones() {
    let state = StateDir::new();
    state.write_config(
        "[sync.settings_defaults]\ntheme = \"system\"\n[sync.settings_defaults.editor]\nfont_size = 13\n",
    );
    let mut daemon = state.start(&[]);
    let file = state.state_dir().join("settings.json");
    assert!(
        wait_for(DEADLINE, || settings_json(&state)
            == json!({"schema_version": 1, "theme": "system", "editor": {"font_size": 13}})),
        "the mirror with defaults: {}",
        settings_json(&state)
    );
    // An app changes one key; a person edits another in the file.
    assert!(state.run(&["settings", "set", "theme", "dark"]).status.success());
    assert!(wait_for(DEADLINE, || settings_json(&state)["theme"] == json!("dark")), "mirror follows the app");
    let mut edited = settings_json(&state);
    edited["editor"]["font_size"] = json!(16);
    std::fs::write(&file, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    assert!(
        wait_for(DEADLINE, || {
            let out = state.run(&["settings", "get", "editor.font_size"]);
            stdout(&out).trim() == "16"
        }),
        "the edit was not merged"
    );
    // A malformed edit is refused and reported, and applies nothing.
    std::fs::File::create(&file).unwrap().write_all(b"{\"theme\": ").unwrap();
    assert!(
        wait_for(DEADLINE, || {
            let status: Value = serde_json::from_slice(&state.run(&["status", "--json"]).stdout).unwrap_or(Value::Null);
            status["health"]["reasons"].to_string().contains("sync_settings_edit_refused")
        }),
        "the refused edit is not in health"
    );
    assert_eq!(stdout(&state.run(&["settings", "get", "theme"])).trim(), "\"dark\"");
    // An edit made while the daemon was stopped is merged at the next start.
    daemon.stop();
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({"schema_version": 1, "theme": "light", "editor": {"font_size": 16}})).unwrap(),
    )
    .unwrap();
    let _again: Daemon = state.start(&[]);
    assert_eq!(stdout(&state.run(&["settings", "get", "theme"])).trim(), "\"light\"");
}

#[test]
fn cli_sets_gets_removes_lists_inspects_and_watches() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let run = |args: &[&str]| {
        let out = state.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        stdout(&out)
    };
    run(&["sync", "set", "notes/1", "title", "Hello"]);
    run(&["sync", "set", "notes/1", "tags", "[\"a\",\"b\"]"]);
    run(&["sync", "set", "notes/1", "count", "3", "--as", "counter"]);
    assert_eq!(
        serde_json::from_str::<Value>(&run(&["sync", "get", "notes/1"])).unwrap(),
        json!({"title": "Hello", "tags": ["a", "b"], "count": 3})
    );
    assert_eq!(run(&["sync", "get", "notes/1", "tags.1"]).trim(), "\"b\"");
    run(&["sync", "rm", "notes/1", "tags.0"]);
    assert_eq!(run(&["sync", "get", "notes/1", "tags"]).split_whitespace().collect::<String>(), "[\"b\"]");
    let listed: Value = serde_json::from_str(&run(&["sync", "ls", "--json"])).unwrap();
    assert!(listed.to_string().contains("notes/1"), "{listed}");
    let inspected: Value = serde_json::from_str(&run(&["sync", "inspect", "notes/1", "--json"])).unwrap();
    assert_eq!(inspected["doc"], json!("notes/1"));
    // Errors carry their code.
    let out = state.run(&["sync", "get", "notes/1", "title.x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_a_container"));
    // watch --json prints one line per change.
    let mut watch = state
        .hearth()
        .args(["sync", "watch", "notes/1", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || -> Value {
        let line = lines.recv_timeout(DEADLINE).expect("a line from `hearth sync watch` within the deadline");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next()["event"], json!("start"));
    run(&["sync", "set", "notes/1", "title", "Changed"]);
    let changed = loop {
        let line = next();
        if line["event"] == json!("changed") {
            break line;
        }
    };
    assert_eq!(changed["patches"][0], json!({"op": "put", "path": ["title"], "value": "Changed"}));
    let _ = watch.kill();
    let _ = watch.wait();
}

/// The next event of a subscription (a lag notice fails the test).
async fn next_event(events: &mut hearth::client::StatusClient, what: &str) -> hearth::protocol::event::EventData {
    match within(what, events.next_event()).await.unwrap() {
        hearth::client::Notice::Event(event) => {
            assert_eq!(event.service, hearth::protocol::Channel::Sync, "{event:?}");
            event.data
        }
        hearth::client::Notice::Lagged { missed } => panic!("lagged by {missed} while waiting for {what}"),
    }
}

#[test]
fn rooms_peers_and_settings_edits_are_published_as_events() {
    use hearth::protocol::event::{EventData, EventFilter};
    use hearth::protocol::sync::SyncMode;
    let state = StateDir::new();
    state.write_config("[sync]\nidle_unload = \"100ms\"\n");
    let _daemon = state.start(&[]);
    let socket = state.socket().to_owned();
    runtime().block_on(async {
        let mut events = hearth::client::StatusClient::connect(&socket).await.unwrap();
        let filter = EventFilter {
            services: vec![hearth::protocol::Channel::Sync],
            ids: vec!["ev/doc".into(), "settings".into()],
            ..EventFilter::default()
        };
        events.subscribe(filter).await.unwrap();

        // A new document: opened (created), a peer joins and leaves, the idle room unloads.
        let mut view = SyncClient::open(&socket, "ev/doc").await.unwrap();
        let me = view.peer_id();
        view.put(&[key("x")], json!(1)).await.unwrap();
        drop(view);
        assert_eq!(
            next_event(&mut events, "the room opening").await,
            EventData::SyncRoomOpened { doc: "ev/doc".into(), created: true }
        );
        match next_event(&mut events, "the peer joining").await {
            EventData::SyncPeerJoined { doc, peer, pid, mode, .. } => {
                assert_eq!((doc.as_str(), peer, pid, mode), ("ev/doc", me, Some(std::process::id()), SyncMode::View));
            }
            other => panic!("not a join: {other:?}"),
        }
        assert_eq!(
            next_event(&mut events, "the peer leaving").await,
            EventData::SyncPeerLeft { doc: "ev/doc".into(), peer: me }
        );
        assert_eq!(
            next_event(&mut events, "the idle room unloading").await,
            EventData::SyncRoomClosed { doc: "ev/doc".into(), why: "idle".into(), peers: 0 }
        );

        // Loaded again from its file, then evicted with its peer in it.
        let mut view = SyncClient::open(&socket, "ev/doc").await.unwrap();
        assert_eq!(
            next_event(&mut events, "the room reopening").await,
            EventData::SyncRoomOpened { doc: "ev/doc".into(), created: false }
        );
        assert!(matches!(next_event(&mut events, "the peer joining").await, EventData::SyncPeerJoined { .. }));
        let mut control = SyncClient::control(&hearth::client::ConnectOptions::new(&socket)).await.unwrap();
        assert_eq!(control.close("ev/doc").await.unwrap(), 1);
        let mut rest = Vec::new();
        while rest.len() < 2 {
            rest.push(next_event(&mut events, "the eviction's events").await);
        }
        assert!(rest.contains(&EventData::SyncPeerLeft { doc: "ev/doc".into(), peer: view.peer_id() }), "{rest:?}");
        assert!(
            rest.contains(&EventData::SyncRoomClosed { doc: "ev/doc".into(), why: "evicted".into(), peers: 1 }),
            "{rest:?}"
        );
        assert!(view.get(&[]).await.is_err(), "the evicted peer was disconnected");

        // A person's edits of settings.json: merged, then a malformed one refused.
        let file = state.state_dir().join("settings.json");
        assert!(wait_for(DEADLINE, || settings_json(&state).is_object()), "the mirror is written");
        let mut edited = settings_json(&state);
        edited["theme"] = json!("dark");
        // In the mirror's own format, so that the mirror has nothing to
        // rewrite after the merge (a rewrite could replace the next edit).
        let mut text = serde_json::to_vec_pretty(&edited).unwrap();
        text.push(b'\n');
        std::fs::write(&file, text).unwrap();
        assert_eq!(
            next_event(&mut events, "the merged edit").await,
            EventData::SyncSettingsEdit { applied: true, reason: None }
        );
        std::fs::write(&file, b"{\"theme\": ").unwrap();
        match next_event(&mut events, "the refused edit").await {
            EventData::SyncSettingsEdit { applied: false, reason: Some(reason) } => {
                assert!(reason.contains("not valid JSON"), "{reason}");
            }
            other => panic!("not a refused edit: {other:?}"),
        }
    });
}

#[test]
fn the_blocking_client_writes_watches_and_replicates() {
    use hearth::client::blocking;
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let socket = state.socket();
    let mut writer = blocking::SyncClient::open(socket, "blocking/doc").unwrap();
    let mut reader = blocking::SyncClient::open(socket, "blocking/doc").unwrap();
    let (revision, value) = reader.watch(&[], None).unwrap();
    assert_eq!((revision.0.len(), value), (0, Some(json!({}))));
    assert_eq!(reader.next_event_within(Duration::from_millis(50)).unwrap(), None, "nothing changed yet");
    let written = writer.put(&[key("title")], json!("hello")).unwrap();
    assert!(!written.stale);
    writer.insert(&[key("title")], vec![json!(1)]).unwrap_err();
    let mut seen = json!({});
    while seen != json!({"title": "hello"}) {
        match reader.next_event_within(DEADLINE).unwrap() {
            Some(SyncEvent::Changed { patches, revision, .. }) => {
                for p in &patches {
                    apply_patch(&mut seen, &[], p).unwrap();
                }
                if seen == json!({"title": "hello"}) {
                    assert_eq!(revision, written.revision);
                }
            }
            Some(_) => {}
            None => panic!("no change within {DEADLINE:?}"),
        }
    }
    assert_eq!(writer.get(&[key("title")]).unwrap().1, json!("hello"));
    assert_eq!(writer.peers().unwrap().len(), 2);

    let mut replica = blocking::ReplicaClient::open(socket, "blocking/doc").unwrap();
    replica.sync().unwrap();
    assert_eq!(replica_json(replica.doc()), json!({"title": "hello"}));
    replica.doc_mut().put(ROOT, "by", "replica").unwrap();
    replica.push().unwrap();
    assert_eq!(writer.get(&[key("by")]).unwrap().1, json!("replica"));

    let mut control = blocking::SyncClient::control(&hearth::client::ConnectOptions::new(socket)).unwrap();
    assert!(control.list(Some("blocking/")).unwrap().iter().any(|d| d.doc.as_str() == "blocking/doc"));
    assert_eq!(control.inspect(Some("blocking/doc")).unwrap().peers.len(), 3);
    assert_eq!(control.close("blocking/doc").unwrap(), 3);
}
