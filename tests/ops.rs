//! Operations: sd_notify and the watchdog, socket activation, generated
//! service files (checked by systemd-analyze and a real plist parser),
//! heartbeat, doctor, log rotation, idle exit.

mod common;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RawConn, StateDir, hearthd_bin, stderr, stdout, wait_for};
use serde_json::{Value, json};

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

// --- a service manager's notification socket ------------------------------

/// A fake `NOTIFY_SOCKET`: records every datagram, and answers `BARRIER=1`
/// the way systemd does, by closing the descriptor that came with it.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn new(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok((text, fds)) = recv_with_fds(&socket) {
                    // Closing the barrier's descriptor is the answer.
                    drop(fds);
                    m.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        Self { path, messages, stop, thread: Some(thread) }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        let mut out = Vec::new();
        for (t, msg) in self.messages.lock().unwrap().iter() {
            for line in msg.lines() {
                out.push((*t, line.to_owned()));
            }
        }
        out
    }

    fn has(&self, line: &str) -> bool {
        self.lines().iter().any(|(_, l)| l == line)
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|(_, l)| l == line).count()
    }

    fn times(&self, line: &str) -> Vec<Instant> {
        self.lines().into_iter().filter(|(_, l)| l == line).map(|(t, _)| t).collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[expect(unsafe_code, reason = "recvmsg with SCM_RIGHTS, as a service manager receives descriptors")]
fn recv_with_fds(socket: &UnixDatagram) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let mut control = [0u64; 32];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; every pointer in it refers to a buffer
    // that outlives the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<i32>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        (n as usize, fds)
    };
    Ok((String::from_utf8_lossy(&buf[..n.0]).into_owned(), n.1))
}

#[test]
fn sd_notify_ready_watchdog_stopping_and_barrier() {
    let state = StateDir::new();
    let notify = NotifySocket::new(state.dir.path());
    let watchdog = Duration::from_millis(800);
    let mut cmd = state.hearthd();
    cmd.env("NOTIFY_SOCKET", &notify.path).env("WATCHDOG_USEC", watchdog.as_micros().to_string());
    let log = state.dir.path().join("notify.log");
    let mut child = cmd.stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();

    // READY=1 only once the socket accepts.
    assert!(wait_for(Duration::from_secs(20), || notify.has("READY=1")), "no READY=1");
    let mut c = RawConn::connect(state.socket());
    assert_eq!(c.handshake("status")["ok"], json!(true), "the socket answers when READY=1 arrives");
    assert!(notify.lines().iter().any(|(_, l)| l.starts_with("STATUS=")));
    let ready_at = notify.times("READY=1")[0];
    assert!(state.paths.info_file().exists(), "daemon.json is written before READY=1");

    // WATCHDOG=1 at about half the watchdog timeout.
    assert!(wait_for(Duration::from_secs(20), || notify.count("WATCHDOG=1") >= 6), "too few WATCHDOG=1");
    let pings: Vec<Instant> = notify.times("WATCHDOG=1").into_iter().filter(|t| *t >= ready_at).collect();
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median <= watchdog && median >= watchdog / 8,
        "median WATCHDOG gap {median:?} for WATCHDOG_USEC {watchdog:?}"
    );

    // A stalled daemon stops pinging.
    let pid = child.id();
    hearth::sys::kill(pid, libc::SIGSTOP).unwrap();
    let stalled_at = Instant::now();
    let before = notify.count("WATCHDOG=1");
    // Let well over one watchdog period pass, measured by the receiver's clock.
    assert!(!wait_for(watchdog * 3, || notify.count("WATCHDOG=1") > before), "WATCHDOG=1 while stopped");
    assert!(stalled_at.elapsed() >= watchdog * 3);
    hearth::sys::kill(pid, libc::SIGCONT).unwrap();
    assert!(wait_for(Duration::from_secs(20), || notify.count("WATCHDOG=1") > before), "pings resume");

    // STOPPING=1 at shutdown, then BARRIER=1 (answered), then a clean exit.
    assert_eq!(c.request(&json!({"type": "shutdown"}))["type"], "shutting_down");
    let status = common::wait_child(&mut child, Duration::from_secs(30), "hearthd after shutdown");
    assert!(status.success(), "{status}; log:\n{}", std::fs::read_to_string(&log).unwrap());
    assert!(notify.has("STOPPING=1"));
    assert!(notify.has("BARRIER=1"), "a barrier before exit");
    let lines = notify.lines();
    let pos = |l: &str| lines.iter().position(|(_, x)| x == l).unwrap();
    assert!(pos("READY=1") < pos("STOPPING=1") && pos("STOPPING=1") < pos("BARRIER=1"));
}

