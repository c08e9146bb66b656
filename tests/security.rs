//! The defences SECURITY.md lists, each proved against the real binaries:
//! symlinks planted at the paths the daemon opens, directories other users
//! could write, descriptors, settings files, and what a client trusts.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{RawConn, StateDir, curl, stderr, wait_for};
use serde_json::{Value, json};

/// A directory outside the state directory, holding one file the daemon
/// must never modify, read back, or delete, and nothing else it may add.
struct Outside {
    dir: PathBuf,
    precious: PathBuf,
    content: Vec<u8>,
    stamp: (u64, i64, u32),
}

const PRECIOUS: &[u8] = b"outside the state directory: never to be touched\n";

impl Outside {
    fn new(state: &StateDir, name: &str) -> Outside {
        Outside::holding(state, name, PRECIOUS)
    }

    /// An outside file with `content` (one the daemon would understand, to
    /// show that it is not read either).
    fn holding(state: &StateDir, name: &str, content: &[u8]) -> Outside {
        let dir = state.dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let precious = dir.join("precious");
        std::fs::write(&precious, content).unwrap();
        let meta = std::fs::metadata(&precious).unwrap();
        Outside { stamp: (meta.ino(), meta.mtime_nsec(), meta.mode()), content: content.to_vec(), dir, precious }
    }

