//! The processes on disk: one private directory each,
//! `<state-dir>/processes/<name>/`, holding
//!
//! - `process.json`: the run-time definition, and whether the process was
//!   stopped (so that a restarted daemon leaves it stopped); written
//!   atomically and durably;
//! - `run.json`: the instance running now (its pid, the pid's start time
//!   and the boot), written before its program runs and removed once its
//!   process group is gone, so that a daemon killed in between finds it;
//!   like the queue's attempt records it is not fsynced: it only has to
//!   outlive the daemon, not the machine;
//! - `output.log` and its rotations `output.log.1` … (see `logs.rs`);
//! - `notify`: the notify socket of a process with a notify check.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon::{child, fsutil};
use crate::protocol::process::ProcessDefinition;

/// The directory under the state directory.
pub const DIR: &str = "processes";
const FILE: &str = "process.json";
const RUN: &str = "run.json";
/// The current log's file name.
pub(crate) const LOG: &str = "output.log";
const NOTIFY: &str = "notify";
/// The largest `process.json` or `run.json` read back.
const MAX_FILE: u64 = 1 << 20;

/// What `define`, `start` and `stop` said about one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcFile {
    /// The run-time definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) definition: Option<ProcessDefinition>,
    /// Stopped by request: not started until asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) stopped: bool,
}

/// The instance a process runs now, as a restarted daemon needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The instance's number.
    pub instance: u64,
    /// The leader of its process group.
    pub pid: u32,
    /// The pid's start time (see `child::process_start_time`).
    pub pid_start_time: Option<u64>,
    /// The boot it ran in (Linux).
    pub boot_id: Option<String>,
    /// When it started, ms since the epoch.
    pub started_at_ms: u64,
}

impl RunRecord {
    /// Whether its process group may still have processes: recorded in this
    /// boot, and its leader (same start time) or its group is still there.
    pub fn alive(&self, boot_id: Option<&str>) -> bool {
        let this_boot = match (boot_id, &self.boot_id) {
            (Some(now), Some(then)) => now == then,
            _ => true,
        };
        this_boot && child::recorded_group_alive(self.pid, self.pid_start_time)
    }
}

/// One process's directory, as found at start-up.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) file: ProcFile,
    /// Its run record, or why the file is not one.
    pub(crate) run: Option<Result<RunRecord, String>>,
}

/// The `processes/` directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    root: PathBuf,
    boot_id: Option<String>,
}

impl Store {
    /// Creates the directory (0700) if needed; refuses a symlink.
    pub(crate) fn open(root: PathBuf) -> io::Result<Store> {
        fsutil::private_subdir(&root)?;
        Ok(Store { root, boot_id: child::boot_id() })
    }

    pub(crate) fn boot_id(&self) -> Option<&str> {
        self.boot_id.as_deref()
    }

    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.dir(name).join(LOG)
    }

    pub(crate) fn notify_socket(&self, name: &str) -> PathBuf {
        self.dir(name).join(NOTIFY)
    }

    /// Creates the process's directory (0700), refusing a symlink.
    pub(crate) fn create_dir(&self, name: &str) -> io::Result<PathBuf> {
        let dir = self.dir(name);
        fsutil::private_subdir(&dir)?;
        Ok(dir)
    }

    /// Saves `process.json` (durably); an empty one is removed instead.
    pub(crate) fn write_file(&self, name: &str, file: &ProcFile) -> io::Result<()> {
        let dir = self.create_dir(name)?;
        let path = dir.join(FILE);
        if *file == ProcFile::default() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => fsutil::fsync_dir(&dir),
            };
        }
        let bytes = serde_json::to_vec_pretty(file).map_err(io::Error::other)?;
        fsutil::write_atomic(&path, &bytes, 0o600, true)
    }

    /// Records the instance about to run (before its program runs).
    pub(crate) fn write_run(&self, name: &str, instance: u64, pid: u32, started_at_ms: u64) -> io::Result<RunRecord> {
        let record = RunRecord {
            instance,
            pid,
            pid_start_time: child::process_start_time(pid),
            boot_id: self.boot_id.clone(),
            started_at_ms,
        };
        let bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.dir(name).join(RUN), &bytes, 0o600, false)?;
        Ok(record)
    }

    /// Drops the record of an instance whose process group is gone.
    pub(crate) fn remove_run(&self, name: &str) {
        let path = self.dir(name).join(RUN);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), "cannot remove a process's run record: {e}"),
        }
    }

    /// Removes a process's directory (its logs too), never following a link.
    pub(crate) fn remove_dir(&self, name: &str) -> io::Result<()> {
        let dir = self.dir(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&dir),
            Ok(_) => std::fs::remove_file(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every process directory and what it holds.
    pub(crate) fn scan(&self) -> io::Result<BTreeMap<String, Found>> {
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if super::definition::validate_name("process name", &name).is_err() || !entry.file_type()?.is_dir() {
                continue; // Temp files of atomic writes, and whatever else is not ours.
            }
            let dir = entry.path();
            let file = match fsutil::read_small(&dir.join(FILE), MAX_FILE) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::error!(process = %name, "ignoring an unreadable process.json: {e}");
                    ProcFile::default()
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => ProcFile::default(),
                Err(e) => {
                    tracing::error!(process = %name, "cannot read process.json: {e}");
                    ProcFile::default()
                }
            };
            let run = read_run(&dir);
            found.insert(name, Found { file, run });
        }
        Ok(found)
    }
}

