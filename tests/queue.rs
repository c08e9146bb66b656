//! The queue channel against the real `hearthd`: real processes, real
//! SQLite, temp state directories, `kill -9`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{RawConn, StateDir, processes_mentioning, stderr, stdout, wait_for};
use hearth::client::{QueueClient, blocking};
use hearth::daemon::child::group_alive;
use hearth::protocol::ErrorCode;
use hearth::protocol::queue::{
    Attempt, Job, JobSpec, JobState, ListFilter, LogStream, LogsRequest, Outcome, Selection,
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(20);

fn spec(argv: &[&str]) -> JobSpec {
    JobSpec { argv: argv.iter().map(|s| (*s).to_owned()).collect(), ..JobSpec::default() }
}

/// A blocking queue client with the calls the tests use.
struct Q(blocking::QueueClient);

impl Q {
    fn connect(state: &StateDir) -> Q {
        Q(blocking::QueueClient::connect(state.socket()).expect("connect to the queue channel"))
    }
    fn submit(&mut self, spec: JobSpec) -> Job {
        self.0.submit(spec).expect("submit").job
    }
    fn try_submit(&mut self, spec: JobSpec) -> Result<hearth::client::Submitted, hearth::client::ClientError> {
        self.0.submit(spec)
    }
    fn get(&mut self, id: u64) -> (Job, Vec<Attempt>) {
        self.0.call(async |c| c.get(id).await).expect("get")
    }
    fn job(&mut self, id: u64) -> Job {
        self.get(id).0
    }
    /// Waits for job `id` to end; a job still going after two minutes fails the test.
    fn wait(&mut self, id: u64) -> Job {
        let limit = common::COMMAND_LIMIT;
        let waited = self
            .0
            .call(async |c| Ok::<_, hearth::client::ClientError>(tokio::time::timeout(limit, c.wait(id, |_| {})).await))
            .expect("wait");
        waited.unwrap_or_else(|_| panic!("job {id} did not end within {limit:?}")).expect("wait")
    }
    fn cancel(&mut self, id: u64) -> Result<Job, hearth::client::ClientError> {
        self.0.call(async |c| c.cancel(id).await)
    }
    fn log(&mut self, id: u64, stream: LogStream) -> Vec<u8> {
        let mut out = Vec::new();
        let request = LogsRequest { id, stream, offset: 0, follow: false };
        self.0.call(async |c| c.logs(request, |d| out.extend_from_slice(d)).await).expect("logs");
        out
    }
    fn until_state(&mut self, id: u64, state: JobState) -> Job {
        let mut job = None;
        let reached = wait_for(LONG, || {
            let j = self.job(id);
            let done = j.state == state;
            job = Some(j);
            done
        });
        assert!(reached, "job {id} never reached {state}: {job:?}");
        job.unwrap()
    }
}

fn code_of(e: &hearth::client::ClientError) -> ErrorCode {
    e.code().cloned().unwrap_or_else(|| panic!("not a daemon error: {e}"))
}

#[test]
fn a_job_runs_with_its_env_cwd_and_input_and_keeps_its_output() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let work = state.dir.path().join("work dir");
    std::fs::create_dir(&work).unwrap();
    let mut s =
        spec(&["sh", "-c", r#"cat; echo " $GREETING from $(pwd) as job $HEARTH_JOB_ID"; echo oops >&2; exit 3"#]);
    s.env.insert("GREETING".into(), "hello".into());
    s.cwd = Some(work.to_str().unwrap().into());
    s.input = Some(json!("the input"));
    s.max_attempts = Some(1);
    let job = q.submit(s);
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.input_bytes, 9);
    let done = q.wait(job.id);
    assert_eq!(done.state, JobState::Dead);
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.last_error.as_deref(), Some("exited with status 3"));
    let out = String::from_utf8(q.log(job.id, LogStream::Stdout)).unwrap();
    assert_eq!(out, format!("the input hello from {} as job {}\n", work.display(), job.id));
    assert_eq!(q.log(job.id, LogStream::Stderr), b"oops\n");
    let (_, attempts) = q.get(job.id);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(Outcome::Failed));
    assert!(attempts[0].pid.is_some());

    // JSON input is written as compact JSON.
    let mut s = spec(&["cat"]);
    s.input = Some(json!({"n": 1, "list": [1, 2]}));
    let job = q.submit(s);
    assert_eq!(q.wait(job.id).state, JobState::Succeeded);
    assert_eq!(q.log(job.id, LogStream::Stdout), br#"{"list":[1,2],"n":1}"#);

    // An empty argv and a relative cwd are refused.
    let err = q.try_submit(spec(&[])).unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::InvalidRequest);
    let mut s = spec(&["true"]);
    s.cwd = Some("relative".into());
    assert_eq!(code_of(&q.try_submit(s).unwrap_err()), ErrorCode::InvalidRequest);
}