    /// Asserts that the directory holds exactly what it held at the start.
    fn assert_untouched(&self, context: &str) {
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["precious"], "{context}: the daemon changed {:?}", self.dir);
        assert_eq!(std::fs::read(&self.precious).unwrap(), self.content, "{context}: the file outside was modified");
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
    for planted in ["queue", "queue/logs", "queue/running"] {
        let state = StateDir::new();
        let outside = Outside::new(&state, "outside");
        let dir = make_state_dir(&state);
        if planted != "queue" {
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

/// Submits `argv` on the queue channel and waits for the job to end; returns it.
fn run_job(state: &StateDir, argv: &[&str]) -> Value {
    let mut q = RawConn::open(state.socket(), "queue");
    let submitted = q.request(&json!({"type": "submit", "argv": argv}));
    let id = submitted["job"]["id"].as_u64().unwrap_or_else(|| panic!("{submitted}"));
    q.send_json(&json!({"type": "wait", "id": id}));
    loop {
        let event = q.read_json().expect("a job event");
        let job = &event["job"];
        if ["succeeded", "failed", "dead", "canceled"].contains(&job["state"].as_str().unwrap_or_default()) {
            return job.clone();
        }
    }
}

#[test]
fn a_state_dir_reached_through_a_symlinked_parent_keeps_its_queue() {
    // A home directory, or a temp directory, reached through a symlink is
    // common; the queue store must open there, and never be moved aside.
    let base = tempfile::Builder::new().prefix("hearth-test-").tempdir().unwrap();
    std::fs::create_dir(base.path().join("real")).unwrap();
    symlink(base.path().join("real"), base.path().join("link")).unwrap();
    let state = StateDir { paths: hearth::paths::Paths::new(base.path().join("link/state")), dir: base };
    let mut daemon = state.start(&[]);
    assert_eq!(health_reason(&status(&state), "queue_unavailable"), None);
    let job = run_job(&state, &["true"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    daemon.stop();

    let _daemon = state.start(&[]);
    let status = status(&state);
    assert_eq!(health_reason(&status, "queue_store_recovered"), None, "{status}");
    let mut q = RawConn::open(state.socket(), "queue");
    let kept = q.request(&json!({"type": "get", "id": job["id"]}));
    assert_eq!(kept["job"]["state"], "succeeded", "the job survived the restart: {kept}");
    let names: Vec<String> = std::fs::read_dir(state.state_dir().join("queue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");
}

/// Stores `data` over raw frames; returns its hash.
fn put_blob(state: &StateDir, data: &[u8], name: &str) -> String {
    let mut raw = RawConn::open(state.socket(), "blob");
    assert_eq!(raw.request(&json!({"type": "put", "name": name})), json!({"type": "ready"}));
    raw.send_frame(data);
    raw.send_frame(b"");
    let stored = raw.read_json().unwrap();
    assert_eq!(stored["type"], "stored", "{stored}");
    stored["hash"].as_str().unwrap().to_owned()
}

fn blob_stat(state: &StateDir, hash: &str) -> Value {
    RawConn::open(state.socket(), "blob").request(&json!({"type": "stat", "hash": hash}))
}

#[test]
fn sidecars_and_the_port_file_are_never_read_through_a_symlink() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let data = b"a blob whose sidecar is replaced";
    let hash = put_blob(&state, data, "inside.txt");
    daemon.stop();

    // Outside files the daemon would understand: a valid sidecar for this
    // blob, and a port number.
    let fake_sidecar = json!({"size": data.len(), "name": "read-from-outside", "pinned": true,
        "created_at_ms": 1, "last_access_at_ms": 1});
    let sidecar_target = Outside::holding(&state, "sidecar", fake_sidecar.to_string().as_bytes());
    let hex = &hash["sha256:".len()..];
    let sidecar = state.state_dir().join(format!("blobs/sha256/{}/{hex}.json", &hex[..2]));
    std::fs::remove_file(&sidecar).unwrap();
    symlink(&sidecar_target.precious, &sidecar).unwrap();
    let port_target = Outside::holding(&state, "port", b"1\n");
    let port_file = state.state_dir().join("blobs/http-port");
    std::fs::remove_file(&port_file).unwrap();
    symlink(&port_target.precious, &port_file).unwrap();

    let _daemon = state.start(&[]);
    let stat = blob_stat(&state, &hash);
    assert_eq!(stat["type"], "stat", "{stat}");
    assert_ne!(stat["name"], "read-from-outside", "the sidecar was read through the symlink: {stat}");
    assert_eq!((stat["size"].as_u64(), stat["pinned"].as_bool()), (Some(data.len() as u64), Some(false)), "{stat}");
    for (path, outside) in [(&sidecar, &sidecar_target), (&port_file, &port_target)] {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(meta.is_file(), "{path:?} was replaced by a file of the store's own");
        outside.assert_untouched(&path.display().to_string());
    }
    let port = std::fs::read_to_string(&port_file).unwrap();
    assert!(state.blob_url().ends_with(&format!(":{}", port.trim())), "{port} vs {}", state.blob_url());
}

fn pool_status(state: &StateDir, pool: &str) -> Value {
    let reply = RawConn::open(state.socket(), "pool").request(&json!({"type": "status", "pool": pool}));
    assert_eq!(reply["type"], "status", "{reply}");
    reply["pools"][0].clone()
}

/// Polls a pool's status until `done` holds.
fn wait_pool(state: &StateDir, pool: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let mut last = Value::Null;
    let ok = wait_for(Duration::from_secs(30), || {
        last = pool_status(state, pool);
        done(&last)
    });
    assert!(ok, "pool {pool}: {what} never happened; last status: {last:#}");
}

/// A pool whose resources are directories with a `work/` inside.
fn mkdir_pool(name: &str, size: u32, extra: &str) -> String {
    format!("[pool.{name}]\ncreate = [\"sh\", \"-c\", \"mkdir -p {{path}}/work\"]\nsize = {size}\n{extra}\n")
}

/// Takes a resource: its lease and its directory.
fn take(c: &mut RawConn, pool: &str) -> (String, PathBuf) {
    let reply = c.request(&json!({"type": "take", "pool": pool}));
    assert_eq!(reply["type"], "taken", "{reply}");
    (reply["lease"].as_str().unwrap().to_owned(), PathBuf::from(reply["path"].as_str().unwrap()))
}

#[test]
fn a_trash_directory_swapped_for_a_symlink_is_never_emptied() {
    let state = StateDir::new();
    let outside = Outside::new(&state, "outside");
    state.write_config(&mkdir_pool("p", 1, ""));
    let _daemon = state.start(&[]);
    wait_pool(&state, "p", "1 ready", |s| s["ready"] == 1);

    // While the daemon runs, its trash becomes a link to a directory of the
    // user's; then a released resource goes to the trash.
    let trash = state.state_dir().join("pools/.trash");
    std::fs::remove_dir(&trash).unwrap();
    symlink(&outside.dir, &trash).unwrap();
    let mut c = RawConn::open(state.socket(), "pool");
    let (lease, path) = take(&mut c, "p");
    let released = c.request(&json!({"type": "release", "lease": lease}));
    assert_eq!(released["type"], "released", "{released}");

    let emptied = wait_for(Duration::from_secs(10), || {
        !path.exists()
            && std::fs::symlink_metadata(&trash).is_ok_and(|m| m.is_dir())
            && std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_none())
    });
    outside.assert_untouched("pools/.trash");
    assert!(emptied, "the released resource was removed through a trash of the daemon's own");
}

#[test]
fn a_released_resource_whose_directory_became_a_symlink_is_removed_not_reset() {
    let state = StateDir::new();
    let outside = Outside::new(&state, "outside");
    // Builds wait while the gate is missing, so that the replacement build
    // a take starts cannot fill the pool before the release.
    let gate = state.dir.path().join("gate");
    std::fs::write(&gate, b"").unwrap();
    state.write_config(&format!(
        "[pool.r]\ncreate = [\"sh\", \"-c\", \"while [ ! -e \\\"$GATE\\\" ]; do sleep 0.01; done; mkdir {{path}}/work\"]\n\
         size = 1\nenv = {{ GATE = \"{}\" }}\nreset = [\"sh\", \"-c\", \"rm -rf {{path}}/*\"]\n",
        gate.display()
    ));
    let _daemon = state.start(&[]);
    wait_pool(&state, "r", "1 ready", |s| s["ready"] == 1);
    std::fs::remove_file(&gate).unwrap();
    let mut c = RawConn::open(state.socket(), "pool");
    let (lease, path) = take(&mut c, "r");

    // The holder replaces its directory with a link to one of the user's.
    std::fs::remove_dir_all(&path).unwrap();
    symlink(&outside.dir, &path).unwrap();
    let released = c.request(&json!({"type": "release", "lease": lease, "reuse": true}));
    assert_eq!(released["type"], "released", "{released}");
    assert_eq!(released["outcome"], "resetting", "{released}");
    wait_pool(&state, "r", "the reset to end", |s| s["resetting"] == 0);
    outside.assert_untouched("a reset through a symlink");
    assert_eq!(pool_status(&state, "r")["ready"], 0, "the resource was removed, not put back");
    assert!(wait_for(Duration::from_secs(10), || std::fs::symlink_metadata(&path).is_err()), "the link is removed");
}

/// Stops the daemon of a state directory when dropped (for daemons started
/// with `--detach`, which are not the test's children).
struct StopOnDrop<'a>(&'a StateDir);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["daemon", "stop"]);
    }
}

