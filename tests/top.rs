//! `hearth top` as a person sees it: the real binary in a real terminal
//! (tmux) against a real daemon on a temp state directory. Keys go in
//! with `send-keys`; every check reads the screen with `capture-pane`,
//! polling with a deadline.

mod common;

use std::time::Duration;

use common::tmux::{Gate, Tmux};
use common::{StateDir, stderr, stdout, wait_for};
use serde_json::Value;

/// Runs `hearth top`, then says how it exited and whether the terminal's
/// modes are as they were before it (raw mode off, echo on...), then waits.
const TOP: &str = r#"before=$(stty -g)
hearth top
status=$?
if [ "$(stty -g)" = "$before" ]; then echo "terminal modes restored"; else echo "terminal modes CHANGED"; fi
echo "top exited with $status"
exec cat"#;

fn submit(state: &StateDir, args: &[&str]) -> u64 {
    let out = state.run(&[&["queue", "submit"], args].concat());
    assert!(out.status.success(), "submit {args:?}: {}", stderr(&out));
    stdout(&out).trim().parse().expect("a job id")
}

fn job(state: &StateDir, id: u64) -> Value {
    let out = state.run(&["--json", "queue", "show", &id.to_string()]);
    assert!(out.status.success(), "queue show {id}: {}", stderr(&out));
    serde_json::from_slice::<Value>(&out.stdout).expect("json")["job"].clone()
}

/// The row of job `id` in the jobs table.
fn row(screen: &str, id: u64) -> Option<&str> {
    screen.lines().find(|line| {
        let cells: Vec<&str> = line.trim_start_matches(['│', ' ', '▶']).split_whitespace().collect();
        cells.first() == Some(&id.to_string().as_str()) && cells.len() > 3
    })
}

/// The terminal is back as it was: the dashboard's screen is gone, the
/// modes are restored, the cursor shows.
fn assert_restored(tmux: &Tmux, screen: &str) {
    assert!(screen.contains("terminal modes restored"), "{screen}");
    assert!(!screen.contains("hearth top "), "the dashboard is gone: {screen}");
    assert_eq!(tmux.pane("#{alternate_on}"), "0", "the alternate screen was left");
    assert_eq!(tmux.pane("#{cursor_flag}"), "1", "the cursor shows");
}