#[test]
fn fifty_concurrent_submits_of_one_key_make_one_job() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket = state.socket().to_owned();
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let mut c = QueueClient::connect(&socket).await.unwrap();
                    let mut s = spec(&["sh", "-c", "exit 0"]);
                    s.key = Some("deploy-42".into());
                    s.run_at_ms = Some(hearth::time::now_ms() + 3_600_000);
                    c.submit(s).await.unwrap()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let fresh: Vec<_> = results.iter().filter(|r| !r.deduplicated).collect();
    assert_eq!(fresh.len(), 1, "exactly one submit created the job");
    assert!(results.iter().all(|r| r.job.id == fresh[0].job.id));

    let mut q = Q::connect(&state);
    let mut other = spec(&["sh", "-c", "exit 1"]);
    other.key = Some("deploy-42".into());
    assert_eq!(code_of(&q.try_submit(other).unwrap_err()), ErrorCode::IdempotencyConflict);
    let mut elsewhere = spec(&["sh", "-c", "exit 1"]);
    elsewhere.key = Some("deploy-42".into());
    elsewhere.queue = Some("other".into());
    assert!(!q.try_submit(elsewhere).unwrap().deduplicated, "keys are per queue");
    let page = q.0.call(async |c| c.list(ListFilter::default()).await).unwrap();
    assert_eq!(page.jobs.len(), 2);
}

#[test]
fn failures_retry_with_backoff_then_die_and_the_dlq_can_retry_and_purge() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let marker = state.dir.path().join("fixed");
    let script = format!("test -e '{}' && exit 0; echo failing; exit 7", marker.display());
    let mut s = spec(&["sh", "-c", &script]);
    s.max_attempts = Some(3);
    s.backoff_base_ms = Some(20);
    s.backoff_cap_ms = Some(40);
    let job = q.submit(s);
    let dead = q.wait(job.id);
    assert_eq!((dead.state, dead.attempts), (JobState::Dead, 3));
    assert_eq!(dead.last_error.as_deref(), Some("exited with status 7"));
    let (_, attempts) = q.get(job.id);
    assert_eq!(attempts.len(), 3);
    for pair in attempts.windows(2) {
        let gap = pair[1].started_at_ms - pair[0].ended_at_ms.unwrap();
        assert!(gap >= 10, "backoff of at least half the base: {gap}ms");
    }
    let log = String::from_utf8(q.log(job.id, LogStream::Stdout)).unwrap();
    assert!(log.contains("[hearth: attempt 3 (counted 3 of 3)"), "{log}");

    let out = state.run(&["--json", "queue", "dlq"]);
    let dlq: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dlq["jobs"][0]["id"], json!(job.id));

    // Fix the cause, retry from the DLQ: a fresh budget, and it succeeds.
    std::fs::write(&marker, "").unwrap();
    let out = state.run(&["queue", "retry", &job.id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = q.wait(job.id);
    assert_eq!((done.state, done.attempts), (JobState::Succeeded, 1));
    assert_eq!(q.get(job.id).1.len(), 4, "the history keeps every attempt");
    let err = q.0.call(async |c| c.purge(Selection { ids: vec![job.id], ..Selection::default() }).await).unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::JobNotDead);

    // Purge deletes dead jobs and their logs.
    let mut s = spec(&["sh", "-c", "echo bye; exit 1"]);
    s.max_attempts = Some(1);
    let doomed = q.submit(s);
    assert_eq!(q.wait(doomed.id).state, JobState::Dead);
    let log_file = state.state_dir().join(format!("queue/logs/{}.stdout", doomed.id));
    assert!(log_file.exists());
    let out = state.run(&["--json", "queue", "purge", "--all"]);
    let purged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(purged["ids"], json!([doomed.id]));
    assert!(!log_file.exists());
    assert_eq!(code_of(&q.0.call(async |c| c.get(doomed.id).await).unwrap_err()), ErrorCode::JobNotFound);

    // The status summary (and so the heartbeat) counts attempts since start.
    let summary = || {
        let out = state.run(&["--json", "status"]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["services"]["queue"].clone()
    };
    assert!(
        wait_for(Duration::from_secs(10), || {
            let s = summary();
            s["succeeded"] == 1 && s["attempts_failed"] == 4 && s["store_errors"] == 0
        }),
        "{}",
        summary()
    );
}

#[test]
fn cancel_a_queued_job_and_a_running_one_whose_group_is_killed() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let mut later = spec(&["true"]);
    later.run_at_ms = Some(hearth::time::now_ms() + 3_600_000);
    let queued = q.submit(later);
    assert_eq!(q.cancel(queued.id).unwrap().state, JobState::Canceled);
    assert_eq!(code_of(&q.cancel(queued.id).unwrap_err()), ErrorCode::JobFinished);

    // sh leaves a child (sleep) in the group: both must go.
    let running = q.submit(spec(&["sh", "-c", "sleep 1000; : cancel-token-81"]));
    q.until_state(running.id, JobState::Running);
    let pgid = q.get(running.id).1[0].pid.unwrap();
    assert!(wait_for(LONG, || !processes_mentioning("cancel-token-81").is_empty()));
    let canceled = q.cancel(running.id).unwrap();
    assert_eq!(canceled.state, JobState::Canceled);
    assert!(wait_for(LONG, || !group_alive(pgid)), "the whole process group is gone");
    assert_eq!(q.get(running.id).1[0].outcome, Some(Outcome::Canceled));
}

