//! The queue's speed, each figure beside a baseline measured in the same run.
//!
//! `cargo bench --bench queue`. Everything runs against the real `hearthd`
//! (release build) on temp state directories under `$TMPDIR`, with
//! durability on (WAL, `synchronous=FULL`): figures depend on that disk's
//! fsync. Knobs (environment):
//!
//! - `HEARTH_BENCH_SUBMITS` (2000): submits per throughput run
//! - `HEARTH_BENCH_JOBS` (1000): `true` jobs end to end
//! - `HEARTH_BENCH_STORE_JOBS` (100000): jobs in the store for the latency run
//! - `HEARTH_BENCH_PROCESSES` (50): `hearth queue submit` processes

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::StateDir;
use hearth::client::{QueueClient, StatusClient};
use hearth::protocol::queue::{JobSpec, JobState, ListFilter};
use rusqlite::params;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn line(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<62} {value}");
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// A job that will not run during the measurement.
fn parked(token: String) -> JobSpec {
    JobSpec {
        argv: vec!["true".into(), token],
        run_at_ms: Some(hearth::time::now_ms() + 86_400_000),
        ..JobSpec::default()
    }
}

async fn submit_sequential(socket: &Path, n: usize) -> Vec<Duration> {
    let mut c = QueueClient::connect(socket).await.unwrap();
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        c.submit(parked(format!("seq-{i}"))).await.unwrap();
        latencies.push(start.elapsed());
    }
    latencies
}

