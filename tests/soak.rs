//! The chaos soak: many clients work on every channel of the real `hearthd`
//! while it is killed with SIGKILL at random moments and restarted; then
//! nothing acknowledged may be lost, nothing handed out twice, no
//! supervised process run twice or untracked, and nothing left behind.
//!
//! ```sh
//! cargo test --test soak -- --nocapture                                    # ~25 s
//! HEARTH_SOAK_SECS=1800 cargo test --release --test soak -- --nocapture    # a long run
//! HEARTH_SOAK_SEED=42 cargo test --test soak -- --nocapture                # replay a schedule
//! ```
//!
//! The seed decides the kill schedule and every client's choices (the
//! interleaving with the daemon is still up to the machine). Errors that a
//! kill explains (a closed or reset connection, no daemon, a daemon
//! shutting down) are counted, not failures; any other error is.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{StateDir, processes_marked, rss_kib, wait_for};
use hearth::client::{
    BlobClient, ClientError, PoolClient, ProcessClient, PutOptions, QueueClient, StatusClient, SyncClient,
};
use hearth::protocol::blob::BlobHash;
use hearth::protocol::pool::LeaseId;
use hearth::protocol::queue::{JobSpec, JobState};
use sha2::{Digest, Sha256};

const CLIENTS: u64 = 8;
/// How long a client keeps trying to reach a daemon that is being restarted.
const RECONNECT: Duration = Duration::from_secs(60);
/// The bound on the drain at the end.
const DRAIN: Duration = Duration::from_secs(180);

/// splitmix64: small, seedable, good enough for a schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn hash_of(data: &[u8]) -> BlobHash {
    BlobHash::from_digest(&Sha256::digest(data).into())
}

/// Per channel: operations that succeeded, and that failed because of a kill.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    killed: AtomicU64,
}

#[derive(Default)]
struct Record {
    /// Acknowledged jobs: id → idempotency key.
    jobs: Mutex<BTreeMap<u64, Option<String>>>,
    /// Acknowledged jobs that would run for ten minutes unless canceled.
    long: Mutex<HashSet<u64>>,
    /// Idempotency key → the job id every acknowledgement named.
    keys: Mutex<HashMap<String, u64>>,
    /// Acknowledged blobs: hash → size.
    blobs: Mutex<HashMap<BlobHash, u64>>,
    /// Acknowledged sync writes: (document, key) → the last value written.
    sync_writes: Mutex<HashMap<(String, String), u64>>,
    /// Resource paths currently held by a client (certainly: taken, not yet released).
    held: Mutex<HashSet<PathBuf>>,
    /// Leases whose release was acknowledged.
    released: Mutex<HashSet<LeaseId>>,
    leases: AtomicU64,
    violations: Mutex<Vec<String>>,
    unexpected: Mutex<Vec<String>>,
    status: Counts,
    queue: Counts,
    blob: Counts,
    pool: Counts,
    sync: Counts,
    process: Counts,
}

impl Record {
    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }
}

/// Whether a kill of the daemon explains `err`.
fn from_kill(err: &ClientError) -> bool {
    match err {
        ClientError::Daemon(e) | ClientError::Refused { error: e, .. } => e.code.as_str() == "shutting_down",
        ClientError::Timeout { .. } => false,
        _ => true,
    }
}

struct Worker {
    n: u64,
    socket: PathBuf,
    marker: String,
    rng: Rng,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
    status: Option<StatusClient>,
    queue: Option<QueueClient>,
    blob: Option<BlobClient>,
    pool: Option<PoolClient>,
    /// A view peer of `sync_doc`.
    sync: Option<SyncClient>,
    process: Option<ProcessClient>,
    /// Leases taken and not yet released.
    leases: Vec<(LeaseId, PathBuf)>,
    seq: u64,
}