#[test]
fn a_job_that_ignores_sigterm_times_out_and_is_killed() {
    let state = StateDir::new();
    state.write_config("[queue]\nkill_grace = \"200ms\"\n");
    let _daemon = state.start(&[]);
    let out = state.run(&[
        "queue",
        "submit",
        "--timeout",
        "300ms",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo started; sleep 1000; : stubborn-token-17",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id: u64 = stdout(&out).trim().parse().unwrap();
    let wait = state.run(&["queue", "wait", &id.to_string()]);
    assert_eq!(wait.status.code(), Some(124), "{}", stderr(&wait));
    let mut q = Q::connect(&state);
    let (job, attempts) = q.get(id);
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(attempts[0].outcome, Some(Outcome::TimedOut));
    assert_eq!(attempts[0].signal, Some(libc::SIGKILL), "SIGTERM was ignored, SIGKILL was not");
    assert_eq!(job.last_error.as_deref(), Some("timed out after 300ms"));
    assert!(wait_for(LONG, || processes_mentioning("stubborn-token-17").is_empty()));
    assert!(wait_for(LONG, || !group_alive(attempts[0].pid.unwrap())));
}

#[test]
fn a_missing_program_is_a_failed_attempt_with_a_clear_error() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let mut s = spec(&["/nonexistent/hearth-no-such-program", "arg"]);
    s.max_attempts = Some(2);
    s.backoff_base_ms = Some(1);
    let job = q.submit(s);
    let dead = q.wait(job.id);
    assert_eq!((dead.state, dead.attempts), (JobState::Dead, 2));
    let error = dead.last_error.unwrap();
    assert!(error.contains("hearth-no-such-program") && error.contains("No such file"), "{error}");
    let (_, attempts) = q.get(job.id);
    assert!(attempts.iter().all(|a| a.outcome == Some(Outcome::SpawnFailed)), "{attempts:?}");

    let out = state.run(&["run", "--max-attempts", "1", "--", "hearth-no-such-program-either"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).contains("No such file"), "{}", stderr(&out));
}

#[test]
fn a_hundred_megabytes_of_output_is_capped_and_the_cut_is_marked() {
    let state = StateDir::new();
    let _daemon = state.start(&["--queue-log-max", "1MiB"]);
    let mut q = Q::connect(&state);
    let job = q.submit(spec(&["head", "-c", "104857600", "/dev/zero"]));
    let done = q.wait(job.id);
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.last_error);
    let (_, attempts) = q.get(job.id);
    assert!(attempts[0].truncated);
    assert_eq!(attempts[0].stdout_bytes, 1 << 20);
    let log = q.log(job.id, LogStream::Stdout);
    assert!(log[..1 << 20].iter().all(|b| *b == 0));
    let tail = String::from_utf8_lossy(&log[1 << 20..]);
    assert!(tail.contains("[hearth: stdout truncated here") && tail.contains("1MiB"), "{tail}");
    assert!(log.len() < (1 << 20) + 200);
    let show = state.run(&["queue", "show", &job.id.to_string()]);
    assert!(stdout(&show).contains("(output truncated)"), "{}", stdout(&show));
}

#[test]
fn a_job_holds_no_descriptor_of_the_daemon() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let job = q.submit(spec(&["ls", "-l", "/proc/self/fd/"]));
    assert_eq!(q.wait(job.id).state, JobState::Succeeded);
    let listing = String::from_utf8(q.log(job.id, LogStream::Stdout)).unwrap();
    let targets: Vec<&str> = listing.lines().filter_map(|l| l.split_once(" -> ").map(|(_, t)| t)).collect();
    assert!(targets.len() >= 3, "{listing}");
    let temp = state.dir.path().to_str().unwrap();
    for target in &targets {
        assert!(
            !target.contains(temp) && !target.starts_with("socket:") && !target.starts_with("anon_inode:"),
            "the job inherited {target:?}:\n{listing}"
        );
    }
    // stdin, stdout, stderr, and the directory ls reads.
    assert!(targets.len() <= 4, "{listing}");
}

