//! The single writer: one thread appends every document's records and
//! commits them in groups, as the queue's writer does.
//!
//! Appends arrive on a channel. The thread takes the first, drains what
//! else is queued (up to [`MAX_BATCH`]), writes every record to its file,
//! syncs each file it touched once, and only then tells each room its
//! changes are durable. So a write is acknowledged only once it is on disk,
//! and N writers in M rooms cost M syncs per group, not N.
//!
//! Compaction's file swap runs here too, between groups, so that no append
//! can fall between the compacted copy and the rename that installs it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

use super::store::{MAGIC, record};
use crate::daemon::fsutil;

/// The most jobs committed in one group.
const MAX_BATCH: usize = 4096;

/// Document files kept open between groups; more are closed (they are synced).
const MAX_OPEN_FILES: usize = 64;

/// How far a room's changes are durable, and whether its file failed.
#[derive(Debug)]
pub(crate) struct Durability {
    /// The highest change batch (the room's sequence number) on disk.
    pub(crate) seq: watch::Sender<u64>,
    /// Set when an append failed: the room must reload from its file.
    pub(crate) failed: Mutex<Option<String>>,
}

impl Durability {
    pub(crate) fn new(seq: u64) -> Arc<Durability> {
        Arc::new(Durability { seq: watch::Sender::new(seq), failed: Mutex::new(None) })
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StoreError {
    /// The file could not be written or synced.
    #[error("cannot write {path}: {message}")]
    Io {
        /// The document file.
        path: String,
        /// What the system said.
        message: String,
    },
    /// The writer has stopped.
    #[error("the sync store is closed")]
    Closed,
}

enum Job {
    Append {
        path: PathBuf,
        record: Vec<u8>,
        seq: u64,
        durability: Arc<Durability>,
        reply: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// The file's length with every earlier append on disk.
    Cut { path: PathBuf, reply: oneshot::Sender<io::Result<u64>> },
    /// Installs a compacted copy of the first `cut` bytes, after copying
    /// the records appended since onto it; answers (compacted, appended) bytes.
    Swap { path: PathBuf, compacted: PathBuf, cut: u64, reply: oneshot::Sender<io::Result<(u64, u64)>> },
    /// Closes the file of an unloaded room.
    Forget { path: PathBuf },
    /// Answers at once: proves the thread takes jobs.
    Probe { reply: oneshot::Sender<()> },
}

/// Counters for `status`.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) commits: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) last_error: crate::daemon::services::LastFailure,
}

/// The handle of the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) stats: Arc<WriterStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Append { .. } => "Append",
            Job::Cut { .. } => "Cut",
            Job::Swap { .. } => "Swap",
            Job::Forget { .. } => "Forget",
            Job::Probe { .. } => "Probe",
        })
    }
}

impl Writer {
    /// Starts the thread; `dir` is the store directory (synced when a file is created).
    pub(crate) fn spawn(dir: PathBuf) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("hearthd-sync-writer".into())
            .spawn(move || Thread { dir, files: HashMap::new(), stats: thread_stats }.run(&rx))?;
        Ok(Writer { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), stats })
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        match tx.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// Queues a record now (call with the room locked, so records keep the
    /// document's order). `seq` is marked durable once it is on disk; the
    /// returned receiver, when asked for, answers then too.
    pub(crate) fn append(
        &self,
        path: PathBuf,
        payload: &[u8],
        seq: u64,
        durability: Arc<Durability>,
        want_reply: bool,
    ) -> Result<Option<oneshot::Receiver<Result<(), StoreError>>>, StoreError> {
        let (reply, rx) = if want_reply {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.send(Job::Append { path, record: record(payload), seq, durability, reply })?;
        Ok(rx)
    }

    /// The file's length once every append queued before is on disk.
    pub(crate) async fn cut(&self, path: PathBuf) -> io::Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Cut { path, reply }).map_err(io::Error::other)?;
        rx.await.map_err(|_| io::Error::other(StoreError::Closed))?
    }

    /// Installs `compacted` (the compacted first `cut` bytes) in place of `path`.
    pub(crate) async fn swap(&self, path: PathBuf, compacted: PathBuf, cut: u64) -> io::Result<(u64, u64)> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Swap { path, compacted, cut, reply }).map_err(io::Error::other)?;
        rx.await.map_err(|_| io::Error::other(StoreError::Closed))?
    }

    /// Closes a document's file (its room unloaded).
    pub(crate) fn forget(&self, path: PathBuf) {
        let _ = self.send(Job::Forget { path });
    }

    /// Whether the thread takes jobs.
    pub(crate) async fn probe(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Probe { reply })?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Lets the thread commit what is queued, then waits for it to end.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = thread.join();
        }
    }
}