/// A client connected lazily, dropped on error, and connected again (the
/// daemon may be restarting: keep trying for a while).
macro_rules! client {
    ($self:ident . $field:ident, $ty:ty) => {{
        if $self.$field.is_none() {
            let deadline = Instant::now() + RECONNECT;
            loop {
                match <$ty>::connect(&$self.socket).await {
                    Ok(c) => {
                        $self.$field = Some(c);
                        break;
                    }
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("client {}: cannot connect within {RECONNECT:?}: {e}", $self.n),
                }
            }
        }
        $self.$field.as_mut().unwrap()
    }};
}

impl Worker {
    /// Counts an outcome; `true` when it was a success.
    fn tally<T>(&mut self, counts: fn(&Record) -> &Counts, what: &str, result: &Result<T, ClientError>) -> bool {
        let counts = counts(&self.record);
        match result {
            Ok(_) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) if from_kill(e) => {
                counts.killed.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(e) => {
                eprintln!("client {}: {what}: {e}", self.n);
                self.record.unexpected.lock().unwrap().push(format!("{what}: {e}"));
                false
            }
        }
    }

    async fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            match self.rng.below(13) {
                0 => self.status().await,
                1..=4 => self.job().await,
                5..=7 => self.blob().await,
                8 | 9 => self.sync_write().await,
                12 => self.process().await,
                _ => self.pool().await,
            }
        }
        // Give back what is still held (the daemon is up again by now).
        while let Some((lease, path)) = self.leases.pop() {
            self.release(lease, path, true).await;
        }
    }

    async fn status(&mut self) {
        let result = client!(self.status, StatusClient).status().await;
        if !self.tally(|r| &r.status, "status", &result) {
            self.status = None;
        }
    }

    /// A job that would run for ten minutes, canceled after a moment: a
    /// kill in between leaves its process for the restarted daemon to find.
    async fn long_job(&mut self) {
        let spec = JobSpec {
            argv: ["sh", "-c", "sleep \"$1\"", &self.marker, "600"].map(String::from).to_vec(),
            ..JobSpec::default()
        };
        let result = client!(self.queue, QueueClient).submit(spec).await;
        if !self.tally(|r| &r.queue, "submit", &result) {
            self.queue = None;
            return;
        }
        let id = result.unwrap().job.id;
        self.record.jobs.lock().unwrap().insert(id, None);
        self.record.long.lock().unwrap().insert(id);
        tokio::time::sleep(Duration::from_millis(200 + self.rng.below(1800))).await;
        for _ in 0..10 {
            let result = client!(self.queue, QueueClient).cancel(id).await;
            if matches!(&result, Err(ClientError::Daemon(e)) if e.code.as_str() == "job_finished") {
                return;
            }
            if self.tally(|r| &r.queue, "cancel", &result) {
                return;
            }
            self.queue = None;
        }
    }

    async fn job(&mut self) {
        if self.rng.below(5) == 0 {
            return self.long_job().await;
        }
        self.seq += 1;
        let tag = format!("{}-{}", self.n, self.seq);
        let kind = self.rng.below(4);
        let mut spec = match kind {
            0 => JobSpec { argv: vec!["true".into(), self.marker.clone(), tag.clone()], ..JobSpec::default() },
            1 => JobSpec {
                argv: vec!["sh".into(), "-c".into(), "exit 1".into(), self.marker.clone()],
                max_attempts: Some(2),
                backoff_base_ms: Some(100),
                backoff_cap_ms: Some(200),
                ..JobSpec::default()
            },
            _ => {
                let secs = format!("0.{}", 2 + self.rng.below(8));
                JobSpec {
                    argv: ["sh", "-c", "sleep \"$1\"", &self.marker, &secs].map(String::from).to_vec(),
                    ..JobSpec::default()
                }
            }
        };
        let key = (self.rng.below(2) == 0).then(|| format!("soak-{tag}"));
        spec.key = key.clone();
        // A keyed submit is retried until one answer arrives: every answer must name the same job.
        let mut id = None;
        for _ in 0..if key.is_some() { 10 } else { 1 } {
            let result = client!(self.queue, QueueClient).submit(spec.clone()).await;
            if self.tally(|r| &r.queue, "submit", &result) {
                id = Some(result.unwrap().job.id);
                break;
            }
            self.queue = None;
        }
        let Some(id) = id else { return };
        self.record.jobs.lock().unwrap().insert(id, key.clone());
        if let Some(key) = key {
            let earlier = *self.record.keys.lock().unwrap().entry(key.clone()).or_insert(id);
            if earlier != id {
                self.record.violation(format!("key {key} named job {earlier} and then job {id}"));
            }
            // Submitting it again is deduplicated to the same job.
            let again = client!(self.queue, QueueClient).submit(spec).await;
            if self.tally(|r| &r.queue, "resubmit", &again) {
                let again = again.unwrap();
                if again.job.id != id || !again.deduplicated {
                    self.record.violation(format!("key {key}: job {id}, resubmitted as {}", again.job.id));
                }
            } else {
                self.queue = None;
            }
        }
        if self.rng.below(2) == 0 {
            let result = client!(self.queue, QueueClient).wait(id, |_| {}).await;
            if self.tally(|r| &r.queue, "wait", &result) {
                let job = result.unwrap();
                let expected = if kind == 1 { JobState::Dead } else { JobState::Succeeded };
                // A kill can fail an attempt of a job that would have succeeded.
                if job.state != expected && kind != 1 && job.state != JobState::Dead {
                    self.record.violation(format!("job {id} ended {}: {:?}", job.state, job.last_error));
                }
            } else {
                self.queue = None;
            }
        }
    }

    /// Puts this client's next number under its own key of a shared
    /// document: every acknowledged value must be there after the kills.
    async fn sync_write(&mut self) {
        let doc = format!("soak/{}", self.n % 3);
        if self.sync.is_none() {
            let deadline = Instant::now() + RECONNECT;
            loop {
                match SyncClient::open(&self.socket, &doc).await {
                    Ok(c) => break self.sync = Some(c),
                    Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => panic!("client {}: cannot open {doc} within {RECONNECT:?}: {e}", self.n),
                }
            }
        }
        self.seq += 1;
        let key = format!("c{}", self.n);
        let path = [hearth::protocol::sync::PathElem::Key(key.clone())];
        let result = self.sync.as_mut().unwrap().put(&path, serde_json::json!(self.seq)).await;
        if self.tally(|r| &r.sync, "sync write", &result) {
            self.record.sync_writes.lock().unwrap().insert((doc, key), self.seq);
        } else {
            self.sync = None;
        }
    }

    async fn blob(&mut self) {
        let len = match self.rng.below(4) {
            0 => self.rng.below(100) as usize,
            1 | 2 => self.rng.below(300_000) as usize,
            _ => 1_048_576 + self.rng.below(2_500_000) as usize,
        };
        let data = self.rng.bytes(len);
        let hash = hash_of(&data);
        let result = client!(self.blob, BlobClient).put_bytes(&data, PutOptions::new()).await;
        if !self.tally(|r| &r.blob, "put", &result) {
            self.blob = None;
            return;
        }
        let stored = result.unwrap();
        if stored.hash != hash {
            self.record.violation(format!("put of {len} bytes acknowledged as {} (expected {hash})", stored.hash));
        }
        self.record.blobs.lock().unwrap().insert(hash.clone(), len as u64);
        let result = client!(self.blob, BlobClient).get_bytes(&hash).await;
        if self.tally(|r| &r.blob, "get", &result) {
            if hash_of(&result.unwrap()) != hash {
                self.record.violation(format!("blob {hash} read back other bytes"));
            }
        } else {
            self.blob = None;
        }
    }

    async fn pool(&mut self) {
        if self.leases.len() >= 2 || (!self.leases.is_empty() && self.rng.below(2) == 0) {
            let (lease, path) = self.leases.remove(0);
            let reuse = self.rng.below(2) == 0;
            self.release(lease, path, reuse).await;
            return;
        }
        let result = client!(self.pool, PoolClient).take_within("soak", Duration::from_secs(60)).await;
        if !self.tally(|r| &r.pool, "take", &result) {
            self.pool = None;
            return;
        }
        let lease = result.unwrap();
        self.record.leases.fetch_add(1, Ordering::Relaxed);
        if !lease.path.join("f").exists() {
            self.record.violation(format!("lease {} handed out {} unbuilt", lease.lease, lease.path.display()));
        }
        if !self.record.held.lock().unwrap().insert(lease.path.clone()) {
            self.record.violation(format!("{} handed out again while taken", lease.path.display()));
        }
        self.leases.push((lease.lease, lease.path));
    }

    /// The supervised process: its status, or a restart (which answers
    /// once the new instance runs).
    async fn process(&mut self) {
        let restart = self.rng.below(2) == 0;
        let client = client!(self.process, ProcessClient);
        let result = if restart {
            client.restart("soak").await.map(|done| done["soak"].state)
        } else {
            client.process("soak").await.map(|p| p.state)
        };
        if !self.tally(|r| &r.process, if restart { "restart" } else { "process status" }, &result) {
            self.process = None;
        }
    }

    /// Releases a lease, retrying through kills; `unknown_lease` on a retry
    /// means an earlier attempt went through.
    async fn release(&mut self, lease: LeaseId, path: PathBuf, reuse: bool) {
        // From the first attempt on, the daemon may already have it back.
        self.record.held.lock().unwrap().remove(&path);
        for attempt in 0..20 {
            let result = client!(self.pool, PoolClient).release(&lease, reuse).await;
            match &result {
                Err(ClientError::Daemon(e)) if attempt > 0 && e.code.as_str() == "unknown_lease" => return,
                _ => {}
            }
            if self.tally(|r| &r.pool, "release", &result) {
                self.record.released.lock().unwrap().insert(lease);
                return;
            }
            self.pool = None;
        }
    }
}

