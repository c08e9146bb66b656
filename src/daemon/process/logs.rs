//! A process's output: stdout and stderr go, interleaved as they come, to
//! `output.log` in its directory. When the file would grow past its
//! `log_max`, it is rotated: `output.log` becomes `output.log.1`, `.1`
//! becomes `.2`, and so on, `log_keep` of them kept. The daemon writes the
//! file (it reads the process's pipes), so rotation loses nothing and a
//! process never sees its output fail.
//!
//! Readers (`logs`, `logs --follow`) keep the file they opened: a rotation
//! renames it without touching its content, so a reader finishes it, then
//! moves on to the new `output.log` from its start.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use crate::daemon::fsutil;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::watch;

/// One process's log, written by its instances one after the other.
#[derive(Debug)]
pub(crate) struct LogSink {
    file: Mutex<LogFile>,
    /// Bumped after every write and rotation, for followers.
    changed: watch::Sender<u64>,
}

impl LogSink {
    pub(crate) fn new(path: PathBuf, max: u64, keep: u32) -> LogSink {
        LogSink { file: Mutex::new(LogFile::new(path, max, keep)), changed: watch::Sender::new(0) }
    }

    /// Takes new limits (a redefinition) for the next writes.
    pub(crate) fn set_limits(&self, max: u64, keep: u32) {
        let mut file = self.lock();
        file.max = max;
        file.keep = keep;
    }