#[test]
fn a_daemon_under_systemd_says_so_in_daemon_json() {
    // The daemon keeps NOTIFY_SOCKET (it needs it; daemon::child removes it
    // from every process it starts) and records who manages it.
    let state = StateDir::new();
    let notify = NotifySocket::new(state.dir.path());
    let mut cmd = state.hearthd();
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let daemon = state.start_cmd(cmd);
    let environ = std::fs::read(format!("/proc/{}/environ", daemon.pid())).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET="));
    let info: Value = serde_json::from_slice(&std::fs::read(state.paths.info_file()).unwrap()).unwrap();
    assert_eq!(info["managed_by"], "systemd");
}

// --- socket activation ------------------------------------------------------

#[test]
fn socket_activation_through_systemd_socket_activate() {
    let Some(activate) = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let state = StateDir::new();
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let log = state.dir.path().join("activate.log");
    let mut child = Command::new(activate)
        .arg("-l")
        .arg(state.socket())
        .arg(hearthd_bin())
        .arg("--state-dir")
        .arg(state.state_dir())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || state.socket().exists()), "the activator binds the socket");
    // The first connection starts hearthd on the inherited socket.
    let mut c = RawConn::open(state.socket(), "status");
    assert_eq!(c.request(&json!({"type": "ping"})), json!({"type": "pong"}));
    let status = c.request(&json!({"type": "status"}));
    assert_eq!(status["socket"], json!(state.socket()));
    assert_eq!(status["pid"], json!(child.id()), "the activator execs hearthd in place");
    // The peer check still runs: this connection is counted as accepted.
    assert!(status["connections"]["total"].as_u64().unwrap() >= 1);

    assert_eq!(c.request(&json!({"type": "shutdown"}))["type"], "shutting_down");
    let status = common::wait_child(&mut child, Duration::from_secs(30), "the socket-activated hearthd");
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(state.socket().exists(), "a socket the service manager owns is never removed");
    assert!(!state.paths.info_file().exists());
}

#[test]
fn listen_fds_for_another_pid_are_ignored_and_bad_ones_refused() {
    let state = StateDir::new();
    // LISTEN_PID names another process: ignored, the daemon binds its own socket.
    let mut cmd = state.hearthd();
    cmd.env("LISTEN_PID", "1").env("LISTEN_FDS", "1");
    let mut daemon = state.start_cmd(cmd);
    assert_eq!(daemon.stop(), 0);

    // LISTEN_PID is ours but fd 3 is not a socket: a clear error.
    let out = common::run_bounded(
        Command::new("/bin/sh")
            .arg("-c")
            .arg("exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --state-dir \"$1\"")
            .arg(hearthd_bin())
            .arg(state.state_dir()),
        common::COMMAND_LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("socket_activation_invalid"), "{}", stderr(&out));
}

// --- service files ------------------------------------------------------------

fn install(state: &StateDir, extra: &[&str]) -> Value {
    let out = common::run_bounded(
        state.hearth().args(["--json", "daemon", "install", "--hearthd"]).arg(hearthd_bin()).args(extra),
        common::COMMAND_LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    json_of(&out)
}

fn systemd_analyze(unit: &Path, runtime: &Path) -> std::process::Output {
    common::run_bounded(
        Command::new("systemd-analyze")
            .args(["verify", "--user", "--man=no", "--recursive-errors=yes"])
            .arg(unit)
            .env("XDG_RUNTIME_DIR", runtime),
        common::COMMAND_LIMIT,
    )
}

#[test]
fn generated_systemd_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let state = StateDir::new();
    let runtime = state.dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for activation in [false, true] {
        let units = state.dir.path().join(format!("units-{activation}"));
        let unit_dir = units.to_str().unwrap();
        let mut args = vec!["--unit-dir", unit_dir];
        if activation {
            args.push("--socket-activation");
        }
        let report = install(&state, &args);
        assert!(
            report["manual"].as_array().unwrap().iter().any(|c| c.as_str().unwrap().contains("daemon-reload"))
                || !report["commands"].as_array().unwrap().is_empty()
        );
        let mut files = vec![units.join("hearth.service")];
        if activation {
            files.push(units.join("hearth.socket"));
        }
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            assert!(text.contains(&hearthd_bin().display().to_string()) || file.ends_with("hearth.socket"));
            let out = systemd_analyze(file, &runtime);
            assert!(out.status.success() && out.stderr.is_empty(), "{file:?}: {}", stderr(&out));
        }
        let service = std::fs::read_to_string(units.join("hearth.service")).unwrap();
        for line in ["Type=notify", "WatchdogSec=30", "Restart=on-failure"] {
            assert!(service.contains(line), "{line} missing:\n{service}");
        }
        assert_eq!(service.contains("Requires=hearth.socket"), activation);
    }
    // A broken unit must fail the same check, so the check can fail.
    let broken = state.dir.path().join("units-false/broken.service");
    let text = std::fs::read_to_string(state.dir.path().join("units-false/hearth.service")).unwrap();
    std::fs::write(&broken, text.replace("Type=notify", "Type=notfy")).unwrap();
    let out = systemd_analyze(&broken, &runtime);
    assert!(!out.status.success() || !out.stderr.is_empty(), "a broken unit passed");
}

