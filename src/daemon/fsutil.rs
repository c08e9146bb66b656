//! Small filesystem helpers that every service shares.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: a temp file in the same directory
/// (created exclusively, never following a symlink), then a rename over
/// `path`. With `durable`, the file and then the directory are fsynced, so
/// after a crash `path` holds either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::other(format!("{path:?} has no file name")))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = create_new(&tmp, mode)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            fsync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file exclusively with `mode`, refusing to follow a symlink.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Reads at most `max` bytes of the file at `path`, refusing to follow a
/// symlink there (`ELOOP`): for the small files the daemon keeps beside its
/// data, whose content it trusts.
pub fn read_small(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens `path` with `options` and the extra open `flags`, never waiting
/// on a FIFO or a device: the open is non-blocking, and what it opened must
/// be a regular file, else the error says what it is (a FIFO opened for
/// writing with no reader fails at once with `ENXIO`, and is named too).
/// `O_NONBLOCK` stays set on the descriptor, where it has no effect on a
/// regular file.
pub fn open_regular(path: &Path, options: &mut OpenOptions, flags: libc::c_int) -> io::Result<File> {
    use std::os::unix::fs::FileTypeExt;
    let refuse = |kind: std::fs::FileType| {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_symlink() {
            "a symbolic link"
        } else {
            "not a file"
        };
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} is {what}, not a regular file", path.display()))
    };
    let file =
        options.custom_flags(flags | libc::O_NONBLOCK).open(path).map_err(|e| {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if e.raw_os_error() == Some(libc::ENXIO) => refuse(meta.file_type()),
                _ => e,
            }
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(refuse(kind));
    }
    Ok(file)
}

/// Fsyncs a directory so that renames and unlinks in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Makes `dir`, whose parent exists, a private directory of this user
/// without ever following a symlink at `dir`: created with mode 0700 when
/// missing; refused when it is a symlink, not a directory, or owned by
/// someone else; narrowed to 0700 when group or others have access.
pub fn private_subdir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| Err(io::Error::other(format!("{} {why}", dir.display())));
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link; hearthd keeps its data in real directories of its state directory".into());
    }
    if !meta.is_dir() {
        return refuse("is not a directory".into());
    }
    if meta.uid() != crate::sys::euid() {
        return refuse(format!("is owned by uid {}, not by you (uid {})", meta.uid(), crate::sys::euid()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Marks every descriptor above stderr close-on-exec, so that nothing the
/// daemon inherited from whoever started it (a desktop app's sockets, a
/// build tool's jobserver pipe) leaks into the processes it starts.
pub fn cloexec_inherited_fds() -> io::Result<()> {
    let dir = if cfg!(target_os = "linux") { "/proc/self/fd" } else { "/dev/fd" };
    let fds: Vec<i32> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // The directory listing's own descriptor is closed by now: EBADF.
        let _ = crate::sys::set_cloexec(fd);
    }
    Ok(())
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    crate::sys::process_exists(pid) && !is_zombie(pid)
}

#[cfg(target_os = "linux")]
fn is_zombie(pid: u32) -> bool {
    // The state follows the parenthesised command name, which may contain spaces.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[cfg(not(target_os = "linux"))]
fn is_zombie(_pid: u32) -> bool {
    false
}

/// Whether `name` (a `what`: a pool name, a process name…) can name a
/// plain, non-hidden directory: 1 to `max` ASCII letters, digits, `_` or
/// `-`, starting with a letter or digit.
pub(crate) fn validate_dir_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {:?}: use 1 to {max} ASCII letters, digits, '_' or '-', starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"one", 0o600, true).unwrap();
        write_atomic(&path, b"two", 0o600, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
