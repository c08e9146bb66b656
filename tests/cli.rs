//! The real `hearth` and `hearthd` binaries against temp state directories.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{RawConn, StateDir, hearthd_bin, processes_mentioning, stderr, stdout, wait_for};
use serde_json::{Value, json};

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[test]
fn commands_that_never_spawn_fail_clearly_without_a_daemon() {
    let state = StateDir::new();
    for args in [&["ping"][..], &["status"], &["shutdown"], &["--json", "status"]] {
        let out = state.run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("not_running"), "{args:?}: {err}");
    }
    let out = state.run(&["--json", "ping"]);
    let err: Value = serde_json::from_slice(&out.stderr).expect("JSON error on stderr");
    assert_eq!(err["error"]["code"], "not_running");
    assert!(err["error"]["hint"].as_str().unwrap().contains("hearth daemon start"));
    assert!(!state.socket().exists(), "nothing was started");
    assert!(processes_mentioning(state.state_dir().to_str().unwrap()).is_empty());
}

#[test]
fn start_is_idempotent_and_status_reports() {
    let state = StateDir::new();
    let out = state.run(&["--json", "daemon", "start"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = json_of(&out);
    assert_eq!(first["started"], json!(true));
    let pid = first["pid"].as_u64().unwrap();

    let out = state.run(&["--json", "daemon", "start"]);
    let second = json_of(&out);
    assert_eq!(second["started"], json!(false));
    assert_eq!(second["pid"].as_u64(), Some(pid));
    let out = state.run(&["daemon", "start"]);
    assert!(stdout(&out).contains(&format!("already running (pid {pid})")), "{}", stdout(&out));

    let out = state.run(&["ping"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains(&format!("pid {pid}")));

    let status = json_of(&state.run(&["status", "--json"]));
    assert_eq!(status["pid"].as_u64(), Some(pid));
    assert_eq!(status["health"]["state"], "healthy");

    let daemon_status = state.run(&["--json", "daemon", "status"]);
    assert_eq!(daemon_status.status.code(), Some(0));
    let daemon_status = json_of(&daemon_status);
    assert_eq!(daemon_status["state"], "running");
    assert_eq!(daemon_status["info"]["pid"].as_u64(), Some(pid));

    // The detached daemon logs to daemon.log in the state dir.
    assert!(state.paths.log_file().exists());
    let out = state.run(&["--json", "daemon", "stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["how"], "request");
    assert!(!state.socket().exists());
    assert_eq!(state.run(&["daemon", "status"]).status.code(), Some(3));
    let out = state.run(&["daemon", "stop"]);
    assert!(out.status.success(), "stopping a stopped daemon succeeds");
}

#[test]
fn a_second_hearthd_names_the_first_and_touches_nothing() {
    let state = StateDir::new();
    let daemon = state.start(&[]);
    let snapshot = |path: &std::path::Path| {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.ino(), m.mtime_nsec(), m.mtime(), m.len())
    };
    let files = [state.socket().to_owned(), state.paths.info_file(), state.paths.lock_file()];
    let before: Vec<_> = files.iter().map(|f| snapshot(f)).collect();
    // The running daemon rewrites its heartbeat on its own; everything else
    // must be exactly as it was.
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(state.state_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.contains("heartbeat.json"))
            .collect();
        names.sort();
        names
    };
    assert!(wait_for(Duration::from_secs(10), || state.paths.heartbeat_file().exists()));
    let names_before = names();

    for detach in [false, true] {
        let mut cmd = state.hearthd();
        if detach {
            cmd.arg("--detach");
        }
        let out = common::run_bounded(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()), common::COMMAND_LIMIT);
        assert_eq!(out.status.code(), Some(3), "detach={detach}");
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.contains(&daemon.pid().to_string()), "names the running pid: {text}");
        if detach {
            let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
            assert_eq!(report, json!({"event": "already_running", "pid": daemon.pid()}));
        }
    }
    let after: Vec<_> = files.iter().map(|f| snapshot(f)).collect();
    assert_eq!(before, after, "socket, info and lock untouched");
    assert_eq!(names(), names_before, "no new files");
    let mut c = RawConn::open(state.socket(), "status");
    assert_eq!(c.request(&json!({"type": "ping"})), json!({"type": "pong"}));
}

#[test]
fn kill_9_leaves_stale_files_that_the_next_start_recovers() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let old_pid = daemon.pid();
    daemon.kill9();
    assert!(state.socket().exists(), "a killed daemon leaves its socket");

    let out = state.run(&["--json", "daemon", "status"]);
    assert_eq!(out.status.code(), Some(1), "stale");
    let s = json_of(&out);
    assert_eq!(s["state"], "stale");
    assert_eq!(s["pid"].as_u64(), Some(u64::from(old_pid)));
    assert_eq!(state.run(&["ping"]).status.code(), Some(3));

    let out = state.run(&["--json", "daemon", "start"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(json_of(&out)["pid"].as_u64(), Some(u64::from(old_pid)));
    assert!(state.run(&["ping"]).status.success());
    assert!(state.run(&["daemon", "stop"]).status.success());
}

#[test]
fn stop_and_start_in_a_loop_never_race() {
    let state = StateDir::new();
    let mut pids = Vec::new();
    for _ in 0..10 {
        let out = state.run(&["--json", "daemon", "start"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let started = json_of(&out);
        assert_eq!(started["started"], json!(true), "a fresh daemon every time");
        pids.push(started["pid"].as_u64().unwrap());
        let out = state.run(&["daemon", "stop"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    pids.dedup();
    assert_eq!(pids.len(), 10);
}

#[test]
fn racing_starts_from_32_processes_leave_exactly_one_daemon() {
    let state = StateDir::new();
    let children: Vec<_> = (0..32)
        .map(|_| {
            state
                .hearth()
                .args(["--json", "daemon", "start", "--timeout", "30s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> =
        children.into_iter().map(|c| common::output_within(c, common::COMMAND_LIMIT, "daemon start")).collect();
    let mut pids = Vec::new();
    let mut started = 0;
    for out in &outputs {
        assert!(out.status.success(), "every caller succeeds: {}", stderr(out));
        let v = json_of(out);
        pids.push(v["pid"].as_u64().unwrap());
        started += usize::from(v["started"] == json!(true));
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "all callers see the same daemon: {pids:?}");
    assert!(started <= 1, "{started} callers claim to have started it");
    let daemons: Vec<u32> = processes_mentioning(state.state_dir().to_str().unwrap())
        .into_iter()
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            exe == hearthd_bin()
        })
        .collect();
    assert_eq!(daemons.len(), 1, "exactly one hearthd process: {daemons:?}");
    assert_eq!(u64::from(daemons[0]), pids[0]);
    assert!(state.run(&["daemon", "stop"]).status.success());
}

#[test]
fn stop_escalates_to_signals_for_a_hung_daemon() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    daemon.signal(libc::SIGSTOP);
    // A process holds the lock but nothing answers.
    let out = state.run(&["--json", "daemon", "status"]);
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert_eq!(json_of(&out)["state"], "not_responding");

    let out = state.run(&["daemon", "stop", "--timeout", "300ms", "--no-force"]);
    assert_eq!(out.status.code(), Some(4), "--no-force gives up: {}", stderr(&out));
    assert!(stderr(&out).contains("stop_timeout"));

    // SIGTERM cannot reach a stopped process, so this ends with SIGKILL.
    let out = state.run(&["--json", "daemon", "stop", "--timeout", "300ms"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["how"], "sigkill");
    assert!(daemon.wait_exit(Duration::from_secs(10)).is_some());
    // And the next start recovers.
    assert!(state.run(&["daemon", "start"]).status.success());
    assert!(state.run(&["daemon", "stop"]).status.success());
}

#[test]
fn sigterm_and_sigint_stop_gracefully() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let state = StateDir::new();
        let mut daemon = state.start(&[]);
        daemon.signal(signal);
        assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
        assert!(!state.socket().exists());
        assert!(!state.paths.info_file().exists());
        assert_eq!(common::StateDir::run(&state, &["daemon", "status"]).status.code(), Some(3));
    }
}

#[test]
fn too_long_socket_path_is_a_clear_error() {
    let state = StateDir::new();
    let long = state.dir.path().join("x".repeat(120)).join("hearth.sock");
    let out =
        common::run_bounded(state.hearthd().arg("--socket").arg(&long).stderr(Stdio::piped()), common::COMMAND_LIMIT);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("socket_path_too_long"), "{err}");
    assert!(err.contains(&long.display().to_string()), "names the path: {err}");
    assert!(err.contains(&hearth::paths::max_socket_path_len().to_string()), "names the limit: {err}");

    let out = common::run_bounded(state.hearth().arg("--socket").arg(&long).arg("ping"), common::COMMAND_LIMIT);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("socket_path_too_long"), "{}", stderr(&out));

    // Through ensure_daemon_running, the daemon's own error comes back.
    let out =
        common::run_bounded(state.hearth().arg("--socket").arg(&long).args(["daemon", "start"]), common::COMMAND_LIMIT);
    assert!(stderr(&out).contains("socket_path_too_long"), "{}", stderr(&out));
}

#[test]
fn insecure_or_foreign_state_dirs_are_refused() {
    let state = StateDir::new();
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = state.run(&["daemon", "start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("state_dir_insecure") && err.contains("chmod 700"), "{err}");
    assert!(!state.socket().exists());
    assert!(!state.paths.lock_file().exists(), "nothing created in an insecure dir");

    std::fs::set_permissions(state.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    if hearth::sys::euid() == 0 {
        std::os::unix::fs::chown(state.state_dir(), Some(65534), None).unwrap();
        let out = state.run(&["daemon", "start"]);
        let err = stderr(&out);
        assert!(err.contains("state_dir_insecure") && err.contains("owned by uid 65534"), "{err}");
    }
}

#[test]
fn settings_layer_flags_over_env_over_file() {
    let state = StateDir::new();
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        state.paths.config_file(),
        "[server]\nmax_connections = 11\nwrite_timeout = \"7s\"\nshutdown_grace = \"3s\"\n",
    )
    .unwrap();
    let print = |cmd: &mut Command| {
        let out = common::run_bounded(
            cmd.arg("--print-config").stderr(Stdio::piped()).stdout(Stdio::piped()),
            common::COMMAND_LIMIT,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let text = print(&mut state.hearthd());
    assert!(text.contains("max_connections = 11") && text.contains("write_timeout = \"7s\""), "{text}");
    let text = print(state.hearthd().env("HEARTH_MAX_CONNECTIONS", "22"));
    assert!(text.contains("max_connections = 22") && text.contains("write_timeout = \"7s\""), "{text}");
    let text = print(state.hearthd().env("HEARTH_MAX_CONNECTIONS", "22").args(["--max-connections", "33"]));
    assert!(text.contains("max_connections = 33") && text.contains("shutdown_grace = \"3s\""), "{text}");

    std::fs::write(state.paths.config_file(), "[server]\nmax_conections = 1\n").unwrap();
    let out = common::run_bounded(state.hearthd().stderr(Stdio::piped()), common::COMMAND_LIMIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config_invalid") && stderr(&out).contains("max_conections"), "{}", stderr(&out));
    let out = common::run_bounded(
        state.hearthd().arg("--max-frame").arg("lots").stderr(Stdio::piped()),
        common::COMMAND_LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "usage error: {}", stderr(&out));
}

#[test]
fn the_lock_is_close_on_exec() {
    let state = StateDir::new();
    let daemon = state.start(&[]);
    let lock = state.paths.lock_file();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid())).unwrap();
    let mut checked = false;
    for fd in fds.flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() == Some(lock.as_path()) {
            let info =
                std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", daemon.pid(), fd.file_name().to_str().unwrap()))
                    .unwrap();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
            let flags = u32::from_str_radix(flags, 8).unwrap();
            assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "lock fd flags {flags:o}");
            checked = true;
        }
    }
    assert!(checked, "the daemon holds {lock:?} open");
    // Every descriptor the daemon owns is close-on-exec, except stdio.
    for fd in std::fs::read_dir(format!("/proc/{}/fdinfo", daemon.pid())).unwrap().flatten() {
        let n: u32 = fd.file_name().to_str().unwrap().parse().unwrap();
        if n <= 2 {
            continue;
        }
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let Some(flags) = info.lines().find_map(|l| l.strip_prefix("flags:")) else { continue };
        let flags = u32::from_str_radix(flags.trim(), 8).unwrap();
        assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "fd {n} lacks O_CLOEXEC");
    }
}

#[test]
fn another_user_is_refused_before_any_request() {
    let root = hearth::sys::euid() == 0;
    if !root {
        eprintln!("skipped: needs root to run a client as a second uid");
        return;
    }
    let hearth = common::hearth_bin();
    let nobody_can_run = Command::new("/bin/sh")
        .args(["-c", "exec \"$0\" --version"])
        .arg(&hearth)
        .uid(65534)
        .gid(65534)
        .output()
        .is_ok_and(|o| o.status.success());
    if !nobody_can_run {
        eprintln!("skipped: uid 65534 cannot execute {hearth:?}");
        return;
    }
    use std::os::unix::process::CommandExt;
    let state = StateDir::new();
    // A socket in a directory everyone may enter, loosened by hand: the
    // uid check must hold even when file modes do not.
    let shared = state.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(state.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = shared.join("h.sock");
    let _daemon = {
        let log = state.dir.path().join("hearthd.log");
        let child =
            state.hearthd().arg("--socket").arg(&socket).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let d = common::Daemon { child: Some(child), log, socket: socket.clone(), info: state.paths.info_file() };
        assert!(wait_for(Duration::from_secs(20), || RawConn::try_connect(&socket).is_some()));
        d
    };
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // A raw client (the CLI itself refuses a daemon of another user before
    // sending anything): the daemon answers its handshake with a refusal.
    let raw = "import json, socket, struct, sys\n\
               s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
               b = json.dumps({'channel': 'status', 'protocol': 1}).encode()\n\
               s.sendall(struct.pack('>I', len(b)) + b)\n\
               n = struct.unpack('>I', s.recv(4, socket.MSG_WAITALL))[0]\n\
               print(s.recv(n, socket.MSG_WAITALL).decode())\n";
    let out = common::run_bounded(
        Command::new("python3").args(["-c", raw]).arg(&socket).uid(65534).gid(65534),
        common::COMMAND_LIMIT,
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!((reply["ok"].as_bool(), reply["error"]["code"].as_str()), (Some(false), Some("permission_denied")));
    let out = common::run_bounded(
        Command::new(&hearth)
            .args(["--json", "ping", "--socket"])
            .arg(&socket)
            .env("HEARTH_STATE_DIR", "/nonexistent")
            .uid(65534)
            .gid(65534),
        common::COMMAND_LIMIT,
    );
    assert_ne!(out.status.code(), Some(0));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(err["error"]["code"], "daemon_of_another_user", "{err}");

    let mut c = RawConn::open(&socket, "status");
    let status = c.request(&json!({"type": "status"}));
    // Both connected; the daemon refused both before reading a byte.
    assert_eq!(status["connections"]["refused_peer"], 2);
}

#[test]
fn a_daemon_that_handshakes_but_never_answers_is_not_waited_for_forever() {
    use std::io::{Read, Write};
    let state = StateDir::new();
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // Holds the lock (with a pid that names nobody) and accepts handshakes,
    // then reads requests and never answers them: hung after the handshake.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(state.paths.lock_file())
        .unwrap();
    let mut lock = fd_lock::RwLock::new(lock);
    let _held = lock.try_write().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(state.socket()).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut len = [0u8; 4];
                if stream.read_exact(&mut len).is_err() {
                    return;
                }
                let mut hs = vec![0u8; u32::from_be_bytes(len) as usize];
                let _ = stream.read_exact(&mut hs);
                let reply = br#"{"ok":true,"protocol":1,"daemon":{"version":"0.1.0","pid":1},"channel":"status","max_frame":1024}"#;
                let _ = stream.write_all(&(reply.len() as u32).to_be_bytes());
                let _ = stream.write_all(reply);
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    let out = state.run(&["--json", "daemon", "status"]);
    assert_eq!(out.status.code(), Some(4), "not responding: {}", stdout(&out));
    let out = state.run(&["daemon", "stop", "--no-force", "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(4), "gives up instead of hanging: {}", stderr(&out));
}

/// The `Commands:` section of a help text: each subcommand and its one-line summary.
fn subcommands_listed(help: &str) -> Vec<(String, String)> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| {
            let (name, summary) = l.trim_start().split_once(' ')?;
            (name != "help").then(|| (name.to_owned(), summary.trim().to_owned()))
        })
        .collect()
}

#[test]
fn every_command_has_help_that_describes_it_and_each_of_its_options() {
    let help = |path: &[String]| {
        let out =
            common::run_bounded(Command::new(common::hearth_bin()).args(path).arg("--help"), common::COMMAND_LIMIT);
        assert!(out.status.success(), "hearth {path:?} --help: {}", stderr(&out));
        stdout(&out)
    };
    let mut todo: Vec<(Vec<String>, Option<String>)> = vec![(vec![], None)];
    let mut seen = 0;
    while let Some((path, summary)) = todo.pop() {
        let text = help(&path);
        seen += 1;
        let first = text.lines().next().unwrap_or_default();
        assert!(!first.is_empty() && !first.starts_with("Usage:"), "hearth {path:?} has no description:\n{text}");
        if let Some(summary) = summary {
            // The parent's one-line summary (possibly wrapped) opens the command's own help.
            let head = summary.trim_end_matches('.');
            assert!(
                first.starts_with(&head[..head.len().min(40)]),
                "hearth {path:?} opens with {first:?}, listed as {summary:?}"
            );
        }
        // Every option and argument has a description under it or beside it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let indent = line.len() - t.len();
            if (t.starts_with('-') || t.starts_with('<') || t.starts_with('[')) && indent <= 6 && i > 0 {
                let described = t.contains("  ")
                    || lines.get(i + 1).is_some_and(|next| next.len() - next.trim_start().len() > indent);
                assert!(described, "hearth {path:?}: {t:?} has no description:\n{text}");
            }
        }
        for (name, summary) in subcommands_listed(&text) {
            let mut sub = path.clone();
            sub.push(name);
            todo.push((sub, Some(summary)));
        }
    }
    assert!(seen > 40, "walked only {seen} commands");
}

/// A process the test started, killed when the test ends.
struct Bystander(std::process::Child);

impl Bystander {
    fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn private_state_dir(state: &StateDir) {
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// `flock` holding `daemon.lock` (with `sleep` under it), once the lock is held.
fn hold_lock_with_flock(state: &StateDir) -> Bystander {
    use hearth::daemon::lifecycle::singleton::{LockState, probe_lock};
    let holder = Bystander::spawn(Command::new("flock").arg("-n").arg(state.paths.lock_file()).args(["sleep", "997"]));
    let held = wait_for(Duration::from_secs(10), || matches!(probe_lock(&state.paths), Ok(LockState::Held { .. })));
    assert!(held, "flock did not take daemon.lock within 10s");
    holder
}

#[test]
fn stop_never_signals_a_process_that_is_not_this_state_directorys_daemon() {
    let state = StateDir::new();
    private_state_dir(&state);
    // An unrelated process whose pid is written in daemon.lock, while
    // another process (not a hearthd) holds the lock.
    let mut unrelated = Bystander::spawn(Command::new("sleep").arg("998"));
    std::fs::write(state.paths.lock_file(), format!("{}\n", unrelated.pid())).unwrap();
    let mut holder = hold_lock_with_flock(&state);

    for command in [&["daemon", "stop", "--timeout", "1s"][..], &["daemon", "restart", "--timeout", "1s"]] {
        let out = state.run(command);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{command:?} is refused: {err}");
        assert!(err.contains("stop_refused") && err.contains("nothing was signalled"), "{err}");
        assert!(
            err.contains(&format!("daemon.lock names pid {}", unrelated.pid()))
                && err.contains(&format!("holding the lock is pid {}", holder.pid())),
            "{err}"
        );
        assert!(unrelated.alive(), "{command:?} killed the unrelated process named in daemon.lock");
        assert!(holder.alive(), "{command:?} killed the lock's holder");
    }

    // The lock file naming the holder does not make the holder a hearthd.
    std::fs::write(state.paths.lock_file(), format!("{}\n", holder.pid())).unwrap();
    let out = state.run(&["--json", "daemon", "stop", "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "stop_refused");
    assert!(err["error"]["message"].as_str().unwrap().contains("is not a hearthd"), "{err}");
    assert!(holder.alive() && unrelated.alive());
}

#[test]
fn a_daemon_of_another_state_directory_on_the_same_socket_is_never_asked_to_stop() {
    // Two state directories given the same --socket: the one serving it is
    // not the one whose lock (held by a process that is no daemon) is stopped.
    let other = StateDir::new();
    let socket = other.dir.path().join("shared.sock");
    let mut cmd = other.hearthd();
    cmd.arg("--socket").arg(&socket);
    let mut serving = common::Daemon {
        child: Some(cmd.stderr(Stdio::null()).spawn().unwrap()),
        log: other.dir.path().join("unused.log"),
        socket: socket.clone(),
        info: other.paths.info_file(),
    };
    let answers = || RawConn::try_connect(&socket).is_some_and(|mut c| c.handshake("status")["ok"] == json!(true));
    assert!(wait_for(Duration::from_secs(20), answers), "the other daemon did not answer within 20s");

    let state = StateDir::new();
    private_state_dir(&state);
    // Even naming the other daemon's pid in this state directory's lock file.
    std::fs::write(state.paths.lock_file(), format!("{}\n", serving.pid())).unwrap();
    let holder = hold_lock_with_flock(&state);
    let out = state.run(&["--socket", socket.to_str().unwrap(), "daemon", "stop", "--timeout", "500ms"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains(&format!("(pid {}) does not hold this state directory's lock", serving.pid())), "{err}");
    assert!(answers(), "the other state directory's daemon was stopped");
    drop(holder);
    assert_eq!(serving.stop(), 0);
}

#[test]
fn stop_refuses_a_lock_holder_that_started_after_daemon_json_was_written() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    // A hung daemon whose daemon.json says it started an hour before the
    // process did: the pid in it cannot be this process's.
    daemon.signal(libc::SIGSTOP);
    let mut info = state.daemon_info();
    let started = hearth::time::parse_rfc3339_utc(info["started_at"].as_str().unwrap()).unwrap();
    info["started_at"] = json!(hearth::time::rfc3339_ms(started - 3_600_000));
    std::fs::write(state.paths.info_file(), info.to_string()).unwrap();
    let out = state.run(&["daemon", "stop", "--timeout", "300ms"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("the pid was reused"), "{err}");
    // A SIGKILL would have been waited for: the daemon would be gone by now.
    assert!(daemon.wait_exit(Duration::ZERO).is_none(), "the daemon was signalled");

    // With daemon.json as the daemon wrote it, the same stop proceeds.
    info["started_at"] = json!(hearth::time::rfc3339_ms(started));
    std::fs::write(state.paths.info_file(), info.to_string()).unwrap();
    let out = state.run(&["--json", "daemon", "stop", "--timeout", "300ms"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["how"], "sigkill");
    assert!(daemon.wait_exit(Duration::from_secs(10)).is_some());
}

/// Runs `hearth args` with a stdout nobody reads (the read end of its pipe
/// is closed before it starts): every write gets EPIPE, as under `| head -1`
/// once `head` has gone.
fn run_with_closed_stdout(state: &StateDir, args: &[&str]) -> std::process::Output {
    let (reader, writer) = hearth::sys::pipe().unwrap();
    drop(reader);
    let child = state.hearth().args(args).stdout(writer).stderr(Stdio::piped()).spawn().unwrap();
    common::output_within(child, common::COMMAND_LIMIT, &format!("hearth {args:?}"))
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_with_status_141() {
    let state = StateDir::new();
    assert!(state.run(&["daemon", "start"]).status.success());
    let out = state.run(&["--json", "queue", "submit", "--", "echo", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json_of(&out)["job"]["id"].as_u64().unwrap_or_else(|| panic!("no id: {}", stdout(&out))).to_string();
    assert!(state.run(&["queue", "wait", &id]).status.success());
    let file = state.dir.path().join("data.txt");
    std::fs::write(&file, "blob\n").unwrap();
    let out = state.run(&["blob", "put", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hash = stdout(&out).trim().to_owned();

    let commands: &[&[&str]] = &[
        &["queue", "list", "--limit", "500"],
        &["--json", "queue", "list"],
        &["queue", "show", &id],
        &["queue", "logs", &id],
        &["status"],
        &["--json", "daemon", "status"],
        &["daemon", "logs"],
        &["blob", "get", &hash],
        &["blob", "ls"],
        &["pool", "status"],
        &["ping"],
        &["completions", "bash"],
    ];
    for args in commands {
        let out = run_with_closed_stdout(&state, args);
        assert_eq!(out.status.code(), Some(141), "hearth {args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "hearth {args:?} is quiet");
    }
    assert!(state.run(&["daemon", "stop"]).status.success());
}

#[test]
fn a_start_after_daemon_lock_was_deleted_names_this_state_directorys_daemon() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    std::fs::remove_file(state.paths.lock_file()).unwrap();
    let out = common::run_bounded(&mut state.hearthd(), common::COMMAND_LIMIT);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("socket_path_occupied"), "{err}");
    assert!(
        err.contains(&format!("the daemon of this state directory (pid {}) is listening on it", daemon.pid()))
            && err.contains("daemon.lock was deleted or replaced"),
        "{err}"
    );
    assert!(!err.contains("another state directory"), "{err}");
    // And the remedy it names works.
    assert!(state.run(&["shutdown"]).status.success());
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "the daemon did not stop within 20s");

    // A daemon of another state directory on the same socket is named as such.
    let other = StateDir::new();
    let socket = state.socket().to_str().unwrap();
    let _daemon = state.start(&[]);
    let out = common::run_bounded(other.hearthd().args(["--socket", socket]), common::COMMAND_LIMIT);
    let err = stderr(&out);
    assert!(err.contains("a daemon of another state directory is listening on it"), "{err}");
}