/// Whether every write end of the pipe whose read end is `fd` is closed.
fn pipe_hung_up(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    hearth::sys::poll(fd, libc::POLLIN, Duration::ZERO).is_ok_and(|events| events & libc::POLLHUP != 0)
}

#[test]
#[expect(unsafe_code, reason = "a pre_exec hook hands the pipe down the way a build tool would")]
fn a_detached_daemon_keeps_none_of_its_callers_descriptors() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let state = StateDir::new();
    let (read_end, write_end) = hearth::sys::pipe().unwrap();
    // The caller hands down the write end as descriptor 5, the way a build
    // tool hands down its jobserver pipe or a shell a redirection; it waits
    // for the end of that pipe to know that everything it started is done.
    let raw = write_end.as_raw_fd();
    let mut cmd = state.hearthd();
    cmd.arg("--detach");
    // SAFETY: dup2 is async-signal-safe; it runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = common::run_bounded(&mut cmd, Duration::from_secs(60));
    let _stop = StopOnDrop(&state);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(report["event"], "ready", "{report}");
    drop(write_end);
    assert!(
        wait_for(Duration::from_secs(10), || pipe_hung_up(std::os::fd::AsFd::as_fd(&read_end))),
        "the detached daemon (pid {}) still holds its caller's pipe",
        report["pid"]
    );
}

