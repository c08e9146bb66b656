//! The pool service of a live in-process daemon (the real socket, session,
//! handler, planner and scheduler, building real resources) driven by
//! arbitrary sequences of requests on one connection.
//!
//! Input layout: pieces split at `0xFF`, each one request frame. A piece
//! that is a JSON object is made harmless before it is sent: the program of
//! `create`, `check` and `reset` becomes `/bin/true` (its arguments stay,
//! and go through validation), `LD_*` variables leave its `env`, a
//! definition's `kind` becomes `command` (a venv would run Python), and a
//! `take` waits at most 200 ms. Other pieces go as
//! they are (broken JSON, wrong types). A piece `0xFE k f` releases the
//! `k`-th lease this input was given (`reuse` when `f` is odd), since a
//! fuzzer cannot guess lease ids. The built-in `venv` pool is overridden in
//! config with a `/bin/true` pool, so nothing but `true` ever runs.
//!
//! Checked: every request gets one answer; no resource is handed out twice
//! while leased; a released lease is void; after the input, once every
//! lease it got is released and its pools are undefined, the daemon holds
//! no lease, and it still answers a ping.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use hearth::client::StatusClient;
use hearth::daemon::pool::settings::PoolEntry;
use hearth::daemon::{Config, Daemon, Instance};
use hearth::paths::Paths;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

/// The one program fuzzed definitions run (by its path: a definition's
/// `env` may set `PATH`).
const TRUE: &str = "/bin/true";
/// The longest a fuzzed `take` waits.
const TAKE_WAIT_MS: u64 = 200;
/// The longest an answer may take (a take's wait, a build, a busy machine).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const MAX_FRAME: usize = 1 << 20;

struct Live {
    runtime: Runtime,
    paths: Paths,
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("hearth-fuzz-pool-").tempdir().expect("temp dir").keep();
        let paths = Paths::new(dir.join("state"));
        let mut config = Config::default();
        config.queue.enabled = false;
        config.blob.enabled = false;
        config.server.max_frame = hearth::units::ByteSize(MAX_FRAME as u64);
        config.pool.max_concurrent_builds = 4;
        config.pool.retry_base = hearth::units::HumanDuration(Duration::from_millis(10));
        config.pool.retry_max = hearth::units::HumanDuration(Duration::from_millis(100));
        let harmless = PoolEntry { create: Some(vec![TRUE.into()]), ..Default::default() };
        config.pool.pools.insert("venv".into(), harmless);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let mut instance = Instance::acquire(paths.clone()).expect("lock");
            let listener = instance.bind().expect("bind");
            let daemon = Daemon::start(instance, listener, config).await.expect("start");
            tokio::spawn(daemon.run_until(std::future::pending()));
        });
        Live { runtime, paths }
    })
}

/// One pool-channel connection, reading answers frame by frame.
struct Conn {
    stream: UnixStream,
}