async fn submit_concurrent(socket: &Path, connections: usize, n: usize) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|t| {
            let socket = socket.to_owned();
            tokio::spawn(async move {
                let mut c = QueueClient::connect(&socket).await.unwrap();
                for i in 0..n / connections {
                    c.submit(parked(format!("conc-{t}-{i}"))).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Raw SQLite inserts of a job-sized row, WAL + synchronous=FULL: one
/// transaction each, and in batches of `batch`.
fn raw_sqlite(dir: &Path, n: usize, batch: usize) -> Duration {
    let path = dir.join(format!("raw-{batch}.db"));
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)).unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT, state TEXT, argv TEXT, \
         env TEXT, cwd TEXT, created_at_ms INTEGER)",
    )
    .unwrap();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let tx = conn.transaction().unwrap();
        for _ in 0..batch.min(n - done) {
            tx.execute(
                "INSERT INTO jobs (queue, state, argv, env, cwd, created_at_ms) VALUES ('default', 'queued', ?1, '{}', '/tmp', ?2)",
                params![format!("[\"true\",\"raw-{done}\"]"), done as i64],
            )
            .unwrap();
            done += 1;
        }
        tx.commit().unwrap();
    }
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let submits = knob("HEARTH_BENCH_SUBMITS", 2000);
    let jobs = knob("HEARTH_BENCH_JOBS", 1000);
    let store_jobs = knob("HEARTH_BENCH_STORE_JOBS", 100_000);
    let processes = knob("HEARTH_BENCH_PROCESSES", 50);
    println!("hearth queue benchmark (release hearthd, temp state dir under {:?})", std::env::temp_dir());

    // --- submit throughput ------------------------------------------------
    println!("\nsubmit throughput, durable (acknowledged = committed, synchronous=FULL)");
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let seq = runtime.block_on(submit_sequential(state.socket(), submits));
    let seq_total: Duration = seq.iter().sum();
    let conc = runtime.block_on(submit_concurrent(state.socket(), 16, submits * 4));
    let raw_each = raw_sqlite(state.dir.path(), submits, 1);
    let raw_batched = raw_sqlite(state.dir.path(), submits * 4, 64);
    let pings = submits * 4;
    let ping_time = runtime.block_on(async {
        let mut c = StatusClient::connect(state.socket()).await.unwrap();
        let start = Instant::now();
        for _ in 0..pings {
            c.ping().await.unwrap();
        }
        start.elapsed()
    });
    let (seq_rate, conc_rate) = (rate(submits, seq_total), rate(submits * 4, conc));
    let (raw_each_rate, raw_batch_rate) = (rate(submits, raw_each), rate(submits * 4, raw_batched));
    line("submit, 1 connection, sequential", format!("{seq_rate:>9.0} jobs/s"));
    line(
        "  baseline: raw SQLite insert, one transaction each",
        format!("{raw_each_rate:>9.0} rows/s  (ratio {:.2})", seq_rate / raw_each_rate),
    );
    line("submit, 16 connections (target >= 5,000 jobs/s)", format!("{conc_rate:>9.0} jobs/s"));
    line(
        "  baseline: raw SQLite insert, 64 per transaction",
        format!("{raw_batch_rate:>9.0} rows/s  (ratio {:.2})", conc_rate / raw_batch_rate),
    );
    line("  baseline: status ping over the socket, 1 connection", format!("{:>9.0} pings/s", rate(pings, ping_time)));

    // --- end to end -------------------------------------------------------
    println!("\nend to end: {jobs} `true` jobs, 2 workers (all runnable at once, timed by the daemon's clock)");
    let e2e = StateDir::new();
    let _e2e_daemon = e2e.start(&["--queue-workers", "2"]);
    // The jobs are submitted one by one on one connection: plan with that rate.
    let runs_at = hearth::time::now_ms() + 1000 + (jobs as f64 / seq_rate * 2000.0) as u64;
    let last_finish = runtime.block_on(async {
        let mut c = QueueClient::connect(e2e.socket()).await.unwrap();
        let mut ids = Vec::with_capacity(jobs);
        for _ in 0..jobs {
            let spec = JobSpec { argv: vec!["true".into()], run_at_ms: Some(runs_at), ..JobSpec::default() };
            ids.push(c.submit(spec).await.unwrap().job.id);
        }
        assert!(hearth::time::now_ms() < runs_at, "submitting took longer than planned; raise the margin");
        // Wait for the last job, then for any still unfinished, without
        // following every job (a waiter per job would add work to the run).
        c.wait(*ids.last().unwrap(), |_| {}).await.unwrap();
        let active = vec![JobState::Queued, JobState::Running, JobState::RetryWait];
        let left = c.list(ListFilter { states: active, limit: Some(1000), ..ListFilter::default() }).await.unwrap();
        for job in left.jobs {
            c.wait(job.id, |_| {}).await.unwrap();
        }
        let mut last = 0;
        let mut before = None;
        loop {
            let filter = ListFilter { limit: Some(1000), before_id: before, ..ListFilter::default() };
            let page = c.list(filter).await.unwrap();
            for job in &page.jobs {
                assert_eq!(job.exit_code, Some(0));
                last = last.max(job.finished_at_ms.unwrap());
            }
            match page.next_before_id {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        last
    });
    let queue_total = Duration::from_millis(last_finish - runs_at);
    let direct_start = Instant::now();
    for _ in 0..jobs {
        Command::new("true").stdin(Stdio::null()).status().unwrap();
    }
    let direct_total = direct_start.elapsed();
    // The like-for-like baseline for two workers: the same spawns, two at a
    // time (two threads, each spawning and waiting for its half in turn).
    let pair_start = Instant::now();
    std::thread::scope(|scope| {
        for half in [jobs / 2, jobs - jobs / 2] {
            scope.spawn(move || {
                for _ in 0..half {
                    Command::new("true").stdin(Stdio::null()).status().unwrap();
                }
            });
        }
    });
    let pair_total = pair_start.elapsed();
    let per_job_queue = queue_total * 2 / jobs as u32;
    let per_job_direct = direct_total / jobs as u32;
    line("through the queue, wall time", format!("{:>9.2} s", queue_total.as_secs_f64()));
    line(
        "  baseline: spawn+wait `true` directly, one process, sequential",
        format!("{:>9.2} s", direct_total.as_secs_f64()),
    );
    line(
        "  baseline: spawn+wait `true` directly, two at a time",
        format!(
            "{:>9.2} s  (queue at {:.2}x of it; target <= 1.2x)",
            pair_total.as_secs_f64(),
            queue_total.as_secs_f64() / pair_total.as_secs_f64()
        ),
    );
    line("per job, per worker (wall time x 2 workers / jobs)", ms(per_job_queue));
    line("  baseline: one direct spawn", ms(per_job_direct));
    let overhead = per_job_queue.saturating_sub(per_job_direct);
    line("dispatch overhead per job (target < 1 ms)", ms(overhead));
    // Neither durable commit of an attempt (its start, its end) sits between
    // one job's end and the next one's start any more: the raw one-row
    // commit is shown for scale only.
    let commit = Duration::from_secs_f64(1.0 / raw_each_rate);
    line("  for scale: one durable commit (raw one-row baseline), not in the path", ms(commit));

    // --- hearth queue submit as a process -----------------------------------
    println!("\n`hearth queue submit` as a whole process ({processes} runs each, mean)");
    let time_process = |mut cmd: Command| {
        let start = Instant::now();
        for _ in 0..processes {
            let status = cmd.stdout(Stdio::null()).status().unwrap();
            assert!(status.success());
        }
        start.elapsed() / processes as u32
    };
    let mut cli = state.hearth();
    cli.args(["queue", "submit", "--delay", "1d", "--", "true"]);
    let cli_time = time_process(cli);
    let true_time = time_process(Command::new("/bin/true"));
    line("hearth queue submit -- true", ms(cli_time));
    line(
        "  baseline: /bin/true",
        format!("{}  (ratio {:.1})", ms(true_time), cli_time.as_secs_f64() / true_time.as_secs_f64()),
    );

    // --- latency against store size ---------------------------------------
    println!("\nsubmit latency, 1 connection, 500 submits after 200 unmeasured (target: flat as the store grows)");
    let empty = StateDir::new();
    let _empty_daemon = empty.start(&[]);
    // Each daemon gets 200 unmeasured submits first (start-up pruning, caches).
    runtime.block_on(submit_sequential(empty.socket(), 200));
    let mut at_zero = runtime.block_on(submit_sequential(empty.socket(), 500));
    let full = StateDir::new();
    full.write_config("[queue]\nkeep_finished_count = 100000000\n");
    {
        let mut daemon = full.start(&[]);
        runtime.block_on(submit_sequential(full.socket(), 1));
        daemon.stop();
    }
    fill_store(&full.state_dir().join("queue/queue.db"), store_jobs);
    let _full_daemon = full.start(&[]);
    let jobs_in_store = runtime.block_on(async {
        let mut c = QueueClient::connect(full.socket()).await.unwrap();
        let stats = c.stats().await.unwrap();
        let _ = c.list(ListFilter::default()).await.unwrap();
        stats.states.queued + stats.states.succeeded
    });
    runtime.block_on(submit_sequential(full.socket(), 200));
    let mut at_full = runtime.block_on(submit_sequential(full.socket(), 500));
    at_zero.sort();
    at_full.sort();
    for (label, zero, full) in [
        ("median", percentile(&at_zero, 0.5), percentile(&at_full, 0.5)),
        ("p99", percentile(&at_zero, 0.99), percentile(&at_full, 0.99)),
    ] {
        line(&format!("{label} at {jobs_in_store} jobs in the store"), ms(full));
        line(
            &format!("  baseline: {label} at 0 jobs"),
            format!("{}  (ratio {:.2})", ms(zero), full.as_secs_f64() / zero.as_secs_f64()),
        );
    }
}

/// Adds `n` jobs to a stopped daemon's store, half waiting far in the
/// future and half succeeded, as copies of its first job.
fn fill_store(db: &Path, n: usize) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO jobs (queue, state, priority, argv, env, cwd, input_bytes, max_attempts, backoff_base_ms, \
                 backoff_cap_ms, created_at_ms, run_at_ms, finished_at_ms) \
                 SELECT queue, ?1, priority, argv, env, cwd, input_bytes, max_attempts, backoff_base_ms, backoff_cap_ms, \
                 created_at_ms, run_at_ms, ?2 FROM jobs WHERE id = 1",
            )
            .unwrap();
        let now = hearth::time::now_ms() as i64;
        for i in 0..n {
            let (state, finished) = if i % 2 == 0 { ("queued", None) } else { ("succeeded", Some(now)) };
            insert.execute(params![state, finished]).unwrap();
        }
    }
    tx.commit().unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
}