fn read_run(dir: &Path) -> Option<Result<RunRecord, String>> {
    match fsutil::read_small(&dir.join(RUN), MAX_FILE) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| format!("not a run record ({e})"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(format!("cannot read it: {e}"))),
    }
}

/// A supervised process that a daemon which stopped unexpectedly left
/// running, and that no daemon supervises now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untracked {
    /// The process's name.
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

/// The processes recorded under `state_dir` whose process group is still
/// alive. Only meaningful while no daemon runs on `state_dir` (the next one
/// ends and restarts them); `hearth doctor` reports them.
pub fn untracked(state_dir: &Path) -> Vec<Untracked> {
    let boot = child::boot_id();
    let Ok(entries) = std::fs::read_dir(state_dir.join(DIR)) else { return Vec::new() };
    let mut out: Vec<Untracked> = entries
        .flatten()
        .filter_map(|e| {
            let record = read_run(&e.path())?.ok()?;
            record
                .alive(boot.as_deref())
                .then(|| Untracked { name: e.file_name().to_string_lossy().into_owned(), pid: record.pid })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_and_records_are_private_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join(DIR)).unwrap();
        let def = ProcessDefinition { name: "w".into(), argv: vec!["sleep".into()], ..Default::default() };
        let file = ProcFile { definition: Some(def), stopped: true };
        store.write_file("w", &file).unwrap();
        let me = std::process::id();
        store.write_run("w", 3, me, 42).unwrap();
        for path in [store.dir("w"), store.dir("w").join(FILE), store.dir("w").join(RUN)] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert!(mode == 0o600 || mode == 0o700, "{}: {mode:o}", path.display());
        }
        std::fs::create_dir(store.dir("v")).unwrap();
        std::fs::write(store.dir("v").join(RUN), b"{\"instance\": 1, \"pi").unwrap();
        std::fs::write(dir.path().join(DIR).join(".x.tmp"), b"").unwrap();

        let found = store.scan().unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["v", "w"]);
        assert_eq!(found["w"].file, file);
        let record = found["w"].run.clone().unwrap().unwrap();
        assert_eq!((record.instance, record.pid, record.started_at_ms), (3, me, 42));
        assert!(record.alive(store.boot_id()), "this test process is alive");
        assert!(!record.alive(Some("another boot")) || store.boot_id().is_none());
        assert!(found["v"].run.clone().unwrap().is_err(), "a torn record is reported, not trusted");

        let reused = RunRecord { pid_start_time: record.pid_start_time.map(|t| t + 1), ..record };
        assert!(!reused.alive(store.boot_id()), "a pid with another start time is not ours");
        assert_eq!(untracked(dir.path()), [Untracked { name: "w".into(), pid: me }]);

        store.remove_run("w");
        store.remove_run("w");
        store.write_file("w", &ProcFile::default()).unwrap();
        let found = store.scan().unwrap();
        assert!(found["w"].run.is_none() && found["w"].file == ProcFile::default());
        store.remove_dir("w").unwrap();
        assert!(!store.dir("w").exists());
    }
}
