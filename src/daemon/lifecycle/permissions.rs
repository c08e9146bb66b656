//! The directories hearthd uses must be safe from other users: the state
//! directory is a private directory of this user, and no directory on the
//! way to it or to the socket lets another user swap what it holds.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StartupError;
use crate::daemon::fsutil;
use crate::sys::euid;

/// Creates the state directory (0700) if needed, and refuses one that is not
/// a directory, is owned by another user, or is writable by group or others,
/// or that another user could replace (see [`check_state_dir`]): nothing is
/// created before these checks. An existing, acceptable directory is left
/// exactly as it is.
pub fn prepare_state_dir(dir: &Path) -> Result<(), StartupError> {
    let unusable = |source| StartupError::StateDirUnusable { path: dir.to_owned(), source };
    check_state_dir(dir)?;
    if let Err(e) = std::fs::metadata(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(unusable(e));
        }
        fsutil::create_private_dir(dir).map_err(unusable)?;
    }
    let meta = std::fs::metadata(dir).map_err(unusable)?;
    check_private_dir(dir, &meta)
}

/// Checks the state directory without creating anything: every directory
/// passed through to reach it (from `/`, following symbolic links) must be
/// safe from other users (see [`check_route`]), and the directory itself, if
/// it exists, must be a private directory of this user.
pub fn check_state_dir(dir: &Path) -> Result<(), StartupError> {
    let insecure = |reason: String| StartupError::StateDirInsecure { path: dir.to_owned(), reason };
    check_route(dir, true).map_err(|r| insecure(r.to_string()))?;
    match std::fs::metadata(dir) {
        Ok(meta) => check_private_dir(dir, &meta),
        Err(_) => Ok(()),
    }
}

/// Checks, without creating anything, that no other user could replace the
/// socket: every directory passed through to reach it, its own directory
/// included, must be safe from other users (see [`check_route`]).
pub fn check_socket_dir(socket: &Path) -> Result<(), StartupError> {
    check_route(socket, false)
        .map_err(|r| StartupError::SocketDirInsecure { path: socket.to_owned(), reason: r.to_string() })
}

/// A directory or symbolic link on the way to a path that lets another user
/// swap what the path leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsafeStep {
    /// The directory or link.
    pub path: PathBuf,
    /// What is wrong with it and how to fix it.
    pub reason: String,
}

impl std::fmt::Display for UnsafeStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.path.display(), self.reason)
    }
}

/// Walks `path` from `/` the way the kernel resolves it, and checks every
/// directory it passes through (not `path` itself) and every symbolic link
/// it follows (`path` too when `follow_last`): each must belong to this user
/// or to root, and a directory that group or others can write must have the
/// sticky bit (as `/tmp` does), since otherwise another user could rename
/// what it holds and put their own in its place, under the daemon's feet.
/// A directory that only the user's private group can write (a group named
/// after the user, with no other member: the `umask 002` setups) is fine.
/// The walk stops at the first missing component: the daemon creates the
/// rest itself, mode 0700.
pub fn check_route(path: &Path, follow_last: bool) -> Result<(), UnsafeStep> {
    use std::collections::VecDeque;
    use std::path::Component;
    let Ok(path) = std::path::absolute(path) else { return Ok(()) };
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    let push_front = |pending: &mut VecDeque<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(name) => pending.push_front(name.to_owned()),
                Component::ParentDir => pending.push_front("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    push_front(&mut pending, &path);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        // `name` is looked up in (or will be created in) `resolved`: that
        // directory must be safe from other users.
        let parent = std::fs::metadata(&resolved)
            .map_err(|e| UnsafeStep { path: resolved.clone(), reason: format!("cannot be checked: {e}") })?;
        check_step(&resolved, &parent)?;
        let last = pending.is_empty();
        let next = resolved.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&next) else { break };
        if meta.file_type().is_symlink() {
            if last && !follow_last {
                break;
            }
            let me = euid();
            if meta.uid() != me && meta.uid() != 0 {
                return Err(UnsafeStep {
                    path: next,
                    reason: format!(
                        "is a symbolic link owned by uid {}, who could point it elsewhere at any time; \
                         use a path of your own",
                        meta.uid()
                    ),
                });
            }
            links += 1;
            let Ok(target) = std::fs::read_link(&next) else { break };
            if links > 40 {
                break; // the daemon's own open fails with ELOOP
            }
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            push_front(&mut pending, &target);
            continue;
        }
        if !meta.is_dir() {
            break; // using it fails later with a plain error
        }
        resolved = next;
    }
    Ok(())
}

