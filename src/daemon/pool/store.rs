//! What the pool service keeps on disk, and how it finds it again.
//!
//! ```text
//! <state-dir>/pools/
//!   .trash/                      removed resources, deleted in the background
//!   <pool>/
//!     pool.json                  the run-time definition and target (define, warm, drain)
//!     <resource-id>/             a resource
//!     <resource-id>.json         its record: building, ready or resetting
//!     <resource-id>.lease        its lease while it is taken (empty otherwise)
//!     logs/<resource-id>.log     the output of its build (the newest few per pool)
//! ```
//!
//! Records are written atomically (temp file + rename) and nothing is ever
//! opened through a symlink. A record is written before the state it
//! describes becomes visible (a resource is recorded `ready` before anyone
//! can take it), and a take is recorded before its answer is sent, so a
//! daemon killed at any point restarts knowing every lease it issued.
//!
//! A take is the hot path, so it writes into a file of its own that exists
//! already: its lease file is created empty before the resource is recorded
//! ready. Creating a file, or replacing one by rename (ext4 then flushes its
//! data first), can cost a millisecond; writing into an open one costs
//! microseconds. Lease files are fsynced in batches right after the answers;
//! records of ready resources are not fsynced at all, because losing one to
//! a power cut only costs a rebuild (the directory no record claims is
//! removed).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::definition::validate_name;
use crate::daemon::{child, fsutil};
use crate::protocol::pool::{LeaseId, PoolDefinition};

const POOL_FILE: &str = "pool.json";
const LOGS_DIR: &str = "logs";
const TRASH_DIR: &str = ".trash";
/// Build logs kept per pool.
const LOGS_KEPT: usize = 10;
/// Records and pool files larger than this are not ours.
const MAX_RECORD: u64 = 1 << 20;

/// The durable state of one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub(crate) enum RecordState {
    /// A build is running (or was, when the daemon died).
    Building {
        /// The process group of the step running now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<ProcessRef>,
    },
    /// Built (and checked); taken when a lease file sits beside it.
    Ready,
    /// Released with `reuse`; its reset is running or waiting to.
    Resetting {
        /// The process group of the reset running now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<ProcessRef>,
    },
}

/// A process the daemon started, identified beyond pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessRef {
    pub(crate) pid: u32,
    /// Clock ticks since boot when it started (see `child::process_start_time`).
    pub(crate) start_time: u64,
}

impl ProcessRef {
    pub(crate) fn of(pid: u32) -> Option<ProcessRef> {
        child::process_start_time(pid).map(|start_time| ProcessRef { pid, start_time })
    }

    /// Kills the process group if it is still the one recorded: its leader
    /// is the same process, or the leader is gone but members remain (a pid
    /// is never reused while a group of that id exists).
    pub(crate) fn kill_if_alive(&self) {
        let ours = match child::process_start_time(self.pid) {
            Some(start) => start == self.start_time,
            None => child::group_alive(self.pid),
        };
        if ours {
            let _ = child::kill_group(self.pid, libc::SIGKILL);
        }
    }
}

/// A lease as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub(crate) id: LeaseId,
    pub(crate) taken_at_ms: u64,
    pub(crate) warm: bool,
    pub(crate) wait_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) holder_pid: Option<u32>,
}

/// `<pool>/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    #[serde(flatten)]
    pub(crate) state: RecordState,
    /// The fingerprint of the definition it was built from.
    pub(crate) spec: String,
    /// When its build finished (0 while building).
    pub(crate) created_at_ms: u64,
    pub(crate) build_ms: u64,
}

/// `<pool>/pool.json`: what `define`, `warm` and `drain` said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PoolFile {
    /// The run-time definition, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) definition: Option<PoolDefinition>,
    /// The target set by `warm` or `drain`, which wins over the definition's
    /// size until the definition changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) size: Option<u32>,
}

impl PoolFile {
    pub(crate) fn is_empty(&self) -> bool {
        self.definition.is_none() && self.size.is_none()
    }
}

/// One pool as found on disk at start-up.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) file: PoolFile,
    /// Ready resources, with their lease when taken.
    pub(crate) records: Vec<(Record, Option<LeaseRecord>)>,
}

/// Resource and lease ids are 32 lowercase hex digits.
pub(crate) fn is_id(s: &str) -> bool {
    LeaseId::parse(s).is_ok()
}

