//! Starting an attempt without copying the daemon (Linux).
//!
//! `fork` copies the daemon's page tables and write-protects every page the
//! two processes now share, so after each fork every daemon thread takes a
//! page fault (and a TLB shootdown on the other CPUs) on its first write to
//! each page it touches, long after the child has exec'd: measured on a busy
//! daemon, that cost more than the job (`true`) itself. `posix_spawn` avoids
//! it with `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the daemon's
//! memory, and the thread that cloned waits until the child execs or exits.
//! But `posix_spawn` runs no code of ours in the child, and an attempt's
//! process must be recorded before its program runs. So this does what
//! `posix_spawn` does plus that one step: the child sets itself up (signals,
//! process group, stdio, working directory, open-file limit), writes its
//! record under `running/` (its pid and start time, from `/proc/self/stat`),
//! and execs the program.
//!
//! The child shares the daemon's memory while the daemon's other threads
//! run, so it reads only the [`Plan`] prepared for it, writes only its own
//! stack and the plan's outcome fields, allocates nothing, takes no lock,
//! and calls only async-signal-safe functions. Every signal is blocked
//! around the clone and the child resets every handler to the default
//! before it unblocks them, so no handler of the daemon ever runs in it.
//! Until its record is written the child has the parent-death signal armed
//! (the thread that cloned cannot exit before the child execs: it waits for
//! it), so a daemon that dies then takes the child with it.

use std::cell::Cell;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering};

use tokio::io::unix::AsyncFd;

use super::running::RunningDir;
use super::spawn::JobCommand;

/// Why the child gave up before its program ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    None = 0,
    Group,
    Stdio,
    Cwd,
    DaemonGone,
    Record,
    Exec,
}

impl Step {
    fn from_u8(v: u8) -> Step {
        [Step::None, Step::Group, Step::Stdio, Step::Cwd, Step::DaemonGone, Step::Record, Step::Exec]
            .get(usize::from(v))
            .copied()
            .unwrap_or(Step::Exec)
    }
}

/// Everything the child needs, prepared before the clone, and the fields it
/// reports back in.
struct Plan {
    /// Paths to try `execve` on, in order (the `PATH` search, done here).
    candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    /// Descriptors that become the child's 0, 1 and 2.
    stdio: [RawFd; 3],
    nofile: Option<libc::rlimit>,
    parent: libc::pid_t,
    record: CString,
    /// The record up to its `pid` value (see `RunningDir::record_head`).
    record_head: Vec<u8>,
    failed: AtomicU8,
    errno: AtomicI32,
    /// `u64::MAX` when unknown.
    start_time: AtomicU64,
}

/// A started attempt's process.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) start_time: Option<u64>,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// Why [`spawn`] did not start anything.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// This kernel cannot clone with a pidfd (before Linux 5.2): use fork.
    Unsupported,
    Failed(io::Error),
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the command"))
}

/// The paths `execvp` would try for `program` with `path` (the child's `PATH`).
fn candidates(program: &OsStr, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    let bytes = program.as_bytes();
    if bytes.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if bytes.contains(&b'/') {
        return Ok(vec![cstring(program)?]);
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], OsStr::as_bytes);
    path.split(|b| *b == b':')
        .map(|dir| {
            let mut full = if dir.is_empty() { b".".to_vec() } else { dir.to_vec() };
            full.push(b'/');
            full.extend_from_slice(bytes);
            CString::new(full).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in PATH"))
        })
        .collect()
}