impl Conn {
    async fn open(socket: &Path) -> Conn {
        let mut conn = Conn { stream: UnixStream::connect(socket).await.expect("the daemon accepts") };
        let reply = conn.call_raw(br#"{"channel":"pool","protocol":1}"#).await.expect("a handshake reply");
        assert_eq!(reply["ok"], true, "{reply}");
        conn
    }

    /// Sends one frame and reads one answer; `None` when the daemon closed
    /// the connection (it may, for a frame it cannot read).
    async fn call_raw(&mut self, frame: &[u8]) -> Option<Value> {
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(frame);
        self.stream.write_all(&bytes).await.ok()?;
        let read = async {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await.ok()?;
            let len = u32::from_be_bytes(len) as usize;
            assert!(len <= MAX_FRAME, "the daemon sent a frame of {len} bytes, over its limit");
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some(payload)
        };
        let payload = tokio::time::timeout(ANSWER_WITHIN, read).await.expect("an answer in time")?;
        Some(serde_json::from_slice(&payload).expect("every answer is JSON"))
    }

    async fn call(&mut self, request: &Value) -> Value {
        self.call_raw(request.to_string().as_bytes()).await.expect("an answer to a valid request")
    }
}

/// Makes a fuzzed request harmless (see the module docs).
fn harmless(mut request: Value) -> Value {
    let Some(object) = request.as_object_mut() else { return request };
    match object.get("type").and_then(Value::as_str) {
        Some("define") => {
            if let Some(def) = object.get_mut("definition").and_then(Value::as_object_mut) {
                for field in ["create", "check", "reset"] {
                    if let Some(program) = def.get_mut(field).and_then(Value::as_array_mut).and_then(|a| a.first_mut()) {
                        *program = json!(TRUE);
                    }
                }
                // Nothing may load into `true` but `true`.
                if let Some(env) = def.get_mut("env").and_then(Value::as_object_mut) {
                    env.retain(|name, _| !name.starts_with("LD_"));
                }
                if def.contains_key("kind") || !def.contains_key("create") {
                    def.insert("kind".into(), json!("command"));
                }
            }
        }
        Some("take") => {
            let wait = object.get("timeout_ms").and_then(Value::as_u64).map_or(TAKE_WAIT_MS, |t| t.min(TAKE_WAIT_MS));
            object.insert("timeout_ms".into(), json!(wait));
        }
        _ => {}
    }
    request
}

/// What this input holds: lease → (resource, path).
type Held = BTreeMap<String, (String, String)>;

fn note_answer(request: Option<&Value>, answer: &Value, held: &mut Held, given: &mut Vec<String>) {
    assert!(answer["type"].is_string(), "an answer without a type: {answer}");
    match answer["type"].as_str() {
        Some("taken") => {
            let lease = answer["lease"].as_str().expect("a lease").to_owned();
            let resource = answer["resource"].as_str().expect("a resource").to_owned();
            let path = answer["path"].as_str().expect("a path").to_owned();
            for (other, (r, p)) in held.iter() {
                assert!(r != &resource && p != &path, "{resource} handed out under {lease} and {other}");
            }
            assert!(held.insert(lease.clone(), (resource, path)).is_none(), "lease {lease} issued twice");
            given.push(lease);
        }
        Some("released") => {
            let lease = answer["lease"].as_str().expect("a lease");
            assert!(held.remove(lease).is_some(), "released a lease this input did not hold: {answer}");
        }
        Some("error") if answer["code"] == "unknown_lease" => {
            if let Some(lease) = request.and_then(|r| r["lease"].as_str()) {
                assert!(!held.contains_key(lease), "a held lease is unknown to the daemon: {answer}");
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let live = live();
    live.runtime.block_on(async {
        let socket = live.paths.socket();
        let mut conn = Conn::open(socket).await;
        let mut held = Held::new();
        let mut given: Vec<String> = Vec::new();
        let mut defined = Vec::new();
        for piece in data.split(|b| *b == 0xFF) {
            let (request, frame) = match piece {
                [0xFE, k, rest @ ..] => {
                    let lease = given.get(usize::from(*k) % given.len().max(1)).cloned();
                    let lease = lease.unwrap_or_else(|| "0123456789abcdef0123456789abcdef".into());
                    let reuse = rest.first().is_some_and(|f| f % 2 == 1);
                    let request = json!({"type": "release", "lease": lease, "reuse": reuse});
                    (Some(request.clone()), request.to_string().into_bytes())
                }
                _ => match serde_json::from_slice::<Value>(piece) {
                    Ok(value) if value.is_object() => {
                        let request = harmless(value);
                        if let Some(name) = request["definition"]["name"].as_str() {
                            defined.push(name.to_owned());
                        }
                        (Some(request.clone()), request.to_string().into_bytes())
                    }
                    _ => (None, piece.to_vec()),
                },
            };
            match conn.call_raw(&frame).await {
                Some(answer) => note_answer(request.as_ref(), &answer, &mut held, &mut given),
                None => conn = Conn::open(socket).await,
            }
        }

        // Put the daemon back as it was: every lease released, every pool
        // this input defined undefined, the overridden `venv` drained.
        let mut conn = Conn::open(socket).await;
        for lease in held.keys() {
            let answer = conn.call(&json!({"type": "release", "lease": lease})).await;
            assert_eq!(answer["type"], "released", "a held lease: {answer}");
        }
        for name in &defined {
            let _ = conn.call(&json!({"type": "undefine", "pool": name})).await;
        }
        let _ = conn.call(&json!({"type": "drain", "pool": "venv"})).await;
        let leases = conn.call(&json!({"type": "leases"})).await;
        assert_eq!(leases["leases"], json!([]), "leases nobody holds: {leases}");
        StatusClient::connect(socket).await.expect("connect").ping().await.expect("a ping is answered");
    });
});
