//! The queue's limits, in raw frames over a real socket against the real
//! `hearthd`: what a job may hold, and answers that would not fit in a
//! frame. Every refusal is a typed error on a connection that stays usable.

mod common;

use std::time::Duration;

use common::{RawConn, StateDir, wait_for};
use serde_json::{Value, json};

const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Far enough ahead that no job of these tests runs.
fn far_future() -> u64 {
    hearth::time::now_ms() + 30 * 86_400_000
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("<none>")
}

/// An answer to show in a failure: its start (a refused one is short; one
/// that should have been refused may be megabytes).
fn shown(v: &Value) -> String {
    hearth::protocol::clip(&v.to_string(), 300).into_owned()
}

/// A queue connection whose reads wait as long as a large answer may take
/// on a busy machine (a page of megabytes, from a debug build).
fn open(state: &StateDir) -> RawConn {
    let c = RawConn::open(state.socket(), "queue");
    c.stream.set_read_timeout(Some(common::COMMAND_LIMIT)).unwrap();
    c.stream.set_write_timeout(Some(common::COMMAND_LIMIT)).unwrap();
    c
}

/// The connection still answers.
fn still_usable(c: &mut RawConn) {
    let stats = c.request(&json!({"type": "stats"}));
    assert_eq!(stats["type"], "stats", "the connection is still usable: {stats}");
}

/// A frame as the daemon sent it, checked against the maximum.
fn read_within_limit(c: &mut RawConn, max: usize) -> Value {
    let frame = c.read_frame().expect("an answer, not a closed connection");
    assert!(frame.len() <= max, "the daemon sent a frame of {} bytes; max_frame is {max}", frame.len());
    serde_json::from_slice(&frame).expect("JSON")
}

#[test]
fn a_job_whose_answer_would_not_fit_is_refused_at_submit() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut c = open(&state);
    // Two jobs of ~9 MB each: before, both were stored and the next `list`
    // closed the connection; and a submit of just under 16 MiB was stored
    // but never answered.
    for len in [9_000_000, 9_000_000, MAX_FRAME - 200] {
        let reply = c.request(&json!({"type": "submit", "argv": ["true", "x".repeat(len)], "run_at_ms": far_future()}));
        assert_eq!(code(&reply), "command_too_large", "a submit of {len} bytes");
        let message = reply["message"].as_str().unwrap();
        assert!(message.contains("1048576") && message.contains("max_frame"), "names the limit: {message}");
        still_usable(&mut c);
    }
    // Nothing was stored, so every read still works.
    let page = read_after(&mut c, &json!({"type": "list"}));
    assert_eq!(page["jobs"], json!([]), "{}", shown(&page));
    // Just under the limit is fine, and so is its answer (in arguments of
    // 100 KB: the system takes at most 128 KiB per argument).
    let total = (1024 * 1024 - 2000).min(hearth::sys::arg_max() - 64 * 1024);
    let mut argv = vec!["true".to_owned()];
    argv.extend((0..total / 100_000).map(|_| "y".repeat(100_000)));
    let reply = c.request(&json!({"type": "submit", "argv": argv, "run_at_ms": far_future()}));
    assert_eq!(reply["type"], "submitted", "{}", code(&reply));
    let id = reply["job"]["id"].as_u64().unwrap();
    assert_eq!(c.request(&json!({"type": "get", "id": id}))["type"], "job");
}

fn read_after(c: &mut RawConn, request: &Value) -> Value {
    c.send_json(request);
    read_within_limit(c, MAX_FRAME)
}

#[test]
fn a_page_too_large_for_a_frame_is_cut_short_with_a_cursor() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut c = open(&state);
    // A hundred jobs of 170 KB each: the default page of 100 is 17 MB.
    let mut ids = Vec::new();
    for n in 0..100 {
        let half = format!("{n:03}{}", "z".repeat(85_000));
        let reply = c.request(&json!({"type": "submit", "argv": ["true", half, half], "run_at_ms": far_future()}));
        assert_eq!(reply["type"], "submitted", "{}", code(&reply));
        ids.push(reply["job"]["id"].as_u64().unwrap());
    }
    let mut seen = Vec::new();
    let mut before: Option<u64> = None;
    let mut pages = 0;
    loop {
        let page = read_after(&mut c, &json!({"type": "list", "before_id": before}));
        assert_eq!(page["type"], "jobs", "{}", code(&page));
        let jobs = page["jobs"].as_array().unwrap();
        assert!(!jobs.is_empty(), "a page that can be shortened is never empty");
        assert!(page.get("omitted").is_none(), "every job fits alone");
        seen.extend(jobs.iter().map(|j| j["id"].as_u64().unwrap()));
        pages += 1;
        match page["next_before_id"].as_u64() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().copied(), "the cursor is the last job sent");
                before = Some(next);
            }
            None => break,
        }
    }
    assert!(pages >= 2, "the first page was cut short");
    ids.reverse();
    assert_eq!(seen, ids, "every job once, newest first");
}

