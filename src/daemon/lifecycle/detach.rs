//! `hearthd --detach`: fork into a new session, and have the parent wait for
//! the child's launch report on a pipe, print it, and exit with its status.
//!
//! ```text
//!   caller ── runs ──> hearthd --detach (parent)
//!                          │ fork ──────────────> child: setsid, stdio -> /dev/null,
//!                          │                        lock, bind, start services ...
//!                          │ <── pipe: one JSON LaunchReport line ──┘
//!                          └─ prints it on stdout, exits 0 / 1 / 3
//! ```
//!
//! The caller gets the daemon's own outcome (ready, already running, or its
//! start-up error) as soon as it is known, and the daemon is not the caller's
//! child, so nothing has to reap it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use crate::protocol::info::{LaunchCode, LaunchReport};

/// Exit status: the daemon is ready.
pub const EXIT_READY: u8 = 0;
/// Exit status: the daemon could not start.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: another daemon already runs for this state directory.
pub const EXIT_ALREADY_RUNNING: u8 = 3;

/// The exit status that goes with a report.
pub fn exit_status(report: &LaunchReport) -> u8 {
    match report {
        LaunchReport::Ready { .. } => EXIT_READY,
        LaunchReport::AlreadyRunning { .. } => EXIT_ALREADY_RUNNING,
        LaunchReport::Failed { .. } => EXIT_FAILED,
    }
}

/// Where the outcome of start-up goes: the pipe to a waiting parent, or
/// nowhere (in the foreground, the log says it).
#[derive(Debug, Default)]
pub struct Reporter {
    pipe: Option<File>,
}

impl Reporter {
    /// A reporter with no one waiting.
    pub fn foreground() -> Self {
        Self { pipe: None }
    }

    /// Sends the report (once) and closes the pipe.
    pub fn report(&mut self, report: &LaunchReport) {
        if let Some(mut pipe) = self.pipe.take()
            && let Ok(mut line) = serde_json::to_vec(report)
        {
            line.push(b'\n');
            let _ = pipe.write_all(&line);
        }
    }
}

/// The two sides of a fork.
#[derive(Debug)]
pub enum Forked {
    /// The original process, after the child reported (or gave up): exit with this status.
    Parent(u8),
    /// The daemon process: carry on starting, and report through this.
    Child(Reporter),
}

/// Forks. Call this before any thread exists, and before the process holds
/// a descriptor of its own beyond stdio (the child closes all the others).
///
/// The parent waits up to `ready_timeout` for the child's report, prints it
/// on stdout and returns [`Forked::Parent`]. The child starts a new session,
/// points its standard descriptors at `/dev/null`, closes every other
/// descriptor it inherited, moves to `/`, and returns [`Forked::Child`].
#[expect(unsafe_code, reason = "the fork that starts the daemon process")]
pub fn fork(ready_timeout: Duration) -> io::Result<Forked> {
    // Close-on-exec, so that no process the daemon starts keeps the pipe open.
    let (read_end, write_end) = crate::sys::pipe()?;

    // SAFETY: the process is single-threaded here (documented precondition),
    // so the child may keep running ordinary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(read_end);
            crate::sys::new_session()?;
            redirect_stdio_to_null()?;
            close_inherited_fds(write_end.as_raw_fd())?;
            std::env::set_current_dir("/")?;
            Ok(Forked::Child(Reporter { pipe: Some(File::from(write_end)) }))
        }
        child => {
            drop(write_end);
            let report = wait_for_report(File::from(read_end), child as u32, ready_timeout);
            let status = exit_status(&report);
            let mut stdout = io::stdout().lock();
            let _ = serde_json::to_writer(&mut stdout, &report);
            let _ = writeln!(stdout);
            Ok(Forked::Parent(status))
        }
    }
}

fn wait_for_report(mut pipe: File, child: u32, timeout: Duration) -> LaunchReport {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return LaunchReport::Failed {
                code: LaunchCode::StartTimeout,
                message: format!(
                    "hearthd (pid {child}) did not report ready within {timeout:?}; it may still be starting: see its log"
                ),
            };
        }
        if !poll_readable(&pipe, remaining) {
            continue;
        }
        let mut chunk = [0u8; 4096];
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        if buf.contains(&b'\n') {
            break;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    serde_json::from_slice(line).unwrap_or_else(|_| LaunchReport::Failed {
        code: LaunchCode::StartupCrashed,
        message: format!("hearthd (pid {child}) exited during start-up without a report; see its log"),
    })
}

fn poll_readable(file: &File, timeout: Duration) -> bool {
    crate::sys::poll(file.as_fd(), libc::POLLIN, timeout).is_ok_and(|events| events != 0)
}

/// Closes every descriptor above stderr but `keep`. A caller may hand down
/// more than stdio (a build tool's jobserver pipe, a shell's redirection)
/// and wait for those to close; the daemon outlives it and must not hold
/// them. Nothing in this process owns them (the precondition of [`fork`]).
#[expect(unsafe_code, reason = "closing descriptors no Rust object owns, after fork")]
fn close_inherited_fds(keep: libc::c_int) -> io::Result<()> {
    let dir = if cfg!(target_os = "linux") { "/proc/self/fd" } else { "/dev/fd" };
    let fds: Vec<libc::c_int> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && *fd != keep)
        .collect();
    for fd in fds {
        // SAFETY: no object of this process owns these descriptors (see
        // above); the directory listing's own one is closed already, and
        // closing it again only fails with EBADF.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn redirect_stdio_to_null() -> io::Result<()> {
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        crate::sys::redirect_stdio(null.as_fd(), target)?;
    }
    Ok(())
}
