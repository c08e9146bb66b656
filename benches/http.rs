//! What a `/metrics` scrape costs, with 10,000 jobs stored.
//!
//! `cargo bench --bench http`. Against the real `hearthd` (release build) on
//! a temp state directory holding 10,000 jobs (9,000 parked for tomorrow in
//! 10 queues, 1,000 run to the end), each scrape a full `GET /metrics` over
//! one keep-alive connection, read to its last byte. Beside it, measured in
//! the same run: the HTTP server's cheapest answer (the blob route's `404`
//! for a hash it does not hold, on the same kind of connection) and a
//! `status` request over the socket (health, counters, summaries: the
//! socket's nearest equivalent of a scrape). Target: a scrape under 10 ms.
//!
//! Knobs: `HEARTH_BENCH_JOBS` (10000), `HEARTH_BENCH_ROUNDS` (300).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::StateDir;
use hearth::client::{QueueClient, StatusClient};
use hearth::protocol::queue::JobSpec;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One keep-alive HTTP/1.1 connection that reads whole answers.
struct Http {
    reader: BufReader<TcpStream>,
    port: u16,
}

impl Http {
    fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Http { reader: BufReader::new(stream), port }
    }

    /// Sends `GET path` and reads the answer; returns its status and body length.
    fn get(&mut self, path: &str) -> (u16, usize) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port);
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status = 0;
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
                status = rest[..3].parse().unwrap();
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, length)
    }
}

/// Median and 99th percentile of `samples`.
fn summary(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let jobs = knob("HEARTH_BENCH_JOBS", 10_000);
    let rounds = knob("HEARTH_BENCH_ROUNDS", 300) as usize;
    println!("hearth /metrics benchmark: {jobs} jobs stored, {rounds} rounds each");
    let state = StateDir::new();
    state.write_config("[queue]\nworkers = 4\n");
    let _daemon = state.start(&["--http-port", "0"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = state.socket().to_owned();

    let stored = Instant::now();
    runtime.block_on(async {
        let finished = jobs / 10;
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let mut c = QueueClient::connect(&socket).await.unwrap();
                    for i in (t..jobs).step_by(8) {
                        let run_now = i < finished;
                        let spec = JobSpec {
                            argv: vec!["true".into(), format!("{i}")],
                            queue: Some(format!("q{}", i % 10)),
                            run_at_ms: (!run_now).then(|| hearth::time::now_ms() + 86_400_000),
                            ..JobSpec::default()
                        };
                        c.submit(spec).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Wait until the jobs that run now have run.
        let mut c = QueueClient::connect(&socket).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let stats = c.stats().await.unwrap();
            if stats.states.succeeded >= finished || Instant::now() > deadline {
                assert!(stats.states.succeeded >= finished, "the jobs that run now did not finish in time");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    println!("  stored {jobs} jobs in {:.1} s", stored.elapsed().as_secs_f64());

    let url = state.daemon_info()["endpoints"]["http"].as_str().unwrap().to_owned();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut http = Http::connect(port);
    let missing = format!("/blob/sha256:{}", "0".repeat(64));
    let (status, size) = http.get("/metrics");
    assert_eq!(status, 200);
    // Warm both paths, then alternate them so that both see the same machine.
    for _ in 0..20 {
        http.get("/metrics");
        http.get(&missing);
    }
    let mut scrapes = Vec::with_capacity(rounds);
    let mut not_found = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(http.get("/metrics").0, 200);
        scrapes.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(http.get(&missing).0, 404);
        not_found.push(t.elapsed());
    }
    let statuses = runtime.block_on(async {
        let mut c = StatusClient::connect(&socket).await.unwrap();
        for _ in 0..20 {
            c.status().await.unwrap();
        }
        let mut out = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            c.status().await.unwrap();
            out.push(t.elapsed());
        }
        out
    });
    let (scrape, scrape_p99) = summary(scrapes);
    let (nf, nf_p99) = summary(not_found);
    let (st, st_p99) = summary(statuses);
    println!("  {:<44} {:>12} {:>12}", "", "median", "p99");
    println!("  {:<44} {:>12} {:>12}", format!("GET /metrics ({size} bytes)"), ms(scrape), ms(scrape_p99));
    println!("  {:<44} {:>12} {:>12}", "baseline: GET /blob/<missing> → 404", ms(nf), ms(nf_p99));
    println!("  {:<44} {:>12} {:>12}", "baseline: status over the socket", ms(st), ms(st_p99));
    println!("  target: a scrape under 10 ms");
}
