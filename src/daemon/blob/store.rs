//! The blob store on disk, and its in-memory index.
//!
//! ```text
//! <state-dir>/blobs/
//!   sha256/ab/abcd…ef        content, mode 0400, named by its sha256
//!   sha256/ab/abcd…ef.json   its sidecar: size, media type, name, pin, times
//!   tmp/put-<random>         puts in progress (emptied at start-up)
//!   http-port                the HTTP server's last port
//! ```
//!
//! Every change to one blob (commit, delete, pin, a sidecar rewrite) runs
//! under a per-hash claim, so two puts of the same content, or a put racing a
//! delete, never interleave on disk. The index lock is only ever held for
//! memory operations, never across file I/O.
//!
//! All functions here block: callers run them off the async workers.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::Bound;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::daemon::fsutil;
use crate::protocol::blob::{BlobHash, BlobInfo, GcReport, Usage};

/// Mode of stored content: read-only, for the owner only.
const CONTENT_MODE: u32 = 0o400;

/// A sidecar larger than this is not one of ours (it is rebuilt).
const MAX_SIDECAR: u64 = 64 * 1024;

/// Why a store operation failed, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("no blob {0} is stored")]
    NotFound(BlobHash),
    #[error("blob {0} is pinned; unpin it first, or delete it with force")]
    Pinned(BlobHash),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io { context: context.into(), source }
    }
}

/// What is stored next to each blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) pinned: bool,
    pub(crate) created_at_ms: u64,
    pub(crate) last_access_at_ms: u64,
}

#[derive(Debug)]
struct Entry {
    meta: Sidecar,
    /// Order of last access within this run; breaks ties between accesses
    /// in the same millisecond, so collection is exactly least-recently-used.
    seq: u64,
}

#[derive(Debug, Default)]
struct Index {
    blobs: BTreeMap<BlobHash, Entry>,
    /// Hashes with a commit, delete or sidecar write in progress.
    busy: HashSet<BlobHash>,
    /// Hashes whose last access changed since their sidecar was written.
    dirty: HashSet<BlobHash>,
    clock: u64,
    bytes: u64,
    pinned_count: u64,
    pinned_bytes: u64,
}

impl Index {
    fn insert(&mut self, hash: BlobHash, meta: Sidecar) {
        self.clock += 1;
        self.bytes += meta.size;
        if meta.pinned {
            self.pinned_count += 1;
            self.pinned_bytes += meta.size;
        }
        if let Some(old) = self.blobs.insert(hash, Entry { meta, seq: self.clock }) {
            self.forget(&old.meta);
        }
    }

    fn remove(&mut self, hash: &BlobHash) -> Option<Sidecar> {
        let entry = self.blobs.remove(hash)?;
        self.dirty.remove(hash);
        self.forget(&entry.meta);
        Some(entry.meta)
    }

    fn forget(&mut self, meta: &Sidecar) {
        self.bytes -= meta.size;
        if meta.pinned {
            self.pinned_count -= 1;
            self.pinned_bytes -= meta.size;
        }
    }

    fn set_pinned(&mut self, hash: &BlobHash, pinned: bool) {
        let Some(entry) = self.blobs.get_mut(hash) else { return };
        if entry.meta.pinned == pinned {
            return;
        }
        entry.meta.pinned = pinned;
        let size = entry.meta.size;
        if pinned {
            self.pinned_count += 1;
            self.pinned_bytes += size;
        } else {
            self.pinned_count -= 1;
            self.pinned_bytes -= size;
        }
    }

    fn touch(&mut self, hash: &BlobHash, now_ms: u64) {
        self.clock += 1;
        if let Some(entry) = self.blobs.get_mut(hash) {
            entry.seq = self.clock;
            if entry.meta.last_access_at_ms != now_ms {
                entry.meta.last_access_at_ms = now_ms;
                self.dirty.insert(hash.clone());
            }
        }
    }
}

/// What a put asks for besides its content.
#[derive(Debug, Clone, Default)]
pub(crate) struct PutMeta {
    pub(crate) media_type: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) pin: bool,
}

