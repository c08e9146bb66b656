//! Resource exhaustion against the real `hearthd`: a low open-file limit
//! with every connection slot taken, and a full disk (a small tmpfs).
//! Each test skips with a message where the machine does not allow it
//! (no `prlimit`, no permission to mount).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{RawConn, StateDir, fd_targets, open_fds, processes_marked, rss_kib, wait_for};
use hearth::client::{BlobClient, ClientError, PoolClient, PutOptions, QueueClient, StatusClient};
use hearth::protocol::blob::BlobHash;
use hearth::protocol::queue::{JobSpec, JobState, LogStream, LogsRequest};
use hearth::protocol::status::{HealthCode, HealthState};
use serde_json::json;
use sha2::{Digest, Sha256};

const PATIENCE: Duration = Duration::from_secs(30);

/// A pool whose builds only make a directory and write a file into it.
const FAST_POOL: &str =
    "[pool.fast]\ncreate = [\"sh\", \"-c\", \"mkdir -p {path}/work && echo built > {path}/work/f\"]\nsize = 1\n";

fn hash_of(data: &[u8]) -> BlobHash {
    BlobHash::from_digest(&Sha256::digest(data).into())
}

/// Deterministic bytes that do not compress.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn tmp_files(state_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state_dir.join("blobs/tmp")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One connection per channel, opened while the daemon has room.
struct Clients {
    status: StatusClient,
    queue: QueueClient,
    blob: BlobClient,
    pool: PoolClient,
}

impl Clients {
    async fn connect(socket: &Path) -> Result<Clients, ClientError> {
        Ok(Clients {
            status: StatusClient::connect(socket).await?,
            queue: QueueClient::connect(socket).await?,
            blob: BlobClient::connect(socket).await?,
            pool: PoolClient::connect(socket).await?,
        })
    }

    /// Connects, retrying while the daemon is still counting connections
    /// that clients have just closed.
    async fn connect_patiently(socket: &Path) -> Clients {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match Clients::connect(socket).await {
                Ok(clients) => return clients,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    assert_eq!(err.code(), Some(&hearth::protocol::ErrorCode::TooManyConnections), "{err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("no room after {PATIENCE:?}: {err}"),
            }
        }
    }

    /// One round of real work on every channel: a job that writes to both
    /// streams (pipes, log files, the store), a blob put and get (a temp
    /// file), a pool take and release (a build), a status report.
    async fn work(&mut self, round: u64) -> Result<(), String> {
        let e = |what: &'static str| move |err: ClientError| format!("{what}: {err}");
        self.status.status().await.map_err(e("status"))?;

        let spec = JobSpec {
            argv: ["sh", "-c", "echo out $0; echo err >&2", &format!("round-{round}")].map(String::from).to_vec(),
            ..JobSpec::default()
        };
        let id = self.queue.submit(spec).await.map_err(e("submit"))?.job.id;
        let done = common::within(PATIENCE, "end of a job", self.queue.wait(id, |_| {})).await.map_err(e("wait"))?;
        if done.state != JobState::Succeeded {
            return Err(format!("job {id} ended {}: {:?}", done.state, done.last_error));
        }
        let mut out = Vec::new();
        let request = LogsRequest { id, stream: LogStream::Stdout, offset: 0, follow: false };
        self.queue.logs(request, |d| out.extend_from_slice(d)).await.map_err(e("logs"))?;
        if out != format!("out round-{round}\n").as_bytes() {
            return Err(format!("job {id} logged {:?}", String::from_utf8_lossy(&out)));
        }

        let data = pattern(300_000, round);
        let stored = self.blob.put_bytes(&data, PutOptions::new()).await.map_err(e("put"))?;
        if stored.hash != hash_of(&data) || self.blob.get_bytes(&stored.hash).await.map_err(e("get"))? != data {
            return Err("a blob did not read back".into());
        }

        let lease = self.pool.take_within("fast", PATIENCE).await.map_err(e("take"))?;
        if !lease.path.join("work/f").exists() {
            return Err(format!("{} was not built", lease.path.display()));
        }
        self.pool.release(&lease.lease, false).await.map_err(e("release"))?;
        Ok(())
    }
}

