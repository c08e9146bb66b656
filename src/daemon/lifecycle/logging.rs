//! Logging: tracing to stderr in the foreground; to `daemon.log` with
//! size-based rotation when detached.
//!
//! A detached daemon's stdout and stderr are the log file itself (`dup2`),
//! so log lines, panics and anything else written to stderr land in the same
//! file, and follow it when it is rotated or reopened (SIGHUP, for logrotate).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Lines buffered for the writer thread. tracing-appender's default
/// (128,000) preallocates and touches about 4 MiB, half of an idle daemon's
/// memory; a daemon's log rate needs far less. When full, new lines are
/// dropped (and counted by tracing-appender) rather than stalling a worker.
const BUFFERED_LINES: usize = 4096;

/// Where log lines go.
#[derive(Debug, Clone)]
pub enum LogTarget {
    /// The process's stderr, as it is (foreground).
    Stderr,
    /// A file that also becomes stdout and stderr, rotated by size.
    File {
        /// The log file.
        path: PathBuf,
        /// Rotate once it reaches this many bytes (0: never).
        max_size: u64,
        /// Rotated files to keep (`daemon.log.1` … `daemon.log.<keep>`).
        keep: usize,
    },
}

/// Keeps the log writer alive (dropping it flushes pending lines) and
/// reopens the file on request.
#[derive(Debug)]
pub struct LogGuard {
    _worker: WorkerGuard,
    file: Option<Arc<LogFile>>,
}

impl LogGuard {
    /// Reopens the log file at its path (after logrotate moved it away).
    pub fn reopen(&self) -> io::Result<()> {
        match &self.file {
            Some(file) => file.reopen(),
            None => Ok(()),
        }
    }
}

/// The filter in force: `HEARTH_LOG`, else `RUST_LOG`, else `configured`.
pub fn filter(configured: &str) -> EnvFilter {
    for var in ["HEARTH_LOG", "RUST_LOG"] {
        if let Ok(value) = std::env::var(var)
            && let Ok(filter) = EnvFilter::try_new(&value)
        {
            return filter;
        }
    }
    EnvFilter::try_new(configured).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. Writes happen on a background thread, so
/// a slow disk never stalls the daemon's workers.
pub fn init(target: &LogTarget, configured_filter: &str) -> io::Result<LogGuard> {
    let builder = tracing_appender::non_blocking::NonBlockingBuilder::default().buffered_lines_limit(BUFFERED_LINES);
    let (writer, worker, file, ansi) = match target {
        LogTarget::Stderr => {
            let (writer, worker) = builder.finish(io::stderr());
            (writer, worker, None, std::io::IsTerminal::is_terminal(&io::stderr()))
        }
        LogTarget::File { path, max_size, keep } => {
            let file = Arc::new(LogFile::open(path.clone(), *max_size, *keep)?);
            let (writer, worker) = builder.finish(LogWriter(file.clone()));
            (writer, worker, Some(file), false)
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(configured_filter))
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
    Ok(LogGuard { _worker: worker, file })
}

/// The log file: counts what is written and rotates by size.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    max_size: u64,
    keep: usize,
    state: Mutex<(File, u64)>,
}

impl LogFile {
    fn open(path: PathBuf, max_size: u64, keep: usize) -> io::Result<LogFile> {
        let file = open_and_redirect(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path, max_size, keep, state: Mutex::new((file, size)) })
    }

    fn lock(&self) -> MutexGuard<'_, (File, u64)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reopen(&self) -> io::Result<()> {
        let mut state = self.lock();
        let file = open_and_redirect(&self.path)?;
        let size = file.metadata()?.len();
        *state = (file, size);
        Ok(())
    }

    /// `daemon.log.<keep-1>` → `.<keep>`, …, `daemon.log` → `.1`, then a new
    /// `daemon.log`. With `keep` 0 the old log is simply truncated.
    fn rotate(&self, state: &mut (File, u64)) -> io::Result<()> {
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            state.0.set_len(0)?;
            state.1 = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        *state = (open_and_redirect(&self.path)?, 0);
        Ok(())
    }
}

/// The writer the logging thread uses.
struct LogWriter(Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let log = &self.0;
        let mut state = log.lock();
        let n = state.0.write(buf)?;
        state.1 += n as u64;
        if log.max_size > 0 && state.1 >= log.max_size {
            // A failed rotation keeps writing to the current file.
            let _ = log.rotate(&mut state);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().0.flush()
    }
}

/// Opens `path` for appending (0600, never through a symlink, and only a
/// regular file: a FIFO there would block the daemon, lock held, until
/// someone read it) and points stdout and stderr at it.
fn open_and_redirect(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true).mode(0o600);
    let file = crate::daemon::fsutil::open_regular(path, &mut options, libc::O_NOFOLLOW | libc::O_CLOEXEC)?;
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        crate::sys::redirect_stdio(std::os::fd::AsFd::as_fd(&file), target)?;
    }
    Ok(file)
}
