//! The core's figures, each beside a baseline measured in the same run:
//!
//! - ping round trip on one connection (p50/p99), client and server pinned
//!   to one CPU, against hearthd and against a minimal server with the same
//!   framing and handshake (this binary, re-run with `--baseline-server`);
//! - ping throughput with 16 and 64 concurrent connections, same two servers;
//! - cold start: nothing running → `ensure_daemon_running` → first pong,
//!   beside spawning the minimal server → first pong;
//! - `hearth ping` as a whole process beside a minimal Rust client built
//!   here (the floor for any Rust program doing the exchange) and `/bin/true`;
//! - cold start through the CLI (`hearth daemon start` + `hearth ping`)
//!   beside sccache and watchman where installed;
//! - idle RSS, and RSS with 1,000 open idle connections, beside the minimal server.
//!
//! Run: `cargo bench --bench core`. Knobs: `PINGS` (default 20000),
//! `THROUGHPUT_SECS` (default 2), `RUNS` (default 30).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hearth::client::{EnsureOptions, StatusClient, ensure_daemon_running};
use hearth::paths::Paths;
use hearth::protocol::frame::FrameCodec;
use tokio::net::UnixListener;
use tokio_util::codec::Framed;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--baseline-server") {
        baseline_server(Path::new(&args[i + 1]));
        return;
    }
    let hearthd = PathBuf::from(env!("CARGO_BIN_EXE_hearthd"));
    let hearth = PathBuf::from(env!("CARGO_BIN_EXE_hearth"));
    let me = std::env::current_exe().expect("own path");
    let dir = tempfile::Builder::new().prefix("hearth-bench-").tempdir().expect("temp dir");
    let pings = env_num("PINGS", 20_000) as usize;
    let secs = env_num("THROUGHPUT_SECS", 2);
    let runs = env_num("RUNS", 30) as usize;
    let taskset = Path::new("/usr/bin/taskset").exists() && num_cpus() > 1;

    println!(
        "hearth core benchmark ({} CPUs; {})",
        num_cpus(),
        if taskset { "latency pinned to CPU 0 with taskset" } else { "not pinned: taskset unavailable" }
    );
    println!(
        "baseline: a minimal Unix-socket server, same framing and handshake, fixed pong, same tokio runtime shape\n"
    );

    // --- latency, pinned -----------------------------------------------------
    let pin = if taskset { Some(0) } else { None };
    let d = Server::hearthd(&hearthd, &dir.path().join("lat-d"), pin);
    let b = Server::baseline(&me, &dir.path().join("lat-b"), pin);
    let rt = current_thread(pin);
    let lat_d = rt.block_on(latency(&d.socket, pings));
    let lat_b = rt.block_on(latency(&b.socket, pings));
    drop((d, b));
    println!("ping round trip, one connection, {pings} pings, client and server on CPU 0");
    row("  p50", lat_d.0, lat_b.0, "µs", "target ≤ 1.5× baseline");
    row("  p99", lat_d.1, lat_b.1, "µs", "");

    // --- throughput ------------------------------------------------------------
    let d = Server::hearthd(&hearthd, &dir.path().join("tp-d"), None);
    let b = Server::baseline(&me, &dir.path().join("tp-b"), None);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("\nping throughput, {secs} s per figure, connections spread over the machine's CPUs");
    for conns in [16, 64] {
        let td = rt.block_on(throughput(&d.socket, conns, Duration::from_secs(secs)));
        let tb = rt.block_on(throughput(&b.socket, conns, Duration::from_secs(secs)));
        let target = if conns == 64 { "target ≥ 0.90× baseline" } else { "" };
        row(&format!("  {conns} connections"), td, tb, "pings/s", target);
    }

    // --- idle RSS and 1,000 idle connections -------------------------------------
    let rss_d0 = rss_kib(d.pid(), "VmRSS");
    let rss_b0 = rss_kib(b.pid(), "VmRSS");
    let anon_d0 = rss_kib(d.pid(), "RssAnon");
    let anon_b0 = rss_kib(b.pid(), "RssAnon");
    let held_d = rt.block_on(open_idle(&d.socket, 1000));
    let held_b = rt.block_on(open_idle(&b.socket, 1000));
    let rss_d1 = rss_kib(d.pid(), "VmRSS");
    let rss_b1 = rss_kib(b.pid(), "VmRSS");
    drop((held_d, held_b));
    println!(
        "\nmemory (VmRSS; RssAnon is the part of it private to the process, the rest is mapped code shared through the page cache)"
    );
    row("  idle", rss_d0 as f64 / 1024.0, rss_b0 as f64 / 1024.0, "MiB", "target < 10 MiB");
    row("  idle, RssAnon", anon_d0 as f64 / 1024.0, anon_b0 as f64 / 1024.0, "MiB", "");
    row("  1,000 idle connections", rss_d1 as f64 / 1024.0, rss_b1 as f64 / 1024.0, "MiB", "target < 64 MiB");
    drop((d, b));

    // --- cold start ----------------------------------------------------------------
    let mut cold_d = Vec::new();
    let mut cold_b = Vec::new();
    for i in 0..runs {
        let paths = Paths::new(dir.path().join(format!("cold-d{i}")));
        let options = EnsureOptions::new(paths.clone()).daemon_bin(&hearthd);
        let start = Instant::now();
        rt.block_on(async {
            ensure_daemon_running(&options).await.expect("cold start");
            StatusClient::connect(paths.socket()).await.unwrap().ping().await.unwrap();
        });
        cold_d.push(start.elapsed());
        stop(&hearth, &paths);

        let socket = dir.path().join(format!("cold-b{i}.sock"));
        let start = Instant::now();
        let mut child = Command::new(&me).arg("--baseline-server").arg(&socket).spawn().unwrap();
        rt.block_on(first_pong(&socket));
        cold_b.push(start.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    println!("\ncold start to first pong, median of {runs}");
    row(
        "  ensure_daemon_running",
        ms(median(&mut cold_d)),
        ms(median(&mut cold_b)),
        "ms",
        "target < 15 ms; baseline: spawn minimal server, poll, pong",
    );

    // --- cold start through the CLI, beside peers ------------------------------------------------
    cold_cli(&hearth, dir.path(), runs);

    // --- hearth ping as a process ------------------------------------------------------
    whole_process(&hearth, &hearthd, dir.path(), &rt, runs.max(100));
}

/// Best and median of `v`.
fn best_median(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    (ms(v[0]), ms(v[v.len() / 2]))
}

fn spawn_timed(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let ok = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("spawn").success();
    let elapsed = start.elapsed();
    assert!(ok, "{cmd:?} failed");
    elapsed
}

/// `hearth ping` as a whole process, beside a minimal Rust program that does
/// the same exchange (connect, handshake, ping, print: std only, built here
/// with the toolchain's `rustc -O`) and beside `/bin/true`, interleaved, from
/// spawn to exit.
fn whole_process(hearth: &Path, hearthd: &Path, dir: &Path, rt: &tokio::runtime::Runtime, rounds: usize) {
    let paths = Paths::new(dir.join("cli"));
    rt.block_on(ensure_daemon_running(&EnsureOptions::new(paths.clone()).daemon_bin(hearthd))).unwrap();
    let minimal = build_minimal_client(dir);
    let (mut cli, mut min, mut truth) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        cli.push(spawn_timed(Command::new(hearth).arg("--state-dir").arg(paths.state_dir()).arg("ping")));
        if let Some(minimal) = &minimal {
            min.push(spawn_timed(Command::new(minimal).arg(paths.socket())));
        }
        truth.push(spawn_timed(&mut Command::new("/bin/true")));
    }
    stop(hearth, &paths);
    let (c, t) = (best_median(&mut cli), best_median(&mut truth));
    println!("\nwhole process, spawn to exit, {rounds} interleaved rounds: best / median");
    println!("  hearth ping          {:>7.3} / {:>7.3} ms", c.0, c.1);
    println!("  /bin/true            {:>7.3} / {:>7.3} ms", t.0, t.1);
    if minimal.is_some() {
        let m = best_median(&mut min);
        println!("  minimal Rust client  {:>7.3} / {:>7.3} ms", m.0, m.1);
        println!(
            "  hearth ping − minimal client: {:.3} ms best, {:.3} ms median (target ≤ 0.1 ms)",
            c.0 - m.0,
            c.1 - m.1
        );
    } else {
        println!("  (no minimal client: `rustc` could not build it)");
    }
    println!("  hearth ping − /bin/true: {:.3} ms median", c.1 - t.1);
}

