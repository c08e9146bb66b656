//! The attempts whose processes exist right now: one small file each under
//! `<state-dir>/queue/running/`, written before the attempt's program runs,
//! so that a restarted daemon finds and kills them even when their start
//! never reached the store.
//!
//! Why not the store alone: committing the pid before the program runs puts
//! a durable commit (an fsync of the WAL) between one job's end and the next
//! one's start. The record only has to outlive a crash of the daemon
//! (`kill -9`, a panic), which leaves the page cache alone, so it is written
//! without an fsync. A power loss or an OS crash takes every process with
//! it: then there is nothing left to find, and a record from an earlier boot
//! is recognised by its boot id and dropped.
//!
//! A record is created exclusively just before its program runs and removed
//! once the attempt's end is committed (or once its group is killed because
//! the store refused its start).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon::fsutil;

/// One attempt's process, as a restarted daemon needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) job: u64,
    /// The attempt's number in the job's history (`attempts.n`).
    pub(crate) attempt: u32,
    /// The attempt's main process, which leads its process group.
    pub(crate) pid: u32,
    /// The process's start time (see `child::process_start_time`).
    pub(crate) pid_start_time: Option<u64>,
    /// The boot the process ran in (Linux), `None` where unknown.
    pub(crate) boot_id: Option<String>,
}

/// A file found under `running/` at start-up.
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) path: PathBuf,
    /// The record, or why the file is not one (a write cut short by a crash).
    pub(crate) record: Result<Record, String>,
}

/// The `running/` directory.
#[derive(Debug)]
pub(crate) struct RunningDir {
    dir: PathBuf,
    boot_id: Option<String>,
}

impl RunningDir {
    /// Creates `dir` (0700) if needed; refuses one that is a symlink.
    pub(crate) fn open(dir: PathBuf) -> io::Result<RunningDir> {
        fsutil::private_subdir(&dir)?;
        Ok(RunningDir { dir, boot_id: crate::daemon::child::boot_id() })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the record of attempt `attempt` of `job` lives.
    pub(crate) fn file(&self, job: u64, attempt: u32) -> PathBuf {
        self.dir.join(format!("{job}.{attempt}"))
    }

    /// A record's JSON up to its `pid` value, for a process that writes its
    /// own record: `{"job":17,"attempt":3,"boot_id":"…","pid":` (it then
    /// adds its pid, `,"pid_start_time":`, the time or `null`, and `}`).
    pub(crate) fn record_head(&self, job: u64, attempt: u32) -> Vec<u8> {
        let boot_id = serde_json::to_string(&self.boot_id).unwrap_or_else(|_| "null".into());
        format!("{{\"job\":{job},\"attempt\":{attempt},\"boot_id\":{boot_id},\"pid\":").into_bytes()
    }

    /// Records attempt `attempt` of `job` as running in process `pid`. No
    /// fsync (see the module docs). Fails if the record exists already.
    pub(crate) fn write(&self, job: u64, attempt: u32, pid: u32, pid_start_time: Option<u64>) -> io::Result<()> {
        let record = Record { job, attempt, pid, pid_start_time, boot_id: self.boot_id.clone() };
        let mut bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let path = self.file(job, attempt);
        let mut file = fsutil::create_new(&path, 0o600)?;
        let written = file.write_all(&bytes);
        if written.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        written
    }

    /// Drops the record of an attempt that is over.
    pub(crate) fn remove(&self, job: u64, attempt: u32) {
        self.remove_file(&self.file(job, attempt));
    }

    pub(crate) fn remove_file(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), "cannot remove a running-attempt record: {e}"),
        }
    }

    /// Every file in the directory (at start-up, before anything runs).
    pub(crate) fn scan(&self) -> io::Result<Vec<Found>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let record = read_record(&path);
            found.push(Found { path, record });
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// Whether `record` was written in this boot (unknown counts as yes:
    /// the pid and its start time still decide).
    pub(crate) fn this_boot(&self, record: &Record) -> bool {
        match (&self.boot_id, &record.boot_id) {
            (Some(now), Some(then)) => now == then,
            _ => true,
        }
    }
}

fn read_record(path: &Path) -> Result<Record, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| io::Read::read_to_string(&mut f, &mut text))
        .map_err(|e| format!("cannot read it: {e}"))?;
    serde_json::from_str(text.trim_end()).map_err(|e| format!("not a record ({e}): {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_are_exclusive_private_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let running = RunningDir::open(dir.path().join("running")).unwrap();
        running.write(7, 2, 4242, Some(99)).unwrap();
        let err = running.write(7, 2, 4243, Some(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "one record per attempt");
        let file = running.path().join("7.2");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(running.path().join("8.1"), b"{\"job\": 8, \"att").unwrap();

        let found = running.scan().unwrap();
        assert_eq!(found.len(), 2);
        let record = found[0].record.as_ref().unwrap();
        assert_eq!((record.job, record.attempt, record.pid, record.pid_start_time), (7, 2, 4242, Some(99)));
        assert!(running.this_boot(record));
        assert!(found[1].record.is_err(), "a torn record is reported, not trusted");

        let earlier = Record { boot_id: Some("another boot".into()), ..record.clone() };
        assert_eq!(running.this_boot(&earlier), running.boot_id.is_none());
        running.remove(7, 2);
        running.remove(7, 2);
        assert!(!file.exists());
    }
}