/// The store.
#[derive(Debug)]
pub(crate) struct Store {
    root: PathBuf,
    objects: PathBuf,
    tmp: PathBuf,
    budget: Option<u64>,
    index: Mutex<Index>,
    settled: Condvar,
}

/// Exclusive rights to change one blob; released on drop.
struct Claim<'a> {
    store: &'a Store,
    hash: BlobHash,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.store.lock().busy.remove(&self.hash);
        self.store.settled.notify_all();
    }
}

/// A put's temp file: removed when dropped unless it was committed.
#[derive(Debug)]
pub(crate) struct TempBlob {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    committed: bool,
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), "cannot remove an abandoned put: {e}");
        }
    }
}

impl Store {
    /// Opens (or creates) the store under `root`: empties `tmp/`, creates
    /// the fan-out directories, and loads the index from the sidecars,
    /// repairing what a crash can leave behind.
    pub(crate) fn open(root: &Path, budget: Option<u64>) -> Result<Store, StoreError> {
        let objects = root.join("sha256");
        let tmp = root.join("tmp");
        for dir in [root, &objects, &tmp] {
            fsutil::create_private_dir(dir).map_err(|e| StoreError::io(format!("cannot create {dir:?}"), e))?;
            real_dir(dir)?;
        }
        let store = Store {
            root: root.to_owned(),
            objects,
            tmp,
            budget,
            index: Mutex::new(Index::default()),
            settled: Condvar::new(),
        };
        store.clear_tmp()?;
        store.load()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store's directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn fanout(&self, hash: &BlobHash) -> PathBuf {
        self.objects.join(&hash.hex()[..2])
    }

