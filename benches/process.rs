//! The process channel's figures, against the real `hearthd` (release
//! build) on a temp state directory:
//!
//! - restart latency: from `SIGKILL` of a supervised process to its next
//!   instance running (it writes its pid to a FIFO the bench reads), beside
//!   the backoff it is configured with (`backoff_base_ms` =
//!   `backoff_max_ms`, so every restart waits exactly that long), and beside
//!   a minimal supervisor measured in the same run: this bench itself
//!   reaping the same program and starting it again at once (the floor:
//!   fork, exec, `sh` starting up);
//! - daemon CPU while idle with 50 supervised processes, each touching its
//!   heartbeat file every second under a heartbeat check: the daemon's
//!   utime + stime (`/proc/<pid>/stat`) over a window, beside the same
//!   daemon idle with none (measured first, in the same run), and beside
//!   a minimal supervisor of the same 50 processes (`sh` starting them and
//!   waiting).
//!
//! Target: under 0.5 % of one core with 50 supervised processes.
//!
//! Knobs (environment): HEARTH_BENCH_RESTARTS (kills per backoff, default
//! 40), HEARTH_BENCH_IDLE_SECS (each CPU window, default 20),
//! HEARTH_BENCH_PROCESSES (default 50).

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hearth::client::ProcessClient;
use hearth::protocol::process::{ProcessCheck, ProcessDefinition, ProcessState, Selector};

const HEARTHD: &str = env!("CARGO_BIN_EXE_hearthd");

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
    if us < 1000.0 { format!("{us:.0} µs") } else { format!("{:.2} ms", us / 1000.0) }
}

fn line(label: &str, s: &Stats) {
    println!("  {label:<52} p50 {:>10}  p99 {:>10}  (n={})", show(s.p50), show(s.p99), s.n);
}

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new().prefix("hearth-bench-").tempdir().expect("temp dir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(state.join("config.toml"), "[process]\nmax_processes = 256\n").unwrap();
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
        Daemon { child, dir, socket }
    }

    fn work(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("work").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = hearth::sys::kill(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

/// A FIFO whose lines (pids written by the processes) arrive on a channel
/// with the moment they were read.
fn fifo_lines(path: &Path) -> mpsc::Receiver<(Instant, u32)> {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
    // Opened for reading and writing, so that it never reads an end of file
    // between two writers.
    let fifo = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open the FIFO");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for text in std::io::BufReader::new(fifo).lines().map_while(Result::ok) {
            if let Ok(pid) = text.trim().parse()
                && tx.send((Instant::now(), pid)).is_err()
            {
                break;
            }
        }
    });
    rx
}

fn next_pid(rx: &mpsc::Receiver<(Instant, u32)>, what: &str) -> (Instant, u32) {
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no pid from {what} within 60s"))
}

const REPORTER: &str = "echo $$ > \"$FIFO\"; exec sleep 100000";

/// Kills the supervised `name` `samples` times; each time, how long until
/// its next instance wrote its pid.
async fn restart_latency(
    client: &mut ProcessClient,
    daemon: &Daemon,
    name: &str,
    backoff: Duration,
    samples: usize,
) -> Vec<Duration> {
    let work = daemon.work(name);
    let fifo = work.join("fifo");
    let rx = fifo_lines(&fifo);
    let ms = backoff.as_millis() as u64;
    let mut def = ProcessDefinition {
        name: name.into(),
        argv: vec!["sh".into(), "-c".into(), REPORTER.into()],
        cwd: Some(work),
        backoff_base_ms: Some(ms),
        backoff_max_ms: Some(ms),
        max_restarts: Some(10_000),
        ..Default::default()
    };
    def.env.insert("FIFO".into(), fifo.display().to_string());
    client.define(def).await.expect("define");
    let (_, mut pid) = next_pid(&rx, name);
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let killed = Instant::now();
        hearth::sys::kill(pid, libc::SIGKILL).expect("kill");
        let (at, next) = next_pid(&rx, name);
        out.push(at.duration_since(killed));
        pid = next;
    }
    client.remove(name).await.expect("remove");
    out
}