#[test]
fn priority_then_fifo_with_one_worker_and_per_queue_limits() {
    let state = StateDir::new();
    state.write_config("[queue]\nworkers = 1\n");
    let mut daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let order = state.dir.path().join("order");
    let blocker = q.submit(spec(&["sleep", "1000"]));
    q.until_state(blocker.id, JobState::Running);
    let mut ids = Vec::new();
    for (name, priority) in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)] {
        let mut s = spec(&["sh", "-c", &format!("echo {name} >> '{}'", order.display())]);
        s.priority = Some(priority);
        ids.push(q.submit(s).id);
    }
    q.cancel(blocker.id).unwrap();
    for id in ids {
        q.wait(id);
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "b\nd\na\nc\ne\n");
    daemon.stop();

    state.write_config("[queue]\nworkers = 4\n[queue.limits]\nserial = 1\n");
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let mut serial = spec(&["sleep", "1000"]);
    serial.queue = Some("serial".into());
    let first = q.submit(serial.clone());
    let second = q.submit(serial);
    let other = q.submit(spec(&["true"]));
    q.wait(other.id);
    assert_eq!(q.job(first.id).state, JobState::Running);
    assert_eq!(q.job(second.id).state, JobState::Queued, "the serial queue runs one at a time");
    q.cancel(first.id).unwrap();
    q.until_state(second.id, JobState::Running);
    q.cancel(second.id).unwrap();
}

#[test]
fn list_paginates_and_filters() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let later = hearth::time::now_ms() + 3_600_000;
    let ids: Vec<u64> = (0..5)
        .map(|i| {
            let mut s = spec(&["true"]);
            s.run_at_ms = Some(later);
            s.queue = Some(if i % 2 == 0 { "even" } else { "odd" }.into());
            q.submit(s).id
        })
        .collect();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let filter = ListFilter { limit: Some(2), before_id: before, ..ListFilter::default() };
        let page = q.0.call(async |c| c.list(filter).await).unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_before_id {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().copied().collect::<Vec<_>>());
    let out = state.run(&["--json", "queue", "list", "--queue", "odd", "--state", "queued"]);
    let odd: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(odd["jobs"].as_array().unwrap().len(), 2);
    let out = state.run(&["--json", "queue", "stats"]);
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["states"]["queued"], json!(5));
    assert_eq!(stats["queues"]["even"]["queued"], json!(3));
    let status: Value = serde_json::from_slice(&state.run(&["--json", "status"]).stdout).unwrap();
    assert_eq!(status["services"]["queue"]["pending"], json!(5));
    assert!(status["channels"].as_array().unwrap().contains(&json!("queue")));
}

