//! Logging: tracing to stderr. A detached daemon points its stderr at
//! `daemon.log`, so log lines, panics and anything else written to stderr end
//! up in the same file.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Keeps the log writer alive; dropping it flushes pending lines.
#[derive(Debug)]
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// The filter in force: `HEARTH_LOG`, else `RUST_LOG`, else `configured`.
pub fn filter(configured: &str) -> EnvFilter {
    for var in ["HEARTH_LOG", "RUST_LOG"] {
        if let Ok(value) = std::env::var(var) {
            if let Ok(filter) = EnvFilter::try_new(&value) {
                return filter;
            }
        }
    }
    EnvFilter::try_new(configured).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Lines buffered for the writer thread. tracing-appender's default
/// (128,000) preallocates and touches about 4 MiB, half of an idle daemon's
/// memory; a daemon's log rate needs far less. When full, new lines are
/// dropped (and counted by tracing-appender) rather than stalling a worker.
const BUFFERED_LINES: usize = 4096;

/// Installs the global subscriber writing to stderr. Writes happen on a
/// background thread, so a slow disk never stalls the daemon's workers.
pub fn init(configured_filter: &str) -> LogGuard {
    let (writer, worker) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .finish(io::stderr());
    let ansi = std::io::IsTerminal::is_terminal(&io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(configured_filter))
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
    LogGuard { _worker: worker }
}

/// Points stdout and stderr at `path` (appending; created 0600, never
/// through a symlink).
pub fn redirect_stdio_to(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto a standard descriptor; both descriptors are valid.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::dup2(file.as_raw_fd(), target) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
