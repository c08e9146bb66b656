//! What event subscribers cost the requests everyone else makes.
//!
//! `cargo bench --bench events`. Against the real `hearthd` (release build)
//! on a temp state directory: ping throughput and durable submit throughput
//! (16 connections each) with 0, 1, 100 and 1,000 subscribers that take
//! every event, each figure beside the same run's figure with none (the
//! baseline). The subscribers count frames without decoding them, so that
//! the figure shows what serving them costs the daemon. Submits publish one event each, which every subscriber
//! receives; pings publish none. Target: under 5 % loss with 100.
//!
//! Knobs: `HEARTH_BENCH_SECS` (3) per ping run, `HEARTH_BENCH_SUBMITS`
//! (8000) per submit run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::StateDir;
use hearth::client::{QueueClient, StatusClient};
use hearth::protocol::event::EventFilter;
use hearth::protocol::queue::JobSpec;

const CONNECTIONS: usize = 16;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Subscribers that read every event until stopped; counts what they got.
struct Subscribers {
    received: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn subscribers(socket: &Path, n: usize) -> Subscribers {
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut c = StatusClient::connect(socket).await.unwrap();
        c.subscribe(EventFilter::default()).await.unwrap();
        let received = received.clone();
        // Frames are counted, not decoded, and a reader waits on its socket
        // alone (no timer per frame): the figure is the daemon's cost, not
        // the readers' work on the same two CPUs. The task is aborted at
        // the end of the run.
        tasks.push(tokio::spawn(async move {
            let conn = c.connection();
            loop {
                match conn.read_frame().await {
                    Ok(Some(frame)) => {
                        assert!(!frame.starts_with(br#"{"type":"lagged""#), "a subscriber lagged");
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => panic!("the daemon closed a subscription"),
                    Err(e) => panic!("subscriber: {e}"),
                }
            }
        }));
    }
    Subscribers { received, tasks }
}

impl Subscribers {
    async fn finish(self) -> u64 {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.received.load(Ordering::Relaxed)
    }
}

async fn ping_rate(socket: &Path, dur: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut c = StatusClient::connect(socket).await.unwrap();
        let (count, stop) = (count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.ping().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(dur / 5).await; // warm-up
    let before = count.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(dur).await;
    let done = count.load(Ordering::Relaxed) - before;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done as f64 / elapsed.as_secs_f64()
}

async fn submit_rate(socket: &Path, n: u64) -> f64 {
    let parked = JobSpec {
        argv: vec!["true".into()],
        run_at_ms: Some(hearth::time::now_ms() + 86_400_000),
        ..JobSpec::default()
    };
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (socket, spec) = (socket.to_owned(), parked.clone());
            tokio::spawn(async move {
                let mut c = QueueClient::connect(&socket).await.unwrap();
                for _ in 0..n / CONNECTIONS as u64 {
                    c.submit(spec.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (n / CONNECTIONS as u64 * CONNECTIONS as u64) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dur = Duration::from_secs(knob("HEARTH_BENCH_SECS", 3));
    let submits = knob("HEARTH_BENCH_SUBMITS", 8000);
    println!("hearth event-stream benchmark: {CONNECTIONS} connections, subscribers take every event");
    let state = StateDir::new();
    // Room for every subscriber to fall a whole submit run behind without lagging.
    state.write_config(&format!("[daemon]\nevent_buffer = {}\n", submits.max(4096)));
    let _daemon = state.start(&[]);
    let socket = state.socket();

    let mut base = (0.0, 0.0);
    println!(
        "  {:<14} {:>14} {:>10} {:>16} {:>10} {:>14}",
        "subscribers", "pings/s", "vs none", "submits/s", "vs none", "events read"
    );
    for n in [0usize, 1, 100, 1000] {
        let (pings, submitted, read) = runtime.block_on(async {
            let subs = subscribers(socket, n).await;
            let pings = ping_rate(socket, dur).await;
            let submitted = submit_rate(socket, submits).await;
            // Let every subscriber read the run's last events.
            let expected = submits / CONNECTIONS as u64 * CONNECTIONS as u64 * n as u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while subs.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (pings, submitted, subs.finish().await)
        });
        if n == 0 {
            base = (pings, submitted);
        }
        let loss = |v: f64, b: f64| format!("{:+.1} %", (v / b - 1.0) * 100.0);
        println!(
            "  {n:<14} {pings:>14.0} {:>10} {submitted:>16.0} {:>10} {read:>14}",
            loss(pings, base.0),
            loss(submitted, base.1)
        );
    }
    println!("  target: under 5 % loss with 100 subscribers");
}