/// The on-disk layout under `<state-dir>/pools`.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the root, as private as the rest of the state
    /// directory: a root that group or others can reach is narrowed to 0700
    /// again, and one that is a symlink, not a directory or someone
    /// else's is refused.
    pub(crate) fn open(root: PathBuf) -> io::Result<Store> {
        fsutil::private_subdir(&root)?;
        let store = Store { root };
        store.ensure_dir(&store.trash())?;
        Ok(store)
    }

    pub(crate) fn pool_dir(&self, pool: &str) -> PathBuf {
        self.root.join(pool)
    }

    pub(crate) fn resource_dir(&self, pool: &str, id: &str) -> PathBuf {
        self.root.join(pool).join(id)
    }

    fn record_path(&self, pool: &str, id: &str) -> PathBuf {
        self.root.join(pool).join(format!("{id}.json"))
    }

    fn lease_path(&self, pool: &str, id: &str) -> PathBuf {
        self.root.join(pool).join(format!("{id}.lease"))
    }

    pub(crate) fn log_path(&self, pool: &str, id: &str) -> PathBuf {
        self.root.join(pool).join(LOGS_DIR).join(format!("{id}.log"))
    }

    fn trash(&self) -> PathBuf {
        self.root.join(TRASH_DIR)
    }

    /// The trash, made a real directory again first if something replaced
    /// it: everything in it is deleted, so it must never lead elsewhere.
    fn real_trash(&self) -> io::Result<PathBuf> {
        let trash = self.trash();
        if !fs::symlink_metadata(&trash).is_ok_and(|m| m.is_dir()) {
            tracing::warn!("{} is not a directory of the pool store; replacing it", trash.display());
            self.ensure_dir(&trash)?;
        }
        Ok(trash)
    }

    /// Makes `dir` a real directory of ours: a symlink or a file in its
    /// place is removed first.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => {
                fs::remove_file(dir)?;
                fs::create_dir(dir).and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(dir).and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the pool's directory.
    pub(crate) fn create_pool_dir(&self, pool: &str) -> io::Result<()> {
        self.ensure_dir(&self.pool_dir(pool))
    }

    /// Whether a resource's directory is still a real directory (not a
    /// symlink its holder put in its place).
    pub(crate) fn is_real_resource_dir(&self, pool: &str, id: &str) -> bool {
        fs::symlink_metadata(self.resource_dir(pool, id)).is_ok_and(|m| m.is_dir())
    }

    /// Creates a fresh, empty resource directory (mode 0700).
    pub(crate) fn create_resource_dir(&self, pool: &str, id: &str) -> io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.resource_dir(pool, id);
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(dir)
    }

    /// Writes a record (atomically, not fsynced: see the module docs).
    pub(crate) fn write_record(&self, pool: &str, record: &Record) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.record_path(pool, &record.id), &bytes, 0o600, false)
    }

    /// Creates (or empties) a resource's lease file, before it is
    /// recorded ready: an empty lease file means "not taken", and a take
    /// then only writes into it (creating a file costs far more than
    /// writing one on some filesystems).
    pub(crate) fn clear_lease(&self, pool: &str, id: &str) -> io::Result<()> {
        let path = self.lease_path(pool, id);
        match fs::OpenOptions::new().write(true).truncate(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fsutil::create_new(&path, 0o600).map(drop),
            Err(e) => Err(e),
        }
    }

    /// Records a take in the resource's lease file.
    pub(crate) fn write_lease(&self, pool: &str, id: &str, lease: &LeaseRecord) -> io::Result<()> {
        use std::io::Write;
        let bytes = serde_json::to_vec(lease).map_err(io::Error::other)?;
        let path = self.lease_path(pool, id);
        let mut file = match fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => fsutil::create_new(&path, 0o600)?,
            Err(e) => return Err(e),
        };
        file.write_all(&bytes)?;
        file.set_len(bytes.len() as u64)
    }

    /// Deletes a lease file; a missing one is fine.
    pub(crate) fn delete_lease(&self, pool: &str, id: &str) -> io::Result<()> {
        match fs::remove_file(self.lease_path(pool, id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Fsyncs lease files, then each of their directories once. Blocking.
    pub(crate) fn sync_leases(&self, leases: &[(String, String)]) {
        let mut dirs = std::collections::BTreeSet::new();
        for (pool, id) in leases {
            // A lease released meanwhile is gone: nothing to sync.
            if let Ok(file) = fs::File::open(self.lease_path(pool, id)) {
                let _ = file.sync_all();
            }
            dirs.insert(pool.as_str());
        }
        for pool in dirs {
            let _ = fsutil::fsync_dir(&self.pool_dir(pool));
        }
    }

    /// Deletes a record; a missing one is fine.
    pub(crate) fn delete_record(&self, pool: &str, id: &str) -> io::Result<()> {
        match fs::remove_file(self.record_path(pool, id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves a resource's directory to the trash (a rename: instant and
    /// atomic); [`Store::empty_trash`] deletes it. A missing directory is fine.
    pub(crate) fn trash_resource(&self, pool: &str, id: &str) -> io::Result<()> {
        let from = self.resource_dir(pool, id);
        let to = self.real_trash()?.join(format!("{pool}.{id}"));
        match fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            // A leftover of the same name (a crash mid-delete): clear it and retry.
            Err(_) if fs::symlink_metadata(&to).is_ok() => {
                remove_tree(&to)?;
                fs::rename(&from, &to)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes everything in the trash. Slow for big trees: run it off the
    /// async workers.
    pub(crate) fn empty_trash(&self) {
        let trash = match self.real_trash() {
            Ok(trash) => trash,
            Err(e) => {
                tracing::warn!("cannot use {}: {e}", self.trash().display());
                return;
            }
        };
        let Ok(entries) = fs::read_dir(trash) else { return };
        for entry in entries.flatten() {
            if let Err(e) = remove_tree(&entry.path()) {
                tracing::warn!("cannot delete {}: {e}", entry.path().display());
            }
        }
    }

    /// Writes `pool.json`, or deletes it when there is nothing to keep.
    pub(crate) fn write_pool_file(&self, pool: &str, file: &PoolFile) -> io::Result<()> {
        let path = self.pool_dir(pool).join(POOL_FILE);
        if file.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        self.create_pool_dir(pool)?;
        let bytes = serde_json::to_vec_pretty(file).map_err(io::Error::other)?;
        fsutil::write_atomic(&path, &bytes, 0o600, true)
    }

    /// Removes a pool's directory once nothing of it remains but logs.
    pub(crate) fn remove_pool_dir(&self, pool: &str) {
        let dir = self.pool_dir(pool);
        let _ = remove_tree(&dir.join(LOGS_DIR));
        let _ = fs::remove_file(dir.join(POOL_FILE));
        if let Err(e) = fs::remove_dir(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }

    /// Writes a build's log and keeps only the newest few per pool.
    pub(crate) fn write_log(&self, pool: &str, id: &str, text: &[u8]) -> io::Result<PathBuf> {
        let dir = self.pool_dir(pool).join(LOGS_DIR);
        self.ensure_dir(&dir)?;
        let path = self.log_path(pool, id);
        fsutil::write_atomic(&path, text, 0o600, false)?;
        let mut logs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if logs.len() > LOGS_KEPT {
            logs.sort();
            for (_, old) in &logs[..logs.len() - LOGS_KEPT] {
                let _ = fs::remove_file(old);
            }
        }
        Ok(path)
    }

    /// Reads every pool directory, and puts the disk in order first: builds
    /// and resets interrupted by a crash are killed and removed, directories
    /// no record claims are removed, and records of ready resources whose
    /// directory is gone are dropped. Records of taken resources are always
    /// kept: their holder owns them. Blocking.
    pub(crate) fn recover(&self) -> io::Result<BTreeMap<String, Found>> {
        let mut found = BTreeMap::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == TRASH_DIR {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(entry.path()) else { continue };
            if validate_name(&name).is_err() || !meta.is_dir() {
                tracing::warn!("ignoring {}: not a pool directory", entry.path().display());
                continue;
            }
            found.insert(name.clone(), self.recover_pool(&name)?);
        }
        Ok(found)
    }

    fn recover_pool(&self, pool: &str) -> io::Result<Found> {
        let dir = self.pool_dir(pool);
        let mut out = Found::default();
        match read_small(&dir.join(POOL_FILE)) {
            Ok(Some(bytes)) => match serde_json::from_slice::<PoolFile>(&bytes) {
                Ok(file) => out.file = file,
                Err(e) => {
                    let aside = dir.join("pool.json.unreadable");
                    tracing::error!("{}/{POOL_FILE} is unreadable ({e}); moved to {}", dir.display(), aside.display());
                    let _ = fs::rename(dir.join(POOL_FILE), aside);
                }
            },
            Ok(None) => {}
            Err(e) => tracing::error!("cannot read {}/{POOL_FILE}: {e}", dir.display()),
        }
        let mut dirs = Vec::new();
        let mut records = BTreeMap::new();
        let mut leases = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = fs::symlink_metadata(entry.path()) else { continue };
            if let Some(id) = name.strip_suffix(".json").filter(|id| is_id(id)) {
                match read_small(&entry.path()).ok().flatten().and_then(|b| serde_json::from_slice::<Record>(&b).ok()) {
                    Some(record) if record.id == id => {
                        records.insert(id.to_owned(), record);
                    }
                    _ => {
                        tracing::warn!("removing the unreadable record {}", entry.path().display());
                        let _ = fs::remove_file(entry.path());
                    }
                }
            } else if let Some(id) = name.strip_suffix(".lease").filter(|id| is_id(id)) {
                // Empty: not taken. A lease: taken. Anything else: unreadable.
                let lease = match read_small(&entry.path()) {
                    Ok(Some(bytes)) if bytes.is_empty() => None,
                    Ok(Some(bytes)) => Some(serde_json::from_slice::<LeaseRecord>(&bytes).ok()),
                    _ => Some(None),
                };
                leases.insert(id.to_owned(), lease);
            } else if is_id(&name) {
                dirs.push((name, meta.is_dir()));
            } else if name.starts_with('.') && name.contains(".tmp.") {
                let _ = fs::remove_file(entry.path());
            } else if name != POOL_FILE && name != LOGS_DIR && name != "pool.json.unreadable" {
                tracing::warn!("ignoring {}: not a pool resource", entry.path().display());
            }
        }
        for (id, is_dir) in &dirs {
            if !records.contains_key(id) {
                tracing::info!(pool, resource = %id, "removing a directory no record claims");
                self.discard(pool, id, *is_dir);
            }
        }
        for (id, lease) in &leases {
            if !records.contains_key(id) {
                // A release deletes the record first: this one was under way.
                self.delete_lease(pool, id)?;
            } else if lease == &Some(None) {
                // Only a power cut mid-write leaves this; whoever took it may
                // have used it, so it is never handed out again.
                tracing::warn!(pool, resource = %id, "removing a resource whose lease file is unreadable");
                self.delete_record(pool, id)?;
                self.delete_lease(pool, id)?;
                self.discard(pool, id, true);
                records.remove(id);
            }
        }
        for (id, record) in records {
            let has_dir = dirs.iter().any(|(d, is_dir)| *d == id && *is_dir);
            let lease = leases.remove(&id).flatten().flatten();
            match &record.state {
                RecordState::Building { process } | RecordState::Resetting { process } => {
                    tracing::info!(pool, resource = %id, "removing a build or reset interrupted by a crash");
                    if let Some(process) = process {
                        process.kill_if_alive();
                    }
                    self.delete_record(pool, &id)?;
                    self.delete_lease(pool, &id)?;
                    self.discard(pool, &id, true);
                }
                // A taken resource is its holder's, whatever became of its directory.
                RecordState::Ready if lease.is_some() => out.records.push((record, lease)),
                RecordState::Ready if !has_dir => {
                    tracing::warn!(pool, resource = %id, "a ready resource's directory is gone; forgetting it");
                    self.delete_record(pool, &id)?;
                    if dirs.iter().any(|(d, _)| *d == id) {
                        self.discard(pool, &id, false);
                    }
                }
                RecordState::Ready => out.records.push((record, None)),
            }
        }
        Ok(out)
    }

    /// Removes a resource's directory (or whatever stands in its place).
    fn discard(&self, pool: &str, id: &str, is_dir: bool) {
        let result = if is_dir { self.trash_resource(pool, id) } else { fs::remove_file(self.resource_dir(pool, id)) };
        if let Err(e) = result
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(pool, resource = %id, "cannot remove: {e}");
        }
    }
}

/// Reads a small regular file without following a symlink; `None` when missing.
fn read_small(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RECORD).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Deletes a tree without following symlinks, making read-only directories
/// writable when that is what stops the delete.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            fs::remove_dir_all(path)
        }
    }
}

fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        format!("{n:032x}")
    }

    fn record(n: u8, state: RecordState) -> Record {
        Record { id: id(n), state, spec: "s".into(), created_at_ms: 1, build_ms: 2 }
    }

    #[test]
    fn records_roundtrip() {
        let lease = LeaseRecord {
            id: LeaseId::parse(&id(9)).unwrap(),
            taken_at_ms: 5,
            warm: true,
            wait_ms: 0,
            holder: Some("app/1".into()),
            holder_pid: Some(7),
        };
        for state in [
            RecordState::Building { process: Some(ProcessRef { pid: 3, start_time: 4 }) },
            RecordState::Ready,
            RecordState::Resetting { process: None },
        ] {
            let r = record(1, state);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r, "{json}");
        }
        let json = serde_json::to_string(&lease).unwrap();
        assert_eq!(serde_json::from_str::<LeaseRecord>(&json).unwrap(), lease);
    }

    #[test]
    fn recovery_puts_the_disk_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("pools")).unwrap();
        store.create_pool_dir("p").unwrap();
        let lease = LeaseRecord {
            id: LeaseId::parse(&id(99)).unwrap(),
            taken_at_ms: 5,
            warm: true,
            wait_ms: 0,
            holder: None,
            holder_pid: None,
        };
        // 1 ready, 2 taken, 3 building, 4 orphan dir, 5 ready without dir,
        // 6 taken without dir, 7 released mid-way (lease, no record), 8 an
        // unreadable lease.
        for (n, state) in [
            (1, RecordState::Ready),
            (2, RecordState::Ready),
            (3, RecordState::Building { process: None }),
            (5, RecordState::Ready),
            (6, RecordState::Ready),
            (8, RecordState::Ready),
        ] {
            store.write_record("p", &record(n, state)).unwrap();
        }
        for n in [1, 2, 6, 7] {
            store.clear_lease("p", &id(n)).unwrap();
        }
        for n in [2, 6, 7] {
            store.write_lease("p", &id(n), &lease).unwrap();
        }
        fs::write(store.lease_path("p", &id(8)), b"{\"id\": \"trunc").unwrap();
        for n in [1, 2, 3, 4, 7, 8] {
            let dir = store.create_resource_dir("p", &id(n)).unwrap();
            fs::write(dir.join("file"), b"x").unwrap();
        }
        fs::write(store.pool_dir("p").join("notes.txt"), b"mine").unwrap();
        let found = store.recover().unwrap();
        let ids: Vec<(&str, bool)> = found["p"].records.iter().map(|(r, l)| (r.id.as_str(), l.is_some())).collect();
        assert_eq!(ids, [(id(1).as_str(), false), (id(2).as_str(), true), (id(6).as_str(), true)]);
        for n in [7, 8] {
            assert!(!store.resource_dir("p", &id(n)).exists(), "{n}");
            assert!(!store.lease_path("p", &id(n)).exists(), "{n}");
        }
        assert!(store.resource_dir("p", &id(1)).exists());
        assert!(store.resource_dir("p", &id(2)).exists());
        assert!(!store.resource_dir("p", &id(3)).exists(), "interrupted build removed");
        assert!(!store.record_path("p", &id(3)).exists());
        assert!(!store.resource_dir("p", &id(4)).exists(), "orphan removed");
        assert!(!store.record_path("p", &id(5)).exists());
        assert!(store.pool_dir("p").join("notes.txt").exists(), "unknown files are left alone");
        store.empty_trash();
        assert_eq!(fs::read_dir(store.trash()).unwrap().count(), 0);
    }

    #[test]
    fn a_loosened_root_is_made_private_again() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pools");
        Store::open(root.clone()).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700, "created private");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(root.clone()).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700, "narrowed again");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert!(Store::open(link).unwrap_err().to_string().contains("symbolic link"));
    }

    #[test]
    fn read_only_trees_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/f"), b"x").unwrap();
        fs::set_permissions(dir.join("a"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&dir).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn symlinks_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), b"x").unwrap();
        let store = Store::open(tmp.path().join("pools")).unwrap();
        store.create_pool_dir("p").unwrap();
        std::os::unix::fs::symlink(&outside, store.resource_dir("p", &id(1))).unwrap();
        store.recover().unwrap();
        store.empty_trash();
        assert!(outside.join("precious").exists());
        assert!(fs::symlink_metadata(store.resource_dir("p", &id(1))).is_err(), "the link itself is gone");
    }
}