/// The minimal client: the floor for a Rust program that talks to the daemon.
fn build_minimal_client(dir: &Path) -> Option<PathBuf> {
    const SOURCE: &str = r##"
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
fn send(s: &mut UnixStream, body: &[u8]) {
    let mut buf = (body.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(body);
    s.write_all(&buf).expect("write");
}
fn recv(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("read");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("read");
    body
}
fn main() {
    let mut s = UnixStream::connect(std::env::args_os().nth(1).expect("socket")).expect("connect");
    send(&mut s, br#"{"channel":"status","protocol":1,"client":"minimal/0"}"#);
    assert!(recv(&mut s).starts_with(br#"{"ok":true"#));
    send(&mut s, br#"{"type":"ping"}"#);
    assert!(recv(&mut s).starts_with(br#"{"type":"pong""#));
    println!("pong");
}
"##;
    let src = dir.join("minimal_client.rs");
    let bin = dir.join("minimal_client");
    std::fs::write(&src, SOURCE).ok()?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc).args(["-O", "--edition", "2021", "-o"]).arg(&bin).arg(&src).status();
    built.is_ok_and(|s| s.success()).then_some(bin)
}

/// Nothing running → `hearth daemon start` → `hearth ping` (two processes,
/// on a state directory a previous daemon left, and on a new one), beside
/// sccache (`--start-server` then `--show-stats`) and watchman (`version`,
/// which starts its server) from Debian's packages where installed,
/// interleaved.
fn cold_cli(hearth: &Path, dir: &Path, runs: usize) {
    let version = |bin: &str| -> Option<String> {
        let out = Command::new(bin).arg("--version").output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let sccache = version("sccache");
    let watchman = version("watchman");
    let mut reused = Vec::new();
    let mut fresh = Vec::new();
    let mut scc = Vec::new();
    let mut wm = Vec::new();
    let kept = Paths::new(dir.join("cold-cli"));
    for i in 0..runs {
        for (paths, out) in [(kept.clone(), &mut reused), (Paths::new(dir.join(format!("cold-cli{i}"))), &mut fresh)] {
            let cli = |args: &[&str]| {
                let mut cmd = Command::new(hearth);
                cmd.arg("--state-dir").arg(paths.state_dir()).args(args);
                cmd
            };
            let start = Instant::now();
            spawn_timed(&mut cli(&["daemon", "start"]));
            spawn_timed(&mut cli(&["ping"]));
            out.push(start.elapsed());
            stop(hearth, &paths);
        }
        if sccache.is_some() {
            let sc = |arg: &str| {
                let mut cmd = Command::new("sccache");
                cmd.arg(arg).env("SCCACHE_DIR", dir.join("sccache")).env("SCCACHE_SERVER_PORT", "4399");
                cmd
            };
            let start = Instant::now();
            spawn_timed(&mut sc("--start-server"));
            spawn_timed(&mut sc("--show-stats"));
            scc.push(start.elapsed());
            let _ = sc("--stop-server").stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        if watchman.is_some() {
            let wdir = dir.join("watchman");
            let _ = std::fs::create_dir_all(&wdir);
            let w = |arg: &str| {
                let mut cmd = Command::new("watchman");
                cmd.arg(format!("--sockname={}", wdir.join("sock").display()))
                    .arg(format!("--statefile={}", wdir.join("state").display()))
                    .arg(format!("--logfile={}", wdir.join("log").display()))
                    .arg(format!("--pidfile={}", wdir.join("pid").display()))
                    .arg(arg);
                cmd
            };
            let start = Instant::now();
            spawn_timed(&mut w("version"));
            wm.push(start.elapsed());
            let _ = w("shutdown-server").stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
    println!("\ncold start through the CLI, {runs} interleaved rounds: best / median");
    let (r, f) = (best_median(&mut reused), best_median(&mut fresh));
    println!("  hearth daemon start + hearth ping, state dir kept  {:>7.2} / {:>7.2} ms", r.0, r.1);
    println!("  the same on a new state dir (creates its stores)   {:>7.2} / {:>7.2} ms", f.0, f.1);
    if let Some(v) = &sccache {
        let s = best_median(&mut scc);
        println!("  sccache --start-server + --show-stats ({v})  {:>7.2} / {:>7.2} ms", s.0, s.1);
        println!("  target: hearth < 10 ms and below sccache: kept state {:.2} ms vs {:.2} ms (medians)", r.1, s.1);
    } else {
        println!("  (sccache not installed: `apt-get install sccache` for the peer figure)");
    }
    if let Some(v) = &watchman {
        let w = best_median(&mut wm);
        println!("  watchman version, starting its server ({v})  {:>7.2} / {:>7.2} ms", w.0, w.1);
    }
}

fn row(label: &str, value: f64, baseline: f64, unit: &str, note: &str) {
    let ratio = if baseline > 0.0 { value / baseline } else { f64::NAN };
    println!(
        "{label:<28} hearthd {value:>10.2} {unit:<8} baseline {baseline:>10.2} {unit:<8} ratio {ratio:>5.2}  {note}"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// A server process under test, stopped on drop.
struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    fn hearthd(bin: &Path, state: &Path, pin: Option<usize>) -> Server {
        let mut cmd = pinned(bin, pin);
        cmd.arg("--state-dir").arg(state).env("HEARTH_LOG", "warn");
        Server::spawn(cmd, state.join("hearth.sock"))
    }

    fn baseline(me: &Path, state: &Path, pin: Option<usize>) -> Server {
        std::fs::create_dir_all(state).unwrap();
        let socket = state.join("hearth.sock");
        let mut cmd = pinned(me, pin);
        cmd.arg("--baseline-server").arg(&socket);
        Server::spawn(cmd, socket)
    }

    fn spawn(mut cmd: Command, socket: PathBuf) -> Server {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("spawn server");
        let rt = current_thread(None);
        rt.block_on(first_pong(&socket));
        Server { child, socket }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = hearth::sys::kill(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

fn pinned(bin: &Path, pin: Option<usize>) -> Command {
    match pin {
        Some(cpu) => {
            let mut cmd = Command::new("/usr/bin/taskset");
            cmd.arg("-c").arg(cpu.to_string()).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

fn current_thread(pin: Option<usize>) -> tokio::runtime::Runtime {
    if let Some(cpu) = pin {
        // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
        #[expect(unsafe_code, reason = "pinning the bench to one CPU")]
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn unpin() {
    // SAFETY: as above.
    #[expect(unsafe_code, reason = "unpinning the bench")]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..num_cpus() {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

async fn first_pong(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut delay = Duration::from_micros(200);
    loop {
        if let Ok(mut c) = StatusClient::connect(socket).await {
            c.ping().await.expect("pong");
            return;
        }
        assert!(Instant::now() < deadline, "{socket:?} never answered");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(5));
    }
}

/// (p50, p99) in microseconds.
async fn latency(socket: &Path, n: usize) -> (f64, f64) {
    let mut c = StatusClient::connect(socket).await.unwrap();
    for _ in 0..n / 10 {
        c.ping().await.unwrap();
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        c.ping().await.unwrap();
        samples.push(start.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6;
    unpin();
    (at(0.50), at(0.99))
}

async fn throughput(socket: &Path, conns: usize, dur: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(StatusClient::connect(socket).await.unwrap());
    }
    let mut tasks = Vec::new();
    for mut c in clients {
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

async fn open_idle(socket: &Path, n: usize) -> Vec<StatusClient> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(StatusClient::connect(socket).await.unwrap());
    }
    // Make sure the server has seen every handshake.
    held.last_mut().unwrap().ping().await.unwrap();
    held
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `RssAnon`).
fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stop(hearth: &Path, paths: &Paths) {
    let ok = Command::new(hearth)
        .arg("--state-dir")
        .arg(paths.state_dir())
        .args(["daemon", "stop"])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "daemon stop");
}

/// The baseline: accept, spawn, read the handshake, answer a fixed accepted
/// reply, then answer every frame with a fixed pong. Same runtime shape
/// (multi-thread, one task per connection) and the same frame codec as hearthd.
fn baseline_server(socket: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("bind");
        let accepted = bytes::Bytes::from(format!(
            r#"{{"ok":true,"protocol":1,"daemon":{{"version":"0.0.0","pid":{}}},"channel":"status","max_frame":16777216}}"#,
            std::process::id()
        ));
        let pong = bytes::Bytes::from_static(br#"{"type":"pong"}"#);
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let (accepted, pong) = (accepted.clone(), pong.clone());
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, FrameCodec::default());
                if framed.next().await.is_none() {
                    return;
                }
                if framed.send(accepted).await.is_err() {
                    return;
                }
                while let Some(Ok(_)) = framed.next().await {
                    if framed.send(pong.clone()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}
