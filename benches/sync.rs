//! The sync channel's speed, each figure beside a baseline measured in the
//! same run and the target it answers to.
//!
//! `cargo bench --bench sync`. Everything runs against the real `hearthd`
//! (release build) on temp state directories under `$TMPDIR`, durable
//! (every acknowledged write fsynced): figures depend on that disk's fsync.
//! Knobs (environment):
//!
//! - `HEARTH_BENCH_FANOUT_WRITES` (300): writes per fan-out run
//! - `HEARTH_BENCH_EDITS` (1000): edits per writer in the throughput run
//! - `HEARTH_BENCH_ROOMS` (200): idle rooms for the memory figure
//! - `HEARTH_BENCH_HISTORY` (20000): changes in the document of the history run
//!
//! The replica-mode figure comes from `benches/node/replica.mjs`
//! (`@automerge/automerge` 3.x, run with `npm ci` in `benches/node` first);
//! it is skipped, saying so, when Node or its modules are missing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{StateDir, rss_kib};
use hearth::client::{SyncClient, SyncEvent};
use hearth::connection::Connection;
use hearth::protocol::sync::{PatchOp, PathElem};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::Mutex;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn line(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<64} {value}");
}

fn key(k: &str) -> PathElem {
    PathElem::Key(k.into())
}

/// (p50, p99) of the samples.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let n = samples.len();
    (samples[n / 2], samples[(n * 99 / 100).min(n - 1)])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// CPU time (user + system) a process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Writes `writes` values one after another; `subscribers` view peers watch.
/// Returns the time from each write's send to its arrival at each subscriber.
async fn fanout_hearth(socket: &Path, doc: &str, subscribers: usize, writes: usize) -> Vec<Duration> {
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers);
    for _ in 0..subscribers {
        let socket = socket.to_owned();
        let doc = doc.to_owned();
        let sent = sent.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = SyncClient::open(&socket, &doc).await.unwrap();
            c.watch(&[], None).await.unwrap();
            ready.send(()).await.unwrap();
            let mut out = Vec::with_capacity(writes);
            while out.len() < writes {
                if let SyncEvent::Changed { patches, .. } = c.next_event().await.unwrap() {
                    let now = Instant::now();
                    for p in patches {
                        if let PatchOp::Put { value, path, .. } = p
                            && path == [key("n")]
                        {
                            let i = value.as_u64().unwrap() as usize;
                            let t0 = sent.lock().await[i];
                            out.push(now - t0);
                        }
                    }
                }
            }
            out
        }));
    }
    for _ in 0..subscribers {
        ready_rx.recv().await.unwrap();
    }
    let mut writer = SyncClient::open(socket, doc).await.unwrap();
    for i in 0..writes {
        sent.lock().await.push(Instant::now());
        writer.put(&[key("n")], json!(i)).await.unwrap();
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The baseline: a minimal Automerge-over-socket server, no durability:
/// it applies each put to its document and writes the change's JSON patch
/// to every subscriber at once.
async fn baseline_server(listener: UnixListener) {
    let doc = Arc::new(std::sync::Mutex::new(automerge::AutoCommit::new()));
    let subscribers: Arc<std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<bytes::Bytes>>>> = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let doc = doc.clone();
        let subscribers = subscribers.clone();
        tokio::spawn(async move {
            let mut conn = Connection::new(stream, 16 << 20);
            let Ok(Some(first)) = conn.read_frame().await else { return };
            let hello: Value = serde_json::from_slice(&first).unwrap();
            if hello["role"] == json!("subscriber") {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                subscribers.lock().unwrap().push(tx);
                conn.write_json(&json!({"ok": true})).await.unwrap();
                while let Some(frame) = rx.recv().await {
                    if conn.write_raw(frame).await.is_err() {
                        return;
                    }
                }
                return;
            }
            while let Ok(Some(frame)) = conn.read_frame().await {
                let put: Value = serde_json::from_slice(&frame).unwrap();
                let patch = {
                    use automerge::transaction::Transactable;
                    let mut doc = doc.lock().unwrap();
                    doc.put(automerge::ROOT, "n", put["n"].as_i64().unwrap()).unwrap();
                    doc.commit();
                    json!({"type": "changed", "patches": [{"op": "put", "path": ["n"], "value": put["n"]}]})
                };
                let frame = bytes::Bytes::from(serde_json::to_vec(&patch).unwrap());
                for s in subscribers.lock().unwrap().iter() {
                    let _ = s.send(frame.clone());
                }
                conn.write_json(&json!({"ok": true})).await.unwrap();
            }
        });
    }
}