/// Every regular file under `dir` whose name satisfies `bad`.
fn files_under(dir: &Path, bad: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            files_under(&path, bad, out);
        } else if bad(&entry.file_name().to_string_lossy()) {
            out.push(path);
        }
    }
}

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[test]
fn chaos_soak() {
    let secs: u64 = std::env::var("HEARTH_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
    let seed: u64 = std::env::var("HEARTH_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("soak: seed {seed} (HEARTH_SOAK_SEED={seed} replays the schedule), {secs}s, {CLIENTS} clients");
    let marker = format!("hearth-soak-{}-{seed:x}", std::process::id());
    let state = StateDir::new();
    // The supervised process carries the marker in its environment, so
    // that an instance a kill left untracked (or two at once) shows.
    state.write_config(&format!(
        "[queue]\nworkers = 4\n[pool.soak]\ncreate = [\"sh\", \"-c\", \"echo x > {{path}}/f\"]\nsize = 2\n\
         [process.soak]\nargv = [\"sh\", \"-c\", \"exec sleep 1000\"]\nenv = {{ SOAK_MARKER = \"{marker}-process\" }}\n\
         stop_grace = \"2s\"\n"
    ));
    let daemon = Arc::new(Mutex::new(state.start(&[])));
    let rss_start = rss_kib(daemon.lock().unwrap().pid());
    let started = Instant::now();
    let record = Arc::new(Record::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng(seed);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let worker = Worker {
                n,
                socket: state.socket().to_owned(),
                marker: marker.clone(),
                rng: Rng(rng.next()),
                record: record.clone(),
                stop: stop.clone(),
                status: None,
                queue: None,
                blob: None,
                sync: None,
                pool: None,
                process: None,
                leases: Vec::new(),
                seq: 0,
            };
            runtime.spawn(worker.run())
        })
        .collect();

    // The chaos: SIGKILL at random moments, a restart right after.
    let mut kills = 0u64;
    let end = started + Duration::from_secs(secs);
    loop {
        let pause = Duration::from_millis(1500 + rng.below(3000));
        if Instant::now() + pause >= end {
            break;
        }
        std::thread::sleep(pause);
        let mut d = daemon.lock().unwrap();
        d.kill9();
        kills += 1;
        *d = state.start(&[]);
    }
    stop.store(true, Ordering::Relaxed);
    let chaos_secs = started.elapsed().as_secs_f64();
    for worker in workers {
        runtime.block_on(async { tokio::time::timeout(DRAIN, worker).await }).expect("a client hung").unwrap();
    }

    // Let the work drain, then check what the daemon says.
    let socket = state.socket().to_owned();
    let (leftover, reported_leases) = runtime.block_on(async {
        let mut queue = QueueClient::connect(&socket).await.unwrap();
        // Long jobs whose cancel a kill cut off are canceled now.
        let long: Vec<u64> = record.long.lock().unwrap().iter().copied().collect();
        for id in long {
            if !queue.get(id).await.unwrap().0.state.is_final() {
                let _ = queue.cancel(id).await;
            }
        }
        let deadline = tokio::time::Instant::now() + DRAIN;
        loop {
            let status = StatusClient::connect(&socket).await.unwrap().status().await.unwrap();
            let busy = status.services.queue.as_ref().map_or(0, |q| q.pending + q.running);
            if busy == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut leftover = Vec::new();
        let ids: Vec<u64> = record.jobs.lock().unwrap().keys().copied().collect();
        for id in ids {
            match queue.get(id).await {
                Ok((job, _)) if !job.state.is_final() => leftover.push((id, job.state)),
                Ok(_) => {}
                Err(e) => record.violation(format!("acknowledged job {id}: {e}")),
            }
        }
        let writes: Vec<((String, String), u64)> =
            record.sync_writes.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect();
        for ((doc, key), acked) in writes {
            let mut view = SyncClient::open(&socket, &doc).await.unwrap();
            let path = [hearth::protocol::sync::PathElem::Key(key.clone())];
            match view.get(&path).await.map(|(_, v)| v.as_u64()) {
                Ok(Some(stored)) if stored >= acked => {}
                Ok(stored) => record.violation(format!("{doc} {key}: acknowledged {acked}, stored {stored:?}")),
                Err(e) => record.violation(format!("{doc} {key}: acknowledged {acked}: {e}")),
            }
        }
        let mut blob = BlobClient::connect(&socket).await.unwrap();
        let blobs: Vec<(BlobHash, u64)> = record.blobs.lock().unwrap().iter().map(|(h, s)| (h.clone(), *s)).collect();
        for (hash, size) in blobs {
            match blob.get_bytes(&hash).await {
                Ok(data) if hash_of(&data) == hash && data.len() as u64 == size => {}
                Ok(data) => record.violation(format!("blob {hash} reads back {} other bytes", data.len())),
                Err(e) => record.violation(format!("acknowledged blob {hash}: {e}")),
            }
        }
        // Exactly one instance of the supervised process runs: the one the daemon reports.
        let mut process = ProcessClient::connect(&socket).await.unwrap();
        let deadline = tokio::time::Instant::now() + DRAIN;
        loop {
            let p = process.process("soak").await.unwrap();
            let running = processes_marked(&format!("{marker}-process"));
            if p.pid.is_some_and(|pid| running == [pid]) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                record.violation(format!("the supervised process runs as {running:?}; the daemon says {:?}", p.pid));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut pool = PoolClient::connect(&socket).await.unwrap();
        let leases = pool.leases(Some("soak")).await.unwrap();
        for lease in &leases {
            if record.released.lock().unwrap().contains(&lease.lease) {
                record.violation(format!("lease {} is still taken after its release was acknowledged", lease.lease));
            }
        }
        (leftover, leases.len())
    });
    let rss_end = rss_kib(daemon.lock().unwrap().pid());

    // A clean stop, a clean restart, a clean stop: then nothing may be left behind.
    let mut d = daemon.lock().unwrap();
    d.stop();
    *d = state.start(&[]);
    let dir = state.state_dir();
    let mut temp = Vec::new();
    wait_for(Duration::from_secs(30), || {
        temp.clear();
        temp.extend(dir_entries(&dir.join("blobs/tmp")));
        temp.extend(dir_entries(&dir.join("pools/.trash")));
        files_under(dir, &|name| name.contains(".tmp"), &mut temp);
        // A resource directory without its record is a build nobody finished.
        let pool = dir.join("pools/soak");
        temp.extend(dir_entries(&pool).into_iter().filter(|p| {
            p.is_dir()
                && !p.ends_with("logs")
                && !pool.join(format!("{}.json", p.file_name().unwrap().to_string_lossy())).exists()
        }));
        temp.is_empty()
    });
    d.stop();
    let running = dir_entries(&dir.join("queue/running"));
    if dir.join("processes/soak/run.json").exists() {
        record.violation("a process run record left after a clean stop".into());
    }
    if !temp.is_empty() {
        record.violation(format!("temp files left after a clean restart: {temp:?}"));
    }
    if !running.is_empty() {
        record.violation(format!("attempt records left after a clean stop: {running:?}"));
    }
    let db = rusqlite::Connection::open_with_flags(
        dir.join("queue/queue.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let integrity: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    if integrity != "ok" {
        record.violation(format!("queue.db integrity_check: {integrity}"));
    }
    for (id, key) in record.jobs.lock().unwrap().iter() {
        let rows: i64 = db.query_row("SELECT COUNT(*) FROM jobs WHERE id = ?1", [*id as i64], |r| r.get(0)).unwrap();
        if rows != 1 {
            record.violation(format!("acknowledged job {id} is in the store {rows} times"));
        }
        if let Some(key) = key {
            let rows: i64 = db.query_row("SELECT COUNT(*) FROM jobs WHERE idem_key = ?1", [key], |r| r.get(0)).unwrap();
            if rows != 1 {
                record.violation(format!("key {key} names {rows} jobs in the store"));
            }
        }
    }
    let orphans = processes_marked(&marker);
    if !orphans.is_empty() {
        record.violation(format!("job or supervised processes left behind: {orphans:?}"));
        // Each job leads its own process group: take the groups down, so
        // that a failed run leaves nothing running either.
        for pid in orphans {
            let _ = hearth::sys::killpg(pid, libc::SIGKILL);
        }
    }

    let line = |name: &str, c: &Counts| {
        format!("{name} {} ok / {} cut by a kill", c.ok.load(Ordering::Relaxed), c.killed.load(Ordering::Relaxed))
    };
    let violations = record.violations.lock().unwrap().clone();
    let unexpected = record.unexpected.lock().unwrap().clone();
    eprintln!("---- soak summary ----");
    eprintln!("seed {seed}; chaos {chaos_secs:.0}s, whole run {:.0}s; {kills} kills", started.elapsed().as_secs_f64());
    eprintln!(
        "operations: {}; {}; {}; {}; {}; {}",
        line("status", &record.status),
        line("queue", &record.queue),
        line("blob", &record.blob),
        line("sync", &record.sync),
        line("pool", &record.pool),
        line("process", &record.process)
    );
    eprintln!(
        "acknowledged: {} jobs ({} keyed), {} blobs, {} leases ({} still taken: takes whose answer a kill cut)",
        record.jobs.lock().unwrap().len(),
        record.keys.lock().unwrap().len(),
        record.blobs.lock().unwrap().len(),
        record.leases.load(Ordering::Relaxed),
        reported_leases
    );
    eprintln!("jobs not final after the drain: {leftover:?}");
    eprintln!(
        "daemon RSS: {} KiB (the first daemon, at its start), {} KiB (the last one, up since the last kill, before the final stop)",
        rss_start.unwrap_or(0),
        rss_end.unwrap_or(0)
    );
    eprintln!("other errors: {}; invariant violations: {}", unexpected.len(), violations.len());
    assert!(unexpected.is_empty(), "errors no kill explains:\n{}", unexpected.join("\n"));
    assert!(violations.is_empty(), "invariants violated (seed {seed}):\n{}", violations.join("\n"));
    assert!(leftover.iter().all(|(_, s)| matches!(s, JobState::Queued | JobState::RetryWait)), "{leftover:?}");
}
