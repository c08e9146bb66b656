//! Blob transfer throughput and the daemon's memory, beside baselines
//! measured in the same run on the same data.
//!
//! `cargo bench --bench blob` stores a 1 GiB file of pseudo-random bytes
//! (`HEARTH_BENCH_BLOB_MIB` sets another size, `HEARTH_BENCH_RUNS` the
//! repetitions, `HEARTH_BENCH_DIR` the filesystem; the best of the
//! interleaved runs counts) and measures, reading from the page cache and
//! writing to a new file each time, with the blocking client library:
//!
//! - baseline `sha256`: read the file and hash it (sha2, 1 MiB reads);
//! - baseline `copy`: read the file and write a new one (1 MiB buffer), and
//!   `copy+fsync`: the same followed by fsync (a put is durable, so this is
//!   its like-for-like baseline);
//! - `put`: the client library streams the file to a real `hearthd` over
//!   the socket, which hashes, writes, fsyncs and commits it;
//! - `get`: the client library streams the blob back into a new file;
//! - `http get`: a plain HTTP/1.1 client (1 MiB reads, like the copy)
//!   downloads it from the HTTP read server into a file;
//! - every measurement writes a new file; the previous one is synced and
//!   removed before the clock starts;
//! - the daemon's memory: its peak RSS (`VmHWM`) after the transfers minus
//!   its RSS (`VmRSS`) before them, from /proc.
//!
//! Every measurement starts from the same state: the source file in the page
//! cache and clean (it is synced once written), and nothing left to write
//! back (`sync` before each; a copy measured while an earlier gigabyte was
//! still being written back ran slower than the same copy with an fsync).
//! Best and median of the runs are printed.
//!
//! Targets: put ≥ 85 % of sha256 alone (a put hashes every byte; the disk
//! thread's copy and fsync overlap the hashing); get and HTTP get ≥ 70 % of
//! copy; memory growth < 64 MiB.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth::client::{PutOptions, blocking};
use hearth::protocol::blob::BlobHash;
use sha2::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let size_mib = env_u64("HEARTH_BENCH_BLOB_MIB", 1024).max(1);
    let runs = env_u64("HEARTH_BENCH_RUNS", 5).max(1);
    let size = size_mib * MIB;
    let dir = tempfile::Builder::new().prefix("hearth-bench-blob-").tempdir_in(bench_dir()).expect("temp dir");
    let data = dir.path().join("data.bin");
    write_data(&data, size);
    println!("blob benchmark: {size_mib} MiB of pseudo-random data, best of {runs} runs, in {}", dir.path().display());

    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&state, dir.path());
    let rss_before = daemon.memory("VmRSS");
    let mut client = blocking::BlobClient::connect(daemon.socket()).expect("connect");
    let url = daemon.http_url();
    let out = dir.path().join("out.bin");

    // The runs interleave every measurement, so that a machine that gets
    // busier (or quieter) during the run skews them all alike.
    let mut samples: [Vec<Duration>; 6] = Default::default();
    let mut hash = None;
    for _ in 0..runs {
        let times = [
            {
                settle();
                timed(|| drop(hash_file(&data)))
            },
            timed_fresh(&out, || copy_file(&data, &out, false)),
            timed_fresh(&out, || copy_file(&data, &out, true)),
            {
                if let Some(previous) = hash.take() {
                    client.call(async |c| c.delete(&previous, true).await).expect("delete the previous run's blob");
                }
                settle();
                let file = std::fs::File::open(&data).expect("open data");
                let start = Instant::now();
                let stored = client.put_reader(file, PutOptions::new().size(size)).expect("put");
                let elapsed = start.elapsed();
                assert!(!stored.existed);
                hash = Some(stored.hash);
                elapsed
            },
            timed_fresh(&out, || {
                let file = std::fs::File::create(&out).expect("create output");
                client.get_to_writer(hash.as_ref().expect("stored"), None, file).expect("get");
            }),
            timed_fresh(&out, || http_get(&format!("{url}/blob/{}", hash.as_ref().expect("stored")), &out)),
        ];
        for (samples, time) in samples.iter_mut().zip(times) {
            samples.push(time);
        }
    }
    let best = samples.each_ref().map(|v| *v.iter().min().expect("runs"));
    let median = samples.map(|mut v| {
        v.sort();
        v[v.len() / 2]
    });
    let hash = hash.expect("stored");
    assert_eq!(hash_file(&out), hash, "the HTTP download is the data");
    let rss_peak = daemon.memory("VmHWM");
    daemon.stop();
    let [hash_time, copy_time, synced_copy_time, put_time, get_time, http_time] = best;

    let rate = |d: Duration| size as f64 / MIB as f64 / d.as_secs_f64();
    let [med_hash, med_copy, med_synced, med_put, med_get, med_http] = median;
    println!();
    println!("{:<34} {:>10} {:>12} {:>16}", "measurement", "best", "throughput", "median");
    for (name, d, m) in [
        ("baseline: sha256 of the file", hash_time, med_hash),
        ("baseline: copy (read + write)", copy_time, med_copy),
        ("baseline: copy + fsync", synced_copy_time, med_synced),
        ("put over the socket (durable)", put_time, med_put),
        ("get over the socket into a file", get_time, med_get),
        ("HTTP GET into a file", http_time, med_http),
    ] {
        println!("{name:<34} {:>8.3} s {:>7.0} MiB/s {:>8.0} MiB/s", d.as_secs_f64(), rate(d), rate(m));
    }
    println!();
    let mut ok = true;
    let mut verdict = |name: &str, ratio: f64, target: f64, baseline: &str| {
        let pass = ratio >= target;
        ok &= pass;
        println!(
            "{name:<10} {:>5.0} % of {baseline} (target ≥ {:.0} %) {}",
            ratio * 100.0,
            target * 100.0,
            if pass { "ok" } else { "MISSED" }
        );
    };
    verdict("put", rate(put_time) / rate(hash_time), 0.85, "sha256 alone (best of each)");
    verdict("put", rate(med_put) / rate(med_hash), 0.85, "sha256 alone (median of each)");
    verdict("get", rate(get_time) / rate(copy_time), 0.70, "copy");
    verdict("http get", rate(http_time) / rate(copy_time), 0.70, "copy");
    let growth = rss_peak.saturating_sub(rss_before);
    let mem_ok = growth < 64 * MIB;
    ok &= mem_ok;
    println!(
        "memory     daemon RSS {} MiB before, peak {} MiB: grew {:.1} MiB (target < 64 MiB) {}",
        rss_before / MIB,
        rss_peak / MIB,
        growth as f64 / MIB as f64,
        if mem_ok { "ok" } else { "MISSED" }
    );
    println!(
        "\n{}",
        if ok { "all targets met" } else { "some targets missed (a busy machine skews throughput; rerun when quiet)" }
    );
}