/// `heartbeat.json`'s cycle: how many self-checks have passed.
fn heartbeat_cycle(state: &StateDir) -> u64 {
    std::fs::read(state.paths.heartbeat_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["cycle"].as_u64())
        .unwrap_or(0)
}

/// Connects and opens a blob put that sends a little data and then stalls:
/// the connection holds its socket and the put's temp file. `None` when the
/// daemon refused the connection (its code is returned).
fn stalled_put(socket: &Path) -> Result<RawConn, String> {
    let mut c = RawConn::connect(socket);
    let reply = c.handshake("blob");
    if reply["ok"] != json!(true) {
        return Err(reply["error"]["code"].as_str().unwrap_or("?").to_owned());
    }
    let ready = c.request(&json!({"type": "put"}));
    if ready["type"] != "ready" {
        return Err(format!("a put under the connection cap must start: {ready}"));
    }
    c.send_frame(&pattern(4096, 1));
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_open_file_limit_with_every_connection_taken() {
    if !have("prlimit") {
        eprintln!("SKIPPED: prlimit is not installed");
        return;
    }
    const NOFILE: u64 = 256;
    let state = StateDir::new();
    state.write_config(&format!("[queue]\nworkers = 4\n[daemon]\nheartbeat_interval = \"200ms\"\n{FAST_POOL}"));
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let daemon = state.start_cmd(state.hearthd_via(&["prlimit", &limit, "--"]));
    let socket = state.socket().to_owned();
    let mut clients = Clients::connect(&socket).await.unwrap();
    let max = clients.status.status().await.unwrap().limits.max_connections;
    assert!(max < NOFILE, "max_connections ({max}) must leave descriptors for the services");
    clients.work(0).await.unwrap();

    // Every other slot taken by a put that stalls mid-stream, holding its
    // socket and its temp file.
    let mut idle = Vec::new();
    let refused = loop {
        match stalled_put(&socket) {
            Ok(c) => idle.push(c),
            Err(code) => break code,
        }
        assert!(idle.len() as u64 <= max, "more connections accepted than max_connections ({max})");
    };
    assert_eq!(refused, "too_many_connections", "after {} stalled puts; log:\n{}", idle.len(), daemon.log_text());
    eprintln!("{} stalled puts; the daemon holds {:?} descriptors of {NOFILE}", idle.len(), open_fds(daemon.pid()));

    // The status channel answers, and says why; the daemon's self-check
    // (which needs a connection of its own) keeps passing.
    let report = clients.status.status().await.unwrap();
    let reasons: Vec<&HealthCode> = report.health.reasons.iter().map(|r| &r.code).collect();
    assert!(reasons.contains(&&HealthCode::ConnectionsNearLimit), "{reasons:?}");
    let cycle = heartbeat_cycle(&state);
    assert!(
        wait_for(PATIENCE, || heartbeat_cycle(&state) >= cycle + 3),
        "the heartbeat stopped while the connections were all taken; log:\n{}",
        daemon.log_text()
    );

    // Every channel works through its open connection, and the stalled
    // puts can still complete: the services have the descriptors they need.
    for round in 1..=3 {
        let result = clients.work(round).await;
        assert!(result.is_ok(), "round {round} failed: {result:?}; log:\n{}", daemon.log_text());
    }
    let mut finished = idle.split_off(idle.len() / 2);
    for c in &mut finished {
        c.send_frame(b"");
        let stored = c.read_json().expect("an answer");
        assert_eq!(stored["type"], "stored", "a put that held its slot must complete: {stored}");
    }
    drop(finished);

    // The rest leave: every slot comes back, and nothing of their puts remains.
    drop(idle);
    assert!(wait_for(PATIENCE, || tmp_files(state.state_dir()).is_empty()), "{:?}", tmp_files(state.state_dir()));
    let mut open = Vec::new();
    assert!(
        wait_for(PATIENCE, || {
            while (open.len() as u64) < max - 4 {
                match stalled_put(&socket) {
                    Ok(c) => open.push(c),
                    Err(_) => return false,
                }
            }
            true
        }),
        "only {} of {max} slots came back",
        open.len()
    );
    drop(open);
    let mut fresh = Clients::connect_patiently(&socket).await;
    let result = fresh.work(4).await;
    assert!(result.is_ok(), "after recovery: {result:?}; log:\n{}", daemon.log_text());
    let mut last = json!(null);
    let healthy = wait_for(PATIENCE, || {
        last = RawConn::open(&socket, "status").request(&json!({"type": "status"}))["health"].clone();
        last["state"] == "healthy"
    });
    assert!(healthy, "health did not recover: {last}");
}

/// A tmpfs of `size` mounted on `dir` (unmounted on drop), or `None` when
/// the machine does not let this process mount one.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("SKIPPED: cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the filesystem refuses: the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Single pages may still fit.
    while file.write_all(&chunk[..512]).is_ok() {}
}