#[test]
fn top_shows_jobs_as_they_come_cancels_and_retries_them_and_q_restores_the_terminal() {
    let state = StateDir::new();
    let daemon = state.start(&[]);
    let long = submit(&state, &["--", "sleep", "600"]);
    let wrote = state.run(&["sync", "set", "notebook/top", "title", r#""seen""#]);
    assert!(wrote.status.success(), "sync set: {}", stderr(&wrote));
    let tmux = Tmux::start(&state, 120, 36, TOP, &[]);
    tmux.wait_screen("the running job", |s| {
        s.contains(&format!("hearthd {} (pid {})", env!("CARGO_PKG_VERSION"), daemon.pid()))
            && row(s, long).is_some_and(|r| r.contains("running") && r.contains("sleep 600"))
    });

    // Each service that `hearth status` summarises has its line, the same
    // words (the sync document written above keeps its room open).
    let status = state.run(&["status"]);
    assert!(status.status.success(), "status: {}", stderr(&status));
    for service in ["blob", "sync"] {
        let summary = stdout(&status)
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{service}:")).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("status summarises {service}: {}", stdout(&status)));
        tmux.wait_screen(&format!("the {service} line: {summary}"), |s| {
            s.lines().any(|l| l.starts_with(&format!("│{service} ")) && l.contains(&summary))
        });
    }

    // A job submitted while it runs appears, and its end is shown.
    let failing = submit(&state, &["--max-attempts", "1", "--", "sh", "-c", "exit 7"]);
    tmux.wait_screen("the new job, dead", |s| row(s, failing).is_some_and(|r| r.contains("dead")));

    // The running job comes first and is selected; c asks, y cancels.
    let screen = tmux.wait_screen("the running job selected", |s| row(s, long).is_some_and(|r| r.contains('▶')));
    assert!(screen.contains("c cancel job"), "the footer names the keys: {screen}");
    tmux.keys(&["c"]);
    tmux.wait_text(&format!("Cancel job {long} (sleep 600)? y: yes"));
    tmux.keys(&["y"]);
    tmux.wait_screen("the canceled job", |s| {
        s.contains(&format!("canceled job {long}")) && row(s, long).is_some_and(|r| r.contains("canceled"))
    });
    assert_eq!(job(&state, long)["state"], "canceled", "the daemon canceled it");

    // Both ended now, newest first; the selection was never moved, so it
    // is on the first row: the dead job.
    tmux.wait_screen("the dead job first and selected", |s| {
        s.find(&format!("│▶ {failing} "))
            .is_some_and(|dead| s.find(&format!("│  {long} ")).is_some_and(|other| dead < other))
    });
    let first_end = job(&state, failing)["finished_at_ms"].clone();
    tmux.keys(&["r"]);
    tmux.wait_text(&format!("requeued job {failing}"));
    let ran_again = wait_for(Duration::from_secs(20), || {
        let now = job(&state, failing);
        now["state"] == "dead" && now["finished_at_ms"] != first_end
    });
    assert!(ran_again, "the retried job ran again: {}", job(&state, failing));
    // Only a dead job is retried: the canceled one says why not.
    tmux.keys(&["j", "r"]);
    tmux.wait_text(&format!("job {long} is canceled: only dead jobs are retried"));

    // A smaller terminal: drawn anew to its size.
    tmux.resize(72, 20);
    tmux.wait_screen("the dashboard at 72 columns", |s| {
        s.lines().next().is_some_and(|l| l.starts_with(" hearth top "))
            && s.lines().any(|l| l.ends_with("┐") && l.chars().count() == 72)
    });

    tmux.keys(&["?"]);
    tmux.wait_text("cancel the selected job");
    tmux.keys(&["Escape"]);
    tmux.wait_screen("the help closed", |s| !s.contains("cancel the selected job"));
    tmux.keys(&["q"]);
    let screen = tmux.wait_text("top exited with 0");
    assert_restored(&tmux, &screen);
}

#[test]
fn top_says_when_the_daemon_stops_and_carries_on_with_the_next_one() {
    let state = StateDir::new();
    let mut first = state.start(&[]);
    let tmux = Tmux::start(&state, 110, 30, TOP, &[]);
    tmux.wait_text(&format!("(pid {})", first.pid()));

    let out = state.run(&["shutdown"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(first.wait_exit(Duration::from_secs(20)).is_some(), "the first daemon stopped");
    tmux.wait_text("NO DAEMON: the daemon stopped");

    let second = state.start(&[]);
    let screen = tmux.wait_text(&format!("hearthd {} (pid {})", env!("CARGO_PKG_VERSION"), second.pid()));
    assert!(!screen.contains("NO DAEMON"), "{screen}");
    let id = submit(&state, &["--", "true"]);
    tmux.wait_screen("a job of the second daemon", |s| row(s, id).is_some_and(|r| r.contains("succeeded")));

    tmux.keys(&["Escape"]);
    let screen = tmux.wait_text("top exited with 0");
    assert_restored(&tmux, &screen);
}

#[test]
fn top_never_starts_a_daemon_and_needs_a_terminal() {
    let state = StateDir::new();
    let tmux = Tmux::start(&state, 100, 20, TOP, &[]);
    let screen = tmux.wait_text("top exited with 3");
    assert!(screen.contains("(not_running)"), "it says why: {screen}");
    assert!(screen.contains("terminal modes restored"), "{screen}");
    assert!(!state.paths.info_file().exists(), "no daemon was started");

    let _daemon = state.start(&[]);
    let out = state.run(&["top"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("(not_a_terminal)"), "{}", stderr(&out));
    let out = state.run(&["--json", "top"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_signal_or_a_panic_still_restores_the_terminal() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);

    let tmux = Tmux::start(&state, 100, 30, TOP, &[]);
    tmux.wait_text(" hearth top ");
    let shell: u32 = tmux.pane("#{pane_pid}").parse().expect("the pane's pid");
    let top = common::processes_mentioning("hearth\0top")
        .into_iter()
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid == Some(shell.to_string().as_str())
        })
        .expect("the hearth top process");
    hearth::sys::kill(top, libc::SIGTERM).expect("SIGTERM");
    let screen = tmux.wait_text("top exited with 143");
    assert_restored(&tmux, &screen);

    // Debug builds panic on `!` when asked to, for this test.
    let tmux = Tmux::start(&state, 100, 30, TOP, &[("HEARTH_TOP_DEBUG_PANIC", "1"), ("RUST_BACKTRACE", "0")]);
    tmux.wait_text(" hearth top ");
    tmux.keys(&["!"]);
    let screen = tmux.wait_text("top exited with 101");
    assert!(screen.contains("a panic on purpose"), "the panic's message is shown, not lost: {screen}");
    assert_restored(&tmux, &screen);
}

/// Runs `command` (a CLI wait) in the terminal, then says how it exited.
fn in_terminal(command: &str) -> String {
    format!("{command}\necho \"exited with $?\"\nexec cat")
}

#[test]
fn waits_show_a_bar_on_a_terminal_and_erase_it_when_done() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);

    // queue wait: ended of total.
    let gate = Gate::new(&state, "job-gate");
    let quick = submit(&state, &["--", "true"]);
    let held = submit(&state, &["--", "sh", "-c", &gate.command()]);
    let tmux = Tmux::start(&state, 120, 20, &in_terminal(&format!("hearth queue wait {quick} {held}")), &[]);
    tmux.wait_screen("the bar at one of two", |s| s.contains("waiting [") && s.contains("] 1 of 2 jobs ended"));
    gate.open();
    let screen = tmux.wait_text("exited with 0");
    assert!(screen.contains(&format!("job {quick}: succeeded")) && screen.contains(&format!("job {held}: succeeded")));
    assert!(!screen.contains("waiting ["), "the bar was erased: {screen}");

    // pool warm --wait: ready of target.
    let gate = Gate::new(&state, "build-gate");
    let create = format!("sh -c '{}'", gate.command());
    let out = state.run(&["pool", "define", "gated", "--create", &create]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tmux = Tmux::start(&state, 120, 20, &in_terminal("hearth pool warm gated --size 1 --wait"), &[]);
    tmux.wait_screen("the warm bar", |s| s.contains("warming gated [") && s.contains("] 0 of 1 ready  1 building"));
    gate.open();
    let screen = tmux.wait_text("exited with 0");
    assert!(screen.contains("pool gated keeps 1 ready (was 0); 1 ready now"), "{screen}");
    assert!(!screen.contains("warming gated ["), "the bar was erased: {screen}");

    // daemon stop --drain: the running work left.
    let gate = Gate::new(&state, "drain-gate");
    let held = submit(&state, &["--", "sh", "-c", &gate.command()]);
    assert!(wait_for(Duration::from_secs(20), || job(&state, held)["state"] == "running"), "the job runs");
    let tmux = Tmux::start(&state, 120, 20, &in_terminal("hearth daemon stop --drain --timeout 2m"), &[]);
    tmux.wait_screen("the drain bar", |s| s.contains("draining [") && s.contains("1 job and 0 builds still running"));
    gate.open();
    let screen = tmux.wait_text("exited with 0");
    assert!(screen.contains("stopped hearthd"), "{screen}");
    assert!(!screen.contains("draining ["), "the bar was erased: {screen}");
}

#[test]
fn waits_show_no_bar_when_stderr_is_not_a_terminal() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let ok = submit(&state, &["--", "true"]);
    let three = submit(&state, &["--max-attempts", "1", "--", "sh", "-c", "exit 3"]);
    let five = submit(&state, &["--max-attempts", "1", "--", "sh", "-c", "exit 5"]);

    // The first job named that did not succeed decides the exit status.
    for (ids, status) in [([ok, three, five], 3), ([ok, five, three], 5), ([ok, ok, ok], 0)] {
        let args: Vec<String> = ids.iter().map(u64::to_string).collect();
        let out = state.run(&[&["queue", "wait"], &args.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat());
        assert_eq!(out.status.code(), Some(status), "wait {ids:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(!err.contains('\r') && !err.contains("waiting ["), "no bar in a pipe: {err:?}");
        assert!(err.contains(&format!("job {ok}: succeeded")), "{err}");
    }
    let out = state.run(&["--json", "queue", "wait", &ok.to_string(), &three.to_string()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stderr.is_empty(), "nothing on stderr with --json: {}", stderr(&out));
    let lines: Vec<Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 2, "one line per job: {lines:?}");

    let out = state.run(&["pool", "define", "quick", "--create", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = state.run(&["pool", "warm", "quick", "--size", "2", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 ready now"), "{}", stdout(&out));
    assert!(out.stderr.is_empty(), "no bar in a pipe: {:?}", stderr(&out));

    // A build that fails ends the wait with its error.
    let out = state.run(&["pool", "define", "broken", "--create", "false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = state.run(&["pool", "warm", "broken", "--size", "1", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(build_failed)"), "{}", stderr(&out));

    let gate = Gate::new(&state, "drain-gate");
    let held = submit(&state, &["--", "sh", "-c", &gate.command()]);
    assert!(wait_for(Duration::from_secs(20), || job(&state, held)["state"] == "running"), "the job runs");
    let stop = state
        .hearth()
        .args(["daemon", "stop", "--drain", "--timeout", "2m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn stop");
    let draining = wait_for(Duration::from_secs(20), || {
        let out = state.run(&["--json", "status"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|v| v["health"]["reasons"].as_array().is_some_and(|r| r.iter().any(|r| r["code"] == "draining")))
    });
    assert!(draining, "the daemon drains");
    gate.open();
    let out = common::output_within(stop, common::COMMAND_LIMIT, "daemon stop --drain");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "no bar in a pipe: {:?}", stderr(&out));
    assert!(daemon.wait_exit(Duration::from_secs(20)).is_some(), "the daemon stopped");
}

#[test]
fn a_wait_on_several_jobs_outlasts_the_idle_timeout() {
    let state = StateDir::new();
    let _daemon = state.start(&["--connection-idle-timeout", "300ms"]);
    let gate = Gate::new(&state, "gate");
    let quick = submit(&state, &["--", "true"]);
    let held = submit(&state, &["--", "sh", "-c", &gate.command()]);
    let wait = state
        .hearth()
        .args(["queue", "wait", &quick.to_string(), &held.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn queue wait");
    // Its subscription stands; its request connection idles out. Each
    // `status` counts itself, the subscription and, until then, that one.
    let idled_out = wait_for(Duration::from_secs(20), || {
        let out = state.run(&["--json", "status"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["connections"]["active"] == 2)
    });
    assert!(idled_out, "the wait's request connection idled out");
    gate.open();
    let out = common::output_within(wait, common::COMMAND_LIMIT, "queue wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("job {held}: succeeded")), "{}", stderr(&out));
}