#[test]
fn answers_over_the_frame_size_become_typed_errors() {
    let state = StateDir::new();
    state.write_config("[queue]\nworkers = 1\n");
    let max = 8 * 1024;
    let _daemon = state.start(&["--max-frame", "8KiB"]);
    let mut c = open(&state);
    // Jobs in 150 queues of 60-character names: `stats` lists every queue.
    for n in 0..150 {
        let queue = format!("{n:03}-{}", "q".repeat(56));
        c.send_json(&json!({"type": "submit", "argv": ["true"], "queue": queue, "run_at_ms": far_future()}));
        assert_eq!(read_within_limit(&mut c, max)["type"], "submitted");
    }
    c.send_json(&json!({"type": "stats"}));
    let refused = read_within_limit(&mut c, max);
    assert_eq!(code(&refused), "response_too_large", "{}", shown(&refused));
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains(&max.to_string()), "names the limit: {message}");
    // The connection stays usable, and a page of the same jobs is cut short.
    c.send_json(&json!({"type": "list"}));
    let page = read_within_limit(&mut c, max);
    assert_eq!(page["type"], "jobs", "{}", shown(&page));
    assert!(
        page["next_before_id"].is_u64(),
        "a page of 100 does not fit in 8 KiB: {}",
        page["jobs"].as_array().unwrap().len()
    );

    // A log is sent in chunks that fit.
    let reply = c.request(&json!({"type": "submit", "argv": ["sh", "-c", "head -c 50000 /dev/zero | tr '\\0' x"]}));
    let id = reply["job"]["id"].as_u64().unwrap();
    c.send_json(&json!({"type": "wait", "id": id}));
    loop {
        let event = read_within_limit(&mut c, max);
        if event["job"]["state"] == "succeeded" {
            break;
        }
        assert!(event["job"]["state"] == "queued" || event["job"]["state"] == "running", "{event}");
    }
    c.send_json(&json!({"type": "logs", "id": id}));
    let mut got = 0;
    loop {
        let frame = read_within_limit(&mut c, max);
        match frame["type"].as_str() {
            Some("log_data") => {
                got += hearth::protocol::queue::Base64::decode(frame["data"].as_str().unwrap()).unwrap().0.len();
            }
            Some("log_end") => break,
            _ => panic!("{frame}"),
        }
    }
    assert_eq!(got, 50_000);
}

/// A store written before jobs were bounded: a job whose every answer is
/// larger than a frame, beside an ordinary one.
fn plant_oversized_job(state: &StateDir) -> (u64, u64) {
    {
        let daemon_once = state.start(&[]);
        drop(daemon_once);
    }
    let db = rusqlite::Connection::open(state.state_dir().join("queue/queue.db")).unwrap();
    let insert = |argv: &Value| -> u64 {
        db.execute(
            "INSERT INTO jobs (queue, state, priority, argv, env, cwd, input_bytes, max_attempts, backoff_base_ms, \
             backoff_cap_ms, created_at_ms, run_at_ms) VALUES ('default', 'queued', 0, ?1, '{}', '/', 0, 3, 1000, \
             60000, 1, ?2)",
            rusqlite::params![argv.to_string(), far_future() as i64],
        )
        .unwrap();
        db.last_insert_rowid() as u64
    };
    let big = insert(&json!(["true", "w".repeat(MAX_FRAME - 200)]));
    let small = insert(&json!(["true", "small"]));
    (big, small)
}

#[test]
fn a_store_from_before_the_limits_does_not_poison_reads() {
    let state = StateDir::new();
    let (big, small) = plant_oversized_job(&state);
    let _daemon = state.start(&[]);
    let mut c = open(&state);

    // `get` and `wait` of the big job: a typed error, and the connection goes on.
    for request in [json!({"type": "get", "id": big}), json!({"type": "wait", "id": big})] {
        let reply = read_after(&mut c, &request);
        assert_eq!(code(&reply), "response_too_large", "{}: {}", shown(&request), shown(&reply));
        still_usable(&mut c);
    }
    // Every page works, and says what it left out.
    for limit in [1, 100] {
        let page = read_after(&mut c, &json!({"type": "list", "limit": limit}));
        assert_eq!(page["type"], "jobs", "{}", shown(&page));
        let jobs: Vec<u64> = page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_u64().unwrap()).collect();
        assert_eq!(jobs, [small], "limit {limit}: {}", shown(&page));
        if limit == 1 {
            assert_eq!(page["next_before_id"], json!(small), "more may follow after a full page");
            let rest = read_after(&mut c, &json!({"type": "list", "limit": 1, "before_id": small}));
            assert_eq!(rest["jobs"], json!([]));
            assert_eq!(rest["omitted"], json!([big]), "{}", shown(&rest));
        } else {
            assert_eq!(page["omitted"], json!([big]), "{}", shown(&page));
        }
    }
    assert_eq!(read_after(&mut c, &json!({"type": "get", "id": small}))["type"], "job");

    // The CLI too, for every client.
    let ps = state.run(&["queue", "ps"]);
    assert!(ps.status.success(), "{}", common::stderr(&ps));
    assert!(common::stdout(&ps).contains("true small"), "{}", common::stdout(&ps));
    assert!(common::stderr(&ps).contains(&format!("left out: {big}")), "{}", common::stderr(&ps));
    let show = state.run(&["queue", "show", &small.to_string()]);
    assert!(show.status.success(), "{}", common::stderr(&show));
    let show = state.run(&["queue", "show", &big.to_string()]);
    assert!(common::stderr(&show).contains("response_too_large"), "{}", common::stderr(&show));

    // It can still be canceled by id, though that answer does not fit either.
    assert_eq!(code(&read_after(&mut c, &json!({"type": "cancel", "id": big}))), "response_too_large");
    let page = read_after(&mut c, &json!({"type": "list", "states": ["canceled"]}));
    assert_eq!(page["omitted"], json!([big]), "the cancel was done: {}", shown(&page));
}