    /// Makes sure `hash`'s fan-out directory exists as a real, private
    /// directory, creating it (durably) on first use: a fresh store does not
    /// pay for 256 directories at start-up.
    fn fanout_dir(&self, hash: &BlobHash) -> Result<(), StoreError> {
        let dir = self.fanout(hash);
        match std::fs::symlink_metadata(&dir) {
            Ok(_) => real_dir(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return real_dir(&dir),
                    Err(e) => return Err(StoreError::io(format!("cannot create {dir:?}"), e)),
                }
                fsutil::fsync_dir(&self.objects).map_err(|e| StoreError::io("cannot sync blobs/sha256", e))
            }
            Err(e) => Err(StoreError::io(format!("cannot stat {dir:?}"), e)),
        }
    }

    /// Where a blob's content lives. Only a [`BlobHash`] maps to a path.
    pub(crate) fn content_path(&self, hash: &BlobHash) -> PathBuf {
        self.fanout(hash).join(hash.hex())
    }

    fn sidecar_path(&self, hash: &BlobHash) -> PathBuf {
        self.fanout(hash).join(format!("{}.json", hash.hex()))
    }

    /// Removes every temp file a previous run left behind.
    fn clear_tmp(&self) -> Result<(), StoreError> {
        let entries = std::fs::read_dir(&self.tmp).map_err(|e| StoreError::io("cannot read blobs/tmp", e))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let result = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(path = %path.display(), "cannot remove a leftover temp file: {e}"),
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed unfinished puts left by a previous run");
        }
        Ok(())
    }

    /// Builds the index from the fan-out directories.
    fn load(&self) -> Result<(), StoreError> {
        let mut index = Index::default();
        for prefix in 0..=255u8 {
            let dir = self.objects.join(format!("{prefix:02x}"));
            match std::fs::symlink_metadata(&dir) {
                Ok(_) => real_dir(&dir)?,
                // Created by the first put that needs it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("cannot read {dir:?}"), e)),
            }
            self.load_dir(&dir, &format!("{prefix:02x}"), &mut index)?;
        }
        // Accesses of earlier runs are ordered by their times.
        let mut order: Vec<(u64, BlobHash)> =
            index.blobs.iter().map(|(h, e)| (e.meta.last_access_at_ms, h.clone())).collect();
        order.sort();
        for (seq, (_, hash)) in order.into_iter().enumerate() {
            if let Some(entry) = index.blobs.get_mut(&hash) {
                entry.seq = seq as u64;
            }
        }
        index.clock = index.blobs.len() as u64;
        tracing::info!(count = index.blobs.len(), bytes = index.bytes, "blob store loaded");
        *self.lock() = index;
        Ok(())
    }

    fn load_dir(&self, dir: &Path, prefix: &str, index: &mut Index) -> Result<(), StoreError> {
        let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("cannot read {dir:?}"), e))?;
        let mut sidecars = HashSet::new();
        let mut contents = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') {
                // A sidecar write that a crash interrupted.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let (stem, is_sidecar) = match name.strip_suffix(".json") {
                Some(stem) => (stem, true),
                None => (name.as_str(), false),
            };
            let hash = match BlobHash::parse(&format!("sha256:{stem}")) {
                Ok(hash) if stem.starts_with(prefix) => hash,
                _ => {
                    tracing::warn!(path = %path.display(), "ignoring a file that does not belong in the blob store");
                    continue;
                }
            };
            if is_sidecar {
                sidecars.insert(hash);
            } else if entry.file_type().is_ok_and(|t| t.is_file()) {
                contents.push(hash);
            } else {
                tracing::warn!(path = %path.display(), "ignoring a blob that is not a regular file");
            }
        }
        for hash in contents {
            sidecars.remove(&hash);
            let meta = self.load_one(&hash)?;
            index.insert(hash, meta);
        }
        // Sidecars whose content is gone (a delete that a crash interrupted).
        for hash in sidecars {
            let _ = std::fs::remove_file(self.sidecar_path(&hash));
        }
        Ok(())
    }

    /// Reads one blob's sidecar, or rebuilds it from the content file (a
    /// crash between the content's rename and the sidecar's write).
    fn load_one(&self, hash: &BlobHash) -> Result<Sidecar, StoreError> {
        let content = self.content_path(hash);
        let stat = std::fs::symlink_metadata(&content).map_err(|e| StoreError::io(format!("cannot stat {hash}"), e))?;
        let sidecar = fsutil::read_small(&self.sidecar_path(hash), MAX_SIDECAR)
            .ok()
            .and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok());
        match sidecar {
            Some(meta) if meta.size == stat.len() => Ok(meta),
            other => {
                if other.is_some() {
                    tracing::warn!(%hash, "the sidecar's size disagrees with the content; rewriting the sidecar");
                } else {
                    tracing::info!(%hash, "rebuilding a missing sidecar");
                }
                let created = u64::try_from(stat.mtime()).unwrap_or(0) * 1000;
                let meta = other.unwrap_or(Sidecar {
                    size: 0,
                    media_type: None,
                    name: None,
                    pinned: false,
                    created_at_ms: created,
                    last_access_at_ms: created,
                });
                let meta = Sidecar { size: stat.len(), ..meta };
                self.write_sidecar(hash, &meta, true)?;
                Ok(meta)
            }
        }
    }

    fn write_sidecar(&self, hash: &BlobHash, meta: &Sidecar, durable: bool) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| StoreError::io("cannot encode a sidecar", e.into()))?;
        fsutil::write_atomic(&self.sidecar_path(hash), &bytes, 0o600, durable)
            .map_err(|e| StoreError::io(format!("cannot write the sidecar of {hash}"), e))
    }

    /// Waits until no one else changes `hash`, then claims it.
    fn claim(&self, hash: &BlobHash) -> Claim<'_> {
        let mut index = self.lock();
        while index.busy.contains(hash) {
            index = self.settled.wait(index).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        index.busy.insert(hash.clone());
        Claim { store: self, hash: hash.clone() }
    }

    /// Claims `hash` only if no one else is changing it.
    fn try_claim(&self, hash: &BlobHash) -> Option<Claim<'_>> {
        let mut index = self.lock();
        if !index.busy.insert(hash.clone()) {
            return None;
        }
        Some(Claim { store: self, hash: hash.clone() })
    }

    /// A new, exclusively created temp file for a put.
    pub(crate) fn create_temp(&self) -> Result<TempBlob, StoreError> {
        let id = crate::daemon::random::hex(12).map_err(|e| StoreError::io("cannot read random bytes", e))?;
        let path = self.tmp.join(format!("put-{id}"));
        let file = fsutil::create_new(&path, 0o600).map_err(|e| StoreError::io("cannot create a temp file", e))?;
        Ok(TempBlob { path, file, committed: false })
    }

    /// Makes a finished, synced temp file the content of `hash` (unless that
    /// content is already stored), then writes its sidecar. Returns whether
    /// the content already existed. Durable when it returns.
    pub(crate) fn commit(
        &self,
        mut temp: TempBlob,
        hash: &BlobHash,
        size: u64,
        meta: &PutMeta,
    ) -> Result<bool, StoreError> {
        let _claim = self.claim(hash);
        if self.lock().blobs.contains_key(hash) {
            drop(temp); // identical content is stored once
            self.existing(hash, meta.pin)?;
            return Ok(true);
        }
        self.fanout_dir(hash)?;
        let content = self.content_path(hash);
        std::fs::rename(&temp.path, &content).map_err(|e| StoreError::io("cannot move a put into place", e))?;
        temp.committed = true;
        let now = crate::time::now_ms();
        let sidecar = Sidecar {
            size,
            media_type: meta.media_type.clone(),
            name: meta.name.clone(),
            pinned: meta.pin,
            created_at_ms: now,
            last_access_at_ms: now,
        };
        let durable = fsutil::fsync_dir(&self.fanout(hash))
            .map_err(|e| StoreError::io("cannot sync the blob directory", e))
            .and_then(|()| self.write_sidecar(hash, &sidecar, true));
        if let Err(e) = durable {
            let _ = std::fs::remove_file(&content);
            let _ = std::fs::remove_file(self.sidecar_path(hash));
            return Err(e);
        }
        self.lock().insert(hash.clone(), sidecar);
        Ok(false)
    }

    /// A put of content that is already stored: refreshes its last access
    /// and pins it if asked. Call under the blob's claim.
    fn existing(&self, hash: &BlobHash, pin: bool) -> Result<(), StoreError> {
        let now = crate::time::now_ms();
        let snapshot = {
            let mut index = self.lock();
            index.touch(hash, now);
            let entry = index.blobs.get(hash).ok_or_else(|| StoreError::NotFound(hash.clone()))?;
            if !pin || entry.meta.pinned {
                return Ok(());
            }
            Sidecar { pinned: true, ..entry.meta.clone() }
        };
        self.write_sidecar(hash, &snapshot, true)?;
        let mut index = self.lock();
        index.set_pinned(hash, true);
        index.dirty.remove(hash);
        Ok(())
    }

    /// The fast path of a put whose client named the hash: if the content is
    /// stored, pin it if asked and return its size.
    pub(crate) fn put_known(&self, hash: &BlobHash, pin: bool) -> Result<Option<u64>, StoreError> {
        let _claim = self.claim(hash);
        let Some(size) = self.lock().blobs.get(hash).map(|e| e.meta.size) else { return Ok(None) };
        self.existing(hash, pin)?;
        Ok(Some(size))
    }

    /// A blob's metadata.
    pub(crate) fn info(&self, hash: &BlobHash) -> Option<BlobInfo> {
        self.lock().blobs.get(hash).map(|e| info(hash, &e.meta))
    }

    /// Records a read of `hash` (in memory; sidecars are updated in batches
    /// by [`Store::flush_access`]).
    pub(crate) fn touch(&self, hash: &BlobHash) {
        self.lock().touch(hash, crate::time::now_ms());
    }

    /// Opens a blob's content for reading; also returns its metadata.
    pub(crate) fn open_blob(&self, hash: &BlobHash) -> Result<(File, BlobInfo), StoreError> {
        let info = self.info(hash).ok_or_else(|| StoreError::NotFound(hash.clone()))?;
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(self.content_path(hash)).map_err(
            |e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::NotFound(hash.clone()),
                _ => StoreError::io(format!("cannot open {hash}"), e),
            },
        )?;
        Ok((file, info))
    }

    /// Removes a blob (a pinned one only with `force`); returns its size.
    pub(crate) fn delete(&self, hash: &BlobHash, force: bool) -> Result<u64, StoreError> {
        let size = self.delete_if(hash, |e| {
            if e.meta.pinned && !force {
                return Err(StoreError::Pinned(hash.clone()));
            }
            Ok(true)
        })?;
        // Durable like a put: a deleted blob must not come back after a
        // crash (a collected one may, and is collected again).
        fsutil::fsync_dir(&self.fanout(hash)).map_err(|e| StoreError::io("cannot sync the blob directory", e))?;
        Ok(size.unwrap_or(0))
    }

    /// Removes a blob if `check` says so (under its claim). `Ok(None)`: the
    /// check declined.
    fn delete_if(
        &self,
        hash: &BlobHash,
        check: impl FnOnce(&Entry) -> Result<bool, StoreError>,
    ) -> Result<Option<u64>, StoreError> {
        let _claim = self.claim(hash);
        let meta = {
            let mut index = self.lock();
            let entry = index.blobs.get(hash).ok_or_else(|| StoreError::NotFound(hash.clone()))?;
            if !check(entry)? {
                return Ok(None);
            }
            index.remove(hash).ok_or_else(|| StoreError::NotFound(hash.clone()))?
        };
        // Readers that opened the content keep reading it; new ones get not found.
        for path in [self.content_path(hash), self.sidecar_path(hash)] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), "cannot remove a deleted blob's file: {e}");
            }
        }
        Ok(Some(meta.size))
    }

    /// Pins or unpins a blob (durably).
    pub(crate) fn set_pinned(&self, hash: &BlobHash, pinned: bool) -> Result<(), StoreError> {
        let _claim = self.claim(hash);
        let snapshot = {
            let index = self.lock();
            let entry = index.blobs.get(hash).ok_or_else(|| StoreError::NotFound(hash.clone()))?;
            if entry.meta.pinned == pinned {
                return Ok(());
            }
            Sidecar { pinned, ..entry.meta.clone() }
        };
        self.write_sidecar(hash, &snapshot, true)?;
        let mut index = self.lock();
        index.set_pinned(hash, pinned);
        index.dirty.remove(hash);
        Ok(())
    }

    /// Up to `limit` blobs after `cursor`, in hash order, and whether more follow.
    pub(crate) fn list(&self, after: Option<&BlobHash>, limit: usize) -> (Vec<BlobInfo>, bool) {
        let index = self.lock();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = index.blobs.range::<BlobHash, _>((start, Bound::Unbounded));
        let page: Vec<BlobInfo> = range.by_ref().take(limit).map(|(h, e)| info(h, &e.meta)).collect();
        let more = range.next().is_some();
        (page, more)
    }

    /// The store's totals (`http_url` is left for the service to fill in).
    pub(crate) fn usage(&self) -> Usage {
        let index = self.lock();
        Usage {
            count: index.blobs.len() as u64,
            bytes: index.bytes,
            pinned_count: index.pinned_count,
            pinned_bytes: index.pinned_bytes,
            budget_bytes: self.budget,
            http_url: None,
        }
    }

    /// Whether the store is over its budget.
    pub(crate) fn over_budget(&self) -> bool {
        self.budget.is_some_and(|budget| self.lock().bytes > budget)
    }

    /// Removes least-recently-used unpinned blobs until the store holds at
    /// most `target` bytes (default: the budget; without one, nothing).
    pub(crate) fn collect(&self, target: Option<u64>) -> GcReport {
        let target = target.or(self.budget);
        let mut removed = 0;
        let mut freed_bytes = 0;
        if let Some(target) = target {
            let candidates: Vec<(u64, BlobHash)> = {
                let index = self.lock();
                if index.bytes <= target {
                    Vec::new()
                } else {
                    let mut all: Vec<(u64, BlobHash)> =
                        index.blobs.iter().filter(|(_, e)| !e.meta.pinned).map(|(h, e)| (e.seq, h.clone())).collect();
                    all.sort_unstable();
                    all
                }
            };
            for (seq, hash) in candidates {
                if self.lock().bytes <= target {
                    break;
                }
                // Skip a blob that was read or pinned since the candidates were chosen.
                match self.delete_if(&hash, |e| Ok(e.seq == seq && !e.meta.pinned)) {
                    Ok(Some(size)) => {
                        removed += 1;
                        freed_bytes += size;
                        tracing::debug!(%hash, size, "collected");
                    }
                    Ok(None) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => tracing::warn!(%hash, "cannot collect: {e}"),
                }
            }
            if removed > 0 {
                tracing::info!(removed, freed_bytes, target, "blob collection");
            }
        }
        GcReport { removed, freed_bytes, target_bytes: target, usage: self.usage() }
    }

    /// Writes the last-access times that changed since the previous flush
    /// (without fsync: after a crash a blob may look a little less recently
    /// used than it was).
    pub(crate) fn flush_access(&self) {
        let dirty = std::mem::take(&mut self.lock().dirty);
        let mut retry = Vec::new();
        for hash in dirty {
            let Some(_claim) = self.try_claim(&hash) else {
                retry.push(hash);
                continue;
            };
            let Some(meta) = self.lock().blobs.get(&hash).map(|e| e.meta.clone()) else { continue };
            if let Err(e) = self.write_sidecar(&hash, &meta, false) {
                tracing::warn!(%hash, "cannot record the last access: {e}");
            }
        }
        self.lock().dirty.extend(retry);
    }
}