    /// Appends `bytes`, rotating as needed. Blocking: call it off the async workers.
    pub(crate) fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let result = self.lock().write(bytes);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        result
    }

    /// Wakes when something was written.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The rotated logs that exist, newest first.
    pub(crate) fn rotated(&self) -> Vec<PathBuf> {
        let file = self.lock();
        rotated_paths(&file.path, file.keep.max(MAX_SEEN)).into_iter().filter(|p| p.exists()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogFile> {
        self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Rotated logs looked for when listing them (a lowered `log_keep` leaves
/// older ones until the next rotation removes them).
const MAX_SEEN: u32 = super::definition::MAX_LOG_KEEP;

fn rotated_paths(path: &Path, keep: u32) -> Vec<PathBuf> {
    (1..=keep).map(|n| numbered(path, n)).collect()
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    max: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    fn new(path: PathBuf, max: u64, keep: u32) -> Self {
        Self { path, max, keep, file: None, size: 0 }
    }

    fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.file.is_none() {
                let mut options = std::fs::OpenOptions::new();
                options.append(true).create(true).mode(0o600);
                let file = fsutil::open_regular(&self.path, &mut options, libc::O_NOFOLLOW)?;
                self.size = file.metadata()?.len();
                self.file = Some(file);
            }
            let room = self.max.saturating_sub(self.size);
            if room == 0 {
                self.rotate()?;
                continue;
            }
            let n = (bytes.len() as u64).min(room) as usize;
            self.file.as_mut().expect("opened").write_all(&bytes[..n])?;
            self.size += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// `output.log` → `.1` → `.2` …; the oldest beyond `keep` is removed.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        self.size = 0;
        let remove = |p: &Path| match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        for n in self.keep.max(1)..=MAX_SEEN.max(self.keep) {
            remove(&numbered(&self.path, n))?;
        }
        if self.keep == 0 {
            return remove(&self.path);
        }
        for n in (1..self.keep).rev() {
            match std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))
    }
}

/// A reader of a process's log that follows it across rotations.
#[derive(Debug)]
pub(crate) struct LogReader {
    path: PathBuf,
    file: Option<File>,
}

impl LogReader {
    /// Opens `path` (if it exists) at the start of its last `lines` lines
    /// (all of it when `None`).
    pub(crate) fn open(path: PathBuf, lines: Option<u32>) -> io::Result<LogReader> {
        let mut reader = LogReader { path, file: None };
        if let Some(mut file) = reader.open_current()? {
            let start = match lines {
                Some(n) => start_of_last_lines(&mut file, n)?,
                None => 0,
            };
            file.seek(SeekFrom::Start(start))?;
            reader.file = Some(file);
        }
        Ok(reader)
    }

    fn open_current(&self) -> io::Result<Option<File>> {
        open_log(&self.path)
    }

    /// The rotated log written after the one `is_ours` recognises (`None`:
    /// the current one). When ours is gone (more rotations than are kept
    /// went by), the oldest that is left.
    fn successor(&self, is_ours: &dyn Fn(&std::fs::Metadata) -> bool) -> Option<PathBuf> {
        let rotated: Vec<(u32, std::fs::Metadata)> = (1..=MAX_SEEN)
            .filter_map(|n| std::fs::symlink_metadata(numbered(&self.path, n)).ok().map(|m| (n, m)))
            .collect();
        match rotated.iter().find(|(_, m)| is_ours(m)) {
            Some((1, _)) => None,
            Some((n, _)) => Some(numbered(&self.path, n - 1)),
            None => rotated.last().map(|(n, _)| numbered(&self.path, *n)),
        }
    }

    /// The next bytes (at most `max`); empty when there is nothing more for
    /// now. Blocking: call it off the async workers.
    pub(crate) fn read(&mut self, max: usize) -> io::Result<Vec<u8>> {
        loop {
            let Some(file) = self.file.as_mut() else {
                // Nothing was written yet: the file may appear.
                self.file = self.open_current()?;
                if self.file.is_none() {
                    return Ok(Vec::new());
                }
                continue;
            };
            let mut buf = Vec::with_capacity(max.min(64 << 10));
            file.take(max as u64).read_to_end(&mut buf)?;
            if !buf.is_empty() {
                return Ok(buf);
            }
            // At the end of the file read: if it was rotated away, go on
            // with the file written after it.
            let ours = file.metadata()?;
            let same = |m: &std::fs::Metadata| m.ino() == ours.ino() && m.dev() == ours.dev();
            if std::fs::symlink_metadata(&self.path).is_ok_and(|m| same(&m)) {
                return Ok(Vec::new());
            }
            let next = self.successor(&same);
            self.file = match next {
                Some(path) => open_log(&path)?,
                None => self.open_current()?,
            };
            if self.file.is_none() {
                return Ok(Vec::new());
            }
        }
    }
}

fn open_log(path: &Path) -> io::Result<Option<File>> {
    match fsutil::open_regular(path, std::fs::OpenOptions::new().read(true), libc::O_NOFOLLOW) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The offset where the last `n` lines of `file` start (a last line
/// without its newline counts).
fn start_of_last_lines(file: &mut File, n: u32) -> io::Result<u64> {
    const BLOCK: u64 = 8192;
    let len = file.metadata()?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut end = len;
    let mut seen = 0u32;
    let mut skip_last = true;
    let mut buf = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(block)?;
        for (i, byte) in block.iter().enumerate().rev() {
            if *byte != b'\n' {
                skip_last = false;
                continue;
            }
            if std::mem::take(&mut skip_last) {
                continue; // The newline that ends the last line.
            }
            seen += 1;
            if seen == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_every_byte_and_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let sink = LogSink::new(path.clone(), 10, 2);
        assert!(LogReader::open(path.clone(), None).unwrap().read(100).unwrap().is_empty(), "nothing written yet");
        sink.write(b"0123456").unwrap();
        let mut reader = LogReader::open(path.clone(), None).unwrap();
        sink.write(b"789abcdefghij").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdefghij");
        assert_eq!(std::fs::read(numbered(&path, 1)).unwrap(), b"0123456789", "never past log_max");
        let mut all = Vec::new();
        loop {
            let chunk = reader.read(4).unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= 4);
            all.extend(chunk);
        }
        assert_eq!(all, b"0123456789abcdefghij", "a reader follows the log across its rotation");
        let mut behind = LogReader::open(path.clone(), None).unwrap();
        assert_eq!(behind.read(100).unwrap(), b"abcdefghij");
        sink.write(b"0123456789ABCDEFGHIJ!").unwrap();
        let mut rest = Vec::new();
        loop {
            let chunk = behind.read(100).unwrap();
            if chunk.is_empty() {
                break;
            }
            rest.extend(chunk);
        }
        assert_eq!(rest, b"0123456789ABCDEFGHIJ!", "two rotations behind, it still reads them in order");
        sink.write(b"klmnopqrstuvwxyz").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"tuvwxyz");
        assert_eq!(std::fs::read(numbered(&path, 1)).unwrap(), b"!klmnopqrs");
        assert_eq!(std::fs::read(numbered(&path, 2)).unwrap(), b"ABCDEFGHIJ");
        assert_eq!(sink.rotated(), [numbered(&path, 1), numbered(&path, 2)]);
        assert!(!numbered(&path, 3).exists(), "keep 2");
        sink.set_limits(10, 0);
        sink.write(b"0123456789!").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"3456789!", "keep 0: a full log is dropped");
        assert!(sink.rotated().is_empty());
    }

    #[test]
    fn a_fifo_at_the_log_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        let sink = LogSink::new(path.clone(), 4096, 1);
        let err = sink.write(b"output").unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let err = LogReader::open(path, None).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
    }

    #[test]
    fn a_symlink_at_the_log_is_never_written_or_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"precious\n").unwrap();
        let path = dir.path().join("output.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let sink = LogSink::new(path.clone(), 4096, 1);
        assert!(sink.write(b"output").is_err());
        assert!(LogReader::open(path, None).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious\n");
    }

    #[test]
    fn the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let text: String = (0..3000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let tail = |n| {
            let mut r = LogReader::open(path.clone(), Some(n)).unwrap();
            String::from_utf8(r.read(1 << 20).unwrap()).unwrap()
        };
        assert_eq!(tail(2), "line 2998\nline 2999\n");
        assert_eq!(tail(0), "");
        assert_eq!(tail(2000).lines().next(), Some("line 1000"), "across blocks");
        assert_eq!(tail(5000).len(), text.len());
        std::fs::write(&path, "a\nb\nno newline").unwrap();
        assert_eq!(tail(2), "b\nno newline");
    }
}
