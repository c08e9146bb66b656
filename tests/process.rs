//! The process channel against the real `hearthd`: raw frames, the client
//! library and the CLI. Every process the tests start carries a marker in
//! its environment, so that whatever a failed test leaves is found and
//! killed; every wait is on something the processes did (a line in a
//! file, a pid), with a deadline.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{RawConn, StateDir, processes_marked, stderr, stdout, wait_for};
use hearth::client::ProcessClient;
use hearth::daemon::fsutil::pid_alive;
use hearth::protocol::process::{ProcessCheck, ProcessDefinition, ProcessState, RestartPolicy, Selector};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

/// A test's state directory, a work directory for its processes, and the
/// marker they carry.
struct Setup {
    state: StateDir,
    work: PathBuf,
    marker: String,
}

impl Setup {
    fn new() -> Self {
        let state = StateDir::new();
        let work = state.dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let marker = format!("HEARTH_TEST_MARKER=proc-{}-{}", std::process::id(), unique());
        Setup { state, work, marker }
    }

    fn marker_value(&self) -> &str {
        self.marker.split_once('=').unwrap().1
    }

    /// A process running `script` with `sh -c` in the work directory.
    fn def(&self, name: &str, script: &str) -> ProcessDefinition {
        let mut def = ProcessDefinition {
            name: name.into(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            cwd: Some(self.work.clone()),
            ..Default::default()
        };
        def.env.insert("HEARTH_TEST_MARKER".into(), self.marker_value().into());
        def
    }

    /// A `[process.<name>]` table running `script` in the work directory.
    fn table(&self, name: &str, script: &str, extra: &str) -> String {
        format!(
            "[process.{name}]\nargv = [\"sh\", \"-c\", {script:?}]\ncwd = {:?}\nenv = {{ HEARTH_TEST_MARKER = {:?} }}\n{extra}\n",
            self.work.display().to_string(),
            self.marker_value()
        )
    }

    fn file(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// The lines of a file in the work directory (none while it is missing).
    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.file(name)).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Waits until the file `name` has at least `n` lines; returns them.
    fn wait_lines(&self, name: &str, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        let ok = wait_for(PATIENCE, || {
            lines = self.lines(name);
            lines.len() >= n
        });
        assert!(ok, "{name} never had {n} lines; it has {lines:?}");
        lines
    }

    fn pids(&self, name: &str) -> Vec<u32> {
        self.lines(name).iter().filter_map(|l| l.parse().ok()).collect()
    }
}

impl Drop for Setup {
    /// Whatever a failed test left running is killed with its group.
    fn drop(&mut self) {
        for pid in processes_marked(&self.marker) {
            let _ = hearth::sys::killpg(pid, libc::SIGKILL);
            let _ = hearth::sys::kill(pid, libc::SIGKILL);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "expected an error, got {reply}");
    reply["code"].as_str().unwrap_or("")
}

fn error_code(err: &hearth::client::ClientError) -> Option<&str> {
    err.code().map(hearth::protocol::ErrorCode::as_str)
}

fn status_of(state: &StateDir, name: &str) -> Value {
    let mut c = RawConn::open(state.socket(), "process");
    let reply = c.request(&json!({"type": "status", "name": name}));
    assert_eq!(reply["type"], "status", "{reply}");
    reply["processes"][0].clone()
}

/// Polls a process's status until `done` holds; returns that status.
fn wait_status(state: &StateDir, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_for(PATIENCE, || {
        last = status_of(state, name);
        done(&last)
    });
    assert!(ok, "process {name}: {what} never happened; last status: {last:#}");
    last
}

fn health_codes(state: &StateDir) -> Vec<String> {
    let status = RawConn::open(state.socket(), "status").request(&json!({"type": "status"}));
    status["health"]["reasons"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn raw_frames_follow_the_contract() {
    let setup = Setup::new();
    let state = &setup.state;
    state.write_config(&format!("[process]\nmax_processes = 3\n{}", setup.table("fromconfig", "exec sleep 1000", "")));
    let mut daemon = state.start(&[]);
    let mut c = RawConn::open(state.socket(), "process");

    assert_eq!(code(&c.request(&json!({"type": "frobnicate"}))), "unknown_request");
    c.send_frame(b"{not json");
    assert_eq!(code(&c.read_json().unwrap()), "malformed_json");
    let invalid = [
        (json!({"name": "bad name", "argv": ["true"]}), "process name"),
        (json!({"name": "ok", "argv": []}), "argv"),
        (json!({"name": "ok", "argv": ["true"], "stop_signal": "SIGSTOP"}), "stop_signal"),
        (json!({"name": "ok", "argv": ["true"], "cwd": "relative/dir"}), "cwd"),
        (json!({"name": "ok", "argv": ["true"], "max_restarts": 0}), "max_restarts"),
        (json!({"name": "ok", "argv": ["true"], "labels": ["a/b"]}), "label"),
        (
            json!({"name": "ok", "argv": ["true"], "check": {"kind": "heartbeat", "path": "/x", "stale_ms": 5}}),
            "stale_ms",
        ),
        (json!({"name": "ok", "argv": ["true"], "check": {"kind": "command", "argv": []}}), "check.argv"),
        (json!({"name": "ok", "argv": ["true"], "log_max": 10}), "log_max"),
    ];
    for (definition, field) in invalid {
        let reply = c.request(&json!({"type": "define", "definition": definition}));
        assert_eq!(code(&reply), "invalid_definition", "{definition}");
        assert!(reply["message"].as_str().unwrap().contains(field), "{field}: {reply}");
    }
    let reply =
        c.request(&json!({"type": "define", "definition": {"name": "ok", "argv": ["true"], "restart": "sometimes"}}));
    assert_eq!(code(&reply), "invalid_request", "a value of the wrong kind does not decode");

    let sleeper = serde_json::to_value(setup.def("s1", "echo started; exec sleep 1000")).unwrap();
    let reply = c.request(&json!({"type": "define", "definition": sleeper, "start": false}));
    assert_eq!(
        reply,
        json!({"type": "defined", "name": "s1", "source": "runtime", "changed": true, "state": "stopped"})
    );
    let reply = c.request(&json!({"type": "define", "definition": sleeper, "start": false}));
    assert_eq!(reply["changed"], false, "the same definition again changes nothing");

    for bad in [json!({"type": "start"}), json!({"type": "stop", "name": "s1", "all": true})] {
        assert_eq!(code(&c.request(&bad)), "invalid_request", "{bad}");
    }
    let reply = c.request(&json!({"type": "restart", "name": "s1", "rolling": true, "no_wait": true}));
    assert_eq!(code(&reply), "invalid_request");
    assert_eq!(code(&c.request(&json!({"type": "start", "name": "nope"}))), "unknown_process");
    let reply = c.request(&json!({"type": "stop", "label": "nolabel"}));
    assert_eq!(code(&reply), "unknown_process");
    assert!(reply["message"].as_str().unwrap().contains("nolabel"));

    let reply = c.request(&json!({"type": "start", "name": "s1"}));
    assert_eq!(reply["type"], "started", "{reply}");
    assert_eq!(reply["processes"]["s1"]["state"], "running");
    let pid = reply["processes"]["s1"]["pid"].as_u64().unwrap() as u32;
    assert!(pid_alive(pid));
    let status = c.request(&json!({"type": "status", "name": "s1"}));
    assert_eq!(status["processes"][0]["pid"], pid);
    assert_eq!(status["processes"][0]["log"], json!(state.state_dir().join("processes/s1/output.log")));

    let reply = wait_for_log(&mut c, "s1", "started\n");
    assert!(reply.contains("[hearth: s1 started at"), "{reply}");

    let reply = c.request(&json!({"type": "stop", "name": "s1"}));
    assert_eq!(reply["processes"]["s1"]["state"], "stopped", "{reply}");
    assert!(!pid_alive(pid), "stopped means exited");
    let status = c.request(&json!({"type": "status", "name": "s1"}));
    assert!(status["processes"][0]["last_exit"]["message"].as_str().unwrap().starts_with("stopped"), "{status}");

    assert_eq!(code(&c.request(&json!({"type": "remove", "name": "fromconfig"}))), "not_runtime_defined");
    assert_eq!(code(&c.request(&json!({"type": "remove", "name": "nope"}))), "unknown_process");
    assert_eq!(code(&c.request(&json!({"type": "logs", "name": "nope"}))), "unknown_process");
    let two = serde_json::to_value(setup.def("s2", "exec sleep 1000")).unwrap();
    let reply = c.request(&json!({"type": "define", "definition": two, "start": false}));
    assert_eq!(reply["type"], "defined");
    let three = serde_json::to_value(setup.def("s3", "exec sleep 1000")).unwrap();
    assert_eq!(code(&c.request(&json!({"type": "define", "definition": three}))), "too_many_processes");

    let reply = c.request(&json!({"type": "remove", "name": "s1"}));
    assert_eq!(reply, json!({"type": "removed", "name": "s1"}));
    assert!(
        wait_for(PATIENCE, || !state.state_dir().join("processes/s1").exists()),
        "a removed process's directory is removed"
    );
    assert_eq!(code(&c.request(&json!({"type": "remove", "name": "s1"}))), "unknown_process");
    let all = c.request(&json!({"type": "status"}));
    let names: Vec<&str> = all["processes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fromconfig", "s2"], "the connection is still usable after every error");
    daemon.stop();
    assert!(processes_marked(&setup.marker).is_empty(), "a clean stop leaves nothing running");
}

/// Reads `name`'s log (no follow) until it contains `needle`; returns it.
fn wait_for_log(c: &mut RawConn, name: &str, needle: &str) -> String {
    let mut text = String::new();
    let ok = wait_for(PATIENCE, || {
        c.send_json(&json!({"type": "logs", "name": name}));
        text.clear();
        loop {
            let frame = c.read_json().expect("a logs frame");
            match frame["type"].as_str() {
                Some("log_data") => {
                    let data = hearth::protocol::queue::Base64::decode(frame["data"].as_str().unwrap()).unwrap();
                    text.push_str(&String::from_utf8_lossy(&data.0));
                }
                Some("log_end") => break,
                _ => panic!("unexpected {frame}"),
            }
        }
        text.contains(needle)
    });
    assert!(ok, "{name}'s log never said {needle:?}: {text:?}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loops_hit_the_cap_and_start_tries_again() {
    let setup = Setup::new();
    let mut daemon = setup.state.start(&[]);
    let mut client = ProcessClient::connect(setup.state.socket()).await.unwrap();
    let mut crasher = setup.def("crasher", "echo $$ >> pids; exit 3");
    crasher.restart = Some(RestartPolicy::OnFailure);
    (crasher.backoff_base_ms, crasher.backoff_max_ms) = (Some(20), Some(80));
    (crasher.max_restarts, crasher.restart_window_ms) = (Some(3), Some(600_000));
    // With a check, `start` waits for readiness, which never comes.
    crasher.check = Some(ProcessCheck::Command {
        argv: vec!["true".into()],
        interval_ms: None,
        timeout_ms: None,
        failures: None,
        start_timeout_ms: None,
    });
    client.define_with(crasher.clone(), false).await.unwrap();
    let err = client.start("crasher").await.unwrap_err();
    assert_eq!(error_code(&err), Some("restart_storm"), "{err}");
    assert_eq!(setup.pids("pids").len(), 4, "the first start and 3 restarts, then no more");
    let p = client.process("crasher").await.unwrap();
    assert_eq!(p.state, ProcessState::Failed);
    assert_eq!((p.restarts, p.recent_restarts), (3, 3));
    assert!(p.error.as_deref().unwrap().contains("restarted 3 times within 10m"), "{:?}", p.error);
    let exit = p.last_exit.unwrap();
    assert_eq!((exit.code, exit.failure), (Some(3), true));
    assert!(exit.message.contains("before it was ready"), "{}", exit.message);
    assert!(health_codes(&setup.state).contains(&"process_failing".to_owned()));

    // The log has each start and end.
    let mut log = Vec::new();
    client.logs("crasher", None, false, |d| log.extend_from_slice(d)).await.unwrap();
    let log = String::from_utf8(log).unwrap();
    assert_eq!(log.matches("exited with status 3]").count(), 4, "{log}");

    // Fixed, and started again: it runs, and health recovers.
    crasher.argv[2] = "echo $$ >> pids; exec sleep 1000".into();
    let defined = client.define(crasher).await.unwrap();
    assert!(defined.changed);
    assert_eq!(defined.state, ProcessState::Failed, "a redefinition alone does not restart a failed process");
    let started = client.start("crasher").await.unwrap();
    assert_eq!(started["crasher"].state, ProcessState::Running);
    assert_eq!(setup.pids("pids").last().copied(), started["crasher"].pid);
    assert!(!health_codes(&setup.state).contains(&"process_failing".to_owned()));

    // Programs and directories that do not exist fail at once.
    let mut missing = setup.def("missing", "");
    missing.argv = vec!["hearth-test-no-such-program".into()];
    client.define_with(missing, false).await.unwrap();
    let err = client.start("missing").await.unwrap_err();
    assert_eq!(error_code(&err), Some("start_failed"), "{err}");
    assert!(err.to_string().contains("hearth-test-no-such-program"), "{err}");
    let mut nowhere = setup.def("nowhere", "true");
    nowhere.cwd = Some(setup.work.join("no/such/dir"));
    client.define_with(nowhere, false).await.unwrap();
    let err = client.start("nowhere").await.unwrap_err();
    assert_eq!(error_code(&err), Some("start_failed"), "{err}");
    assert_eq!(client.process("nowhere").await.unwrap().restarts, 0, "never retried");
    client.stop(Selector::all()).await.unwrap();
    daemon.stop();
}

/// A member of a group: records its start and stop in `../events`, is
/// ready 200 ms after its start (never, while `../broken-<name>` exists),
/// then beats.
const MEMBER: &str = r#"trap 'echo "stop $HEARTH_PROCESS" >> ../events; exit 0' TERM
echo "start $HEARTH_PROCESS $$" >> ../events
while [ -e "../broken-$HEARTH_PROCESS" ]; do sleep 0.05; done
sleep 0.2
echo "ready $HEARTH_PROCESS" >> ../events
while :; do touch hb; sleep 0.05; done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_wait_for_each_process_and_stop_at_the_first_that_is_not_ready() {
    let setup = Setup::new();
    let mut daemon = setup.state.start(&[]);
    let mut client = ProcessClient::connect(setup.state.socket()).await.unwrap();
    let names = ["m1", "m2", "m3"];
    for name in names {
        let dir = setup.work.join(name);
        std::fs::create_dir(&dir).unwrap();
        let mut def = setup.def(name, MEMBER);
        def.cwd = Some(dir);
        def.labels = vec!["pool".into()];
        def.check = Some(ProcessCheck::Heartbeat { path: "hb".into(), stale_ms: 10_000, start_timeout_ms: Some(3000) });
        def.stop_grace_ms = Some(2000);
        client.define_with(def, false).await.unwrap();
    }
    let started = client.start(Selector::label("pool")).await.unwrap();
    assert!(started.values().all(|b| b.state == ProcessState::Running), "{started:?}");
    let readies = setup.lines("events").iter().filter(|l| l.starts_with("ready")).count();
    assert_eq!(readies, 3, "start waited for every first heartbeat");
    let before = setup.lines("events").len();

    let restarted = client.rolling_restart(Selector::label("pool")).await.unwrap();
    assert!(restarted.values().all(|b| b.state == ProcessState::Running));
    let events: Vec<String> = setup.lines("events")[before..].to_vec();
    let at = |event: &str| {
        events.iter().position(|e| e.starts_with(event)).unwrap_or_else(|| panic!("no {event:?} in {events:?}"))
    };
    for (i, name) in names.iter().enumerate() {
        assert!(at(&format!("stop {name}")) < at(&format!("start {name}")), "{events:?}");
        assert!(at(&format!("start {name}")) < at(&format!("ready {name}")), "{events:?}");
        if let Some(next) = names.get(i + 1) {
            assert!(
                at(&format!("ready {name}")) < at(&format!("stop {next}")),
                "{next} was stopped before {name} was ready again: {events:?}"
            );
        }
    }
    assert_eq!(events.len(), 9, "each stopped, started and ready once: {events:?}");

    // m2 cannot become ready any more: the roll stops at m2, m3 is not touched.
    std::fs::write(setup.file("broken-m2"), b"").unwrap();
    let m3 = client.process("m3").await.unwrap().pid;
    let err = client.rolling_restart(Selector::label("pool")).await.unwrap_err();
    assert_eq!(error_code(&err), Some("not_ready"), "{err}");
    let message = err.to_string();
    assert!(message.contains("m2 is") && message.contains("1 restarted before it, 1 not restarted"), "{message}");
    assert_eq!(client.process("m3").await.unwrap().pid, m3, "the roll stopped before m3");
    assert_eq!(client.process("m1").await.unwrap().state, ProcessState::Running);
    std::fs::remove_file(setup.file("broken-m2")).unwrap();
    client.stop(Selector::all()).await.unwrap();
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_heartbeat_restarts_the_process() {
    let setup = Setup::new();
    let mut daemon = setup.state.start(&[]);
    let mut client = ProcessClient::connect(setup.state.socket()).await.unwrap();
    // The first instance beats three times and hangs; the next ones beat on.
    let script = "echo $$ >> pids
if [ -e once ]; then while :; do touch hb; sleep 0.1; done; fi
touch once; for i in 1 2 3; do touch hb; sleep 0.05; done; exec sleep 1000";
    let mut def = setup.def("beater", script);
    def.check = Some(ProcessCheck::Heartbeat { path: "hb".into(), stale_ms: 700, start_timeout_ms: None });
    (def.backoff_base_ms, def.stop_grace_ms) = (Some(10), Some(2000));
    client.define_with(def, false).await.unwrap();
    let first = client.start("beater").await.unwrap()["beater"].pid.unwrap();
    let pids = setup.wait_lines("pids", 2);
    assert_eq!(pids[0], first.to_string());
    let p = wait_status(&setup.state, "beater", "running again", |p| p["state"] == "running" && p["restarts"] == 1);
    let message = p["last_exit"]["message"].as_str().unwrap();
    assert!(message.contains("stale after 700ms") && message.contains("killed by SIGTERM"), "{message}");
    assert_eq!(p["last_exit"]["failure"], true);
    assert_eq!(p["pid"].as_u64().unwrap().to_string(), pids[1]);
    assert!(!pid_alive(first), "the hung instance was ended");
    // Once ready, it is looked at when it would turn stale: it beat meanwhile.
    wait_status(&setup.state, "beater", "a liveness check that passed", |p| {
        p["last_check"]["ok"] == true
            && p["last_check"]["message"].as_str().unwrap().contains("old (stale after 700ms)")
    });
    client.stop("beater").await.unwrap();
    daemon.stop();
}

/// A process speaking sd_notify: ready 300 ms after its start, then a
/// watchdog ping every 100 ms unless `hang` exists.
const NOTIFIER: &str = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = os.environ["NOTIFY_SOCKET"]
with open("env", "w") as f:
    f.write(os.environ.get("WATCHDOG_USEC", "") + "\n")
s.sendto(b"STATUS=warming up", addr)
time.sleep(0.3)
open("ready-sent", "w").close()
s.sendto(b"READY=1\nSTATUS=serving", addr)
while True:
    if not os.path.exists("hang"):
        s.sendto(b"WATCHDOG=1", addr)
    time.sleep(0.1)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_readiness_and_the_watchdog() {
    let setup = Setup::new();
    let mut daemon = setup.state.start(&[]);
    let mut client = ProcessClient::connect(setup.state.socket()).await.unwrap();
    let mut def = setup.def("notifier", "");
    def.argv = vec!["python3".into(), "-c".into(), NOTIFIER.into()];
    def.check = Some(ProcessCheck::Notify { watchdog_ms: Some(1000), start_timeout_ms: Some(20_000) });
    def.backoff_base_ms = Some(10);
    client.define_with(def, false).await.unwrap();
    let started = client.start("notifier").await.unwrap();
    assert_eq!(started["notifier"].state, ProcessState::Running);
    assert!(setup.file("ready-sent").exists(), "start answered only after READY=1");
    assert_eq!(setup.lines("env"), ["1000000"], "WATCHDOG_USEC is set");
    let p = client.process("notifier").await.unwrap();
    assert_eq!(p.notify_status.as_deref(), Some("serving"));
    assert_eq!(p.last_check.unwrap().message, "READY=1 received");

    std::fs::write(setup.file("hang"), b"").unwrap();
    let p = wait_status(&setup.state, "notifier", "a restart", |p| p["restarts"] == 1);
    std::fs::remove_file(setup.file("hang")).unwrap();
    let message = p["last_exit"]["message"].as_str().unwrap();
    assert!(message.starts_with("no WATCHDOG=1 for 1s"), "{message}");
    wait_status(&setup.state, "notifier", "running again", |p| p["state"] == "running");
    client.stop("notifier").await.unwrap();
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_by_size_and_can_be_followed_across_restarts() {
    let setup = Setup::new();
    let mut daemon = setup.state.start(&[]);
    let mut client = ProcessClient::connect(setup.state.socket()).await.unwrap();
    let script = r#"i=0; while [ $i -lt 400 ]; do echo "line $i of the talker's output, padded to fifty"; i=$((i+1)); done
echo "hello from instance $HEARTH_PROCESS_INSTANCE"; exec sleep 1000"#;
    let mut def = setup.def("talker", script);
    (def.log_max, def.log_keep) = (Some(4096), Some(2));
    client.define(def).await.unwrap();
    let log = setup.state.state_dir().join("processes/talker/output.log");
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    assert!(
        wait_for(PATIENCE, || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("hello from instance 1"))),
        "the talker's output never reached its log"
    );
    let mut text = String::new();
    for path in [numbered(2), numbered(1), log.clone()] {
        let part = std::fs::read_to_string(&path).unwrap();
        assert!(part.len() <= 4096, "{}: {} bytes", path.display(), part.len());
        text.push_str(&part);
    }
    assert!(!numbered(3).exists(), "log_keep 2");
    let numbers: Vec<u32> =
        text.lines().filter_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok()).collect();
    let first = numbers[0];
    assert_eq!(numbers, (first..400).collect::<Vec<_>>(), "the kept logs hold the last lines, none lost or torn");
    let p = client.process("talker").await.unwrap();
    assert_eq!(p.rotated_logs, [numbered(1), numbered(2)]);

    let mut last = Vec::new();
    client.logs("talker", Some(2), false, |d| last.extend_from_slice(d)).await.unwrap();
    let current = std::fs::read_to_string(&log).unwrap();
    let tail: Vec<&str> = current.lines().rev().take(2).collect();
    assert_eq!(String::from_utf8(last).unwrap(), format!("{}\n{}\n", tail[1], tail[0]), "the last 2 lines");

    // A follower sees the next instance's output, across the restart and its rotations.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let socket = setup.state.socket().to_owned();
    let follower = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut follower = ProcessClient::connect(&socket).await.unwrap();
            follower.logs("talker", Some(0), true, |d| seen.lock().unwrap().extend_from_slice(d)).await
        })
    };
    client.restart("talker").await.unwrap();
    let saw = |needle: &str| String::from_utf8_lossy(&seen.lock().unwrap()).contains(needle);
    let ok = common::within(PATIENCE, "the follower to see instance 2", async {
        while !saw("hello from instance 2") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    })
    .await;
    assert!(ok && saw("[hearth: talker started at") && saw("line 0 of"));
    assert!(!follower.is_finished(), "following goes on until the client leaves");
    follower.abort();
    client.stop("talker").await.unwrap();
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_is_graceful_then_forced_and_stays_stopped() {
    let setup = Setup::new();
    let config = setup.table(
        "polite",
        "trap 'echo got-int >> signals; exit 0' INT; echo up >> polite; while :; do sleep 0.05; done",
        "stop_signal = \"INT\"",
    ) + &setup.table(
        "stubborn",
        "trap '' TERM; echo up >> stubborn; while :; do sleep 0.05; done",
        "stop_grace = \"300ms\"\nlabels = [\"hard\"]",
    );
    setup.state.write_config(&config);
    let mut daemon = setup.state.start(&[]);
    setup.wait_lines("polite", 1);
    setup.wait_lines("stubborn", 1);
    let mut client = ProcessClient::connect(setup.state.socket()).await.unwrap();
    let pids: Vec<u32> = ["polite", "stubborn"]
        .iter()
        .map(|n| wait_status(&setup.state, n, "running", |p| p["pid"].is_u64())["pid"].as_u64().unwrap() as u32)
        .collect();
    let stopped = client.stop(Selector::all()).await.unwrap();
    assert!(stopped.values().all(|b| b.state == ProcessState::Stopped && b.pid.is_none()), "{stopped:?}");
    assert!(pids.iter().all(|pid| !pid_alive(*pid)));
    assert_eq!(setup.lines("signals"), ["got-int"], "the stop signal of the definition");
    let polite = client.process("polite").await.unwrap().last_exit.unwrap();
    assert_eq!((polite.code, polite.failure), (Some(0), false), "{polite:?}");
    let stubborn = client.process("stubborn").await.unwrap().last_exit.unwrap();
    assert_eq!((stubborn.signal, stubborn.failure), (Some(libc::SIGKILL), false), "{stubborn:?}");
    assert_eq!(stubborn.message, "stopped (killed by SIGKILL)");

    // Stopped stays stopped, across a restart of the daemon too.
    daemon.stop();
    let mut daemon = setup.state.start(&[]);
    let mut client = ProcessClient::connect(setup.state.socket()).await.unwrap();
    let report = client.status().await.unwrap();
    assert!(report.processes.iter().all(|p| p.state == ProcessState::Stopped), "{report:?}");
    let started = client.start(Selector::label("hard")).await.unwrap();
    assert_eq!(started.keys().collect::<Vec<_>>(), ["stubborn"]);
    setup.wait_lines("stubborn", 2);
    daemon.stop();
    assert!(processes_marked(&setup.marker).is_empty(), "a clean stop leaves nothing running");
}

#[test]
fn a_clean_stop_ends_every_process_and_the_next_daemon_starts_them_again() {
    let setup = Setup::new();
    let config = setup.table("a", "echo $$ >> a; trap 'echo bye >> a; exit 0' TERM; while :; do sleep 0.05; done", "")
        + &setup.table("b", "echo $$ >> b; trap '' TERM; while :; do sleep 0.05; done", "stop_grace = \"300ms\"");
    setup.state.write_config(&config);
    let mut daemon = setup.state.start(&[]);
    let a = setup.wait_lines("a", 1)[0].parse::<u32>().unwrap();
    let b = setup.wait_lines("b", 1)[0].parse::<u32>().unwrap();
    assert_eq!(daemon.stop(), 0);
    assert!(!pid_alive(a) && !pid_alive(b), "both ended with the daemon");
    assert_eq!(setup.lines("a")[1], "bye", "asked first");
    assert!(daemon.log_text().contains("still running after its stop grace: SIGKILL"), "and b forced");
    assert!(!setup.state.state_dir().join("processes/a/run.json").exists());
    let mut daemon = setup.state.start(&[]);
    setup.wait_lines("a", 3);
    setup.wait_lines("b", 2);
    daemon.stop();
    assert!(processes_marked(&setup.marker).is_empty());
}

#[test]
fn after_kill_9_the_next_daemon_ends_the_survivors_and_starts_them_again() {
    let setup = Setup::new();
    let script = "echo $$ >> pids; while :; do sleep 0.05; done";
    setup.state.write_config(&setup.table("survivor", script, ""));
    let mut daemon = setup.state.start(&[]);
    let first: u32 = setup.wait_lines("pids", 1)[0].parse().unwrap();
    let run = setup.state.state_dir().join("processes/survivor/run.json");
    let record: Value = serde_json::from_slice(&std::fs::read(&run).unwrap()).unwrap();
    assert_eq!(record["pid"], first, "recorded before it ran");
    daemon.kill9();
    assert!(pid_alive(first), "the process outlives a killed daemon");

    let out = setup.state.run(&["--json", "doctor"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let untracked: Vec<&Value> =
        report["problems"].as_array().unwrap().iter().filter(|p| p["code"] == "process_untracked").collect();
    assert_eq!(untracked.len(), 1, "{report:#}");
    assert!(untracked[0]["message"].as_str().unwrap().contains(&format!("pid {first}")));

    assert!(pid_alive(first), "still running untracked until the next daemon starts");
    let mut daemon = setup.state.start(&[]);
    let lines = setup.wait_lines("pids", 2);
    let second: u32 = lines[1].parse().unwrap();
    assert_ne!(second, first);
    assert!(!pid_alive(first), "the survivor is gone");
    let log = daemon.log_text();
    assert!(log.contains(&format!("stopping it with SIGTERM process=survivor pid={first}")), "asked first: {log}");
    let p = wait_status(&setup.state, "survivor", "running again", |p| p["state"] == "running");
    assert_eq!(p["pid"], second);
    assert_eq!(p["restarts"], 0, "not counted as a failure");
    assert!(p["last_exit"]["message"].as_str().unwrap().contains("left running by a daemon that stopped unexpectedly"));
    let record: Value = serde_json::from_slice(&std::fs::read(&run).unwrap()).unwrap();
    assert_eq!(record["pid"], second);
    daemon.stop();
    assert!(processes_marked(&setup.marker).is_empty(), "nothing is left untracked");
    assert!(!run.exists());
}

#[test]
fn records_of_reused_pids_or_earlier_boots_are_never_signalled() {
    let setup = Setup::new();
    let config = setup.table("reused", "echo $$ >> reused; exec sleep 1000", "")
        + &setup.table("rebooted", "echo $$ >> rebooted; exec sleep 1000", "");
    setup.state.write_config(&config);
    // An unrelated process holds the pids the records name.
    let mut bystander = Command::new("sleep")
        .arg("1000")
        .process_group(0) // a group of its own, as the daemon's processes have
        .env("HEARTH_TEST_MARKER", setup.marker_value())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = bystander.id();
    let start = hearth::daemon::child::process_start_time(pid).unwrap();
    let boot = hearth::daemon::child::boot_id();
    let records = [
        (
            "reused",
            json!({"instance": 4, "pid": pid, "pid_start_time": start + 1, "boot_id": boot, "started_at_ms": 1}),
        ),
        (
            "rebooted",
            json!({"instance": 9, "pid": pid, "pid_start_time": start, "boot_id": "an earlier boot", "started_at_ms": 1}),
        ),
    ];
    let root = setup.state.state_dir().join("processes");
    for (name, record) in &records {
        std::fs::create_dir_all(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("run.json"), record.to_string()).unwrap();
    }
    let mut daemon = setup.state.start(&[]);
    setup.wait_lines("reused", 1);
    if boot.is_some() {
        setup.wait_lines("rebooted", 1);
    }
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was not signalled");
    assert!(pid_alive(pid));
    let p = status_of(&setup.state, "reused");
    assert!(p["last_exit"].is_null(), "nothing of the stale record was taken for this process: {p}");
    daemon.stop();
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn the_cli_adds_lists_shows_starts_stops_restarts_follows_and_removes() {
    let setup = Setup::new();
    let state = &setup.state;
    let script = format!("echo up; while :; do touch hb; sleep 0.1; done # {}", setup.marker_value());
    let hearth = |args: &[&str]| {
        let mut cmd = state.hearth();
        cmd.current_dir(&setup.work).env("HEARTH_TEST_MARKER", setup.marker_value()).args(args);
        common::run_bounded(&mut cmd, common::COMMAND_LIMIT)
    };
    let out = hearth(&[
        "proc",
        "add",
        "web",
        "--label",
        "front",
        "--restart",
        "on-failure",
        "--heartbeat",
        "hb",
        "--stale",
        "5s",
        "--env",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("process web: defined; running (pid "), "{}", stdout(&out));

    let out = hearth(&["--json", "proc", "show", "web"]);
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["state"], "running");
    assert_eq!(p["definition"]["cwd"], json!(setup.work), "the CLI's directory by default");
    assert_eq!(p["definition"]["check"]["path"], json!(setup.work.join("hb")), "made absolute");
    assert_eq!(p["definition"]["env"]["GREETING"], "hi");
    let first = p["pid"].as_u64().unwrap();

    let out = hearth(&["proc", "ls"]);
    let text = stdout(&out);
    assert!(text.starts_with("NAME") && text.contains("web   running"), "{text}");
    let out = hearth(&["--json", "proc", "ls"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["processes"][0]["name"], "web");

    let out = hearth(&["--json", "proc", "restart", "--rolling", "--label", "front"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restarted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restarted["web"]["state"], "running");
    assert_ne!(restarted["web"]["pid"], first);

    let out = hearth(&["proc", "stop", "web"]);
    assert_eq!(stdout(&out), "web: stopped; stopped\n");
    let out = hearth(&["--json", "proc", "start", "--all"]);
    let started: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started["web"]["state"], "running");

    let out = hearth(&["proc", "logs", "web"]);
    let text = stdout(&out);
    assert_eq!(text.matches("[hearth: web started at").count(), 3, "{text}");
    assert_eq!(text.matches("\nup\n").count(), 3, "{text}");
    let out = hearth(&["proc", "logs", "web", "-n", "1"]);
    assert_eq!(stdout(&out), "up\n");
    let out = hearth(&["--json", "proc", "logs", "web", "-n", "1"]);
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, [json!({"output": "up\n"}), json!({"end": true, "state": "running"})]);

    // `logs -f` keeps printing across a restart.
    let mut follow = state.hearth();
    follow.args(["proc", "logs", "web", "-f"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = follow.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let restart = hearth(&["proc", "restart", "web", "--no-wait"]);
    assert!(restart.status.success(), "{}", stderr(&restart));
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while !got.iter().any(|l: &String| l.contains("(instance 4)")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(_) => panic!("`proc logs -f` did not show the fourth start within {PATIENCE:?}: {got:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    // Bad input: usage errors exit 2, the daemon's errors 1 with their code and a hint.
    for args in [&["proc", "add", "x"][..], &["proc", "start"], &["proc", "stop", "web", "--all"]] {
        let out = hearth(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = hearth(&["proc", "add", "x", "--stop-signal", "STOP", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(invalid_definition)") && stderr(&out).contains("hint:"), "{}", stderr(&out));
    let out = hearth(&["proc", "show", "nope"]);
    assert!(stderr(&out).contains("(unknown_process)") && stderr(&out).contains("hearth proc ls"), "{}", stderr(&out));
    let out = hearth(&["--json", "proc", "start", "nope"]);
    let error: Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(error["error"]["code"], "unknown_process");

    let out = hearth(&["proc", "rm", "web"]);
    assert_eq!(stdout(&out), "process web stopped and removed\n");
    let dir = state.state_dir().join("processes/web");
    assert!(wait_for(PATIENCE, || !dir.exists()), "the directory of a removed process is removed");
    for help in [
        &["proc", "--help"][..],
        &["proc", "add", "--help"],
        &["proc", "restart", "--help"],
        &["proc", "logs", "--help"],
    ] {
        let out = hearth(help);
        assert!(out.status.success(), "{help:?}");
        assert!(stdout(&out).contains("Usage: hearth proc"), "{help:?}");
    }
    assert!(stdout(&hearth(&["proc", "add", "--help"])).contains("--heartbeat <FILE>"));
    assert!(stdout(&hearth(&["proc", "restart", "--help"])).contains("--rolling"));

    let out = hearth(&["status"]);
    assert!(stdout(&out).contains("processes:    none defined"), "{}", stdout(&out));
    let _ = hearth(&["shutdown"]);
    assert!(wait_for(PATIENCE, || processes_marked(&setup.marker).is_empty()), "nothing left running");
}

#[test]
fn status_and_health_show_each_process() {
    let setup = Setup::new();
    let config = setup.table("ok", "exec sleep 1000", "") + &setup.table("bad", "exit 1", "restart = \"never\"");
    setup.state.write_config(&config);
    let mut daemon = setup.state.start(&[]);
    wait_status(&setup.state, "bad", "failing", |p| p["state"] == "failed");
    let status = RawConn::open(setup.state.socket(), "status").request(&json!({"type": "status"}));
    let procs = &status["services"]["process"];
    assert_eq!(procs["processes"]["ok"]["state"], "running", "{procs}");
    assert_eq!(procs["processes"]["bad"]["error"], "exited with status 1");
    assert_eq!((procs["running"].as_u64(), procs["failed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(status["health"]["state"], "degraded");
    let reason = &status["health"]["reasons"][0];
    assert_eq!(reason["code"], "process_failing");
    assert_eq!(reason["message"], "process bad: exited with status 1");
    let out = setup.state.run(&["status"]);
    assert!(stdout(&out).contains("bad failed") && stdout(&out).contains("ok running pid"), "{}", stdout(&out));
    let out = setup.state.run(&["--json", "doctor"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["problems"].as_array().unwrap().iter().any(|p| p["code"] == "process_failing"), "{report:#}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_are_published_as_events() {
    use hearth::client::{Notice, StatusClient};
    use hearth::protocol::Channel;
    use hearth::protocol::event::{EventData, EventFilter};
    let setup = Setup::new();
    let mut daemon = setup.state.start(&[]);
    let mut events = StatusClient::connect(setup.state.socket()).await.unwrap();
    let filter = EventFilter { services: vec![Channel::Process], ids: vec!["ev".into()], ..EventFilter::default() };
    events.subscribe(filter).await.unwrap();
    let mut client = ProcessClient::connect(setup.state.socket()).await.unwrap();
    client.define_with(setup.def("ev", "exec sleep 1000"), false).await.unwrap();
    let pid = client.start("ev").await.unwrap()["ev"].pid.unwrap();
    client.stop("ev").await.unwrap();
    client.remove("ev").await.unwrap();
    let mut seen: Vec<(Option<ProcessState>, Option<ProcessState>, Option<u32>)> = Vec::new();
    while seen.last().is_none_or(|(_, to, _)| to.is_some()) {
        let notice = common::within(PATIENCE, "process_state events", events.next_event()).await.unwrap();
        let Notice::Event(event) = notice else { panic!("lagged: {notice:?}") };
        let EventData::ProcessState { name, from, to, pid } = event.data else { panic!("{event:?}") };
        assert_eq!(name, "ev");
        seen.push((from, to, pid));
    }
    use ProcessState::{Running, Stopped, Stopping};
    let states: Vec<_> = seen.iter().map(|(from, to, _)| (*from, *to)).collect();
    assert_eq!(states.first(), Some(&(None, Some(Stopped))), "defined: {seen:?}");
    assert!(states.contains(&(Some(Running), Some(Stopping))), "{seen:?}");
    assert!(seen.iter().any(|(_, to, p)| *to == Some(Running) && *p == Some(pid)), "running with its pid: {seen:?}");
    assert_eq!(states.last(), Some(&(Some(Stopped), None)), "removed: {seen:?}");
    daemon.stop();
}
