//! The queue channel of a live in-process daemon (the real handler, store,
//! writer, dispatcher and attempts) driven by arbitrary request sequences,
//! which `live_server` cannot reach: it runs with the queue off, because a
//! fuzzed `submit` can name any command.
//!
//! Input layout: pieces separated by `0xFF` bytes, each one request frame.
//! A piece that decodes as a queue request is made harmless before it is
//! sent: its program becomes one of a fixed set (by a hash of what it named:
//! `true`, `false`, `echo`, `printf`, `cat`, a missing program, or a shell
//! running one of a few fixed scripts that exit, write, sleep briefly or
//! leave their process group), its variables are renamed `FUZZ_*`, and its
//! timeout and backoff are capped; its other fields (queue, key, priority,
//! input, start time, ids, filters, offsets) go as fuzzed. A piece that
//! does not decode is sent as it is, and must get exactly one error.
//!
//! Checked for every request: the daemon answers (a stream until its last
//! frame, or until it goes quiet, e.g. waiting on a job parked for later),
//! every frame it sends is JSON with a `type` and at most `max_frame`
//! bytes, and every error code is a known one. After each input the
//! daemon still answers `stats`. The daemon runs with a small `max_frame`
//! (64 KiB), so that pages are cut short, logs come in small chunks and
//! large answers are refused; it starts afresh every few hundred inputs,
//! so that the store stays small.
#![no_main]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hearth::daemon::{Config, Daemon, Instance};
use hearth::paths::Paths;
use hearth::protocol::ErrorCode;
use hearth::protocol::queue::{JobSpec, QueueRequest};
use hearth::protocol::decode_request;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

const MAX_FRAME: usize = 64 * 1024;
/// Inputs served by one daemon before a fresh one (and a fresh store) takes over.
const INPUTS_PER_DAEMON: u32 = 500;
/// How long a stream may stay quiet before the connection is dropped.
const QUIET: Duration = Duration::from_millis(300);
/// How long any single answer may take.
const ANSWER: Duration = Duration::from_secs(20);

/// The programs a fuzzed job may run.
const SCRIPTS: &[&str] = &[
    "exit 3",
    "echo out; echo err >&2",
    "sleep 0.05",
    "head -c 70000 /dev/zero",
    "setsid sleep 0.3 & echo left",
    "kill -TERM $$",
    "cat",
];

struct Live {
    runtime: Runtime,
    state: Mutex<State>,
}

struct State {
    dir: PathBuf,
    socket: PathBuf,
    daemon: Option<(JoinHandle<()>, tokio_util::sync::CancellationToken)>,
    inputs: u32,
    generation: u32,
}

fn config() -> Config {
    let mut config = Config::default();
    config.pool.enabled = false;
    config.blob.enabled = false;
    config.queue.workers = 2;
    config.queue.kill_grace = hearth::units::HumanDuration(Duration::from_millis(100));
    config.queue.timeout = hearth::units::HumanDuration(Duration::from_secs(1));
    config.server.max_frame = hearth::units::ByteSize(MAX_FRAME as u64);
    config.server.handshake_max_frame = hearth::units::ByteSize(4096);
    config.server.connection_idle_timeout = hearth::units::HumanDuration(Duration::from_secs(5));
    config
}

async fn start(dir: &std::path::Path) -> (PathBuf, JoinHandle<()>, tokio_util::sync::CancellationToken) {
    let paths = Paths::new(dir.join("state"));
    let mut instance = Instance::acquire(paths.clone()).expect("lock");
    let listener = instance.bind().expect("bind");
    let daemon = Daemon::start(instance, listener, config()).await.expect("start");
    let stop = daemon.stop_token();
    let handle = tokio::spawn(daemon.run_until(std::future::pending()));
    (paths.socket().to_owned(), handle, stop)
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        // libFuzzer's `main` is not Rust's, which ignores SIGPIPE: a write to
        // a connection whose peer left (the daemon's, or this target's after
        // it gave up on a stream) would kill the process.
        // SAFETY: setting a signal's disposition to ignore installs no handler.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::Builder::new().prefix("hearth-fuzz-queue-").tempdir().expect("temp dir").keep();
        let state = State { dir, socket: PathBuf::new(), daemon: None, inputs: 0, generation: 0 };
        Live { runtime, state: Mutex::new(state) }
    })
}

/// The daemon's socket, starting a fresh daemon when due.
fn socket(live: &Live) -> PathBuf {
    let mut state = live.state.lock().unwrap();
    state.inputs += 1;
    if state.daemon.is_some() && state.inputs < INPUTS_PER_DAEMON {
        return state.socket.clone();
    }
    if let Some((handle, stop)) = state.daemon.take() {
        stop.cancel();
        live.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), handle).await.expect("the daemon stops").expect("cleanly");
        });
    }
    state.generation += 1;
    state.inputs = 0;
    let dir = state.dir.join(state.generation.to_string());
    let _ = std::fs::remove_dir_all(state.dir.join((state.generation - 1).to_string()));
    std::fs::create_dir_all(&dir).unwrap();
    let (socket, handle, stop) = live.runtime.block_on(start(&dir));
    state.socket = socket.clone();
    state.daemon = Some((handle, stop));
    socket
}

fn pick<T: Hash>(value: &T, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    (h.finish() % n as u64) as usize
}