/// `fut`, failing the test if it takes longer than [`PATIENCE`] (a hang).
async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut).await.expect("no answer within the patience: a hang")
}

fn is_code(err: &ClientError, codes: &[&str]) -> bool {
    err.code().is_some_and(|c| codes.contains(&c.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_refused_by_a_full_disk_after_its_last_frame_leaves_the_connection_in_step() {
    let state = StateDir::new();
    let Some(_mount) = Tmpfs::mount(state.state_dir(), "4m") else { return };
    let _daemon = state.start(&[]);
    let mut blob = BlobClient::connect(state.socket()).await.unwrap();
    fill(&state.state_dir().join("filler"));
    // One frame: the end marker follows it at once, before the disk thread
    // finds out that it cannot write.
    let data = pattern(100_000, 7);
    let err = blob.put_bytes(&data, PutOptions::new()).await.unwrap_err();
    assert!(is_code(&err, &["storage_full"]), "{err}");
    // The next request on the same connection is answered, not swallowed
    // as a frame of the refused put.
    let next = tokio::time::timeout(PATIENCE, blob.has(&hash_of(&data))).await;
    assert!(matches!(next, Ok(Ok(false))), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_explicitly_stores_what_it_acknowledges_and_recovers() {
    let state = StateDir::new();
    let Some(_mount) = Tmpfs::mount(state.state_dir(), "24m") else { return };
    state.write_config("[queue]\nworkers = 2\n");
    let mut daemon = state.start(&[]);
    let socket = state.socket().to_owned();
    let mut blob = BlobClient::connect(&socket).await.unwrap();
    let mut queue = QueueClient::connect(&socket).await.unwrap();
    let marker = format!("hearth-disk-{}", std::process::id());

    // Space that comes back later.
    std::fs::write(state.state_dir().join("ballast"), vec![0x5au8; 8 << 20]).unwrap();

    // Blobs and jobs until the disk is full: every answer is an
    // acknowledgement or an explicit refusal (`storage_full`,
    // `store_failed`), never a crash, a hang or a vague error.
    let mut acknowledged = Vec::new();
    let mut refusals = 0;
    let mut jobs = Vec::new();
    let mut job_refusals = 0;
    let mut submit = async |queue: &mut QueueClient, n: u64| {
        let spec = JobSpec { argv: ["true", &marker, &n.to_string()].map(String::from).to_vec(), ..JobSpec::default() };
        match bounded(queue.submit(spec)).await {
            Ok(submitted) => jobs.push(submitted.job.id),
            Err(err) if is_code(&err, &["store_failed"]) => job_refusals += 1,
            Err(err) => panic!("submit {n}: {err}"),
        }
    };
    for n in 0..200u64 {
        submit(&mut queue, n).await;
        // Sizes from a few bytes to several frames.
        let data = pattern(if n % 5 == 0 { 7 + n as usize } else { 700_000 + 1000 * n as usize }, n);
        match bounded(blob.put_bytes(&data, PutOptions::new())).await {
            Ok(stored) => {
                assert_eq!(stored.hash, hash_of(&data));
                acknowledged.push(data);
            }
            Err(err) if is_code(&err, &["storage_full"]) => {
                refusals += 1;
                if refusals == 3 {
                    break;
                }
            }
            Err(err) => panic!("put {n}: {err}; log:\n{}", daemon.log_text()),
        }
    }
    assert!(refusals == 3, "the disk never filled ({} blobs stored)", acknowledged.len());
    // Whatever space is left, a file takes.
    fill(&state.state_dir().join("filler"));

    // Jobs on a full disk: each is acknowledged or refused as `store_failed`.
    for n in 200..220 {
        submit(&mut queue, n).await;
    }
    let full_put = blob.put_bytes(&pattern(200_000, 999), PutOptions::new()).await;
    assert!(full_put.as_ref().is_err_and(|e| is_code(e, &["storage_full"])), "{:?}", full_put.map(|s| s.hash));
    eprintln!(
        "full disk: {} blobs stored, {refusals} puts refused; {} jobs acknowledged, {job_refusals} refused",
        acknowledged.len(),
        jobs.len()
    );
    let mut status = StatusClient::connect(&socket).await.unwrap();
    let report = status.status().await.expect("the status channel answers on a full disk");
    // Health says the disk is full and which stores failed on it; the
    // daemon stays up. (This tmpfs is below the unhealthy threshold even
    // when empty, so the state stays unhealthy after recovery too.)
    let reasons: Vec<&HealthCode> = report.health.reasons.iter().map(|r| &r.code).collect();
    assert!(reasons.contains(&&HealthCode::DiskSpaceCritical), "{reasons:?}");
    assert!(reasons.contains(&&HealthCode::BlobStoreErrors), "{reasons:?}");
    assert_eq!(reasons.contains(&&HealthCode::QueueStoreErrors), job_refusals > 0, "{reasons:?}");
    assert_eq!(report.health.state, HealthState::Unhealthy, "{reasons:?}");

    // Space comes back: the same connections work again, no restart.
    std::fs::remove_file(state.state_dir().join("filler")).unwrap();
    std::fs::remove_file(state.state_dir().join("ballast")).unwrap();
    let data = pattern(1_500_000, 1234);
    let stored = blob.put_bytes(&data, PutOptions::new()).await.expect("a put once space is back");
    assert_eq!(blob.get_bytes(&stored.hash).await.unwrap(), data);
    acknowledged.push(data);
    let spec = JobSpec { argv: ["sh", "-c", "echo back", &marker].map(String::from).to_vec(), ..JobSpec::default() };
    let id = queue.submit(spec).await.expect("a submit once space is back").job.id;
    let done =
        common::within(PATIENCE, "end of the job submitted once space is back", queue.wait(id, |_| {})).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.last_error);
    jobs.push(id);

    // Nothing acknowledged was lost, before and after a crash.
    for round in ["without restart", "after kill -9"] {
        for data in &acknowledged {
            let hash = hash_of(data);
            let back = blob.get_bytes(&hash).await.unwrap_or_else(|e| panic!("{round}: blob {hash}: {e}"));
            assert!(hash_of(&back) == hash, "{round}: blob {hash} reads back other bytes");
        }
        for id in &jobs {
            let job = queue.get(*id).await.unwrap_or_else(|e| panic!("{round}: acknowledged job {id}: {e}")).0;
            if round != "without restart" {
                continue;
            }
            // Jobs acknowledged on the full disk run once space is back.
            let done =
                common::within(PATIENCE, "end of a job acknowledged on the full disk", queue.wait(job.id, |_| {}))
                    .await
                    .unwrap();
            assert!(done.state.is_final(), "{round}: job {id} is {}", done.state);
        }
        if round == "without restart" {
            assert!(
                wait_for(PATIENCE, || tmp_files(state.state_dir()).is_empty()),
                "refused puts left temp files: {:?}",
                tmp_files(state.state_dir())
            );
            daemon.kill9();
            daemon = state.start(&[]);
            blob = BlobClient::connect(&socket).await.unwrap();
            queue = QueueClient::connect(&socket).await.unwrap();
        }
    }
    assert!(processes_marked(&marker).is_empty(), "job processes left: {:?}", processes_marked(&marker));
}

/// `n` rounds of every channel's work from `clients` connections at once.
async fn load(socket: &Path, clients: u64, rounds: u64) {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let socket = socket.to_owned();
            tokio::spawn(async move {
                let mut clients = Clients::connect(&socket).await.unwrap();
                for round in 0..rounds {
                    if let Err(e) = clients.work(c * 1_000_000 + round).await {
                        panic!("client {c} round {round}: {e}");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_descriptors_stay_flat_under_sustained_work() {
    let rounds: u64 = std::env::var("HEARTH_MEMORY_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let state = StateDir::new();
    state.write_config(&format!("[queue]\nworkers = 4\n{FAST_POOL}"));
    let daemon = state.start(&[]);
    let socket = state.socket().to_owned();
    // Warm up: allocator arenas, SQLite caches, thread pools.
    load(&socket, 4, 5).await;
    // The queue keeps up to 8 idle read connections to its store (2
    // descriptors each), opened as concurrency needs them: those may grow up
    // to that cap; every other descriptor must come back to its count.
    let store_conns = |targets: &[String]| targets.iter().filter(|t| t.ends_with("/queue/queue.db")).count();
    let others = |targets: &[String]| targets.iter().filter(|t| !t.contains("/queue/queue.db")).count();
    let rss_start = rss_kib(daemon.pid()).unwrap();
    let targets_start = fd_targets(daemon.pid());
    load(&socket, 4, rounds).await;
    // The connections just closed: their descriptors go once the daemon sees them go.
    let mut targets_end = Vec::new();
    wait_for(PATIENCE, || {
        targets_end = fd_targets(daemon.pid());
        others(&targets_end) <= others(&targets_start)
    });
    let rss_end = rss_kib(daemon.pid()).unwrap();
    eprintln!(
        "daemon after warm-up: {rss_start} KiB RSS, {} descriptors; after {} rounds on every channel: {rss_end} KiB, {} descriptors ({} store connections)",
        targets_start.len(),
        4 * rounds,
        targets_end.len(),
        store_conns(&targets_end)
    );
    assert!(rss_end < rss_start + 32 * 1024, "RSS grew from {rss_start} KiB to {rss_end} KiB");
    assert!(
        others(&targets_end) <= others(&targets_start),
        "descriptors grew: {targets_start:?} before, {targets_end:?} after"
    );
    assert!(store_conns(&targets_end) <= 1 + 8, "one writer and at most 8 idle readers: {targets_end:?}");
}

/// The peak resident set size (`VmHWM`) of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One request frame of exactly `len` bytes: a submit whose `argv` holds
/// one long string, or (`many`) as many one-letter arguments as fit.
fn maximum_submit(len: usize, many: bool) -> Vec<u8> {
    let (head, tail) = (br#"{"type":"submit","argv":["true""#.to_vec(), b"]}".to_vec());
    let room = len - head.len() - tail.len();
    let mut frame = head;
    if many {
        // `,"a"` per argument; spaces pad the rest.
        frame.extend(b",\"a\"".repeat(room / 4));
        frame.extend(std::iter::repeat_n(b' ', room % 4));
    } else {
        frame.extend(b",\"");
        frame.extend(std::iter::repeat_n(b'x', room - 3));
        frame.push(b'"');
    }
    frame.extend(tail);
    assert_eq!(frame.len(), len);
    frame
}

/// How long one client of the flood may wait for its answer.
const FLOOD_PATIENCE: Duration = Duration::from_secs(600);

#[test]
fn a_flood_of_maximum_size_frames_is_held_to_the_read_budget() {
    const CONNECTIONS: usize = 64;
    let state = StateDir::new();
    let daemon = state.start(&[]);
    let pid = daemon.pid();
    let limits = RawConn::open(state.socket(), "status").request(&json!({"type": "status"}))["limits"].clone();
    let max_frame = limits["max_frame"].as_u64().unwrap() as usize;
    let budget = limits["max_inflight_bytes"].as_u64().unwrap();
    assert_eq!(budget, 4 * max_frame as u64, "the default budget is four frames");

    // Warm up with ordinary work, then take the idle figure.
    let mut warm = RawConn::open(state.socket(), "queue");
    for n in 0..20 {
        let far = hearth::time::now_ms() + 86_400_000;
        let reply = warm.request(&json!({"type": "submit", "argv": ["true", n.to_string()], "run_at_ms": far}));
        assert_eq!(reply["type"], "submitted", "{reply}");
    }
    assert_eq!(warm.request(&json!({"type": "list"}))["type"], "jobs");
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(pid).unwrap();
    let peak_resettable = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();

    // A sampler, in case the peak cannot be reset.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(2));
            }
            max
        })
    };
    let frames = [maximum_submit(max_frame, false), maximum_submit(max_frame, true)];
    let gate = std::sync::Arc::new(std::sync::Barrier::new(CONNECTIONS));
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (socket, frame, gate) = (state.socket().to_owned(), frames[i % 2].clone(), gate.clone());
            std::thread::spawn(move || {
                let mut c = RawConn::open(&socket, "queue");
                // A frame may wait its turn for the budget, unread, while the
                // frames before it are read and decoded: a gigabyte in all,
                // from a debug build on a machine that may be busy.
                c.stream.set_write_timeout(Some(FLOOD_PATIENCE)).unwrap();
                c.stream.set_read_timeout(Some(FLOOD_PATIENCE)).unwrap();
                gate.wait();
                c.send_frame(&frame);
                let reply = c.read_json().expect("an answer to a maximum-size frame");
                assert_eq!(reply["code"], "command_too_large", "client {i}: {reply}");
                assert_eq!(c.request(&json!({"type": "stats"}))["type"], "stats", "client {i}: usable after");
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client of the flood");
    }
    let took = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let sampled = sampler.join().unwrap();
    let peak = if peak_resettable { peak_rss_kib(pid).unwrap().max(sampled) } else { sampled };

    // The connections are gone: memory goes back.
    let mut after = 0;
    wait_for(PATIENCE, || {
        after = rss_kib(pid).unwrap();
        after * 10 <= idle * 12
    });
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "{CONNECTIONS} connections x one {:.0} MiB frame ({:.0} MiB offered) in {took:.1?}, read budget {:.0} MiB: \
         daemon RSS idle {:.1} MiB, peak {:.1} MiB ({:.2}x the budget), after {:.1} MiB ({:+.1}% of idle)",
        mib(max_frame as u64 / 1024),
        mib((CONNECTIONS * max_frame) as u64 / 1024),
        mib(budget / 1024),
        mib(idle),
        mib(peak),
        peak as f64 * 1024.0 / budget as f64,
        mib(after),
        (after as f64 / idle as f64 - 1.0) * 100.0,
    );
    assert!(peak * 1024 < 3 * budget, "peak RSS {peak} KiB is not under 3x the read budget of {budget} bytes");
    assert!(after * 10 <= idle * 12, "RSS did not come back within 20% of idle: {idle} KiB idle, {after} KiB after");
    assert!(daemon.log_text().contains("hearthd ready"));
}