/// Whether this test runs as root (and so can act as a second user).
fn is_root() -> bool {
    hearth::sys::euid() == 0
}

#[test]
fn clients_refuse_a_daemon_of_another_user() {
    use std::os::unix::process::CommandExt;
    if !is_root() {
        eprintln!("skipped: needs root to serve a socket as a second uid");
        return;
    }
    // Another user serves a socket where this user's client looks (a
    // directory both can write), and answers like a daemon would.
    let state = StateDir::new();
    let shared = state.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(state.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = shared.join("h.sock");
    let received = shared.join("received");
    let fake = r#"
import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666); s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    def frame():
        n = struct.unpack(">I", c.recv(4, socket.MSG_WAITALL))[0]
        return c.recv(n, socket.MSG_WAITALL)
    def send(v):
        b = json.dumps(v).encode(); c.sendall(struct.pack(">I", len(b)) + b)
    try:
        frame()
        send({"ok": True, "protocol": 1, "daemon": {"version": "0.1.0", "pid": os.getpid()}, "channel": "queue", "max_frame": 1 << 24})
        with open(sys.argv[2], "ab") as f: f.write(frame() + b"\n")
    except Exception:
        pass
    c.close()
"#;
    let mut server = std::process::Command::new("python3")
        .args(["-c", fake])
        .arg(&socket)
        .arg(&received)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is installed (.ci/run installs it)");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "listening");

    let out = state.run(&[
        "--json",
        "--no-spawn",
        "--socket",
        socket.to_str().unwrap(),
        "queue",
        "submit",
        "--",
        "echo",
        "secret",
    ]);
    let _ = server.kill();
    let _ = server.wait();
    let leaked = std::fs::read_to_string(&received).unwrap_or_default();
    assert!(!leaked.contains("secret"), "the job was sent to another user's process: {leaked}");
    assert_ne!(out.status.code(), Some(0));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(err["error"]["code"], "daemon_of_another_user", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("uid 65534"), "{err}");
}

fn start_failure(state: &StateDir, args: &[&str]) -> String {
    let out = common::run_bounded(state.hearthd().args(args), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "hearthd {args:?} should refuse to start: {}", stderr(&out));
    stderr(&out)
}

#[test]
fn a_state_dir_that_is_a_symlink_is_judged_by_what_it_leads_to() {
    use std::os::unix::fs::chown;
    // To a directory others can write: refused, and nothing is created there.
    let state = StateDir::new();
    let loose = state.dir.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    symlink(&loose, state.state_dir()).unwrap();
    let err = start_failure(&state, &[]);
    assert!(err.contains("state_dir_insecure") && err.contains("writable by group or others"), "{err}");
    assert_eq!(std::fs::read_dir(&loose).unwrap().count(), 0, "nothing was created in {loose:?}");

    if is_root() {
        // To another user's private directory: refused, nothing created.
        let theirs = state.dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&theirs, Some(65534), Some(65534)).unwrap();
        std::fs::remove_file(state.state_dir()).unwrap();
        symlink(&theirs, state.state_dir()).unwrap();
        let err = start_failure(&state, &[]);
        assert!(err.contains("state_dir_insecure") && err.contains("owned by uid 65534"), "{err}");
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0, "nothing was created in {theirs:?}");
    }

    // To a private directory of the user's own: that is where the state lives.
    let mine = state.dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_file(state.state_dir()).unwrap();
    symlink(&mine, state.state_dir()).unwrap();
    let _daemon = state.start(&[]);
    assert!(mine.join("daemon.lock").exists() && mine.join("queue/queue.db").exists());
}