struct OpenFile {
    file: File,
    len: u64,
}

struct Thread {
    dir: PathBuf,
    files: HashMap<PathBuf, OpenFile>,
    stats: Arc<WriterStats>,
}

/// An append written but not yet synced.
struct Written {
    path: PathBuf,
    seq: u64,
    durability: Arc<Durability>,
    reply: Option<oneshot::Sender<Result<(), StoreError>>>,
}

impl Thread {
    fn run(mut self, rx: &mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.group(batch);
        }
        // Closed: every file is synced already.
    }

    fn group(&mut self, batch: Vec<Job>) {
        let mut written: Vec<Written> = Vec::new();
        // Per file: its length before this group, to cut a failed group back off.
        let mut touched: HashMap<PathBuf, (u64, Option<String>)> = HashMap::new();
        let mut created = false;
        for job in batch {
            match job {
                Job::Append { path, record, seq, durability, reply } => {
                    let entry = touched.entry(path.clone()).or_insert_with(|| (u64::MAX, None));
                    if let Some(failure) = durability.failure() {
                        // A room whose file failed appends nothing more: its
                        // later changes may depend on the lost ones.
                        entry.1.get_or_insert(failure);
                    }
                    if entry.1.is_none() {
                        match self.write(&path, &record, &mut created) {
                            Ok(before) => {
                                if entry.0 == u64::MAX {
                                    entry.0 = before;
                                }
                                self.stats.bytes.fetch_add(record.len() as u64, Ordering::Relaxed);
                            }
                            Err(e) => entry.1 = Some(e.to_string()),
                        }
                    }
                    written.push(Written { path, seq, durability, reply });
                }
                other => {
                    // Whatever came before this job must be durable first.
                    self.commit(&mut written, &mut touched, &mut created);
                    self.control(other);
                }
            }
        }
        self.commit(&mut written, &mut touched, &mut created);
    }

    /// Appends `record`, opening (or creating) the file; returns its length before.
    fn write(&mut self, path: &Path, record: &[u8], created: &mut bool) -> io::Result<u64> {
        if !self.files.contains_key(path) {
            if self.files.len() >= MAX_OPEN_FILES {
                self.files.clear();
            }
            let (file, len) = open_append(path, created)?;
            self.files.insert(path.to_owned(), OpenFile { file, len });
        }
        let open = self.files.get_mut(path).expect("just inserted");
        let before = open.len;
        if let Err(e) = open.file.write_all(record) {
            let _ = open.file.set_len(before);
            self.files.remove(path);
            return Err(e);
        }
        open.len += record.len() as u64;
        Ok(before)
    }

    /// Syncs every file written since the last commit, then answers.
    fn commit(
        &mut self,
        written: &mut Vec<Written>,
        touched: &mut HashMap<PathBuf, (u64, Option<String>)>,
        created: &mut bool,
    ) {
        if written.is_empty() {
            return;
        }
        for (path, (before, failure)) in touched.iter_mut() {
            if failure.is_some() {
                continue;
            }
            if let Some(open) = self.files.get_mut(path)
                && let Err(e) = open.file.sync_data()
            {
                // Data the kernel could not sync may or may not be on disk:
                // cut the group off so the file holds only acknowledged records.
                let _ = open.file.set_len(*before);
                self.files.remove(path);
                *failure = Some(e.to_string());
            }
        }
        if *created {
            if let Err(e) = fsutil::fsync_dir(&self.dir) {
                for (_, failure) in touched.values_mut() {
                    failure.get_or_insert_with(|| format!("cannot sync the store directory: {e}"));
                }
            }
            *created = false;
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        for w in written.drain(..) {
            let failure = touched.get(&w.path).and_then(|(_, f)| f.clone());
            let result = match failure {
                None => {
                    self.stats.appends.fetch_add(1, Ordering::Relaxed);
                    w.durability.seq.send_if_modified(|seq| {
                        let moved = w.seq > *seq;
                        *seq = (*seq).max(w.seq);
                        moved
                    });
                    Ok(())
                }
                Some(message) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.last_error.record(crate::time::now_ms(), message.clone());
                    let mut failed = w.durability.failed.lock().unwrap_or_else(PoisonError::into_inner);
                    if failed.is_none() {
                        tracing::error!(file = %w.path.display(), "sync store append failed: {message}");
                        *failed = Some(message.clone());
                    }
                    drop(failed);
                    // Wake the room's peers so that they see the failure.
                    w.durability.seq.send_modify(|_| {});
                    Err(StoreError::Io { path: w.path.display().to_string(), message })
                }
            };
            if let Some(reply) = w.reply {
                let _ = reply.send(result);
            }
        }
        touched.clear();
    }

    fn control(&mut self, job: Job) {
        match job {
            Job::Append { .. } => unreachable!("appends are grouped"),
            Job::Cut { path, reply } => {
                let len = match self.files.get(&path) {
                    Some(open) => Ok(open.len),
                    None => std::fs::metadata(&path).map(|m| m.len()),
                };
                let _ = reply.send(len);
            }
            Job::Swap { path, compacted, cut, reply } => {
                self.files.remove(&path);
                let result = swap(&path, &compacted, cut, &self.dir);
                if result.is_err() {
                    let _ = std::fs::remove_file(&compacted);
                }
                let _ = reply.send(result);
            }
            Job::Forget { path } => {
                self.files.remove(&path);
            }
            Job::Probe { reply } => {
                let _ = reply.send(());
            }
        }
    }
}