/// Starts `cmd` as attempt `n` of `job`: returns once the program runs (its
/// record written) or failed to start (its record removed again).
#[expect(unsafe_code, reason = "starting a process: see the module docs")]
pub(crate) fn spawn(cmd: &JobCommand, running: &RunningDir, job: u64, n: u32) -> Result<Started, SpawnError> {
    let failed = SpawnError::Failed;
    let (stdout_r, stdout_w) = crate::sys::pipe().map_err(failed)?;
    let (stderr_r, stderr_w) = crate::sys::pipe().map_err(failed)?;
    let (stdin_parent, stdin_child) = if cmd.stdin_piped {
        let (r, w) = crate::sys::pipe().map_err(failed)?;
        (Some(w), r)
    } else {
        let null = std::fs::File::open("/dev/null").map_err(failed)?;
        (None, OwnedFd::from(null))
    };

    let path = cmd.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_os_str());
    let candidates = candidates(&cmd.program, path).map_err(failed)?;
    let args: Vec<CString> = std::iter::once(cmd.program.as_os_str())
        .chain(cmd.args.iter().map(OsString::as_os_str))
        .map(cstring)
        .collect::<io::Result<_>>()
        .map_err(failed)?;
    let vars: Vec<CString> = cmd
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect::<io::Result<_>>()
        .map_err(failed)?;
    let null_terminated = |strings: &[CString]| {
        strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect::<Vec<_>>()
    };
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    let plan = Plan {
        candidates,
        argv: null_terminated(&args),
        envp: null_terminated(&vars),
        cwd: cstring(&cmd.cwd).map_err(failed)?,
        stdio: [stdin_child.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()],
        nofile: crate::daemon::child::original_nofile_limit()
            .map(|(soft, hard)| libc::rlimit { rlim_cur: soft, rlim_max: hard }),
        parent,
        record: cstring(running.file(job, n).as_os_str()).map_err(failed)?,
        record_head: running.record_head(job, n),
        failed: AtomicU8::new(Step::None as u8),
        errno: AtomicI32::new(0),
        start_time: AtomicU64::new(u64::MAX),
    };

    let stack = STACK.with(Cell::take).map_or_else(Stack::new, Ok).map_err(failed)?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: every signal is blocked in this thread for the clone (see the
    // module docs) and restored right after. The child runs `child_main` on
    // its own stack with a pointer to `plan`, which outlives it: with
    // CLONE_VFORK this thread resumes only once the child has exec'd or
    // exited, and `plan`, `args`, `vars` and the descriptors stay alive
    // until then.
    let (pid, clone_errno) = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&raw const plan).cast_mut().cast(),
            &raw mut pidfd,
        );
        let clone_errno = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        (pid, clone_errno)
    };
    STACK.with(|kept| kept.set(Some(stack)));
    drop((stdin_child, stdout_w, stderr_w));
    if pid < 0 {
        return match clone_errno.raw_os_error() {
            Some(libc::EINVAL | libc::ENOSYS) => Err(SpawnError::Unsupported),
            _ => Err(failed(clone_errno)),
        };
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor that nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let step = Step::from_u8(plan.failed.load(Ordering::Acquire));
    if step != Step::None {
        let mut status = 0;
        // SAFETY: the child has exited (CLONE_VFORK); reap it.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        running.remove(job, n);
        let os = io::Error::from_raw_os_error(plan.errno.load(Ordering::Acquire));
        let error = match step {
            Step::Exec => os,
            Step::Group => io::Error::new(os.kind(), format!("cannot start a process group: {os}")),
            Step::Stdio => io::Error::new(os.kind(), format!("cannot set up stdin, stdout and stderr: {os}")),
            Step::Cwd => io::Error::new(os.kind(), format!("cannot change to {:?}: {os}", cmd.cwd)),
            Step::DaemonGone => io::Error::other("hearthd stopped while starting it"),
            Step::Record | Step::None => {
                io::Error::new(os.kind(), format!("cannot record the attempt's process: {os}"))
            }
        };
        return Err(failed(error));
    }
    let start_time = Some(plan.start_time.load(Ordering::Acquire)).filter(|t| *t != u64::MAX);
    let child = Child::new(pid, pidfd).map_err(failed)?;
    Ok(Started { child, pid: pid as u32, start_time, stdin: stdin_parent, stdout: stdout_r, stderr: stderr_r })
}

thread_local! {
    /// This thread's child stack, kept from one clone to the next (mapping
    /// a fresh one costs syscalls, a TLB shootdown and page faults). The
    /// thread waits while its child uses it, so it is never used twice at once.
    static STACK: Cell<Option<Stack>> = const { Cell::new(None) };
}

