//! The defences SECURITY.md lists, each proved against the real binaries:
//! symlinks planted at the paths the daemon opens, directories other users
//! could write, descriptors, settings files, and what a client trusts.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::{RawConn, StateDir};
use serde_json::{Value, json};

/// A directory outside the state directory, holding one file the daemon
/// must never modify, read back, or delete, and nothing else it may add.
struct Outside {
    dir: PathBuf,
    precious: PathBuf,
    stamp: (u64, i64, u32),
}

const PRECIOUS: &[u8] = b"outside the state directory: never to be touched\n";

impl Outside {
    fn new(state: &StateDir, name: &str) -> Outside {
        let dir = state.dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let precious = dir.join("precious");
        std::fs::write(&precious, PRECIOUS).unwrap();
        let meta = std::fs::metadata(&precious).unwrap();
        Outside { stamp: (meta.ino(), meta.mtime_nsec(), meta.mode()), dir, precious }
    }

    /// Asserts that the directory holds exactly what it held at the start.
    fn assert_untouched(&self, context: &str) {
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["precious"], "{context}: the daemon changed {:?}", self.dir);
        assert_eq!(std::fs::read(&self.precious).unwrap(), PRECIOUS, "{context}: the file outside was modified");
        let meta = std::fs::metadata(&self.precious).unwrap();
        assert_eq!((meta.ino(), meta.mtime_nsec(), meta.mode()), self.stamp, "{context}: the file outside changed");
    }
}

/// Creates the state directory (0700) and returns it.
fn make_state_dir(state: &StateDir) -> &Path {
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    state.state_dir()
}

fn status(state: &StateDir) -> Value {
    RawConn::open(state.socket(), "status").request(&json!({"type": "status"}))
}

/// The health reason with `code`, if the daemon reports one.
fn health_reason(status: &Value, code: &str) -> Option<String> {
    status["health"]["reasons"]
        .as_array()?
        .iter()
        .find(|r| r["code"] == code)
        .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn queue_directories_that_are_symlinks_are_refused_and_nothing_outside_changes() {
    for planted in ["queue", "queue/logs"] {
        let state = StateDir::new();
        let outside = Outside::new(&state, "outside");
        let dir = make_state_dir(&state);
        if planted == "queue/logs" {
            std::fs::create_dir(dir.join("queue")).unwrap();
        }
        symlink(&outside.dir, dir.join(planted)).unwrap();
        let _daemon = state.start(&[]);
        let status = status(&state);
        let reason = health_reason(&status, "queue_unavailable").unwrap_or_else(|| panic!("{planted}: {status}"));
        assert!(reason.contains("symbolic link"), "{planted}: {reason}");
        let refused = RawConn::connect(state.socket()).handshake("queue");
        assert_eq!(refused["error"]["code"], "channel_unavailable", "{planted}: {refused}");
        // The other channels serve on.
        RawConn::open(state.socket(), "blob");
        outside.assert_untouched(planted);
    }
}