/// A job that can only run one of the fixed programs, briefly.
fn harmless(mut spec: JobSpec) -> JobSpec {
    let named = spec.argv.first().cloned().unwrap_or_default();
    let args: Vec<String> = spec.argv.iter().skip(1).take(8).map(|a| a.chars().take(200).collect()).collect();
    spec.argv = match pick(&named, 8) {
        0 => vec!["true".into()],
        1 => vec!["false".into()],
        2 => std::iter::once("echo".into()).chain(args).collect(),
        3 => std::iter::once("printf".into()).chain(args).collect(),
        4 => vec!["cat".into()],
        5 => vec!["/nonexistent/hearth-fuzz".into()],
        _ => vec!["sh".into(), "-c".into(), SCRIPTS[pick(&args, SCRIPTS.len())].into()],
    };
    if named.is_empty() {
        spec.argv.clear();
    }
    spec.env = std::mem::take(&mut spec.env).into_iter().map(|(k, v)| (format!("FUZZ_{k}"), v)).collect();
    spec.timeout_ms = Some(spec.timeout_ms.unwrap_or(1000).clamp(1, 1000));
    spec.backoff_base_ms = spec.backoff_base_ms.map(|b| b.min(10));
    spec.backoff_cap_ms = spec.backoff_cap_ms.map(|b| b.min(20));
    spec.max_attempts = spec.max_attempts.map(|n| n.min(3));
    spec
}

/// What to read after a request: one answer, or a stream.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    One,
    Stream,
}

fn prepare(piece: &[u8]) -> (Vec<u8>, Expect) {
    match decode_request::<QueueRequest>(piece) {
        Ok(QueueRequest::Submit(spec)) => {
            (serde_json::to_vec(&QueueRequest::Submit(harmless(spec))).unwrap(), Expect::One)
        }
        Ok(request @ (QueueRequest::Wait { .. } | QueueRequest::Logs(_))) => {
            (serde_json::to_vec(&request).unwrap(), Expect::Stream)
        }
        Ok(request) => (serde_json::to_vec(&request).unwrap(), Expect::One),
        Err(_) => (piece.to_vec(), Expect::One),
    }
}

async fn connect(socket: &std::path::Path) -> UnixStream {
    let mut stream = UnixStream::connect(socket).await.expect("the daemon accepts");
    let handshake = br#"{"channel":"queue","protocol":1}"#;
    stream.write_all(&(handshake.len() as u32).to_be_bytes()).await.unwrap();
    stream.write_all(handshake).await.unwrap();
    let reply = read(&mut stream, ANSWER).await.expect("a handshake reply");
    assert_eq!(reply["ok"], Value::Bool(true), "{reply}");
    stream
}

/// The next frame as JSON, checked; `None` when the daemon goes quiet for `wait`.
async fn read(stream: &mut UnixStream, wait: Duration) -> Option<Value> {
    let mut header = [0u8; 4];
    match tokio::time::timeout(wait, stream.read_exact(&mut header)).await {
        Err(_) => return None,
        Ok(Err(e)) => panic!("the daemon closed the connection: {e}"),
        Ok(Ok(_)) => {}
    }
    let len = u32::from_be_bytes(header) as usize;
    assert!(len <= MAX_FRAME, "the daemon sent a frame of {len} bytes; max_frame is {MAX_FRAME}");
    let mut payload = vec![0u8; len];
    tokio::time::timeout(ANSWER, stream.read_exact(&mut payload)).await.expect("a whole frame").expect("a whole frame");
    let value: Value = serde_json::from_slice(&payload).expect("every frame is JSON");
    let kind = value["type"].as_str().or(value.get("ok").map(|_| "handshake")).expect("a type");
    if kind == "error" {
        let code = ErrorCode::from_code(value["code"].as_str().expect("an error code"));
        assert!(!matches!(code, ErrorCode::Other(_)), "an unknown error code: {value}");
    }
    Some(value)
}

fn is_last(frame: &Value) -> bool {
    match frame["type"].as_str() {
        Some("job_event") => {
            matches!(frame["job"]["state"].as_str(), Some("succeeded" | "dead" | "canceled"))
        }
        _ => frame["type"] != "log_data",
    }
}

fuzz_target!(|data: &[u8]| {
    let live = live();
    let socket = socket(live);
    live.runtime.block_on(async {
        let mut stream = connect(&socket).await;
        for piece in data.split(|b| *b == 0xFF).take(32) {
            let (frame, expect) = prepare(piece);
            if frame.len() > MAX_FRAME {
                continue; // Refused with `frame_too_large` and closed: the `live_server` target's ground.
            }
            stream.write_all(&(frame.len() as u32).to_be_bytes()).await.unwrap();
            stream.write_all(&frame).await.unwrap();
            match expect {
                Expect::One => {
                    read(&mut stream, ANSWER).await.expect("an answer");
                }
                Expect::Stream => loop {
                    match read(&mut stream, QUIET).await {
                        Some(frame) if is_last(&frame) => break,
                        Some(_) => {}
                        // Waiting on a job parked for later: leave, as a client does.
                        None => {
                            stream = connect(&socket).await;
                            break;
                        }
                    }
                },
            }
        }
        stream.write_all(&[0, 0, 0, 16]).await.unwrap();
        stream.write_all(br#"{"type":"stats"}"#).await.unwrap();
        let stats = read(&mut stream, ANSWER).await.expect("stats after the input");
        assert!(stats["type"] == "stats" || stats["code"] == "response_too_large", "{stats}");
    });
});