/// Variables that take `bytes` bytes of an environment (`NAME=value` and
/// its NUL, and a pointer each), each under the 128 KiB a variable may take.
fn bulky_environment(mut bytes: usize) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    while bytes > 200 {
        let name = format!("HEARTH_TEST_BULK_{}", vars.len());
        let len = (bytes - name.len() - 2 - 8).min(100_000);
        bytes -= name.len() + len + 2 + 8;
        vars.push((name, "b".repeat(len)));
    }
    vars
}

#[test]
fn commands_execve_would_refuse_are_refused_at_submit() {
    let arg_max = hearth::sys::arg_max().min(6 << 20);
    let state = StateDir::new();
    // The daemon's own environment leaves 40 KB of room under ARG_MAX:
    // every job's process starts from it.
    let mut cmd = state.hearthd();
    for (k, v) in bulky_environment(arg_max - 40_000) {
        cmd.env(k, v);
    }
    let daemon = state.start_cmd(cmd);
    let mut c = open(&state);

    // 60 KB of arguments: small as JSON, but no longer executable here.
    let reply = c.request(&json!({"type": "submit", "argv": ["echo", "a".repeat(60_000)]}));
    assert_eq!(code(&reply), "command_too_large", "{}", shown(&reply));
    assert!(reply["message"].as_str().unwrap_or("").contains("ARG_MAX"), "{}", shown(&reply));
    // One argument over the per-string limit.
    let reply = c.request(&json!({"type": "submit", "argv": ["echo", "a".repeat(131_072)]}));
    assert_eq!(code(&reply), "command_too_large", "{}", shown(&reply));
    // A command that fits runs: the check does not refuse what would work.
    let reply = c.request(&json!({"type": "submit", "argv": ["echo", "a".repeat(1000)], "max_attempts": 1}));
    assert_eq!(reply["type"], "submitted", "{}", shown(&reply));
    let id = reply["job"]["id"].as_u64().unwrap();
    c.send_json(&json!({"type": "wait", "id": id}));
    let state_of = loop {
        let event = c.read_json().expect("an event");
        let s = event["job"]["state"].as_str().unwrap_or("?").to_owned();
        if !matches!(s.as_str(), "queued" | "running") {
            break s;
        }
    };
    assert_eq!(state_of, "succeeded", "log:\n{}", daemon.log_text());

    // Two million one-character arguments, before: stored, hundreds of MB
    // of daemon memory, and "Argument list too long" at every attempt.
    let many: Vec<&str> = std::iter::once("true").chain(std::iter::repeat_n("a", 2_000_000)).collect();
    let reply = c.request(&json!({"type": "submit", "argv": many}));
    assert_eq!(code(&reply), "command_too_large", "{}", shown(&reply));
    assert!(reply["message"].as_str().unwrap_or("").contains("65536"), "{}", shown(&reply));
    let env: serde_json::Map<String, Value> = (0..5000).map(|i| (format!("V{i}"), json!("x"))).collect();
    let reply = c.request(&json!({"type": "submit", "argv": ["true"], "env": env}));
    assert_eq!(code(&reply), "command_too_large", "{}", shown(&reply));
    // A JSON input of many values, and too many ids.
    let input: Vec<u8> = vec![0; 70_000];
    let reply = c.request(&json!({"type": "submit", "argv": ["cat"], "input": input}));
    assert_eq!(code(&reply), "input_too_large", "{}", shown(&reply));
    let ids: Vec<u64> = (1..=70_000).collect();
    let reply = c.request(&json!({"type": "purge", "ids": ids}));
    assert_eq!(code(&reply), "invalid_request", "{}", shown(&reply));
    // A filter that names states 100,000 times over is still six states.
    let states: Vec<&str> = std::iter::repeat_n("queued", 100_000).collect();
    let reply = c.request(&json!({"type": "list", "states": states}));
    assert_eq!(reply["type"], "jobs", "{}", shown(&reply));
    still_usable(&mut c);
    let report = RawConn::open(state.socket(), "status").request(&json!({"type": "status"}));
    assert_eq!(report["limits"]["max_inflight_bytes"], json!(4 * MAX_FRAME), "{}", report["limits"]);
    assert!(wait_for(Duration::from_secs(10), || daemon.log_text().contains("hearthd ready")));
}