fn open_append(path: &Path, created: &mut bool) -> io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new().append(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(file) => {
            let len = file.metadata()?.len();
            Ok((file, len))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut file = fsutil::create_new(path, 0o600)?;
            file.write_all(MAGIC)?;
            *created = true;
            Ok((file, MAGIC.len() as u64))
        }
        Err(e) => Err(e),
    }
}

/// Copies what follows `cut` in `live` onto `compacted`, syncs it, and
/// renames it over `live`. Returns (compacted, appended) bytes.
fn swap(live: &Path, compacted: &Path, cut: u64, dir: &Path) -> io::Result<(u64, u64)> {
    let mut tail = Vec::new();
    let mut source = File::open(live)?;
    source.seek(SeekFrom::Start(cut))?;
    source.read_to_end(&mut tail)?;
    let mut target = OpenOptions::new().append(true).open(compacted)?;
    let base = target.metadata()?.len();
    target.write_all(&tail)?;
    target.sync_all()?;
    std::fs::rename(compacted, live)?;
    fsutil::fsync_dir(dir)?;
    Ok((base - MAGIC.len() as u64, tail.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_become_durable_in_order_and_swaps_keep_later_appends() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::spawn(dir.path().to_owned()).unwrap();
        let path = dir.path().join("a.am");
        let durability = Durability::new(0);
        let mut replies = Vec::new();
        for seq in 1..=10u64 {
            replies.push(writer.append(path.clone(), &[seq as u8; 3], seq, durability.clone(), true).unwrap().unwrap());
        }
        for r in replies {
            r.await.unwrap().unwrap();
        }
        assert_eq!(*durability.seq.borrow(), 10);
        let cut = writer.cut(path.clone()).await.unwrap();
        assert_eq!(cut, (MAGIC.len() + 10 * 7) as u64);
        // A compacted stand-in, then one more append before the swap.
        let compact = dir.path().join("a.am.compact");
        std::fs::write(&compact, [&MAGIC[..], &record(b"base")].concat()).unwrap();
        writer.append(path.clone(), b"late", 11, durability.clone(), true).unwrap().unwrap().await.unwrap().unwrap();
        let (base, appended) = writer.swap(path.clone(), compact, cut).await.unwrap();
        assert_eq!((base, appended), (8, 8));
        writer.append(path.clone(), b"after", 12, durability.clone(), true).unwrap().unwrap().await.unwrap().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (ranges, end) = super::super::store::records(&bytes).unwrap();
        assert_eq!(end, bytes.len());
        let payloads: Vec<&[u8]> = ranges.iter().map(|r| &bytes[r.clone()]).collect();
        assert_eq!(payloads, vec![&b"base"[..], b"late", b"after"]);
        writer.probe().await.unwrap();
        writer.close();
        assert!(matches!(writer.probe().await, Err(StoreError::Closed)));
    }
}