async fn fanout_baseline(socket: &Path, subscribers: usize, writes: usize) -> Vec<Duration> {
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut conn = Connection::new(tokio::net::UnixStream::connect(socket).await.unwrap(), 16 << 20);
        conn.write_json(&json!({"role": "subscriber"})).await.unwrap();
        conn.read_frame().await.unwrap();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(writes);
            while out.len() < writes {
                let frame = conn.read_frame().await.unwrap().unwrap();
                let now = Instant::now();
                let v: Value = serde_json::from_slice(&frame).unwrap();
                let i = v["patches"][0]["value"].as_u64().unwrap() as usize;
                out.push(now - sent.lock().await[i]);
            }
            out
        }));
    }
    let mut writer = Connection::new(tokio::net::UnixStream::connect(socket).await.unwrap(), 16 << 20);
    writer.write_json(&json!({"role": "writer"})).await.unwrap();
    for i in 0..writes {
        sent.lock().await.push(Instant::now());
        writer.write_json(&json!({"n": i})).await.unwrap();
        writer.read_frame().await.unwrap();
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// `writers` view clients each put `edits` values, one after another, in one room.
async fn sustained(socket: &Path, doc: &str, writers: usize, edits: usize) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let socket = socket.to_owned();
            let doc = doc.to_owned();
            tokio::spawn(async move {
                let mut c = SyncClient::open(&socket, &doc).await.unwrap();
                for i in 0..edits {
                    c.put(&[key(&format!("w{w}"))], json!(i)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// The baseline: one append and fdatasync per edit, on the same disk.
fn fsync_each(dir: &Path, n: usize) -> Duration {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("fsync-baseline")).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&[0u8; 128]).unwrap();
        f.sync_data().unwrap();
    }
    start.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let writes = knob("HEARTH_BENCH_FANOUT_WRITES", 300);
    let edits = knob("HEARTH_BENCH_EDITS", 1000);
    let rooms = knob("HEARTH_BENCH_ROOMS", 200);
    let history = knob("HEARTH_BENCH_HISTORY", 20_000);
    println!("hearth sync benchmark (release hearthd, temp state dir under {:?})", std::env::temp_dir());

    // --- fan-out latency --------------------------------------------------
    println!("\nfan-out: one view write (acknowledged = fsynced) to its arrival at N view subscribers");
    let state = StateDir::new();
    let daemon = state.start(&[]);
    let base_socket = state.dir.path().join("baseline.sock");
    let listener = runtime.block_on(async { UnixListener::bind(&base_socket).unwrap() });
    runtime.spawn(baseline_server(listener));
    for n in [1usize, 16, 64] {
        let (p50, p99) =
            percentiles(runtime.block_on(fanout_hearth(state.socket(), &format!("fanout/{n}"), n, writes)));
        let (b50, b99) = percentiles(runtime.block_on(fanout_baseline(&base_socket, n, writes)));
        line(&format!("{n:>2} subscribers: hearth p50 / p99"), format!("{} / {}", ms(p50), ms(p99)));
        line("    baseline: Automerge over a socket, no durability, p50 / p99", format!("{} / {}", ms(b50), ms(b99)));
        if n == 16 {
            line(
                "    target: p50 under 2 ms, fsync included",
                if p50 < Duration::from_millis(2) { "met" } else { "MISSED" },
            );
        }
    }

    // --- daemon CPU per write: peers and history -------------------------
    println!("\ndaemon CPU per write (user + system, /proc), by subscribers and by history");
    let pid = daemon.pid();
    let mut per_write = Vec::new();
    for n in [0usize, 16, 64] {
        let before = cpu_time(pid);
        runtime.block_on(async {
            if n == 0 {
                let mut w = SyncClient::open(state.socket(), "cpu/0").await.unwrap();
                for i in 0..writes {
                    w.put(&[key("n")], json!(i)).await.unwrap();
                }
            } else {
                fanout_hearth(state.socket(), &format!("cpu/{n}"), n, writes).await;
            }
        });
        let cpu = (cpu_time(pid) - before) / writes as u32;
        per_write.push(cpu);
        line(&format!("{n:>2} subscribers"), format!("{:>7.0} µs/write", cpu.as_secs_f64() * 1e6));
    }
    if per_write[2] > per_write[0] {
        let per_peer = (per_write[2] - per_write[0]).as_secs_f64() * 1e6 / 64.0;
        line("    per subscriber (64 vs 0)", format!("{per_peer:>7.1} µs/write"));
        line("    runtimed (the predecessor), measured on this machine", "800 µs/peer/write");
    }
    // History: the same writes to a document that already has `history` changes.
    let oldest = runtime.block_on(async {
        let mut w = SyncClient::open(state.socket(), "history").await.unwrap();
        let oldest = w.put(&[key("stale")], json!(0)).await.unwrap().revision;
        let ops: Vec<PatchOp> =
            (0..100).map(|i| PatchOp::Put { path: vec![key(&format!("h{i}"))], value: json!(i), kind: None }).collect();
        let mut pending = 0;
        while pending < history {
            for op in &ops {
                w.write(vec![op.clone()], None).await.unwrap();
            }
            pending += ops.len();
        }
        oldest
    });
    let before = cpu_time(pid);
    runtime.block_on(async {
        let mut w = SyncClient::open(state.socket(), "history").await.unwrap();
        for i in 0..writes {
            w.put(&[key("n")], json!(i)).await.unwrap();
        }
    });
    let with_history = (cpu_time(pid) - before) / writes as u32;
    line(
        &format!("0 subscribers, document of {history} changes"),
        format!("{:>7.0} µs/write", with_history.as_secs_f64() * 1e6),
    );
    line(
        "    baseline: the same writes to a new document (above)",
        format!("{:>7.0} µs/write", per_write[0].as_secs_f64() * 1e6),
    );
    line("    runtimed (the predecessor), measured on this machine", "halves its rate at 3,800 changes");

    // A write whose base is stale is made on the document as of that base
    // (see proto-docs/sync.md): its cost follows the history up to the base.
    // Wall time (with its fsync) and the daemon's CPU, each per write.
    let stale_writes: u32 = 20;
    let measure = |base: Option<hearth::protocol::sync::Revision>| {
        let old = base.is_some();
        let cpu = cpu_time(pid);
        let start = Instant::now();
        runtime.block_on(async {
            let mut w = SyncClient::open(state.socket(), "history").await.unwrap();
            for i in 0..stale_writes {
                let op = PatchOp::Put { path: vec![key("stale")], value: json!(i), kind: None };
                let base = match &base {
                    Some(base) => base.clone(),
                    None => w.get(&[]).await.unwrap().0,
                };
                let written = w.write(vec![op], Some(base)).await.unwrap();
                assert_eq!(written.stale, old, "only a write with the old base is stale");
            }
        });
        (start.elapsed() / stale_writes, (cpu_time(pid) - cpu) / stale_writes)
    };
    let (stale, stale_cpu) = measure(Some(oldest.clone()));
    let (fresh, fresh_cpu) = measure(None);
    line(
        &format!("a stale write, base {history} changes back: wall / daemon CPU"),
        format!("{:.2} ms / {:.2} ms", stale.as_secs_f64() * 1e3, stale_cpu.as_secs_f64() * 1e3),
    );
    line(
        "    baseline: get + write with the current base, same document",
        format!("{:.2} ms / {:.2} ms", fresh.as_secs_f64() * 1e3, fresh_cpu.as_secs_f64() * 1e3),
    );

    // --- sustained durable edits/s -----------------------------------------
    println!("\nsustained durable edits, 16 writers in one room, each awaiting every acknowledgement");
    let elapsed = runtime.block_on(sustained(state.socket(), "throughput", 16, edits));
    let rate = (16 * edits) as f64 / elapsed.as_secs_f64();
    line("hearth, 16 writers", format!("{rate:>9.0} edits/s"));
    let fsyncs = fsync_each(state.dir.path(), 500);
    line(
        "    baseline: one append + fdatasync per edit, same disk",
        format!("{:>9.0} edits/s", 500.0 / fsyncs.as_secs_f64()),
    );
    line("    target: at least 5,000 edits/s", if rate >= 5000.0 { "met" } else { "MISSED" });
    let one = runtime.block_on(sustained(state.socket(), "throughput1", 1, edits));
    line("    hearth, 1 writer", format!("{:>9.0} edits/s", edits as f64 / one.as_secs_f64()));

    // --- memory -------------------------------------------------------------
    println!("\nmemory (hearthd RSS)");
    drop(daemon);
    let state = StateDir::new();
    state.write_config("[sync]\nidle_unload = \"1h\"\n");
    let daemon = state.start(&[]);
    let pid = daemon.pid();
    // Warm up allocator and code paths with one room first.
    runtime.block_on(async {
        SyncClient::open(state.socket(), "warm").await.unwrap().put(&[key("a")], json!(1)).await.unwrap();
    });
    let before = rss_kib(pid).unwrap();
    runtime.block_on(async {
        for r in 0..rooms {
            let mut c = SyncClient::open(state.socket(), &format!("idle/{r}")).await.unwrap();
            c.put(&[key("title")], json!(format!("room {r}"))).await.unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(pid).unwrap();
    let per_room = (after.saturating_sub(before)) as f64 / rooms as f64;
    line(&format!("per idle loaded room ({rooms} rooms, a one-key document each)"), format!("{per_room:>7.1} KiB"));
    line("    target: under 64 KiB beyond its document", if per_room < 64.0 { "met" } else { "MISSED" });
    drop(daemon);
    let state = StateDir::new();
    state.write_config("[sync]\nidle_unload = \"50ms\"\n");
    let daemon = state.start(&[]);
    let pid = daemon.pid();
    runtime.block_on(async {
        SyncClient::open(state.socket(), "warm").await.unwrap().put(&[key("a")], json!(1)).await.unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid).unwrap();
    runtime.block_on(async {
        for r in 0..1000 {
            let mut c = SyncClient::open(state.socket(), &format!("cold/{r}")).await.unwrap();
            c.put(&[key("title")], json!(format!("doc {r}"))).await.unwrap();
        }
        let options = hearth::client::ConnectOptions::new(state.socket());
        let mut control = SyncClient::control(&options).await.unwrap();
        loop {
            let loaded = control.list(Some("cold/")).await.unwrap().iter().filter(|d| d.loaded).count();
            if loaded == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let after = rss_kib(pid).unwrap();
    line("per 1,000 unloaded documents (created, then unloaded)", format!("{:>7} KiB", after as i64 - before as i64));
    line("    baseline: the daemon before it created them", format!("{before:>7} KiB"));

    // --- replica mode from Node ---------------------------------------------
    println!("\nreplica mode from Node (@automerge/automerge), one writer, 15 replica readers");
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/node");
    if !node_dir.join("node_modules/@automerge/automerge").exists() {
        line("skipped", "run `npm ci` in benches/node first");
        return;
    }
    let out = std::process::Command::new("node")
        .arg(node_dir.join("replica.mjs"))
        .arg(state.socket())
        .output()
        .expect("node runs");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        println!("  node failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    drop(daemon);
}