/// Times `f`, which writes `out` anew; the previous `out` is synced and
/// removed first, outside the timing, so that no measurement pays for the
/// writeback or truncation of an earlier one.
fn timed_fresh(out: &Path, f: impl FnOnce()) -> Duration {
    if let Ok(previous) = std::fs::File::open(out) {
        previous.sync_all().expect("sync the previous output");
        std::fs::remove_file(out).expect("remove the previous output");
    }
    settle();
    timed(f)
}

/// Every measurement starts from the same state: nothing of this bench left
/// to write back (`sync`; the blobs the puts stored, the outputs removed),
/// and the source file in the page cache (read just before, untimed, as each
/// path reads it from the cache).
fn settle() {
    let _ = Command::new("sync").status();
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Pseudo-random bytes (xorshift): nothing for the store to skip as zeros.
fn write_data(path: &Path, size: u64) {
    let mut file = std::fs::File::create(path).expect("create data");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        file.write_all(&buf).expect("write data");
    }
    // Written back before anything is measured: otherwise the first
    // measurements that write compete with 1 GiB of its writeback.
    file.sync_all().expect("sync data");
}

fn hash_file(path: &Path) -> BlobHash {
    let mut file = std::fs::File::open(path).expect("open");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        match file.read(&mut buf).expect("read") {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    BlobHash::from_digest(&hasher.finalize().into())
}

/// Where the data goes: `HEARTH_BENCH_DIR`, else the system temp dir.
fn bench_dir() -> PathBuf {
    std::env::var_os("HEARTH_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn copy_file(from: &Path, to: &Path, fsync: bool) {
    let mut src = std::fs::File::open(from).expect("open");
    let mut dst = std::fs::File::create(to).expect("create");
    let mut buf = vec![0u8; MIB as usize];
    loop {
        match src.read(&mut buf).expect("read") {
            0 => break,
            n => dst.write_all(&buf[..n]).expect("write"),
        }
    }
    if fsync {
        dst.sync_all().expect("fsync");
    }
}

/// A plain HTTP/1.1 GET (one request, `Connection: close`) whose body is
/// written to `out` with 1 MiB reads, like the copy baseline.
fn http_get(url: &str, out: &Path) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_at(rest.find('/').expect("path"));
    let mut stream = std::net::TcpStream::connect(authority).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").expect("request");
    let mut buf = vec![0u8; MIB as usize];
    let mut filled = 0;
    let header_end = loop {
        let n = stream.read(&mut buf[filled..]).expect("read");
        assert!(n > 0, "the server closed before its headers");
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut file = std::fs::File::create(out).expect("create output");
    file.write_all(&buf[header_end..filled]).expect("write");
    let mut received = (filled - header_end) as u64;
    while received < length {
        let n = stream.read(&mut buf).expect("read body");
        assert!(n > 0, "the body ended early");
        file.write_all(&buf[..n]).expect("write");
        received += n as u64;
    }
}

struct Daemon {
    child: Child,
    state: PathBuf,
}

impl Daemon {
    fn start(state: &Path, dir: &Path) -> Daemon {
        let log = std::fs::File::create(dir.join("hearthd.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_hearthd"))
            .arg("--state-dir")
            .arg(state)
            .args(["--blob-http-port", "0"])
            .env_remove("HEARTH_SOCKET")
            .env_remove("HEARTH_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hearthd");
        let daemon = Daemon { child, state: state.to_owned() };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready when it answers and has published its endpoints.
        while blocking::StatusClient::connect(daemon.socket()).is_err() || !state.join("daemon.json").exists() {
            assert!(Instant::now() < deadline, "hearthd did not start; see {}", dir.join("hearthd.log").display());
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn socket(&self) -> PathBuf {
        self.state.join("hearth.sock")
    }

    fn http_url(&self) -> String {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.state.join("daemon.json")).expect("daemon.json")).expect("json");
        info["endpoints"]["blob_http"].as_str().expect("blob HTTP URL").to_owned()
    }

    /// A `/proc/<pid>/status` memory field, in bytes.
    fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc status");
        let line = status.lines().find(|l| l.starts_with(field)).expect("field");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("number");
        kib * 1024
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").arg(self.child.id().to_string()).status();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Daemon {
    /// A benchmark that fails part-way does not leave its daemon running.
    fn drop(&mut self) {
        self.stop();
    }
}