#[test]
fn directories_another_user_could_replace_are_refused_for_the_state_and_the_socket() {
    // A state directory of the user's own, inside a directory that a group
    // can write: anyone in it could move the state directory away and put
    // theirs in its place while the daemon runs.
    let base = tempfile::Builder::new().prefix("hearth-test-").tempdir().unwrap();
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    // (Root's group is a shared one; another user's own private group, one
    // named after them with no other member, may write: see check_route.)
    let mode = if is_root() { 0o770 } else { 0o777 };
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
    let state = StateDir { paths: hearth::paths::Paths::new(shared.join("state")), dir: base };
    let err = start_failure(&state, &[]);
    assert!(err.contains("state_dir_insecure") && err.contains("shared") && err.contains("sticky"), "{err}");
    assert!(!state.paths.lock_file().exists(), "nothing was created");

    // The same for the socket's directory; a sticky one (as /tmp) is fine.
    let state = StateDir::new();
    let sockets = state.dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o775)).unwrap();
    let socket = sockets.join("h.sock");
    let err = start_failure(&state, &["--socket", socket.to_str().unwrap()]);
    assert!(err.contains("socket_dir_insecure") && err.contains("sockets"), "{err}");
    assert!(!socket.exists());
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut cmd = state.hearthd();
    cmd.arg("--socket").arg(&socket);
    let mut daemon = common::Daemon {
        child: Some(cmd.stderr(std::process::Stdio::null()).spawn().unwrap()),
        log: state.dir.path().join("unused.log"),
        socket: socket.clone(),
        info: state.paths.info_file(),
    };
    assert!(wait_for(Duration::from_secs(20), || RawConn::try_connect(&socket).is_some()), "serves in a sticky dir");
    assert_eq!(daemon.stop(), 0);

    if is_root() {
        // A parent owned by another user, even one only they can write.
        let state = StateDir::new();
        let theirs = state.dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let socket = theirs.join("h.sock");
        let err = start_failure(&state, &["--socket", socket.to_str().unwrap()]);
        assert!(err.contains("socket_dir_insecure") && err.contains("uid 65534"), "{err}");
    }
}

#[test]
fn symlinks_at_the_daemons_own_files_are_never_followed() {
    // The lock, the log and the socket: start-up is refused, nothing outside changes.
    for (planted, args, code) in [
        ("daemon.lock", &[][..], "lock_failed"),
        ("daemon.log", &["--log-to-file"][..], "startup_failed"),
        ("hearth.sock", &[][..], "socket_path_occupied"),
    ] {
        let state = StateDir::new();
        let outside = Outside::new(&state, "outside");
        let dir = make_state_dir(&state);
        symlink(&outside.precious, dir.join(planted)).unwrap();
        let err = start_failure(&state, args);
        assert!(err.contains(code), "{planted}: {err}");
        outside.assert_untouched(planted);
        assert!(std::fs::symlink_metadata(dir.join(planted)).unwrap().file_type().is_symlink(), "{planted} kept");
    }

    // The files written by rename replace the link and never write through it;
    // the stores refuse a symlinked root and the other channels serve on.
    let state = StateDir::new();
    let dir = make_state_dir(&state);
    let mut outsides = Vec::new();
    for planted in ["daemon.json", "heartbeat.json", "blobs", "pools"] {
        let outside = Outside::new(&state, &format!("outside-{}", planted.replace('.', "-")));
        let target = if planted.contains('.') { &outside.precious } else { &outside.dir };
        symlink(target, dir.join(planted)).unwrap();
        outsides.push((planted, outside));
    }
    let mut daemon = state.start(&["--heartbeat-interval", "1s"]);
    let regular = |name: &str| std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.file_type().is_file());
    assert!(wait_for(Duration::from_secs(20), || regular("daemon.json") && regular("heartbeat.json")));
    let status = status(&state);
    for code in ["blob_unavailable", "pool_unavailable"] {
        assert!(health_reason(&status, code).is_some(), "{code}: {status}");
    }
    RawConn::open(state.socket(), "queue");
    assert_eq!(daemon.stop(), 0);
    for (planted, outside) in &outsides {
        outside.assert_untouched(planted);
    }
}