fn info(hash: &BlobHash, meta: &Sidecar) -> BlobInfo {
    BlobInfo {
        hash: hash.clone(),
        size: meta.size,
        media_type: meta.media_type.clone(),
        name: meta.name.clone(),
        pinned: meta.pinned,
        created_at_ms: meta.created_at_ms,
        last_access_at_ms: meta.last_access_at_ms,
    }
}

/// Refuses a symlink (or anything else) where the store expects a directory.
fn real_dir(dir: &Path) -> Result<(), StoreError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| StoreError::io(format!("cannot stat {dir:?}"), e))?;
    if !meta.file_type().is_dir() {
        return Err(StoreError::io(
            format!("{dir:?} is not a directory (a symlink?)"),
            io::Error::from(io::ErrorKind::InvalidData),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io(format!("cannot chmod {dir:?}"), e))?;
    }
    Ok(())
}

/// Makes a finished temp file read-only, and syncs it.
pub(crate) fn seal(temp: &TempBlob) -> io::Result<()> {
    temp.file.set_permissions(std::fs::Permissions::from_mode(CONTENT_MODE))?;
    temp.file.sync_all()
}

/// Streams `length` bytes of `file` from `offset`, in chunks of at most
/// `chunk` bytes, from a blocking thread. The channel holds a few chunks:
/// the memory a transfer uses is bounded whatever the blob's size. The
/// reader stops when the receiver is dropped.
pub(crate) fn spawn_reader(file: File, offset: u64, length: u64, chunk: usize) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        let mut file = file;
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut remaining = length;
        while remaining > 0 {
            let want = remaining.min(chunk as u64) as usize;
            let mut buf = Vec::with_capacity(want);
            let result = (&mut file).take(want as u64).read_to_end(&mut buf);
            let item = match result {
                Ok(n) if n == want => Ok(Bytes::from(buf)),
                Ok(n) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the blob ended {} bytes early", remaining - n as u64),
                )),
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            remaining -= want as u64;
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Whether an I/O error means the disk is full or over quota.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(data: &[u8]) -> BlobHash {
        use sha2::Digest;
        BlobHash::from_digest(&sha2::Sha256::digest(data).into())
    }

    fn put(store: &Store, data: &[u8], meta: &PutMeta) -> (BlobHash, bool) {
        use std::io::Write;
        let mut temp = store.create_temp().unwrap();
        temp.file.write_all(data).unwrap();
        seal(&temp).unwrap();
        let hash = hash_of(data);
        let existed = store.commit(temp, &hash, data.len() as u64, meta).unwrap();
        (hash, existed)
    }

    #[test]
    fn commit_dedups_and_reload_restores_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        let store = Store::open(&root, None).unwrap();
        let meta = PutMeta { media_type: Some("text/plain".into()), name: Some("a.txt".into()), pin: false };
        let (hash, existed) = put(&store, b"hello", &meta);
        assert!(!existed);
        let (again, existed) = put(&store, b"hello", &PutMeta { pin: true, ..PutMeta::default() });
        assert_eq!(again, hash);
        assert!(existed);
        let mode = std::fs::metadata(store.content_path(&hash)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        store.touch(&hash);
        store.flush_access();
        let before = store.info(&hash).unwrap();
        assert!(before.pinned, "a put of existing content may pin it");
        drop(store);

        let store = Store::open(&root, None).unwrap();
        assert_eq!(store.info(&hash).unwrap(), before);
        assert_eq!(store.usage().count, 1);
        assert_eq!(store.usage().pinned_bytes, 5);
    }

    #[test]
    fn crash_leftovers_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        let store = Store::open(&root, None).unwrap();
        let (hash, _) = put(&store, b"kept", &PutMeta::default());
        let (gone, _) = put(&store, b"gone", &PutMeta::default());
        drop(store);
        std::fs::remove_file(root.join("sha256").join(&hash.hex()[..2]).join(format!("{}.json", hash.hex()))).unwrap();
        std::fs::remove_file(root.join("sha256").join(&gone.hex()[..2]).join(gone.hex())).unwrap();
        std::fs::write(root.join("tmp/put-leftover"), b"partial").unwrap();

        let store = Store::open(&root, None).unwrap();
        assert_eq!(store.info(&hash).unwrap().size, 4, "a missing sidecar is rebuilt");
        assert!(store.info(&gone).is_none(), "a sidecar without content is dropped");
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn collection_is_lru_and_spares_pins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("blobs"), Some(12)).unwrap();
        let (a, _) = put(&store, b"aaaa", &PutMeta { pin: true, ..PutMeta::default() });
        let (b, _) = put(&store, b"bbbb", &PutMeta::default());
        let (c, _) = put(&store, b"cccc", &PutMeta::default());
        let (d, _) = put(&store, b"dddd", &PutMeta::default());
        store.touch(&b);
        let report = store.collect(None);
        assert_eq!((report.removed, report.freed_bytes), (1, 4));
        assert!(store.info(&c).is_none(), "the least recently used unpinned blob goes first");
        assert!(store.info(&a).is_some() && store.info(&b).is_some() && store.info(&d).is_some());
        let report = store.collect(Some(0));
        assert_eq!(report.usage.count, 1, "only the pinned blob stays");
        assert!(store.info(&a).is_some());
        assert!(matches!(store.delete(&a, false), Err(StoreError::Pinned(_))));
        assert_eq!(store.delete(&a, true).unwrap(), 4);
        assert_eq!(store.usage().bytes, 0);
    }

    #[test]
    fn list_pages_in_hash_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("blobs"), None).unwrap();
        let mut hashes: Vec<BlobHash> = (0..5u8).map(|i| put(&store, &[i; 3], &PutMeta::default()).0).collect();
        hashes.sort();
        let (first, more) = store.list(None, 2);
        assert!(more);
        let (second, _) = store.list(Some(&first[1].hash), 2);
        let (third, more) = store.list(Some(&second[1].hash), 2);
        assert!(!more);
        let all: Vec<BlobHash> = first.iter().chain(&second).chain(&third).map(|b| b.hash.clone()).collect();
        assert_eq!(all, hashes);
    }
}
