//! The pool channel's headline: how long a warm `take` takes, beside the
//! cold build of the same kind measured in the same run, for a trivial kind
//! (`sh -c 'mkdir -p {path}/work'`) and for real Python venvs.
//!
//! Measured against the real `hearthd` (release build) on a temp state
//! directory, over its Unix socket:
//!
//! - floor: the status channel's `ping` round trip on one connection, and a
//!   whole `hearth ping` process;
//! - warm take through the library: one `take` request on an open
//!   connection, with resources ready (the pool refills between rounds, and
//!   its replacement builds run while the takes are measured, as they would);
//! - warm take through the CLI: a whole `hearth --json pool take NAME`
//!   process, start to exit, each started with the pool full and idle,
//!   beside `hearth ping` started in the same conditions;
//! - cold: a `take` on a pool of size 0, which builds on demand;
//! - a steady take rate: 10 takes a second from a pool of 6, each keeping
//!   its resource, beside the same at 2.5 takes a second (slower than the
//!   200 ms replacement delay): how many were warm, and the fewest ready
//!   resources left after a take.
//!
//! Targets: warm take p50 under 1 ms through the library and under 3 ms
//! through the CLI.
//!
//! Knobs (environment): HEARTH_BENCH_TAKES (library warm takes, default 300),
//! HEARTH_BENCH_CLI_TAKES (default 60), HEARTH_BENCH_COLD (trivial cold
//! takes, default 40), HEARTH_BENCH_VENV_COLD (default 2),
//! HEARTH_BENCH_VENV_ROUNDS (rounds of 4 warm venv takes, default 2),
//! HEARTH_BENCH_STEADY_TAKES (takes at 10/s, default 40; half as many at
//! 2.5/s), HEARTH_BENCH_VENV=0 skips the venv kind.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth::client::{PoolClient, StatusClient};
use hearth::protocol::pool::{LeaseId, PoolDefinition, PoolKind};

const HEARTHD: &str = env!("CARGO_BIN_EXE_hearthd");
const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Stats {
    p50: Duration,
    p99: Duration,
    n: usize,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    assert!(n > 0, "no samples");
    Stats { p50: samples[n / 2], p99: samples[(n * 99 / 100).min(n - 1)], n }
}

fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn line(label: &str, s: &Stats) {
    println!("  {label:<44} p50 {:>10}  p99 {:>10}  (n={})", show(s.p50), show(s.p99), s.n);
}

struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    state: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new().prefix("hearth-bench-").tempdir().expect("temp dir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(state.join("config.toml"), "[pool]\nmax_concurrent_builds = 2\n").unwrap();
        let child = Command::new(HEARTHD)
            .arg("--state-dir")
            .arg(&state)
            .env("HEARTH_LOG", "warn")
            .env_remove("HEARTH_SOCKET")
            .env_remove("HEARTH_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hearthd");
        let socket = state.join("hearth.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "hearthd did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        Daemon { child, _dir: dir, state, socket }
    }

    fn cli(&self) -> Command {
        let mut cmd = Command::new(HEARTH);
        cmd.env("HEARTH_STATE_DIR", &self.state).env_remove("HEARTH_SOCKET").stdin(Stdio::null());
        cmd
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.cli().args(["shutdown"]).stdout(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

async fn wait_full(pool: &mut PoolClient, name: &str, ready: u32) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = pool.pool_status(name).await.expect("status");
        if s.ready >= ready && s.building == 0 && s.checking == 0 {
            return;
        }
        assert!(s.failures == 0, "pool {name} fails: {:?}", s.last_error);
        assert!(Instant::now() < deadline, "pool {name} did not fill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn trivial(name: &str, size: u32) -> PoolDefinition {
    PoolDefinition {
        name: name.into(),
        create: Some(vec!["sh".into(), "-c".into(), "mkdir -p {path}/work".into()]),
        size,
        ..Default::default()
    }
}

/// Warm takes in rounds of `round`: fill, take them all (timed), release.
async fn warm_takes(pool: &mut PoolClient, name: &str, round: u32, samples: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(samples);
    while out.len() < samples {
        wait_full(pool, name, round).await;
        let mut leases = Vec::new();
        for _ in 0..round.min((samples - out.len()) as u32) {
            let start = Instant::now();
            let lease = pool.take_within(name, Duration::ZERO).await.expect("warm take");
            out.push(start.elapsed());
            assert!(lease.warm);
            leases.push(lease.lease);
        }
        for lease in leases {
            pool.release(&lease, false).await.expect("release");
        }
    }
    out
}

/// Cold takes: each builds on demand.
async fn cold_takes(pool: &mut PoolClient, name: &str, samples: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut takes, mut builds) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let start = Instant::now();
        let lease = pool.take(name).await.expect("cold take");
        takes.push(start.elapsed());
        builds.push(Duration::from_millis(lease.build_ms));
        assert!(!lease.warm);
        pool.release(&lease.lease, false).await.expect("release");
    }
    (takes, builds)
}

/// What a steady take rate left: takes served warm, of how many, and the
/// fewest ready resources seen right after a take.
struct Steady {
    warm: usize,
    takes: usize,
    fewest_ready: u32,
}

/// `takes` takes, one every `every`, each keeping its resource (so that
/// each calls for a replacement); released at the end.
async fn steady_takes(pool: &mut PoolClient, name: &str, size: u32, every: Duration, takes: usize) -> Steady {
    wait_full(pool, name, size).await;
    let mut leases = Vec::new();
    let mut fewest_ready = size;
    let start = tokio::time::Instant::now();
    for n in 0..takes {
        tokio::time::sleep_until(start + every * n as u32).await;
        if let Ok(lease) = pool.take_within(name, Duration::ZERO).await {
            leases.push(lease.lease);
        }
        fewest_ready = fewest_ready.min(pool.pool_status(name).await.expect("status").ready);
    }
    let warm = leases.len();
    for lease in leases {
        pool.release(&lease, false).await.expect("release");
    }
    Steady { warm, takes, fewest_ready }
}

fn steady_line(label: &str, s: &Steady, size: u32) {
    println!("  {label:<44} {}/{} warm, fewest ready after a take {} of {size}", s.warm, s.takes, s.fewest_ready);
}

fn cli_take(daemon: &Daemon, name: &str) -> (Duration, LeaseId) {
    let start = Instant::now();
    let out = daemon.cli().args(["--json", "pool", "take", name, "--timeout", "0s"]).output().expect("run hearth");
    let elapsed = start.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lease: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON lease");
    (elapsed, lease["lease"].as_str().unwrap().parse().unwrap())
}

fn cli_ping(daemon: &Daemon) -> Duration {
    let start = Instant::now();
    let out = daemon.cli().args(["ping"]).output().expect("run hearth");
    assert!(out.status.success());
    start.elapsed()
}

fn main() {
    let takes = knob("HEARTH_BENCH_TAKES", 300);
    let cli_takes = knob("HEARTH_BENCH_CLI_TAKES", 60);
    let cold = knob("HEARTH_BENCH_COLD", 40);
    let venv = knob("HEARTH_BENCH_VENV", 1) != 0;
    let venv_cold = knob("HEARTH_BENCH_VENV_COLD", 2);
    let venv_rounds = knob("HEARTH_BENCH_VENV_ROUNDS", 2);
    let steady = knob("HEARTH_BENCH_STEADY_TAKES", 40);

    let daemon = Daemon::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let profile = if cfg!(debug_assertions) { "debug build: figures are not representative" } else { "release build" };
    println!("pool benchmark: {HEARTHD} ({profile}), state dir {}", daemon.state.display());
    println!("  builds: at most 2 at once; replacements start within 200 ms of a take, so runs of");
    println!("  back-to-back library takes share the machine with the previous ones' builds");
    println!();

    runtime.block_on(async {
        let mut status = StatusClient::connect(&daemon.socket).await.unwrap();
        let mut pool = PoolClient::connect(&daemon.socket).await.unwrap();
        for _ in 0..50 {
            status.ping().await.unwrap();
        }
        let mut pings = Vec::new();
        for _ in 0..takes.max(100) {
            let start = Instant::now();
            status.ping().await.unwrap();
            pings.push(start.elapsed());
        }
        let ping = stats(pings);
        let cli_pings: Vec<Duration> = (0..cli_takes.clamp(10, 50)).map(|_| cli_ping(&daemon)).collect();
        let cli_floor = stats(cli_pings);

        // The trivial kind.
        pool.define(trivial("trivial", 16)).await.unwrap();
        pool.define(trivial("trivial-cold", 0)).await.unwrap();
        let (cold_t, cold_b) = cold_takes(&mut pool, "trivial-cold", cold).await;
        let warm_lib = stats(warm_takes(&mut pool, "trivial", 16, takes).await);
        // Each CLI take starts with the pool full and idle, as a user's
        // or a script's single take would. A process started right after a
        // refill (the last build's child just reaped, caches cold) is slower
        // than one in a tight loop, so the `hearth ping` floor for this figure
        // is measured in alternate rounds under the very same conditions: the
        // round before each measurement cycles one resource, then waits for
        // the pool to refill.
        let mut cli = Vec::new();
        let mut cli_pings_same = Vec::new();
        for round in 0..cli_takes * 2 {
            wait_full(&mut pool, "trivial", 16).await;
            let lease = if round % 2 == 0 {
                cli_pings_same.push(cli_ping(&daemon));
                pool.take("trivial").await.unwrap().lease
            } else {
                let (elapsed, lease) = cli_take(&daemon, "trivial");
                cli.push(elapsed);
                lease
            };
            pool.release(&lease, false).await.unwrap();
        }
        let warm_cli = stats(cli);
        let cli_floor_same = stats(cli_pings_same);
        pool.drain("trivial").await.unwrap();
        let (cold_t, cold_b) = (stats(cold_t), stats(cold_b));

        pool.define(trivial("steady", 6)).await.unwrap();
        let fast = steady_takes(&mut pool, "steady", 6, Duration::from_millis(100), steady).await;
        let slow = steady_takes(&mut pool, "steady", 6, Duration::from_millis(400), (steady / 2).max(1)).await;
        pool.drain("steady").await.unwrap();

        println!("floor (same run)");
        line("status ping round trip (library)", &ping);
        line("`hearth ping` (whole process)", &cli_floor);
        println!();
        println!("trivial kind: sh -c 'mkdir -p {{path}}/work'");
        line("warm take (library)", &warm_lib);
        line("warm take (`hearth pool take`, whole process)", &warm_cli);
        line("  `hearth ping` in the same conditions", &cli_floor_same);
        line("cold take (built on demand)", &cold_t);
        line("  of which the build", &cold_b);
        println!(
            "  cold / warm (library, p50): {:.1}x",
            cold_t.p50.as_secs_f64() / warm_lib.p50.as_secs_f64().max(1e-9)
        );
        println!();
        println!("steady take rate, pool of 6, each take keeping its resource");
        steady_line("10 takes/s", &fast, 6);
        steady_line("2.5 takes/s (baseline: slower than the delay)", &slow, 6);

        let mut venv_result = None;
        if venv {
            let mut venv_def = trivial("venv-warm", 4);
            venv_def.create = None;
            venv_def.kind = Some(PoolKind::Venv);
            let (vcold_t, vcold_b) = cold_takes(&mut pool, "venv", venv_cold).await;
            pool.define(venv_def).await.unwrap();
            let vwarm = stats(warm_takes(&mut pool, "venv-warm", 4, venv_rounds * 4).await);
            pool.drain("venv-warm").await.unwrap();
            let commands = pool.pool_status("venv").await.unwrap().commands.map(|c| c.create).unwrap_or_default();
            println!();
            println!("venv kind: {}", commands.iter().map(|c| c.join(" ")).collect::<Vec<_>>().join(" && "));
            line("warm take (library)", &vwarm);
            let (vcold_t, vcold_b) = (stats(vcold_t), stats(vcold_b));
            line("cold take (built on demand)", &vcold_t);
            line("  of which the build", &vcold_b);
            venv_result = Some((vwarm, vcold_t));
        }

        println!();
        if let Some((warm, cold)) = &venv_result {
            println!(
                "headline: a ready venv in {} instead of {} ({:.0}x faster)",
                show(warm.p50),
                show(cold.p50),
                cold.p50.as_secs_f64() / warm.p50.as_secs_f64().max(1e-9)
            );
        }
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "target: every take warm at 10 takes/s, as at 2.5: {} ({}/{} beside {}/{})",
            verdict(fast.warm == fast.takes && slow.warm == slow.takes),
            fast.warm,
            fast.takes,
            slow.warm,
            slow.takes
        );
        println!(
            "target: warm take p50 < 1 ms through the library: {} ({}; {:.1}x the ping floor)",
            verdict(warm_lib.p50 < Duration::from_millis(1)),
            show(warm_lib.p50),
            warm_lib.p50.as_secs_f64() / ping.p50.as_secs_f64().max(1e-9)
        );
        println!(
            "target: warm take p50 < 3 ms through the CLI: {} ({}; `hearth ping` {} in the same conditions, {} back to back)",
            verdict(warm_cli.p50 < Duration::from_millis(3)),
            show(warm_cli.p50),
            show(cli_floor_same.p50),
            show(cli_floor.p50)
        );
    });
    drop(daemon);
}