fn mkfifo(path: &Path) {
    let out = std::process::Command::new("mkfifo").arg(path).output().expect("mkfifo");
    assert!(out.status.success(), "mkfifo {path:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `hearthd --detach` with `args`: its launch report and exit status. A
/// start-up that waits past `COMMAND_LIMIT` fails the test.
fn detached_start(state: &StateDir, args: &[&str]) -> (Value, Option<i32>) {
    let out = common::run_bounded(state.hearthd().arg("--detach").args(args), common::COMMAND_LIMIT);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no launch report ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (report, out.status.code())
}

#[test]
fn a_fifo_at_daemon_log_is_refused_at_once_with_or_without_a_reader() {
    use std::os::unix::fs::OpenOptionsExt;
    let state = StateDir::new();
    let log = make_state_dir(&state).join("daemon.log");
    mkfifo(&log);
    // Nobody reads it (opening it to write would wait forever), then someone does.
    let (report, status) = detached_start(&state, &["--ready-timeout", "60s"]);
    assert_eq!(status, Some(1), "{report}");
    assert_eq!(report["code"], "startup_failed", "{report}");
    assert!(report["message"].as_str().unwrap().contains("is a FIFO, not a regular file"), "{report}");
    let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&log).unwrap();
    let err = start_failure(&state, &["--log-to-file"]);
    assert!(err.contains("is a FIFO, not a regular file") && err.contains("startup_failed"), "{err}");
    drop(reader);
    // Refused before anything else: the lock is free, nothing was bound.
    let free = hearth::daemon::lifecycle::singleton::probe_lock(&state.paths).unwrap();
    assert_eq!(free, hearth::daemon::lifecycle::singleton::LockState::Free);
    assert!(!state.socket().exists());
    assert!(std::fs::symlink_metadata(&log).unwrap().file_type().is_fifo(), "the FIFO is left as it was");
}

#[test]
fn a_fifo_as_the_settings_file_is_refused_at_once() {
    // At <state-dir>/config.toml, or named by --config: either would block
    // the read (before the fork, past --ready-timeout) until someone wrote.
    let state = StateDir::new();
    mkfifo(&make_state_dir(&state).join("config.toml"));
    let (report, status) = detached_start(&state, &["--ready-timeout", "60s"]);
    assert_eq!(status, Some(1), "{report}");
    assert_eq!(report["code"], "config_invalid", "{report}");
    assert!(report["message"].as_str().unwrap().contains("is a FIFO, not a regular file"), "{report}");
    let err = start_failure(&state, &[]);
    assert!(err.contains("config_invalid") && err.contains("is a FIFO"), "{err}");

    let other = StateDir::new();
    let fifo = state.dir.path().join("settings.fifo");
    mkfifo(&fifo);
    let (report, _) = detached_start(&other, &["--config", fifo.to_str().unwrap(), "--ready-timeout", "60s"]);
    assert_eq!(report["code"], "config_invalid", "{report}");
    // A link to a regular file is a settings file like any other.
    std::fs::remove_file(state.paths.config_file()).unwrap();
    let real = state.dir.path().join("real.toml");
    std::fs::write(&real, "[daemon]\nheartbeat_interval = \"1s\"\n").unwrap();
    symlink(&real, state.paths.config_file()).unwrap();
    let out = common::run_bounded(state.hearthd().arg("--print-config"), common::COMMAND_LIMIT);
    assert!(common::stdout(&out).contains("heartbeat_interval = \"1s\""), "{}", common::stdout(&out));
}

#[test]
fn only_listed_origins_get_cors_and_the_http_connection_cap_holds() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let state = StateDir::new();
    make_state_dir(&state);
    state.write_config(
        "[blob]\nhttp_cors_origins = [\"http://localhost:5173\"]\nhttp_max_connections = 2\n\
         http_header_timeout = \"60s\"\n",
    );
    let _daemon = state.start(&[]);
    let hash = put_blob(&state, b"<script>alert(1)</script>", "page.html");
    let url = format!("{}/blob/{hash}", state.blob_url());

    // The listed origin may read; any other gets no CORS header at all, and
    // no preflight.
    let listed = curl(&["-H", "Origin: http://localhost:5173", &url]);
    assert_eq!(listed.header("access-control-allow-origin"), Some("http://localhost:5173"));
    assert_eq!(listed.header("vary"), Some("Origin"));
    for origin in ["http://evil.example", "http://localhost:5174", "null"] {
        let other = curl(&["-H", &format!("Origin: {origin}"), &url]);
        assert_eq!(other.status, 200, "{origin}");
        assert!(other.headers.iter().all(|(n, _)| !n.starts_with("access-control-")), "{origin}: {:?}", other.headers);
        let preflight = curl(&["-X", "OPTIONS", "-H", &format!("Origin: {origin}"), &url]);
        assert_eq!(preflight.status, 405, "{origin}");
        assert!(preflight.headers.iter().all(|(n, _)| !n.starts_with("access-control-")), "{origin}");
    }
    // Whatever was stored, it is served as an inert type that is not sniffed.
    assert_eq!(listed.header("content-type"), Some("application/octet-stream"));
    assert_eq!(listed.header("x-content-type-options"), Some("nosniff"));

    // Two idle connections take the two slots; a third is closed at once
    // without an answer, and a slot freed serves again.
    let port: u16 = state.blob_url().rsplit(':').next().unwrap().parse().unwrap();
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let request = format!("GET /blob/{hash} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let attempt = || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    // The idle connections may not have been accepted yet: wait until the cap bites.
    assert!(wait_for(Duration::from_secs(20), || attempt().is_empty()), "a third connection is refused");
    drop(idle);
    assert!(wait_for(Duration::from_secs(20), || attempt().starts_with("HTTP/1.1 200")), "served again");
}

#[test]
fn the_pre_handshake_cap_and_the_blob_size_limit_hold() {
    let state = StateDir::new();
    make_state_dir(&state);
    state.write_config("[blob]\nmax_blob_size = \"1KiB\"\n");
    let _daemon = state.start(&[]);

    // Before the handshake a frame is at most 4 KiB; after it, the same
    // length is just a (malformed) request.
    let mut c = RawConn::connect(state.socket());
    c.send_raw(&4097u32.to_be_bytes()).unwrap();
    let reply = c.read_json().expect("a refusal");
    assert_eq!(reply["error"]["code"], "frame_too_large", "{reply}");
    assert!(c.is_closed());
    let mut c = RawConn::open(state.socket(), "status");
    c.send_frame(&[b' '; 4097]);
    let reply = c.read_json().expect("an error frame");
    assert_eq!(reply["code"], "malformed_json", "{reply}");

    // A put announced over blob.max_blob_size is refused before any data,
    // one that does not announce its size is cut off once it passes it,
    // and nothing stays behind.
    let mut b = RawConn::open(state.socket(), "blob");
    let r = b.request(&json!({"type": "put", "size": 1025}));
    assert_eq!(r["code"], "blob_too_large", "{r}");
    assert_eq!(b.request(&json!({"type": "put"})), json!({"type": "ready"}));
    b.send_frame(&[7u8; 600]);
    b.send_frame(&[7u8; 600]);
    b.send_frame(b"");
    let r = b.read_json().unwrap();
    assert_eq!(r["code"], "blob_too_large", "{r}");
    let tmp = state.state_dir().join("blobs/tmp");
    assert!(wait_for(Duration::from_secs(20), || std::fs::read_dir(&tmp).unwrap().count() == 0), "no temp file");
    let list = RawConn::open(state.socket(), "blob").request(&json!({"type": "list"}));
    assert_eq!(list["blobs"], json!([]), "{list}");
}

#[test]
fn the_queue_store_and_its_wal_are_private_and_tightened_at_start() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    run_job(&state, &["true"]);
    let queue = state.state_dir().join("queue");
    let files = ["queue.db", "queue.db-wal", "queue.db-shm"];
    let mode = |name: &str| std::fs::metadata(queue.join(name)).map(|m| m.permissions().mode() & 0o777).ok();
    for name in files {
        assert_eq!(mode(name), Some(0o600), "{name} of a fresh store");
    }
    // Loosened while the daemon was away: tightened at the next start.
    assert_eq!(daemon.stop(), 0);
    for name in ["queue.db", "queue.db-wal", "queue.db-shm"] {
        let path = queue.join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let _daemon = state.start(&[]);
    run_job(&state, &["true"]);
    for name in files {
        assert_eq!(mode(name), Some(0o600), "{name} after a start");
    }
}