/// The floor: this process as the supervisor, restarting the same program
/// the moment it has reaped it.
fn minimal_restarts(daemon: &Daemon, samples: usize) -> Vec<Duration> {
    let work = daemon.work("minimal");
    let fifo = work.join("fifo");
    let rx = fifo_lines(&fifo);
    let spawn = || {
        Command::new("sh")
            .args(["-c", REPORTER])
            .env("FIFO", &fifo)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let mut child = spawn();
    next_pid(&rx, "the minimal supervisor's child");
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let killed = Instant::now();
        child.kill().expect("kill");
        child.wait().expect("reap");
        child = spawn();
        let (at, _) = next_pid(&rx, "the minimal supervisor's child");
        out.push(at.duration_since(killed));
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    let (_, rest) = stat.rsplit_once(')').expect("a stat line");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

/// The share of one core `pid` used over `window`, in percent.
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_ticks(pid);
    let start = Instant::now();
    std::thread::sleep(window);
    let ticks = cpu_ticks(pid) - before;
    ticks as f64 / clock_ticks_per_second() / start.elapsed().as_secs_f64() * 100.0
}

const BEATER: &str = "while :; do touch hb; sleep 1; done";

fn main() {
    let restarts = knob("HEARTH_BENCH_RESTARTS", 40);
    let window = Duration::from_secs(knob("HEARTH_BENCH_IDLE_SECS", 20) as u64);
    let count = knob("HEARTH_BENCH_PROCESSES", 50);
    let daemon = Daemon::start();
    let pid = daemon.child.id();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let profile = if cfg!(debug_assertions) { "debug build: figures are not representative" } else { "release build" };
    println!("process benchmark: {HEARTHD} ({profile}), state dir {}", daemon.dir.path().display());
    println!();

    runtime.block_on(async {
        let mut client = ProcessClient::connect(&daemon.socket).await.unwrap();

        println!("restart latency: SIGKILL of a process → its next instance running (it wrote its pid)");
        let floor = stats(minimal_restarts(&daemon, restarts));
        line("minimal supervisor (reap, start again at once)", &floor);
        let mut overheads = Vec::new();
        for (backoff, samples) in [(0, restarts), (100, restarts), (1000, restarts.min(10))] {
            let backoff = Duration::from_millis(backoff);
            let s = stats(restart_latency(&mut client, &daemon, &format!("r{}", backoff.as_millis()), backoff, samples).await);
            line(&format!("hearthd, backoff {}", show(backoff)), &s);
            println!(
                "    beyond the backoff: p50 {}, p99 {}",
                show(s.p50.saturating_sub(backoff)),
                show(s.p99.saturating_sub(backoff))
            );
            overheads.push(s.p50.saturating_sub(backoff));
        }
        println!();

        println!("daemon CPU while idle ({}s windows, utime + stime from /proc)", window.as_secs());
        let idle = cpu_share(pid, window);
        println!("  {:<52} {idle:.3} % of one core", "hearthd, no processes");
        for n in 0..count {
            let name = format!("beater{n:02}");
            let def = ProcessDefinition {
                name: name.clone(),
                argv: vec!["sh".into(), "-c".into(), BEATER.into()],
                cwd: Some(daemon.work(&name)),
                check: Some(ProcessCheck::Heartbeat { path: "hb".into(), stale_ms: 30_000, start_timeout_ms: None }),
                ..Default::default()
            };
            client.define_with(def, false).await.expect("define");
        }
        let started = client.start(Selector::all()).await.expect("start all");
        assert!(started.values().all(|b| b.state == ProcessState::Running), "all ready");
        // Let the start-up work (the readiness polls) settle first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let busy = cpu_share(pid, window);
        println!("  {:<52} {busy:.3} % of one core", format!("hearthd, {count} processes with heartbeat checks"));
        client.stop(Selector::all()).await.expect("stop all");

        let dirs: Vec<PathBuf> = (0..count).map(|n| daemon.work(&format!("minimal{n:02}"))).collect();
        let script: String = dirs.iter().map(|d| format!("(cd '{}' && {BEATER}) & ", d.display())).collect();
        let mut minimal = Command::new("sh")
            .args(["-c", &format!("{script}wait")])
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .expect("sh");
        std::thread::sleep(Duration::from_secs(2));
        let floor_cpu = cpu_share(minimal.id(), window);
        let _ = hearth::sys::killpg(minimal.id(), libc::SIGKILL);
        let _ = minimal.wait();
        println!("  {:<52} {floor_cpu:.3} % of one core", format!("minimal supervisor (sh, wait) of the same {count}"));
        println!();
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "target: daemon CPU under 0.5 % of one core with {count} supervised processes: {} ({busy:.3} %; {idle:.3} % with none)",
            verdict(busy < 0.5)
        );
        println!(
            "restart overhead beyond the backoff, p50: {} (the minimal supervisor's whole restart: {})",
            overheads.iter().map(|d| show(*d)).collect::<Vec<_>>().join(", "),
            show(floor.p50)
        );
    });
    drop(daemon);
}