/// Whether another user could rename entries of the directory `dir`.
fn check_step(dir: &Path, meta: &std::fs::Metadata) -> Result<(), UnsafeStep> {
    let mode = meta.permissions().mode() & 0o7777;
    let private_group = mode & 0o020 != 0 && is_private_group(meta.gid());
    step_verdict(dir, meta.uid(), mode, private_group, euid())
        .map_err(|reason| UnsafeStep { path: dir.to_owned(), reason })
}

/// The rule of [`check_route`] for one directory, as a pure function.
fn step_verdict(dir: &Path, uid: u32, mode: u32, private_group: bool, me: u32) -> Result<(), String> {
    if uid != me && uid != 0 {
        return Err(format!(
            "is owned by uid {uid}, who could replace what it holds; use a directory that you (uid {me}) or root own"
        ));
    }
    let sticky = mode & 0o1000 != 0;
    let others = mode & 0o002 != 0;
    let group = mode & 0o020 != 0 && !private_group;
    if (others || group) && !sticky {
        return Err(format!(
            "is writable by group or others and not sticky (mode {mode:04o}), so another user could move \
             what it holds away and put their own in its place; fix it with: chmod go-w {}",
            dir.display()
        ));
    }
    Ok(())
}

/// Whether `gid` is this user's private group: the user's primary group,
/// named after the user, with no other member listed. Group 0 never is.
fn is_private_group(gid: u32) -> bool {
    if gid == 0 {
        return false;
    }
    let Some((user, primary)) = crate::sys::user_entry(euid()) else { return false };
    let Some((name, members)) = crate::sys::group_entry(gid) else { return false };
    primary == gid && name == user && members.iter().all(|m| *m == user)
}

fn check_private_dir(dir: &Path, meta: &std::fs::Metadata) -> Result<(), StartupError> {
    let insecure = |reason: String| StartupError::StateDirInsecure { path: dir.to_owned(), reason };
    if !meta.is_dir() {
        return Err(StartupError::StateDirUnusable {
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "it is not a directory"),
        });
    }
    let me = euid();
    if meta.uid() != me {
        return Err(insecure(format!(
            "it is owned by uid {}, not by you (uid {me}); use a directory of your own",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(insecure(format!(
            "it is writable by group or others (mode {mode:04o}); fix it with: chmod 700 {}",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::info::LaunchCode;

    #[test]
    fn state_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        prepare_state_dir(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = prepare_state_dir(&state).unwrap_err();
        assert_eq!(err.code(), LaunchCode::StateDirInsecure);
        assert!(err.to_string().contains("chmod 700"), "{err}");

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(prepare_state_dir(&file).unwrap_err().code(), LaunchCode::StateDirUnusable);
    }

    #[test]
    fn route_rule() {
        let dir = Path::new("/d");
        let me = 1000;
        // Root's and one's own directories, private or sticky, are fine.
        for (uid, mode) in [(0, 0o755), (me, 0o700), (0, 0o1777), (me, 0o1770), (me, 0o755)] {
            assert_eq!(step_verdict(dir, uid, mode, false, me), Ok(()), "{uid} {mode:o}");
        }
        // Another user's directory, however private, is not.
        let err = step_verdict(dir, 1001, 0o700, false, me).unwrap_err();
        assert!(err.contains("owned by uid 1001"), "{err}");
        // Writable by others, or by a group that is not the user's own, without the sticky bit.
        for (mode, private_group) in [(0o777, false), (0o757, false), (0o770, false), (0o772, true)] {
            let err = step_verdict(dir, me, mode, private_group, me).unwrap_err();
            assert!(err.contains("not sticky") && err.contains("chmod go-w /d"), "{mode:o}: {err}");
        }
        // The user's private group may write (umask 002 setups).
        assert_eq!(step_verdict(dir, me, 0o775, true, me), Ok(()));
        assert!(!is_private_group(0), "group 0 is never private");
    }

    #[test]
    fn route_follows_links_and_checks_every_directory_on_the_way() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir_all(open.join("inner/deeper")).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        // Below a directory others can write, however deep, and however reached.
        for path in [open.join("state"), open.join("inner/deeper/state"), open.join("inner/../inner/state")] {
            let err = check_route(&path, true).unwrap_err();
            assert_eq!(err.path, open, "{path:?}: {err}");
        }
        std::os::unix::fs::symlink(open.join("inner"), base.path().join("link")).unwrap();
        assert_eq!(check_route(&base.path().join("link/state"), true).unwrap_err().path, open);
        // The link itself as the last component: followed only when asked.
        std::os::unix::fs::symlink(open.join("inner"), base.path().join("last")).unwrap();
        assert!(check_route(&base.path().join("last"), true).is_err());
        assert_eq!(check_route(&base.path().join("last"), false), Ok(()));
        // Made sticky, it is fine; missing components end the walk.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(check_route(&base.path().join("link/missing/state"), true), Ok(()));
    }
}