/// A child's stack, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 4096;

    #[expect(unsafe_code, reason = "starting a process: see the module docs")]
    fn new() -> io::Result<Stack> {
        let len = Self::SIZE + Self::GUARD;
        // SAFETY: a fresh anonymous mapping that only this struct owns.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the guard page is the lowest page of our own mapping.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn top(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for Stack {
    #[expect(unsafe_code, reason = "starting a process: see the module docs")]
    fn drop(&mut self) {
        // SAFETY: unmaps our own mapping, which nothing uses any more.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The child's side. Never returns: it execs the program or exits.
#[expect(unsafe_code, reason = "starting a process: see the module docs")]
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent's `Plan`, alive until we exec or exit.
    let plan = unsafe { &*arg.cast_const().cast::<Plan>() };
    // SAFETY: see the module docs: only async-signal-safe calls on prepared data.
    unsafe { run_child(plan) }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

#[expect(unsafe_code, reason = "starting a process: see the module docs")]
unsafe fn give_up(plan: &Plan, step: Step, errno: i32) -> ! {
    plan.errno.store(errno, Ordering::Release);
    plan.failed.store(step as u8, Ordering::Release);
    // SAFETY: _exit ends this process only, running nothing of the daemon's.
    unsafe { libc::_exit(127) }
}

#[expect(unsafe_code, reason = "starting a process: see the module docs")]
unsafe fn run_child(plan: &Plan) -> ! {
    // SAFETY: async-signal-safe calls only, on memory prepared by the
    // parent or on this stack; see the module docs.
    unsafe {
        // Default handlers (SIGPIPE too, which Rust programs ignore), then
        // an empty mask, as std does for the processes it starts.
        for sig in 1..65 {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN) || sig == libc::SIGPIPE {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        if libc::setpgid(0, 0) != 0 {
            give_up(plan, Step::Group, errno());
        }
        for (target, &fd) in (0..).zip(plan.stdio.iter()) {
            let ok = if fd == target {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                give_up(plan, Step::Stdio, errno());
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            give_up(plan, Step::Cwd, errno());
        }
        if let Some(limit) = &plan.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }

        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != plan.parent {
            give_up(plan, Step::DaemonGone, libc::ECANCELED);
        }
        let pid = libc::getpid();
        let start_time = own_start_time();
        plan.start_time.store(start_time.unwrap_or(u64::MAX), Ordering::Release);
        let mut record = RecordBuf::new();
        if !record.fill(&plan.record_head, pid as u64, start_time) {
            give_up(plan, Step::Record, libc::ENAMETOOLONG);
        }
        let fd = libc::open(
            plan.record.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        );
        if fd < 0 {
            give_up(plan, Step::Record, errno());
        }
        let bytes = record.bytes();
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        if written != bytes.len() as isize {
            give_up(plan, Step::Record, if written < 0 { errno() } else { libc::EIO });
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, 0 as libc::c_ulong, 0, 0, 0);

        // As execvp: go on past paths that do not lead to the program.
        let (mut last, mut denied) = (libc::ENOENT, false);
        for candidate in &plan.candidates {
            libc::execve(candidate.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            match errno() {
                libc::EACCES => denied = true,
                libc::ENOENT
                | libc::ENOTDIR
                | libc::ESTALE
                | libc::ENODEV
                | libc::ETIMEDOUT
                | libc::ELOOP
                | libc::ENAMETOOLONG => {}
                other => {
                    last = other;
                    break;
                }
            }
        }
        give_up(plan, Step::Exec, if last == libc::ENOENT && denied { libc::EACCES } else { last })
    }
}

/// This process's start time, from `/proc/self/stat` (field 22), read
/// without allocating.
#[expect(unsafe_code, reason = "starting a process: see the module docs")]
fn own_start_time() -> Option<u64> {
    let mut buf = [0u8; 1024];
    // SAFETY: reads into our own buffer from a descriptor we open and close.
    let len = unsafe {
        let fd = libc::open(c"/proc/self/stat".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let mut len = 0usize;
        while len < buf.len() {
            let n = libc::read(fd, buf.as_mut_ptr().add(len).cast(), buf.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        libc::close(fd);
        len
    };
    start_time_from_stat(buf.get(..len)?)
}

/// Field 22 of a `/proc/<pid>/stat` line (the fields after the command
/// name, which may hold anything, start at 3).
fn start_time_from_stat(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let field = stat.get(close + 1..)?.split(|b| *b == b' ').filter(|f| !f.is_empty()).nth(19)?;
    let mut value = 0u64;
    for &digit in field {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
    }
    Some(value)
}

/// A record assembled on the stack.
struct RecordBuf {
    buf: [u8; 512],
    len: usize,
}

impl RecordBuf {
    fn new() -> Self {
        RecordBuf { buf: [0; 512], len: 0 }
    }

    fn push(&mut self, bytes: &[u8]) -> bool {
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.len += bytes.len();
                true
            }
            None => false,
        }
    }

    fn push_number(&mut self, mut n: u64) -> bool {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    /// `head` then the pid, the start time and the end.
    fn fill(&mut self, head: &[u8], pid: u64, start_time: Option<u64>) -> bool {
        self.push(head)
            && self.push_number(pid)
            && self.push(b",\"pid_start_time\":")
            && match start_time {
                Some(t) => self.push_number(t),
                None => self.push(b"null"),
            }
            && self.push(b"}\n")
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A process started by [`spawn`], waited for through its pidfd.
#[derive(Debug)]
pub(crate) struct Child {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Child {
    fn new(pid: libc::pid_t, pidfd: OwnedFd) -> io::Result<Child> {
        // SAFETY: an OwnedFd keeps the same open descriptor for as long as
        // the AsyncFd owns it.
        #[expect(unsafe_code, reason = "starting a process: see the module docs")]
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Child { pid, pidfd, status: None })
    }

    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let mut status = 0;
        // SAFETY: our own child, not yet reaped, so its pid is still ours.
        #[expect(unsafe_code, reason = "starting a process: see the module docs")]
        let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        match rc {
            0 => Ok(None),
            rc if rc == self.pid => {
                self.status = Some(ExitStatus::from_raw(status));
                Ok(self.status)
            }
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Waits for the process to end and reaps it.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(status);
            }
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Attempts always wait for their process; this only reaps one that
        // ended unnoticed, so that no zombie is left behind.
        let _ = self.try_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_comes_from_field_22() {
        let stat = b"4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 93 0 0 0 0 0 0 0 20 0 1 0 987654 5 6\n";
        assert_eq!(start_time_from_stat(stat), Some(987_654));
        assert_eq!(start_time_from_stat(b"4242 (cut short) S 1"), None);
        let me = std::fs::read(format!("/proc/{}/stat", std::process::id())).unwrap();
        assert_eq!(start_time_from_stat(&me), crate::daemon::child::process_start_time(std::process::id()));
    }

    #[test]
    fn the_child_writes_a_record_the_daemon_reads() {
        let dir = tempfile::tempdir().unwrap();
        let running = RunningDir::open(dir.path().join("running")).unwrap();
        let mut buf = RecordBuf::new();
        assert!(buf.fill(&running.record_head(17, 3), 4242, Some(u64::MAX - 1)));
        std::fs::write(running.file(17, 3), buf.bytes()).unwrap();
        let mut none = RecordBuf::new();
        assert!(none.fill(&running.record_head(18, 1), 0, None));
        std::fs::write(running.file(18, 1), none.bytes()).unwrap();
        let found = running.scan().unwrap();
        let records: Vec<_> = found.into_iter().map(|f| f.record.unwrap()).collect();
        assert_eq!((records[0].job, records[0].attempt, records[0].pid), (17, 3, 4242));
        assert_eq!(records[0].pid_start_time, Some(u64::MAX - 1));
        assert!(running.this_boot(&records[0]));
        assert_eq!((records[1].pid, records[1].pid_start_time), (0, None));
        assert!(!RecordBuf::new().fill(&[b' '; 600], 1, None), "a record too long for the buffer is refused");
    }

    #[test]
    fn the_path_search_matches_execvp() {
        let found = candidates(OsStr::new("sh"), Some(OsStr::new("/usr/bin::/bin"))).unwrap();
        let found: Vec<_> = found.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(found, ["/usr/bin/sh", "./sh", "/bin/sh"]);
        let direct = candidates(OsStr::new("./run.sh"), Some(OsStr::new("/bin"))).unwrap();
        assert_eq!(direct[0].to_str().unwrap(), "./run.sh");
        assert_eq!(candidates(OsStr::new(""), None).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }
}