#[test]
fn install_is_idempotent_and_uninstall_removes_only_its_own_files() {
    let state = StateDir::new();
    let units = state.dir.path().join("units");
    let unit_dir = units.to_str().unwrap();
    let first = install(&state, &["--unit-dir", unit_dir, "--socket-activation"]);
    assert_eq!(first["files"][0]["action"], "written");
    let again = install(&state, &["--unit-dir", unit_dir, "--socket-activation"]);
    assert_eq!(again["files"][0]["action"], "unchanged");
    assert_eq!(again["files"][1]["action"], "unchanged");
    // Re-installing without socket activation removes the old socket unit.
    let plain = install(&state, &["--unit-dir", unit_dir]);
    assert!(plain["files"].as_array().unwrap().iter().any(|f| f["action"] == "removed"));
    assert!(!units.join("hearth.socket").exists());
    // A file of the user's own is never removed.
    std::fs::write(units.join("hearth.socket"), "[Socket]\nListenStream=/tmp/mine\n").unwrap();
    std::fs::write(units.join("other.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    let dry = state.run(&["--json", "daemon", "uninstall", "--dry-run", "--unit-dir", unit_dir]);
    assert!(dry.status.success());
    assert!(units.join("hearth.service").exists(), "dry run changes nothing");
    let out = state.run(&["--json", "daemon", "uninstall", "--unit-dir", unit_dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_of(&out);
    let actions: Vec<(String, String)> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().rsplit('/').next().unwrap().to_owned(),
                f["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(actions.contains(&("hearth.service".into(), "removed".into())), "{actions:?}");
    assert!(actions.contains(&("hearth.socket".into(), "kept".into())), "{actions:?}");
    assert!(!units.join("hearth.service").exists());
    assert!(units.join("hearth.socket").exists() && units.join("other.service").exists());
}

#[test]
fn launchd_plist_is_valid_for_a_real_parser() {
    let state = StateDir::new();
    // A state directory with characters XML must escape.
    let weird = state.dir.path().join("a & b <c> été");
    let out = common::run_bounded(
        Command::new(common::hearth_bin())
            .args(["--json", "--state-dir"])
            .arg(&weird)
            .args(["daemon", "install", "--profile", "launchd", "--dry-run", "--agent-dir"])
            .arg(state.dir.path())
            .arg("--hearthd")
            .arg(hearthd_bin()),
        common::COMMAND_LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_of(&out);
    let plist = report["files"][0]["content"].as_str().unwrap();
    assert!(!state.dir.path().join("dev.hearth.hearthd.plist").exists(), "dry run writes nothing");
    let parsed = python_plist(plist);
    assert_eq!(parsed["Label"], "dev.hearth.hearthd");
    assert_eq!(parsed["RunAtLoad"], true);
    assert_eq!(parsed["KeepAlive"], json!({"SuccessfulExit": false}));
    let args = parsed["ProgramArguments"].as_array().unwrap();
    assert_eq!(args[0], json!(std::fs::canonicalize(hearthd_bin()).unwrap()));
    assert!(args.contains(&json!(weird)), "{args:?}");
    assert!(parsed["StandardErrorPath"].as_str().unwrap().starts_with(weird.to_str().unwrap()));

    // Installing for launchd on a host without it is refused (unless --dry-run).
    if !cfg!(target_os = "macos") {
        let out = state.run(&["daemon", "install", "--profile", "launchd"]);
        assert!(stderr(&out).contains("profile_not_supported_on_host"), "{}", stderr(&out));
    }
}

/// Parses a plist with Python's plistlib and returns it as JSON.
fn python_plist(text: &str) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", "import json, plistlib, sys; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = common::output_within(child, common::COMMAND_LIMIT, "python3 plistlib");
    assert!(out.status.success(), "plistlib rejected it: {}\n{text}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn contrib_files_are_generated_by_the_same_code() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let expected: Vec<(PathBuf, Vec<u8>)> = vec![
        (
            contrib.join("systemd/hearth.service"),
            hearth::unit_files::systemd_service(&hearth::unit_files::contrib_spec(false)).into_bytes(),
        ),
        (
            contrib.join("systemd/socket-activated/hearth.service"),
            hearth::unit_files::systemd_service(&hearth::unit_files::contrib_spec(true)).into_bytes(),
        ),
        (
            contrib.join("systemd/socket-activated/hearth.socket"),
            hearth::unit_files::systemd_socket(&hearth::unit_files::contrib_spec(true)).into_bytes(),
        ),
        (
            contrib.join("launchd/dev.hearth.hearthd.plist"),
            hearth::unit_files::launchd_plist(&hearth::unit_files::contrib_launchd_spec()).unwrap(),
        ),
    ];
    let update = std::env::var_os("HEARTH_UPDATE_CONTRIB").is_some();
    for (path, content) in &expected {
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let actual = std::fs::read(path).unwrap_or_default();
        assert!(
            actual == *content,
            "{path:?} is out of date; regenerate with HEARTH_UPDATE_CONTRIB=1 cargo test --test ops contrib"
        );
    }
    python_plist(&String::from_utf8(expected[3].1.clone()).unwrap());
}

// --- heartbeat, doctor ---------------------------------------------------------

fn heartbeat(state: &StateDir) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(state.paths.heartbeat_file()).ok()?).ok()
}

#[test]
fn heartbeat_is_fresh_while_progressing_and_stale_when_stalled() {
    let state = StateDir::new();
    let daemon = state.start(&["--heartbeat-interval", "150ms"]);
    assert!(wait_for(Duration::from_secs(10), || heartbeat(&state).is_some_and(|h| h["cycle"].as_u64() >= Some(3))));
    let hb = heartbeat(&state).unwrap();
    assert_eq!(hb["pid"], json!(daemon.pid()));
    assert_eq!(hb["interval_ms"], 150);
    assert_eq!(hb["health"]["state"], "healthy");
    let out = state.run(&["--json", "daemon", "status"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_of(&out)["heartbeat"]["stale"], false);

    daemon.signal(libc::SIGSTOP);
    assert!(wait_for(Duration::from_secs(10), || {
        let out = state.run(&["--json", "daemon", "status"]);
        json_of(&out)["heartbeat"]["stale"] == json!(true)
    }));
    let out = state.run(&["--json", "daemon", "status"]);
    assert_eq!(out.status.code(), Some(4), "not responding");
    let out = state.run(&["--json", "doctor"]);
    let codes: Vec<String> =
        json_of(&out)["problems"].as_array().unwrap().iter().map(|p| p["code"].as_str().unwrap().to_owned()).collect();
    assert!(codes.contains(&"heartbeat_stale".to_owned()), "{codes:?}");
    assert!(codes.contains(&"daemon_not_responding".to_owned()), "{codes:?}");
    daemon.signal(libc::SIGCONT);
    assert!(wait_for(Duration::from_secs(10), || {
        json_of(&state.run(&["--json", "daemon", "status"]))["heartbeat"]["stale"] == json!(false)
    }));
}

#[test]
fn a_daemon_with_every_connection_taken_keeps_its_heartbeat() {
    let state = StateDir::new();
    let daemon = state.start(&["--heartbeat-interval", "150ms", "--max-connections", "3"]);
    let mut held: Vec<RawConn> = Vec::new();
    assert!(wait_for(Duration::from_secs(10), || {
        while held.len() < 3 {
            let Some(mut c) = RawConn::try_connect(state.socket()) else { return false };
            if c.handshake("status")["ok"] != json!(true) {
                return false;
            }
            held.push(c);
        }
        true
    }));
    let over = RawConn::connect(state.socket()).read_json().expect("a refusal");
    assert_eq!(over["error"]["code"], "too_many_connections", "{over}");

    // Busy is not hung: the self-checks keep passing.
    let cycle = heartbeat(&state).and_then(|h| h["cycle"].as_u64()).unwrap_or(0);
    let advanced =
        wait_for(Duration::from_secs(10), || heartbeat(&state).is_some_and(|h| h["cycle"].as_u64() >= Some(cycle + 3)));
    assert!(advanced, "the heartbeat stopped while every slot was taken; log:\n{}", daemon.log_text());
    let status = held[0].request(&json!({"type": "status"}));
    let codes: Vec<&str> =
        status["health"]["reasons"].as_array().unwrap().iter().filter_map(|r| r["code"].as_str()).collect();
    assert!(codes.contains(&"connections_near_limit"), "{status}");
    assert!(!codes.contains(&"self_check_failed"), "{status}");
    assert_eq!(status["connections"]["active"], 3, "the self-check is not counted: {status}");
}

fn doctor_codes(state: &StateDir, extra: &[&str]) -> Vec<String> {
    let out = common::run_bounded(state.hearth().args(["--json", "doctor"]).args(extra), common::COMMAND_LIMIT);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(out.status.code(), Some(if report["ok"] == json!(true) { 0 } else { 1 }));
    report["problems"].as_array().unwrap().iter().map(|p| p["code"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn doctor_reports_each_code_from_its_real_condition() {
    let state = StateDir::new();
    let units = state.dir.path().join("units");
    let unit_dir = units.to_str().unwrap();

    // Nothing installed, nothing running: only the informational note.
    assert_eq!(doctor_codes(&state, &["--unit-dir", unit_dir]), ["service_file_missing"]);

    // A state directory that cannot be created.
    let file = state.dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = common::run_bounded(
        Command::new(common::hearth_bin()).args(["--json", "doctor", "--state-dir"]).arg(file.join("state")),
        common::COMMAND_LIMIT,
    );
    assert!(stdout(&out).contains("state_dir_not_writable"), "{}", stdout(&out));

    // Insecure.
    std::fs::create_dir_all(state.state_dir()).unwrap();
    std::fs::set_permissions(state.state_dir(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    assert!(doctor_codes(&state, &["--unit-dir", unit_dir]).contains(&"state_dir_insecure".into()));
    std::fs::set_permissions(state.state_dir(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // A socket in a directory others can write (and not sticky), as hearthd would refuse it.
    let open = state.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let in_open = open.join("h.sock");
    let codes = doctor_codes(&state, &["--unit-dir", unit_dir, "--socket", in_open.to_str().unwrap()]);
    assert!(codes.contains(&"socket_dir_insecure".into()), "{codes:?}");
    let out = common::run_bounded(state.hearthd().arg("--socket").arg(&in_open), common::COMMAND_LIMIT);
    assert!(stderr(&out).contains("socket_dir_insecure"), "hearthd agrees: {}", stderr(&out));

    // Too long a socket path.
    let long = format!("/tmp/{}/hearth.sock", "s".repeat(120));
    assert!(
        doctor_codes(&state, &["--unit-dir", unit_dir, "--socket", &long]).contains(&"socket_path_too_long".into())
    );

    // A crash leaves a stale socket and info file.
    let mut daemon = state.start(&[]);
    daemon.kill9();
    let codes = doctor_codes(&state, &["--unit-dir", unit_dir]);
    assert!(codes.contains(&"socket_stale".into()) && codes.contains(&"info_file_stale".into()), "{codes:?}");

    // Something else holds the lock.
    {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(state.paths.lock_file()).unwrap();
        let mut lock = fd_lock::RwLock::new(file);
        let _held = lock.try_write().unwrap();
        let codes = doctor_codes(&state, &["--unit-dir", unit_dir]);
        assert!(codes.contains(&"lock_held_by_other_process".into()), "{codes:?}");
    }

    // An older daemon answers on the socket.
    let _ = std::fs::remove_file(state.socket());
    let listener = std::os::unix::net::UnixListener::bind(state.socket()).unwrap();
    let old = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        use std::io::{Read, Write};
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut hs = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut hs).unwrap();
        let reply =
            br#"{"ok":true,"protocol":1,"daemon":{"version":"0.0.1","pid":1},"channel":"status","max_frame":1024}"#;
        stream.write_all(&(reply.len() as u32).to_be_bytes()).unwrap();
        stream.write_all(reply).unwrap();
    });
    assert!(doctor_codes(&state, &["--unit-dir", unit_dir]).contains(&"version_mismatch".into()));
    old.join().unwrap();
    let _ = std::fs::remove_file(state.socket());

    // A unit pointing at a binary that is gone, and a profile this host cannot run.
    let report = install(&state, &["--unit-dir", unit_dir]);
    assert_eq!(report["files"][0]["action"], "written");
    let unit = units.join("hearth.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let exec = std::fs::canonicalize(hearthd_bin()).unwrap();
    std::fs::write(&unit, text.replace(exec.to_str().unwrap(), "/nonexistent/hearthd")).unwrap();
    assert!(doctor_codes(&state, &["--unit-dir", unit_dir]).contains(&"service_points_to_missing_executable".into()));
    if !cfg!(target_os = "macos") {
        assert!(doctor_codes(&state, &["--profile", "launchd"]).contains(&"profile_not_supported_on_host".into()));
    }
    // (heartbeat_stale and daemon_not_responding: see the heartbeat test.)
}

// --- logs -----------------------------------------------------------------------

#[test]
fn log_rotation_and_sighup_reopen() {
    let state = StateDir::new();
    state.write_config("[log]\nmax_size = 2048\nkeep = 2\n");
    let daemon = state.start(&["--log-to-file"]);
    let log = state.paths.log_file();
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    // Debug logging writes a line per connection: connect until the log rotates twice.
    assert!(wait_for(Duration::from_secs(30), || {
        let _ = RawConn::try_connect(state.socket()).map(|mut c| c.handshake("status"));
        rotated(2).exists()
    }));
    for _ in 0..50 {
        let _ = RawConn::try_connect(state.socket()).map(|mut c| c.handshake("status"));
    }
    assert!(!rotated(3).exists(), "keep = 2");
    for f in [log.clone(), rotated(1), rotated(2)] {
        let size = std::fs::metadata(&f).unwrap().len();
        assert!(size < 2048 + 4096, "{f:?} is {size} bytes");
    }
    let out = state.run(&["daemon", "logs", "-n", "3"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 3);

    // logrotate-style: move the file away, then SIGHUP.
    let moved = state.dir.path().join("moved.log");
    std::fs::rename(&log, &moved).unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("log file reopened"))
    }));
    let _ = RawConn::try_connect(state.socket()).map(|mut c| c.handshake("status"));
    assert!(wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log)
        .is_ok_and(|t| t.contains("connection opened"))));
}

// --- stopping during start-up ------------------------------------------------------

#[test]
fn a_sigterm_as_soon_as_the_socket_appears_is_a_clean_stop() {
    // The socket exists before the signal handlers do; a stop sent in that
    // window used to kill the daemon with the default action (through the
    // log writer's thread) and leave its socket behind.
    for _ in 0..5 {
        let state = StateDir::new();
        let mut cmd = state.hearthd();
        let mut daemon = common::Daemon {
            child: Some(cmd.stderr(Stdio::null()).spawn().unwrap()),
            log: state.dir.path().join("unused.log"),
            socket: state.socket().to_owned(),
            info: state.paths.info_file(),
        };
        let mut seen = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen && Instant::now() < deadline {
            seen = state.socket().exists();
            std::hint::spin_loop();
        }
        assert!(seen, "the socket appeared");
        assert_eq!(daemon.stop(), 0, "a clean exit");
        assert!(!state.socket().exists() && !state.paths.info_file().exists(), "cleaned up");
    }
}

// --- idle exit ----------------------------------------------------------------------

#[test]
fn idle_exit_only_when_nothing_is_busy() {
    let state = StateDir::new();
    let mut daemon = state.start(&["--idle-timeout", "400ms", "--heartbeat-interval", "100ms"]);
    // A client connection keeps it alive, however long it is held: watch
    // the heartbeat count well past the idle timeout.
    let mut held = RawConn::open(state.socket(), "status");
    let cycle = |s: &StateDir| heartbeat(s).and_then(|h| h["cycle"].as_u64()).unwrap_or(0);
    let start = cycle(&state);
    assert!(wait_for(Duration::from_secs(20), || cycle(&state) >= start + 15), "heartbeats continue");
    assert!(daemon.child.as_mut().unwrap().try_wait().unwrap().is_none(), "exited while a client was connected");
    assert_eq!(held.request(&json!({"type": "ping"})), json!({"type": "pong"}));
    drop(held);
    // Idle now: it exits by itself, cleanly.
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!state.socket().exists());
    assert!(std::fs::read_to_string(&daemon.log).unwrap().contains("idle for"));
}

#[test]
fn draining_shutdown_and_restart() {
    let state = StateDir::new();
    let out = state.run(&["--json", "daemon", "start"]);
    let first = json_of(&out)["pid"].as_u64().unwrap();
    let out = state.run(&["--json", "daemon", "restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restarted = json_of(&out);
    assert_eq!(restarted["stopped"]["pid"].as_u64(), Some(first));
    assert_ne!(restarted["pid"].as_u64(), Some(first));
    let out = state.run(&["--json", "shutdown", "--drain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["drain"], true);
    assert!(wait_for(Duration::from_secs(20), || state.run(&["daemon", "status"]).status.code() == Some(3)));
}

// --- busy work, counted: pool builds ------------------------------------------------

/// Defines a pool whose build waits until `gate` exists.
fn define_gated_pool(state: &StateDir, gate: &Path) {
    let create = format!("sh -c 'while [ ! -e {} ]; do sleep 0.02; done; mkdir -p {{path}}'", gate.display());
    let out = state.run(&["pool", "define", "gated", "--create", &create, "--size", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn builds_running(state: &StateDir) -> u64 {
    let out = state.run(&["--json", "--no-spawn", "status"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|s| s["services"]["pool"]["builds_running"].as_u64())
        .unwrap_or(0)
}

#[test]
fn idle_exit_waits_for_a_pool_build() {
    let state = StateDir::new();
    let gate = state.dir.path().join("gate");
    let mut daemon = state.start(&["--idle-timeout", "300ms", "--heartbeat-interval", "100ms"]);
    define_gated_pool(&state, &gate);
    assert!(wait_for(Duration::from_secs(10), || builds_running(&state) == 1), "the build started");
    // No client, but a build under way: heartbeats go on well past the idle timeout.
    let cycle = |s: &StateDir| heartbeat(s).and_then(|h| h["cycle"].as_u64()).unwrap_or(0);
    let start = cycle(&state);
    assert!(wait_for(Duration::from_secs(20), || cycle(&state) >= start + 15));
    assert!(daemon.child.as_mut().unwrap().try_wait().unwrap().is_none(), "exited while a build ran");
    std::fs::write(&gate, "").unwrap();
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "idle once the build is done");
}

#[test]
fn a_draining_shutdown_waits_for_running_builds() {
    let state = StateDir::new();
    let gate = state.dir.path().join("gate");
    let mut daemon = state.start(&["--heartbeat-interval", "100ms"]);
    define_gated_pool(&state, &gate);
    assert!(wait_for(Duration::from_secs(10), || builds_running(&state) == 1));
    let out = state.run(&["--json", "shutdown", "--drain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Still serving, and saying why it has not stopped.
    let cycle = |s: &StateDir| heartbeat(s).and_then(|h| h["cycle"].as_u64()).unwrap_or(0);
    let start = cycle(&state);
    assert!(wait_for(Duration::from_secs(20), || cycle(&state) >= start + 10));
    let status: Value = json_of(&state.run(&["--json", "--no-spawn", "status"]));
    let reasons = status["health"]["reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|r| r["code"] == "draining"), "{reasons:?}");
    assert!(daemon.child.as_mut().unwrap().try_wait().unwrap().is_none());
    std::fs::write(&gate, "").unwrap();
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0), "stops once the build finished");
}

// --- busy work, counted: queue jobs -----------------------------------------------------

fn queue_summary(state: &StateDir) -> Value {
    let out = state.run(&["--json", "--no-spawn", "status"]);
    serde_json::from_slice::<Value>(&out.stdout).map(|s| s["services"]["queue"].clone()).unwrap_or(Value::Null)
}

/// Submits a job that runs until `gate` exists; returns its id.
fn submit_gated_job(state: &StateDir, gate: &Path) -> u64 {
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done; echo done", gate.display());
    let out = state.run(&["--json", "queue", "submit", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job = json_of(&out);
    job["id"].as_u64().or_else(|| job["job"]["id"].as_u64()).unwrap_or_else(|| panic!("no id in {job}"))
}

#[test]
fn idle_exit_and_drain_wait_for_running_jobs() {
    let state = StateDir::new();
    let gate = state.dir.path().join("gate");
    let mut daemon = state.start(&["--idle-timeout", "300ms", "--heartbeat-interval", "100ms"]);
    let id = submit_gated_job(&state, &gate);
    assert!(wait_for(Duration::from_secs(10), || queue_summary(&state)["running"] == 1), "the job runs");
    let cycle = |s: &StateDir| heartbeat(s).and_then(|h| h["cycle"].as_u64()).unwrap_or(0);
    let start = cycle(&state);
    assert!(wait_for(Duration::from_secs(20), || cycle(&state) >= start + 15));
    assert!(daemon.child.as_mut().unwrap().try_wait().unwrap().is_none(), "exited while a job ran");

    // A draining shutdown lets it finish instead of killing it.
    assert!(state.run(&["shutdown", "--drain"]).status.success());
    let start = cycle(&state);
    assert!(wait_for(Duration::from_secs(20), || cycle(&state) >= start + 5));
    assert!(daemon.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the drain waits for the job");
    std::fs::write(&gate, "").unwrap();
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(0));

    // The job succeeded in its first attempt: it was not interrupted.
    let _daemon = state.start(&[]);
    let out = state.run(&["--json", "queue", "show", &id.to_string()]);
    let job = json_of(&out);
    assert_eq!(job["job"]["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job}");
    assert_eq!(job["attempts"][0]["outcome"], "succeeded", "{job}");
}

#[test]
fn jobs_never_see_the_service_managers_variables() {
    let state = StateDir::new();
    let notify = NotifySocket::new(state.dir.path());
    let mut cmd = state.hearthd();
    cmd.env("NOTIFY_SOCKET", &notify.path).env("WATCHDOG_USEC", "60000000").env("LISTEN_FDNAMES", "x");
    let _daemon = state.start_cmd(cmd);
    let out = state.run(&["run", "--", "sh", "-c", "env | grep -E '^(NOTIFY_SOCKET|WATCHDOG_|LISTEN_)' || echo clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "clean", "{}", stdout(&out));
}

#[test]
fn a_stuck_store_stops_the_watchdog_and_the_heartbeat() {
    let state = StateDir::new();
    let notify = NotifySocket::new(state.dir.path());
    let mut cmd = state.hearthd();
    cmd.env("NOTIFY_SOCKET", &notify.path).env("WATCHDOG_USEC", "600000").args(["--heartbeat-interval", "100ms"]);
    let _daemon = state.start_cmd(cmd);
    assert!(wait_for(Duration::from_secs(10), || notify.count("WATCHDOG=1") >= 2));

    // Another process takes the queue store's write lock and holds it: the
    // daemon's writer cannot make progress, so it must stop vouching for itself.
    let db = state.state_dir().join("queue/queue.db");
    let mut holder = Command::new("python3")
        .args(["-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n"])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    // Once a self-check has failed, no more pings: watch for a few watchdog periods.
    assert!(wait_for(Duration::from_secs(20), || {
        let out = state.run(&["--json", "--no-spawn", "status"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| {
            s["health"]["reasons"].as_array().is_some_and(|r| r.iter().any(|r| r["code"] == "self_check_failed"))
        })
    }));
    let pings = notify.count("WATCHDOG=1");
    let hb = heartbeat(&state).unwrap()["cycle"].as_u64();
    assert!(!wait_for(Duration::from_millis(1800), || notify.count("WATCHDOG=1") > pings), "WATCHDOG=1 while stuck");
    assert_eq!(heartbeat(&state).unwrap()["cycle"].as_u64(), hb, "the heartbeat stood still");

    // Released: the daemon recovers by itself.
    drop(holder.stdin.take());
    common::wait_child(&mut holder, common::COMMAND_LIMIT, "the process holding the store's lock");
    assert!(wait_for(Duration::from_secs(20), || notify.count("WATCHDOG=1") > pings), "pings resume");
}

// --- the socket, lost under a running daemon ------------------------------------

/// A directory of the user's own (0700) for a `--socket` outside the state directory.
fn private_dir(state: &StateDir, name: &str) -> PathBuf {
    let dir = state.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    dir
}

/// `hearthd` on `state` serving `socket`, once it answers there.
fn start_on_socket(state: &StateDir, socket: &Path, extra: &[&str]) -> common::Daemon {
    let mut cmd = state.hearthd();
    cmd.arg("--socket").arg(socket).args(extra);
    state.start_cmd_on(cmd, socket)
}

#[test]
fn a_daemon_whose_socket_is_removed_stops_and_the_next_client_starts_one() {
    // The socket alone, or the directory holding it (as $XDG_RUNTIME_DIR
    // goes at logout).
    for remove_dir in [false, true] {
        let state = StateDir::new();
        let run = private_dir(&state, "run");
        let socket = run.join("hearth.sock");
        let mut daemon = start_on_socket(&state, &socket, &[]);
        let first = daemon.pid();
        if remove_dir {
            std::fs::remove_dir_all(&run).unwrap();
        } else {
            std::fs::remove_file(&socket).unwrap();
        }
        // A client arriving meanwhile starts the next daemon, once this one is gone.
        let client = state
            .hearth()
            .args(["--json", "--socket", socket.to_str().unwrap(), "daemon", "start"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = daemon.wait_exit(Duration::from_secs(20));
        assert_eq!(status, Some(4), "remove_dir={remove_dir}: the daemon went on without its socket");
        assert!(daemon.log_text().contains("the socket was removed"), "{}", daemon.log_text());
        let out = common::output_within(client, common::COMMAND_LIMIT, "hearth daemon start");
        assert!(out.status.success(), "remove_dir={remove_dir}: {}", stderr(&out));
        let started = json_of(&out);
        assert_eq!(started["started"], true, "{started}");
        assert_ne!(started["pid"], json!(first));
        let mut c = RawConn::open(&socket, "status");
        assert_eq!(c.request(&json!({"type": "ping"})), json!({"type": "pong"}));
        let out = state.run(&["--socket", socket.to_str().unwrap(), "daemon", "stop"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

#[test]
fn a_daemon_whose_socket_another_daemon_took_stops_and_leaves_it_alone() {
    let first = StateDir::new();
    let run = private_dir(&first, "run");
    let socket = run.join("hearth.sock");
    let mut daemon = start_on_socket(&first, &socket, &[]);
    // The socket is removed and another state directory's daemon binds the path.
    std::fs::remove_file(&socket).unwrap();
    let second = StateDir::new();
    let mut other = start_on_socket(&second, &socket, &[]);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(4), "log:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("the socket was removed") || log.contains("the socket was replaced"), "{log}");
    // Its stop removed nothing of the other daemon's.
    let mut c = RawConn::open(&socket, "status");
    assert_eq!(c.request(&json!({"type": "status"}))["pid"], json!(other.pid()));
    assert_eq!(other.stop(), 0);
}

#[test]
fn the_self_check_fails_when_another_daemon_answers_on_the_socket() {
    // With a socket the service manager passed, the path is the manager's
    // and is not watched; the self-check still finds who answers on it.
    let first = StateDir::new();
    std::fs::create_dir_all(first.state_dir()).unwrap();
    std::fs::set_permissions(first.state_dir(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let socket = private_dir(&first, "run").join("hearth.sock");
    let mut activated = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(hearthd_bin())
        .arg("--state-dir")
        .arg(first.state_dir())
        .args(["--heartbeat-interval", "200ms"])
        .stderr(std::fs::File::create(first.dir.path().join("activate.log")).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || socket.exists()), "the activator did not bind within 10s");
    let mut c = RawConn::open(&socket, "status");
    assert_eq!(c.request(&json!({"type": "status"}))["pid"], json!(activated.id()));

    std::fs::remove_file(&socket).unwrap();
    let second = StateDir::new();
    let mut other = start_on_socket(&second, &socket, &[]);
    let mut reason = || {
        let status = c.request(&json!({"type": "status"}));
        status["health"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["code"] == "self_check_failed")
            .map(|r| r["message"].as_str().unwrap().to_owned())
    };
    let mut message = None;
    assert!(
        wait_for(Duration::from_secs(20), || {
            message = reason();
            message.is_some()
        }),
        "no self_check_failed within 20s while pid {} answered on the socket",
        other.pid()
    );
    let message = message.unwrap();
    assert!(message.contains(&format!("another daemon (pid {}) answers", other.pid())), "{message}");
    assert_eq!(c.request(&json!({"type": "shutdown"}))["type"], "shutting_down");
    assert!(common::wait_child(&mut activated, Duration::from_secs(30), "the activated hearthd").success());
    assert_eq!(other.stop(), 0);
}