#[test]
fn the_cli_submits_waits_and_runs_attached() {
    let state = StateDir::new();
    // `queue submit` starts the daemon when none runs.
    let out = state.run(&[
        "--json",
        "queue",
        "submit",
        "--max-attempts",
        "1",
        "--env",
        "X=1",
        "--",
        "sh",
        "-c",
        "exit $((X + 4))",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let submitted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(submitted["deduplicated"], json!(false));
    let id = submitted["job"]["id"].as_u64().unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(submitted["job"]["cwd"], json!(cwd.to_str().unwrap()), "the CLI sends its cwd");
    let wait = state.run(&["queue", "wait", &id.to_string()]);
    assert_eq!(wait.status.code(), Some(5), "{}", stderr(&wait));

    let input = state.dir.path().join("in.txt");
    std::fs::write(&input, "from a file\n").unwrap();
    let run = state.run(&["run", "--input", input.to_str().unwrap(), "--", "sh", "-c", "cat; echo to-stderr >&2"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_eq!(stdout(&run), "from a file\n");
    assert_eq!(stderr(&run), "to-stderr\n");

    let run = state.run(&["run", "--max-attempts", "1", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(run.status.code(), Some(128 + 15), "{}", stderr(&run));
    assert!(state.run(&["daemon", "stop"]).status.success());
}

#[test]
fn kill_9_with_jobs_running_kills_the_leftovers_and_retries_them() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    // The first attempt hangs; the next one succeeds.
    let script = r#"if [ "$HEARTH_JOB_ATTEMPT" = 1 ]; then sleep 1000; fi; echo done; : crash-token-55"#;
    let mut s = spec(&["sh", "-c", script]);
    s.backoff_base_ms = Some(10);
    let job = q.submit(s);
    q.until_state(job.id, JobState::Running);
    let pgid = q.get(job.id).1[0].pid.unwrap();
    assert!(wait_for(LONG, || !processes_mentioning("crash-token-55").is_empty()));
    daemon.kill9();
    assert!(group_alive(pgid), "the job outlives a killed daemon");

    let _daemon = state.start(&[]);
    assert!(wait_for(LONG, || !group_alive(pgid)), "the next daemon killed the leftover group");
    let mut q = Q::connect(&state);
    let done = q.wait(job.id);
    assert_eq!(done.state, JobState::Succeeded);
    let (_, attempts) = q.get(job.id);
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome, Some(Outcome::Lost));
    assert!(attempts[0].counted);
    assert!(attempts[0].error.as_deref().unwrap().contains("killed"), "{:?}", attempts[0].error);
    assert_eq!(done.attempts, 2);
}

#[test]
fn kill_9_after_a_program_started_but_before_its_start_was_committed() {
    // A program runs as soon as its process is recorded under running/; its
    // start is committed meanwhile. Hold the store's write lock so that the
    // commit cannot land, kill the daemon while the program runs, and the
    // next daemon must still find and kill it, and run the job again as if
    // the attempt had never been.
    let state = StateDir::new();
    let marker = state.dir.path().join("ran once");
    let script = format!(
        "if [ -e '{m}' ]; then echo second; exit 0; fi; touch '{m}'; echo first; sleep 1000; : window-token-31",
        m = marker.display()
    );
    let mut daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let mut s = spec(&["sh", "-c", &script]);
    s.run_at_ms = Some(hearth::time::now_ms() + 86_400_000);
    let job = q.submit(s);
    assert_eq!(daemon.stop(), 0);
    let db_path = state.state_dir().join("queue/queue.db");
    let db = rusqlite::Connection::open(&db_path).unwrap();
    let id = i64::try_from(job.id).unwrap();
    db.execute("UPDATE jobs SET run_at_ms = 0 WHERE id = ?1", [id]).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut daemon = state.start(&[]);
    let record_path = state.state_dir().join(format!("queue/running/{}.1", job.id));
    assert!(wait_for(LONG, || record_path.exists() && !processes_mentioning("window-token-31").is_empty()));
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let pgid = u32::try_from(record["pid"].as_u64().unwrap()).unwrap();
    assert_eq!(record["job"], json!(job.id));
    assert!(processes_mentioning("window-token-31").contains(&pgid), "the record names the program's process");
    daemon.kill9();
    db.execute_batch("ROLLBACK").unwrap();
    let (state_then, attempts): (String, i64) = db
        .query_row(
            "SELECT state, (SELECT COUNT(*) FROM attempts WHERE job_id = id) FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state_then.as_str(), attempts), ("queued", 0), "the start never reached the store");
    drop(db);
    assert!(group_alive(pgid), "the program outlives the killed daemon");

    let _daemon = state.start(&[]);
    assert!(wait_for(LONG, || !group_alive(pgid)), "the next daemon killed the leftover group");
    let mut q = Q::connect(&state);
    let done = q.wait(job.id);
    assert_eq!((done.state, done.attempts), (JobState::Succeeded, 1), "the lost run is not counted");
    let (_, attempts) = q.get(job.id);
    assert_eq!(attempts.len(), 1, "the unrecorded run leaves no attempt: {attempts:?}");
    assert_eq!(attempts[0].outcome, Some(Outcome::Succeeded));
    assert_eq!(q.log(job.id, LogStream::Stdout), b"second\n", "nothing of the unrecorded run reaches the logs");
    let running = state.state_dir().join("queue/running");
    assert!(wait_for(LONG, || std::fs::read_dir(&running).unwrap().next().is_none()), "every record is dropped");
}

#[test]
fn a_start_the_store_refuses_kills_the_program_and_leaves_no_trace() {
    // As above, but the daemon lives on: with the store's write lock held
    // past the writer's busy timeout (10 s), the start of the running
    // program fails to commit. The program must be killed, nothing of it
    // recorded, and the job run again once the store takes writes.
    let state = StateDir::new();
    let marker = state.dir.path().join("ran once");
    let script = format!(
        "if [ -e '{m}' ]; then echo second; exit 0; fi; touch '{m}'; echo first; sleep 1000; : refused-token-47",
        m = marker.display()
    );
    let mut daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let mut s = spec(&["sh", "-c", &script]);
    s.run_at_ms = Some(hearth::time::now_ms() + 86_400_000);
    let job = q.submit(s);
    assert_eq!(daemon.stop(), 0);
    let db = rusqlite::Connection::open(state.state_dir().join("queue/queue.db")).unwrap();
    db.execute("UPDATE jobs SET run_at_ms = 0 WHERE id = ?1", [i64::try_from(job.id).unwrap()]).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();

    let _daemon = state.start(&[]);
    let record_path = state.state_dir().join(format!("queue/running/{}.1", job.id));
    assert!(wait_for(LONG, || record_path.exists() && !processes_mentioning("refused-token-47").is_empty()));
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let pgid = u32::try_from(record["pid"].as_u64().unwrap()).unwrap();
    assert!(wait_for(Duration::from_secs(60), || !group_alive(pgid)), "a refused start kills the program");
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);

    let mut q = Q::connect(&state);
    let done = q.wait(job.id);
    assert_eq!((done.state, done.attempts), (JobState::Succeeded, 1));
    assert_eq!(q.get(job.id).1.len(), 1, "refused starts leave no attempt");
    assert_eq!(q.log(job.id, LogStream::Stdout), b"second\n", "nor any output");
}

#[test]
fn a_graceful_stop_requeues_running_jobs_without_counting_and_ends_waits() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let runs = state.dir.path().join("runs");
    let script = format!(
        "echo x >> '{}'; [ $(wc -l < '{}') -ge 2 ] || sleep 1000; : stop-token-23",
        runs.display(),
        runs.display()
    );
    let mut s = spec(&["sh", "-c", &script]);
    s.max_attempts = Some(1);
    let job = q.submit(s);
    // The job itself says it runs (not only the store): a stop that came
    // before the script's first line would leave nothing to count on.
    let first_line = || std::fs::read_to_string(&runs).is_ok_and(|t| t.lines().count() == 1);
    assert!(wait_for(LONG, first_line), "job {} never wrote its first line to {runs:?}", job.id);
    q.until_state(job.id, JobState::Running);
    let pgid = q.get(job.id).1[0].pid.unwrap();
    let mut waiter = RawConn::open(state.socket(), "queue");
    waiter.send_json(&json!({"type": "wait", "id": job.id}));
    assert_eq!(waiter.read_json().unwrap()["job"]["state"], "running");

    assert_eq!(daemon.stop(), 0);
    assert!(wait_for(LONG, || !group_alive(pgid)), "a stopping daemon kills its running jobs");
    let end = waiter.read_json().expect("the wait stream ends with a frame");
    assert_eq!(end["code"], "shutting_down", "{end}");
    assert!(waiter.read_frame().is_none(), "then the connection closes");

    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let done = q.wait(job.id);
    assert_eq!(done.state, JobState::Succeeded, "max_attempts 1 and still retried: the stop did not count");
    let (_, attempts) = q.get(job.id);
    assert_eq!(attempts[0].outcome, Some(Outcome::Interrupted));
    assert!(!attempts[0].counted);
}

#[test]
fn kill_9_in_a_burst_of_1000_submits_loses_no_acknowledged_job() {
    let state = StateDir::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut acked_all: Vec<(String, u64)> = Vec::new();
    for round in 0..3 {
        let mut daemon = state.start(&[]);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..20)
            .map(|task| {
                let (socket, acked) = (state.socket().to_owned(), acked.clone());
                runtime.spawn(async move {
                    let Ok(mut c) = QueueClient::connect(&socket).await else { return };
                    for i in 0..50 {
                        let token = format!("burst-{round}-{task}-{i}");
                        let mut s = spec(&["true", &token]);
                        s.run_at_ms = Some(hearth::time::now_ms() + 86_400_000);
                        match c.submit(s).await {
                            Ok(r) => acked.lock().unwrap().push((token, r.job.id)),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        let kill_at = 200 + 200 * round;
        wait_for(LONG, || acked.lock().unwrap().len() >= kill_at);
        daemon.kill9();
        runtime.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
        acked_all.extend(acked.lock().unwrap().drain(..));
    }

    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let mut found: HashMap<String, Vec<u64>> = HashMap::new();
    let mut before = None;
    loop {
        let filter = ListFilter { limit: Some(1000), before_id: before, ..ListFilter::default() };
        let page = q.0.call(async |c| c.list(filter).await).unwrap();
        for job in &page.jobs {
            found.entry(job.argv[1].clone()).or_default().push(job.id);
        }
        match page.next_before_id {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert!(acked_all.len() >= 600, "{} acknowledged", acked_all.len());
    for (token, id) in &acked_all {
        assert_eq!(found.get(token), Some(&vec![*id]), "acknowledged job {token} is present exactly once");
    }
    assert!(found.values().all(|ids| ids.len() == 1), "no submit is stored twice");
    let db = rusqlite::Connection::open(state.state_dir().join("queue/queue.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_corrupt_store_is_moved_aside_and_reported() {
    let state = StateDir::new();
    state.write_config("");
    let dir = state.state_dir().join("queue");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("queue.db"), b"garbage, not SQLite".repeat(64)).unwrap();
    let _daemon = state.start(&[]);
    let status: Value = serde_json::from_slice(&state.run(&["--json", "status"]).stdout).unwrap();
    assert_eq!(status["health"]["state"], "degraded", "{status}");
    assert_eq!(status["health"]["reasons"][0]["code"], "queue_store_recovered");
    let moved = status["services"]["queue"]["store_moved_to"].as_str().unwrap();
    assert!(moved.contains("queue.db.corrupt-"), "{moved}");
    assert_eq!(std::fs::read(moved).unwrap(), b"garbage, not SQLite".repeat(64));
    let mut q = Q::connect(&state);
    let job = q.submit(spec(&["true"]));
    assert_eq!(q.wait(job.id).state, JobState::Succeeded, "the fresh store works");
    let out = state.run(&["queue", "stats"]);
    assert!(stdout(&out).contains("RECOVERED"), "{}", stdout(&out));
}

#[test]
fn raw_frames_follow_the_contract() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut c = RawConn::open(state.socket(), "queue");
    let r = c.request(&json!({"type": "submit", "argv": []}));
    assert_eq!(r["code"], "invalid_request");
    let r = c.request(&json!({"type": "frobnicate"}));
    assert_eq!(r["code"], "unknown_request");
    let r = c.request(&json!({"type": "get", "id": 999}));
    assert_eq!(r, json!({"type": "error", "code": "job_not_found", "message": "no job 999"}));
    let r = c.request(&json!({"type": "submit", "argv": ["printf", "a\\377b"]}));
    assert_eq!(r["type"], "submitted");
    let id = r["job"]["id"].as_u64().unwrap();
    c.send_json(&json!({"type": "wait", "id": id}));
    loop {
        let frame = c.read_json().unwrap();
        assert_eq!(frame["type"], "job_event");
        if frame["job"]["state"] == "succeeded" {
            break;
        }
    }
    c.send_json(&json!({"type": "logs", "id": id}));
    assert_eq!(c.read_json().unwrap(), json!({"type": "log_data", "offset": 0, "data": "Yf9i"}));
    assert_eq!(c.read_json().unwrap(), json!({"type": "log_end", "offset": 3, "state": "succeeded"}));
    let r = c.request(&json!({"type": "submit", "argv": ["cat"], "input": "x".repeat(2 << 20)}));
    assert_eq!(r["code"], "input_too_large");
    for selection in
        [json!({"type": "retry"}), json!({"type": "purge", "ids": []}), json!({"type": "purge", "queue": "q"})]
    {
        let r = c.request(&selection);
        assert_eq!(r["code"], "invalid_request", "{selection}: neither ids nor all: {r}");
    }
    for not_an_object in [json!([]), json!("x"), json!({"no": "type"}), json!({"type": 7})] {
        assert_eq!(c.request(&not_an_object)["code"], "invalid_request", "{not_an_object}");
    }
    assert_eq!(c.request(&json!({"type": "stats"}))["type"], "stats", "the connection stays usable");
}

#[test]
fn logs_follow_streams_until_the_job_ends() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let gate = state.dir.path().join("gate");
    let script = format!("echo first; while [ ! -e '{}' ]; do sleep 0.01; done; echo second", gate.display());
    let job = q.submit(spec(&["sh", "-c", &script]));
    let mut follower = RawConn::open(state.socket(), "queue");
    follower.send_json(&json!({"type": "logs", "id": job.id, "follow": true}));
    let first = follower.read_json().unwrap();
    assert_eq!(first["type"], "log_data");
    assert_eq!(first["data"], "Zmlyc3QK", "first\\n arrives while the job still runs");
    std::fs::write(&gate, "").unwrap();
    let second = follower.read_json().unwrap();
    assert_eq!(second, json!({"type": "log_data", "offset": 6, "data": "c2Vjb25kCg=="}));
    assert_eq!(follower.read_json().unwrap(), json!({"type": "log_end", "offset": 13, "state": "succeeded"}));
}

#[test]
fn a_client_that_leaves_a_wait_or_a_follow_frees_its_connection_at_once() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let marker = format!("hearth-left-wait-{}", std::process::id());
    let mut c = RawConn::open(state.socket(), "queue");
    let r = c.request(&json!({"type": "submit", "argv": ["sh", "-c", "sleep 300", &marker]}));
    let id = r["job"]["id"].as_u64().unwrap();
    let active = || {
        let status = RawConn::open(state.socket(), "status").request(&json!({"type": "status"}));
        status["connections"]["active"].as_u64().unwrap()
    };
    for request in
        [json!({"type": "wait", "id": id}), json!({"type": "logs", "id": id, "stream": "stdout", "follow": true})]
    {
        let mut waiter = RawConn::open(state.socket(), "queue");
        waiter.send_json(&request);
        if request["type"] == "wait" {
            assert_eq!(waiter.read_json().unwrap()["type"], "job_event");
        }
        // (A follow of an empty log sends nothing until output comes.)
        assert!(wait_for(Duration::from_secs(10), || active() == 3), "c, the waiter and the status probe");
        drop(waiter);
        // The job runs for minutes: only noticing the peer left frees the slot.
        assert!(
            wait_for(Duration::from_secs(10), || active() == 2),
            "{request}: the waiter's connection is still open"
        );
    }
    let r = c.request(&json!({"type": "cancel", "id": id}));
    assert_eq!(r["type"], "canceled", "{r}");
    assert!(wait_for(Duration::from_secs(10), || processes_mentioning(&marker).is_empty()));
}

/// Whether process `pid` exists at all, as a zombie too.
fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn pid_in(path: &std::path::Path) -> u32 {
    let mut pid = None;
    assert!(
        wait_for(LONG, || {
            pid = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok());
            pid.is_some()
        }),
        "no pid written to {}",
        path.display()
    );
    pid.unwrap()
}

#[test]
fn processes_that_left_the_group_are_killed_and_reaped_when_the_attempt_ends() {
    if !cfg!(target_os = "linux") {
        eprintln!("SKIPPED: processes that leave their group are reached on Linux only");
        return;
    }
    let state = StateDir::new();
    // Long enough that waiting for the leavers to let go of the output would show.
    state.write_config("[queue]\nkill_grace = \"100s\"\n");
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let d = state.dir.path().display().to_string();
    // One leaves the group and holds stdout; one leaves it twice (the
    // second only reaches the daemon once the first is killed); one leaves
    // through a subshell and ends on its own while the job still runs.
    let script = format!(
        "setsid sh -c 'echo $$ > {d}/one; echo grand; exec sleep 300' &
         setsid sh -c 'setsid sh -c \"echo \\$\\$ > {d}/two; exec sleep 301\" & echo $$ > {d}/three; exec sleep 302' &
         (setsid sh -c 'echo $$ > {d}/four; exec sleep 0.2' &)
         for f in one two three four; do while [ ! -s {d}/$f ]; do sleep 0.01; done; done
         sleep 0.5; echo child"
    );
    let mut s = spec(&["sh", "-c", &script]);
    s.max_attempts = Some(1);
    let job = q.submit(s);
    let done = q.wait(job.id);
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.last_error);
    for name in ["one", "two", "three", "four"] {
        let pid = pid_in(&state.dir.path().join(name));
        assert!(
            wait_for(LONG, || !process_exists(pid)),
            "the {name} process ({pid}) is still there (or not reaped): {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
    let log = q.log(job.id, LogStream::Stdout);
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("grand\n") && text.contains("child\n"), "{text:?}");
    let (_, attempts) = q.get(job.id);
    assert_eq!(attempts[0].stdout_bytes, log.len() as u64, "the attempt counts the output its log holds");

    // A process that drops the mark escapes: the attempt waits for its
    // output at most kill_grace, and still counts what it kept.
    let state = StateDir::new();
    state.write_config("[queue]\nkill_grace = \"500ms\"\n");
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let d = state.dir.path().display().to_string();
    // The job waits for the leaver to be out of its group: the group is
    // killed as the job ends.
    let script = format!(
        "env -u HEARTH_JOB_MARK setsid sh -c 'echo $$ > {d}/five; exec sleep 303' &
         while [ ! -s {d}/five ]; do sleep 0.01; done; echo out"
    );
    let mut s = spec(&["sh", "-c", &script]);
    s.max_attempts = Some(1);
    let job = q.submit(s);
    let done = q.wait(job.id);
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.last_error);
    let (_, attempts) = q.get(job.id);
    assert_eq!(attempts[0].stdout_bytes, 4, "counted although a process outside the daemon's reach holds the pipe");
    let escaped = pid_in(&state.dir.path().join("five"));
    assert!(process_exists(escaped), "documented as not reached");
    let _ = hearth::sys::kill(escaped, libc::SIGKILL);
}

#[test]
fn a_job_without_cwd_runs_where_the_client_library_runs() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut q = Q::connect(&state);
    let job = q.submit(spec(&["true"]));
    let here = std::env::current_dir().unwrap();
    assert_eq!(job.cwd, here.to_str().unwrap(), "the Rust client sends its current directory");
    // Over the wire without one: the daemon user's home.
    let r = RawConn::open(state.socket(), "queue").request(&json!({"type": "submit", "argv": ["true"]}));
    let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
    assert_eq!(r["job"]["cwd"], json!(home), "{r}");
}

#[test]
fn run_makes_one_attempt_unless_asked_for_more() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let run = state.run(&["run", "--", "sh", "-c", "echo attached; exit 3"]);
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    assert_eq!(stdout(&run), "attached\n", "one attempt: its output once");
    let run = state.run(&["--json", "run", "--", "true"]);
    let shown: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(shown["job"]["max_attempts"], 1, "{shown}");
    let run =
        state.run(&["run", "--max-attempts", "2", "--backoff-base", "1ms", "--", "sh", "-c", "echo again; exit 3"]);
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    assert_eq!(stdout(&run).matches("again\n").count(), 2, "{}", stdout(&run));
    // `queue submit` keeps the daemon's default.
    let out = state.run(&["--json", "queue", "submit", "--", "true"]);
    let submitted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(submitted["job"]["max_attempts"], 3, "{submitted}");
}
