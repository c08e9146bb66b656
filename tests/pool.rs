//! The pool channel against the real `hearthd`: raw frames, the client
//! library and the CLI. A real `venv` pool covers the end-to-end path; a
//! fast `sh -c 'mkdir -p {path}/work'` kind covers the rest.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{RawConn, StateDir, stderr, stdout, wait_for};
use hearth::client::PoolClient;
use hearth::daemon::fsutil::pid_alive;
use hearth::protocol::ErrorCode;
use hearth::protocol::pool::{DefinitionSource, PoolDefinition};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

fn pool_status(state: &StateDir, pool: &str) -> Value {
    let mut c = RawConn::open(state.socket(), "pool");
    let reply = c.request(&json!({"type": "status", "pool": pool}));
    assert_eq!(reply["type"], "status", "{reply}");
    reply["pools"][0].clone()
}

/// Polls a pool's status until `done` holds; returns that status.
fn wait_pool(state: &StateDir, pool: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_for(PATIENCE, || {
        last = pool_status(state, pool);
        done(&last)
    });
    assert!(ok, "pool {pool}: {what} never happened; last status: {last:#}");
    last
}

fn daemon_status(state: &StateDir) -> Value {
    RawConn::open(state.socket(), "status").request(&json!({"type": "status"}))
}

fn pool_dir(state: &StateDir, pool: &str) -> PathBuf {
    state.state_dir().join("pools").join(pool)
}

/// The resource directories of a pool.
fn resource_dirs(state: &StateDir, pool: &str) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(pool_dir(state, pool)) else { return BTreeSet::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// A `[pool.<name>]` table of the fast kind.
fn mkdir_pool(name: &str, size: u32, extra: &str) -> String {
    format!("[pool.{name}]\ncreate = [\"sh\", \"-c\", \"mkdir -p {{path}}/work\"]\nsize = {size}\n{extra}\n")
}

/// A `[pool.<name>]` table whose builds wait while `gate` does not exist.
fn gated_pool(name: &str, size: u32, gate: &Path, extra: &str) -> String {
    format!(
        "[pool.{name}]\n\
         create = [\"sh\", \"-c\", \"while [ ! -e \\\"$GATE\\\" ]; do sleep 0.01; done; mkdir -p {{path}}/work\"]\n\
         size = {size}\nenv = {{ GATE = \"{}\" }}\n{extra}\n",
        gate.display()
    )
}

fn take(c: &mut RawConn, pool: &str) -> (String, PathBuf) {
    let reply = c.request(&json!({"type": "take", "pool": pool}));
    assert_eq!(reply["type"], "taken", "{reply}");
    (reply["lease"].as_str().unwrap().to_owned(), PathBuf::from(reply["path"].as_str().unwrap()))
}

fn assert_python_runs(venv: &Path) {
    let out = common::run_bounded(
        Command::new(venv.join("bin/python")).args(["-c", "import sys; print(sys.prefix)"]),
        common::COMMAND_LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(Path::new(stdout(&out).trim()), venv, "the interpreter belongs to the venv");
}

#[test]
fn a_real_venv_pool_end_to_end_through_the_cli() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    // Size 0: an idle install builds nothing.
    let idle = pool_status(&state, "venv");
    assert_eq!((idle["source"].as_str(), idle["target"].as_u64()), (Some("builtin"), Some(0)));
    assert_eq!((idle["ready"].as_u64(), idle["building"].as_u64()), (Some(0), Some(0)));

    // Nothing ready: built on demand.
    let out = state.run(&["--json", "pool", "take", "venv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cold: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cold["warm"], false, "{cold}");
    let cold_path = PathBuf::from(cold["path"].as_str().unwrap());
    assert_python_runs(&cold_path);

    // Keep one ready: the next take is warm, and prints just the path.
    let out = state.run(&["pool", "warm", "venv", "--size", "1"]);
    assert!(stdout(&out).contains("keeps 1 ready (was 0)"), "{}", stdout(&out));
    wait_pool(&state, "venv", "one ready venv", |s| s["ready"] == 1);
    let out = state.run(&["pool", "take", "venv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let warm_path = PathBuf::from(stdout(&out).trim());
    let note = stderr(&out);
    assert!(note.contains("(warm)"), "{note}");
    let warm_lease = note.split_whitespace().nth(1).unwrap().to_owned();
    assert_ne!(warm_path, cold_path);
    assert_python_runs(&warm_path);
    // Back to 0: the replacement build the take started is stopped.
    let out = state.run(&["pool", "drain", "venv"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A venv has no reset command: asked to reuse, it is removed, and says why.
    let out = state.run(&["pool", "release", &warm_lease, "--reuse"]);
    assert!(stdout(&out).contains("removed (the pool has no reset command)"), "{}", stdout(&out));
    let out = state.run(&["pool", "release", cold["lease"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_for(PATIENCE, || !warm_path.exists() && !cold_path.exists()), "released venvs are removed");

    let status = wait_pool(&state, "venv", "no build left", |s| s["building"] == 0);
    assert_eq!((status["takes"].as_u64(), status["warm_takes"].as_u64()), (Some(2), Some(1)));
    assert_eq!(status["warm_hit_rate"], 0.5);
    assert!(status["mean_build_ms"].as_u64().unwrap() > 0);
    assert_eq!(status["failures"], 0, "{status}");
    let summary = &daemon_status(&state)["services"]["pool"]["pools"]["venv"];
    assert_eq!(summary["warm_hit_rate"], 0.5, "{summary}");
    assert_eq!((&summary["builds"], &summary["failures_total"]), (&status["builds"], &json!(0)), "{summary}");
    assert!(summary["builds"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(daemon.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_takes_from_a_pool_of_eight_never_share() {
    let state = StateDir::new();
    let gate = state.dir.path().join("gate");
    std::fs::write(&gate, b"").unwrap();
    state.write_config(&format!("[pool]\nmax_concurrent_builds = 4\n{}", gated_pool("gated", 8, &gate, "")));
    let _daemon = state.start(&[]);
    wait_pool(&state, "gated", "8 ready", |s| s["ready"] == 8);

    // Builds now wait at the gate, so exactly the 8 ready ones are warm.
    std::fs::remove_file(&gate).unwrap();
    let takes: Vec<_> = (0..32)
        .map(|_| {
            let socket = state.socket().to_owned();
            tokio::spawn(async move { PoolClient::connect(&socket).await.unwrap().take("gated").await.unwrap() })
        })
        .collect();
    wait_pool(&state, "gated", "24 waiting takes", |s| s["waiting"] == 24 && s["ready"] == 0);
    std::fs::write(&gate, b"").unwrap();
    let mut leases = Vec::new();
    for take in takes {
        leases.push(take.await.unwrap());
    }

    let warm = leases.iter().filter(|l| l.warm).count();
    assert_eq!((warm, leases.len() - warm), (8, 24), "8 warm, 24 built on demand");
    let ids: BTreeSet<_> = leases.iter().map(|l| l.lease.clone()).collect();
    let paths: BTreeSet<_> = leases.iter().map(|l| l.path.clone()).collect();
    let resources: BTreeSet<_> = leases.iter().map(|l| l.resource.clone()).collect();
    assert_eq!((ids.len(), paths.len(), resources.len()), (32, 32, 32), "no resource handed out twice");
    for l in &leases {
        assert!(l.path.join("work").is_dir(), "{l:?}");
        assert_eq!(l.holder.as_deref(), Some(hearth::client::DEFAULT_CLIENT_NAME));
    }
    assert!(leases.iter().filter(|l| !l.warm).all(|l| l.wait_ms > 0 || l.build_ms > 0));

    let mut client = PoolClient::connect(state.socket()).await.unwrap();
    assert_eq!(client.leases(Some("gated")).await.unwrap().len(), 32);
    let status = wait_pool(&state, "gated", "refilled to 8", |s| s["ready"] == 8 && s["building"] == 0);
    assert_eq!((status["takes"].as_u64(), status["warm_takes"].as_u64()), (Some(32), Some(8)));
    assert_eq!(status["taken"], 32);
}

#[test]
fn a_take_whose_caller_leaves_while_waiting_does_not_leak_its_resource() {
    let state = StateDir::new();
    let gate = state.dir.path().join("gate");
    state.write_config(&gated_pool("gated", 0, &gate, ""));
    let _daemon = state.start(&[]);
    let mut c = RawConn::open(state.socket(), "pool");
    c.send_json(&json!({"type": "take", "pool": "gated"}));
    wait_pool(&state, "gated", "a waiting take", |s| s["waiting"] == 1 && s["building"] == 1);
    drop(c);
    std::fs::write(&gate, b"").unwrap();
    // The build finishes for nobody (its answer cannot be delivered, so its
    // take is undone): the resource ends up ready, kept for the next take
    // over the target of 0, never taken.
    wait_pool(&state, "gated", "the take undone and its resource kept", |s| {
        s["building"] == 0 && s["waiting"] == 0 && s["taken"] == 0 && s["ready"] == 1
    });
    let mut c = RawConn::open(state.socket(), "pool");
    assert_eq!(c.request(&json!({"type": "leases"}))["leases"], json!([]));
    let reply = c.request(&json!({"type": "take", "pool": "gated", "timeout_ms": 0}));
    assert_eq!((reply["type"].as_str(), reply["warm"].as_bool()), (Some("taken"), Some(true)), "kept for it: {reply}");
}

#[test]
fn a_restart_adopts_ready_resources_after_their_check_and_keeps_leases() {
    let state = StateDir::new();
    state.write_config(&mkdir_pool("keep", 2, "check = [\"test\", \"-d\", \"{path}/work\"]"));
    let mut daemon = state.start(&[]);
    wait_pool(&state, "keep", "2 ready", |s| s["ready"] == 2);
    let mut c = RawConn::open(state.socket(), "pool");
    let (lease, path) = take(&mut c, "keep");
    std::fs::write(path.join("work/mine"), b"the holder's").unwrap();
    wait_pool(&state, "keep", "refilled", |s| s["ready"] == 2 && s["building"] == 0);
    let before = resource_dirs(&state, "keep");
    assert_eq!(before.len(), 3);
    let taken_id = path.file_name().unwrap().to_string_lossy().into_owned();
    let ready: Vec<&String> = before.iter().filter(|id| **id != taken_id).collect();

    // While the daemon is down, one ready resource goes bad and a stray
    // directory appears.
    std::fs::remove_dir(pool_dir(&state, "keep").join(ready[0]).join("work")).unwrap();
    let stray = "ab".repeat(16);
    std::fs::create_dir(pool_dir(&state, "keep").join(&stray)).unwrap();
    std::fs::write(pool_dir(&state, "keep").join(&stray).join("junk"), b"x").unwrap();
    drop(c);
    assert_eq!(daemon.stop(), 0);

    let mut daemon = state.start(&[]);
    let status = wait_pool(&state, "keep", "2 ready after the checks", |s| {
        s["ready"] == 2 && s["checking"] == 0 && s["building"] == 0
    });
    assert_eq!(status["check_failed"], 1, "the bad one failed its check: {status}");
    assert_eq!(status["builds"], 1, "and only it was rebuilt: {status}");
    let after = resource_dirs(&state, "keep");
    assert!(after.contains(ready[1]), "the good one was adopted");
    assert!(!after.contains(ready[0]) && !after.contains(&stray), "{after:?}");
    assert_eq!(std::fs::read(path.join("work/mine")).unwrap(), b"the holder's", "a taken resource is untouched");

    let mut c = RawConn::open(state.socket(), "pool");
    let leases = c.request(&json!({"type": "leases", "pool": "keep"}));
    assert_eq!(leases["leases"][0]["lease"], lease.as_str(), "{leases}");
    assert_eq!(leases["leases"][0]["path"], json!(path));
    let released = c.request(&json!({"type": "release", "lease": lease}));
    assert_eq!(released["outcome"], "removed", "{released}");
    assert!(wait_for(PATIENCE, || !path.exists()));
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn kill_9_in_the_middle_of_a_build_leaves_nothing_behind() {
    let state = StateDir::new();
    let mark = state.dir.path().join("build.pid");
    state.write_config(&format!(
        "[pool.slow]\n\
         create = [\"sh\", \"-c\", \"mkdir -p {{path}}/partial && echo $$ > \\\"$MARK\\\" && exec sleep 3600\"]\n\
         size = 1\nenv = {{ MARK = \"{}\" }}\n",
        mark.display()
    ));
    let mut daemon = state.start(&[]);
    assert!(wait_for(PATIENCE, || std::fs::read_to_string(&mark).is_ok_and(|s| s.ends_with('\n'))));
    let pid: u32 = std::fs::read_to_string(&mark).unwrap().trim().parse().unwrap();
    let partial = resource_dirs(&state, "slow");
    assert_eq!(partial.len(), 1);
    let id = partial.first().unwrap().clone();
    let record = pool_dir(&state, "slow").join(format!("{id}.json"));
    assert!(wait_for(PATIENCE, || std::fs::read_to_string(&record).is_ok_and(|r| r.contains("\"process\""))));

    daemon.kill9();
    assert!(pid_alive(pid), "the build runs in its own process group and outlives the daemon");

    // The next daemon (whose builds now finish) kills and removes the interrupted build.
    state.write_config(&mkdir_pool("slow", 1, ""));
    let mut daemon = state.start(&[]);
    assert!(wait_for(PATIENCE, || !pid_alive(pid)), "the interrupted build's processes were killed");
    wait_pool(&state, "slow", "a fresh ready resource", |s| s["ready"] == 1);
    let now = resource_dirs(&state, "slow");
    assert_eq!(now.len(), 1);
    assert!(!now.contains(&id), "the partial build is gone");
    assert!(!record.exists());
    assert!(daemon.log_text().contains("interrupted by a crash"), "{}", daemon.log_text());
    assert_eq!(daemon.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_create_backs_off_and_makes_health_degraded() {
    let state = StateDir::new();
    state.write_config("[pool]\nretry_base = \"100ms\"\nretry_max = \"1m\"\nfailures_degraded = 3\n");
    let _daemon = state.start(&[]);
    let mut client = PoolClient::connect(state.socket()).await.unwrap();
    let broken = PoolDefinition {
        name: "broken".into(),
        create: Some(vec!["sh".into(), "-c".into(), "echo boom >&2; exit 3".into()]),
        size: 1,
        ..Default::default()
    };
    let defined = client.define(broken).await.unwrap();
    assert_eq!((defined.source, defined.changed), (DefinitionSource::Runtime, true));

    let status = wait_pool(&state, "broken", "3 failures in a row", |s| s["failures"].as_u64() >= Some(3));
    let failures = status["failures"].as_u64().unwrap();
    assert_eq!(status["backoff_ms"], (100u64 << (failures - 1)).min(60_000), "exponential backoff: {status}");
    assert!(status["retry_at"].is_string());
    let message = status["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("exited with status 3") && message.contains("boom"), "{message}");
    let log = std::fs::read_to_string(status["last_error"]["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("$ sh -c 'echo boom >&2; exit 3'") && log.contains("boom"), "{log}");

    let health = &daemon_status(&state)["health"];
    assert_eq!(health["state"], "degraded", "{health}");
    let reason = health["reasons"].as_array().unwrap().iter().find(|r| r["code"] == "pool_failing").unwrap();
    assert!(reason["message"].as_str().unwrap().contains("pool broken"), "{reason}");

    // A take does not wait out the backoff: it tries at once and says why it failed.
    let err = client.take_within("broken", Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::BuildFailed), "{err}");
    assert!(err.to_string().contains("boom"), "{err}");

    // A fixed definition starts over at once, and health recovers.
    let fixed = PoolDefinition {
        name: "broken".into(),
        create: Some(vec!["sh".into(), "-c".into(), "mkdir -p {path}/work".into()]),
        size: 1,
        ..Default::default()
    };
    assert!(client.define(fixed).await.unwrap().changed);
    wait_pool(&state, "broken", "a ready resource", |s| s["ready"] == 1 && s["failures"] == 0);
    assert_eq!(daemon_status(&state)["health"]["state"], "healthy");
}

#[test]
fn a_build_over_its_timeout_is_killed_with_its_process_group() {
    let state = StateDir::new();
    let mark = state.dir.path().join("child.pid");
    state.write_config(&format!(
        "[pool]\nretry_base = \"1m\"\n\
         [pool.stuck]\ncreate = [\"sh\", \"-c\", \"sleep 3600 & echo $! > \\\"$MARK\\\"; wait\"]\n\
         size = 1\ncreate_timeout = \"300ms\"\nenv = {{ MARK = \"{}\" }}\n",
        mark.display()
    ));
    let _daemon = state.start(&[]);
    let status = wait_pool(&state, "stuck", "a failure", |s| s["failures"] == 1);
    assert!(status["last_error"]["message"].as_str().unwrap().contains("timed out after 300ms"), "{status}");
    let pid: u32 = std::fs::read_to_string(&mark).unwrap().trim().parse().unwrap();
    assert!(wait_for(PATIENCE, || !pid_alive(pid)), "the build's background child was killed too");
    assert!(
        resource_dirs(&state, "stuck").is_empty() || wait_for(PATIENCE, || resource_dirs(&state, "stuck").is_empty())
    );
}

#[test]
fn max_age_and_failing_checks_rebuild() {
    let state = StateDir::new();
    state.write_config(&format!(
        "{}{}",
        mkdir_pool("aging", 1, "max_age = \"300ms\""),
        mkdir_pool("checked", 1, "check = [\"sh\", \"-c\", \"test ! -e {path}/bad\"]\ncheck_interval = \"100ms\""),
    ));
    let _daemon = state.start(&[]);

    let status = wait_pool(&state, "aging", "two expiries", |s| s["expired"].as_u64() >= Some(2) && s["ready"] == 1);
    assert!(status["builds"].as_u64().unwrap() >= 3, "each expired resource was rebuilt: {status}");

    wait_pool(&state, "checked", "a ready resource", |s| s["ready"] == 1);
    let first = resource_dirs(&state, "checked");
    assert_eq!(first.len(), 1);
    let old = pool_dir(&state, "checked").join(first.first().unwrap());
    std::fs::write(old.join("bad"), b"").unwrap();
    let status =
        wait_pool(&state, "checked", "a rebuild after the failed check", |s| s["check_failed"] == 1 && s["ready"] == 1);
    assert!(status["last_error"]["message"].as_str().unwrap().starts_with("check:"), "{status}");
    assert!(wait_for(PATIENCE, || !old.exists()));
    assert!(resource_dirs(&state, "checked").is_disjoint(&first));
    assert_eq!(status["failures"], 0, "a failed check is not a failed build");
}

#[test]
fn releases_name_leases_never_paths_and_unknown_ones_delete_nothing() {
    let state = StateDir::new();
    state.write_config(&mkdir_pool("p", 2, ""));
    let _daemon = state.start(&[]);
    wait_pool(&state, "p", "2 ready", |s| s["ready"] == 2);
    let mut c = RawConn::open(state.socket(), "pool");
    let (lease, path) = take(&mut c, "p");
    wait_pool(&state, "p", "refilled", |s| s["ready"] == 2 && s["building"] == 0);
    let before = resource_dirs(&state, "p");
    assert_eq!(before.len(), 3);

    let cases = [
        (json!({"type": "release", "lease": "0123456789abcdef0123456789abcdef"}), "unknown_lease"),
        (json!({"type": "release", "lease": path}), "invalid_request"),
        (json!({"type": "release", "lease": pool_dir(&state, "p")}), "invalid_request"),
        (json!({"type": "release", "lease": "../../.."}), "invalid_request"),
        (json!({"type": "release", "lease": lease.to_uppercase()}), "invalid_request"),
        (json!({"type": "release", "lease": 42}), "invalid_request"),
        (json!({"type": "release"}), "invalid_request"),
        (json!({"type": "take", "pool": "nope"}), "unknown_pool"),
        (json!({"type": "take", "pool": "../p"}), "unknown_pool"),
        (json!({"type": "take", "pool": "p", "timeout_ms": -1}), "invalid_request"),
    ];
    for (request, code) in cases {
        let reply = c.request(&request);
        assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(code)), "{request}: {reply}");
    }
    assert_eq!(resource_dirs(&state, "p"), before, "nothing was deleted");
    assert!(path.join("work").is_dir());

    let released = c.request(&json!({"type": "release", "lease": lease}));
    assert_eq!(released["type"], "released", "{released}");
    let again = c.request(&json!({"type": "release", "lease": lease}));
    assert_eq!(again["code"], "unknown_lease", "a released lease is void: {again}");
    let out = state.run(&["pool", "release", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("never a path"), "{}", stderr(&out));
}

#[test]
fn release_with_reuse_resets_the_resource_and_it_replaces_the_build_under_way() {
    let state = StateDir::new();
    let gate = state.dir.path().join("gate");
    std::fs::write(&gate, b"").unwrap();
    state.write_config(&gated_pool("r", 1, &gate, "reset = [\"sh\", \"-c\", \"rm -rf {path}/work/*\"]"));
    let mut daemon = state.start(&[]);
    wait_pool(&state, "r", "1 ready", |s| s["ready"] == 1);
    std::fs::remove_file(&gate).unwrap();
    let mut c = RawConn::open(state.socket(), "pool");
    let (lease, path) = take(&mut c, "r");
    std::fs::write(path.join("work/scratch"), b"used").unwrap();
    wait_pool(&state, "r", "the replacement build", |s| s["building"] == 1);

    let released = c.request(&json!({"type": "release", "lease": lease, "reuse": true}));
    assert_eq!(released["outcome"], "resetting", "{released}");
    let status = wait_pool(&state, "r", "the reset resource back", |s| s["ready"] == 1 && s["building"] == 0);
    assert_eq!(status["failures"], 0, "a cancelled build is not a failure: {status}");
    assert_eq!(resource_dirs(&state, "r").len(), 1, "the build it replaced is gone");
    let (lease, again) = take(&mut c, "r");
    assert_eq!(again, path, "the same resource, reset");
    assert!(path.join("work").is_dir() && !path.join("work/scratch").exists());

    // Full pool (the gate is open again): reuse is declined, with the reason.
    std::fs::write(&gate, b"").unwrap();
    wait_pool(&state, "r", "refilled", |s| s["ready"] == 1);
    let released = c.request(&json!({"type": "release", "lease": lease, "reuse": true}));
    assert_eq!(released["outcome"], "removed", "{released}");
    assert_eq!(released["reason"], "the pool already holds its target");
    assert_eq!(daemon.stop(), 0);
}

#[test]
fn definitions_persist_across_restarts_and_config_wins_over_define() {
    let state = StateDir::new();
    state.write_config("[pool.shared]\ncreate = [\"sh\", \"-c\", \"mkdir {path}/from-config\"]\nsize = 1\n");
    let mut daemon = state.start(&[]);
    let file = state.dir.path().join("pools.toml");
    std::fs::write(&file, "[pool.mine]\ncreate = [\"sh\", \"-c\", \"mkdir {path}/mine\"]\nsize = 1\n").unwrap();
    let out = state.run(&["pool", "define", "--file", file.to_str().unwrap()]);
    assert_eq!(stdout(&out).trim(), "pool mine: defined", "{}", stderr(&out));
    let out = state.run(&["pool", "define", "shared", "--create", "sh -c 'mkdir {path}/from-define'", "--size", "1"]);
    assert!(stdout(&out).contains("config.toml defines shared too"), "{}", stdout(&out));
    let out = state.run(&["pool", "define", "--file", file.to_str().unwrap()]);
    assert_eq!(stdout(&out).trim(), "pool mine: unchanged", "defining again is harmless");

    wait_pool(&state, "shared", "1 ready", |s| s["ready"] == 1);
    let out = state.run(&["pool", "take", "shared"]);
    assert!(Path::new(stdout(&out).trim()).join("from-config").is_dir(), "config.toml's definition applies");
    let out = state.run(&["pool", "warm", "mine", "--size", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_pool(&state, "mine", "2 ready", |s| s["ready"] == 2);

    assert_eq!(daemon.stop(), 0);
    let _daemon = state.start(&[]);
    let mine = pool_status(&state, "mine");
    assert_eq!((mine["source"].as_str(), mine["target"].as_u64()), (Some("runtime"), Some(2)), "{mine}");
    assert_eq!(mine["definition"]["create"][2], "mkdir {path}/mine");

    let out = state.run(&["pool", "undefine", "shared"]);
    assert!(stdout(&out).contains("the config one applies"), "{}", stdout(&out));
    for name in ["shared", "venv"] {
        let out = state.run(&["pool", "undefine", name]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("(not_runtime_defined)"), "{}", stderr(&out));
    }
    let out = state.run(&["pool", "undefine", "mine"]);
    assert!(stdout(&out).contains("pool mine removed"), "{}", stdout(&out));
    assert!(wait_for(PATIENCE, || !pool_dir(&state, "mine").exists()), "a pool with nothing left is removed");
    let out = state.run(&["--json", "pool", "status"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = report["pools"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["shared", "venv"]);

    let out = state.run(&["pool", "define", "bad name", "--create", "true"]);
    assert!(stderr(&out).contains("(invalid_definition)"), "{}", stderr(&out));
    let out = state.run(&["pool", "define", "nocreate", "--kind", "command"]);
    assert!(stderr(&out).contains("create is required"), "{}", stderr(&out));
}

#[test]
fn a_pool_service_that_cannot_start_leaves_the_daemon_serving() {
    let state = StateDir::new();
    state.write_config("");
    std::fs::write(state.state_dir().join("pools"), b"not a directory").unwrap();
    let _daemon = state.start(&[]);
    let status = daemon_status(&state);
    let channels = status["channels"].as_array().unwrap();
    assert!(channels.contains(&json!("status")) && !channels.contains(&json!("pool")), "{status}");
    assert_eq!(status["health"]["state"], "unhealthy");
    assert_eq!(status["health"]["reasons"][0]["code"], "pool_unavailable", "{status}");
    let mut c = RawConn::connect(state.socket());
    let refused = c.handshake("pool");
    assert_eq!(refused["error"]["code"], "channel_unavailable", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("not a directory"), "{refused}");
}

#[test]
fn a_disabled_pool_channel_is_refused_and_builds_nothing() {
    let state = StateDir::new();
    state.write_config("[pool]\nenabled = false\n");
    let _daemon = state.start(&[]);
    let status = daemon_status(&state);
    assert!(!status["channels"].as_array().unwrap().contains(&json!("pool")), "{status}");
    assert_eq!(status["health"]["state"], "healthy", "disabled is not a failure: {status}");
    let mut c = RawConn::connect(state.socket());
    let refused = c.handshake("pool");
    assert_eq!(refused["error"]["code"], "channel_unavailable", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("pool.enabled = false"), "{refused}");
    assert!(!state.state_dir().join("pools").exists(), "nothing was created");
}

/// A build's process is recorded before its program runs: a daemon killed
/// at any moment of a build's start leaves nothing running once the next
/// daemon has started. Killed at offsets of 0 to 4 ms after the build's
/// directory appears (its process is started right after).
#[test]
fn kill_9_as_a_build_starts_never_leaves_its_process_running() {
    let state = StateDir::new();
    let tag = format!("hearth-test-build-{}", std::process::id());
    let mut seen = BTreeSet::new();
    let mut previous: Option<(String, Duration)> = None;
    for step in 0..=40u64 {
        let offset = Duration::from_micros(100 * step);
        let marker = format!("{tag}-{step}");
        state.write_config(&format!(
            "[pool.slow]\ncreate = [\"sleep\", \"3600\"]\nsize = 1\nenv = {{ HEARTH_TEST_MARK = \"{marker}\" }}\n"
        ));
        let log = state.dir.path().join(format!("hearthd.kill.{step}.log"));
        let child = state.hearthd().stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let mut daemon = common::Daemon {
            child: Some(child),
            log,
            socket: state.socket().to_owned(),
            info: state.paths.info_file(),
        };
        // Polled without a pause: the offsets below count from the moment
        // the directory appears, not from a poll that comes late.
        let deadline = std::time::Instant::now() + PATIENCE;
        while !resource_dirs(&state, "slow").into_iter().any(|id| seen.insert(id)) {
            assert!(std::time::Instant::now() < deadline, "step {step}: no build started; log:\n{}", daemon.log_text());
            std::thread::yield_now();
        }
        // The offset is the experiment: where in the build's start the kill lands.
        let kill_at = std::time::Instant::now() + offset;
        while std::time::Instant::now() < kill_at {
            std::hint::spin_loop();
        }
        daemon.kill9();
        // This daemon started after the one before was killed, so it has
        // killed what that one left, before it started a build of its own.
        if let Some((marker, offset)) = previous.take() {
            let gone = wait_for(Duration::from_secs(10), || common::processes_marked(&marker).is_empty());
            assert!(
                gone,
                "a kill -9 {offset:?} after a build's start left its process running: {:?}",
                common::processes_marked(&marker)
            );
        }
        previous = Some((marker, offset));
    }
    state.write_config(&mkdir_pool("slow", 1, ""));
    let mut daemon = state.start(&[]);
    let (marker, offset) = previous.unwrap();
    let gone = wait_for(Duration::from_secs(10), || common::processes_marked(&marker).is_empty());
    assert!(gone, "a kill -9 {offset:?} after a build's start left its process running");
    assert_eq!(daemon.stop(), 0);
    assert!(common::processes_marked(&tag).is_empty(), "{:?}", common::processes_marked(&tag));
}

#[test]
fn an_empty_create_is_refused_and_an_absent_one_means_venv() {
    let state = StateDir::new();
    state.write_config("");
    let _daemon = state.start(&[]);
    let mut c = RawConn::open(state.socket(), "pool");
    for definition in [json!({"name": "e", "create": []}), json!({"name": "e", "kind": "command", "create": []})] {
        let reply = c.request(&json!({"type": "define", "definition": definition}));
        assert_eq!(reply["code"], "invalid_definition", "{definition}: {reply}");
        assert!(reply["message"].as_str().unwrap().contains("create must name a program"), "{reply}");
    }
    assert_eq!(c.request(&json!({"type": "status", "pool": "e"}))["code"], "unknown_pool", "nothing was defined");
    let out = state.run(&["pool", "define", "e", "--create", ""]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(invalid_definition)"), "{}", stderr(&out));

    let reply = c.request(&json!({"type": "define", "definition": {"name": "e"}}));
    assert_eq!(reply["type"], "defined", "{reply}");
    assert_eq!(pool_status(&state, "e")["definition"]["kind"], "venv");
}

/// The take that gave up waiting comes back: the build it started serves it.
/// A pool of size 0 (as the built-in `venv` is), a build slower than the
/// take's timeout.
#[test]
fn a_build_whose_take_timed_out_serves_the_next_take() {
    let state = StateDir::new();
    state.write_config("");
    let mut daemon = state.start(&[]);
    let mut c = RawConn::open(state.socket(), "pool");
    let define = |c: &mut RawConn, name: &str, create: &str, size: u32| {
        let definition = json!({"name": name, "create": ["sh", "-c", create], "size": size});
        let reply = c.request(&json!({"type": "define", "definition": definition}));
        assert_eq!(reply["type"], "defined", "{reply}");
    };
    define(&mut c, "slow", "sleep 0.4; mkdir {path}/work", 0);
    let reply = c.request(&json!({"type": "take", "pool": "slow", "timeout_ms": 50}));
    assert_eq!(reply["code"], "take_timeout", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("will serve the next take"), "{reply}");
    wait_pool(&state, "slow", "the build to end", |s| s["builds"] == 1 && s["building"] == 0);
    // The scheduler has planned since that build ended once another pool's
    // build, asked for after it, has started and ended.
    define(&mut c, "probe", "mkdir {path}/work", 1);
    wait_pool(&state, "probe", "a ready probe", |s| s["ready"] == 1);
    let status = pool_status(&state, "slow");
    assert_eq!((status["target"].as_u64(), status["ready"].as_u64()), (Some(0), Some(1)), "kept: {status}");

    let reply = c.request(&json!({"type": "take", "pool": "slow", "timeout_ms": 0}));
    assert_eq!(reply["type"], "taken", "the next take gets it: {reply}");
    assert_eq!(reply["warm"], true, "{reply}");
    assert!(PathBuf::from(reply["path"].as_str().unwrap()).join("work").is_dir());
    assert!(!daemon.log_text().contains("more than its target"), "{}", daemon.log_text());
    assert_eq!(daemon.stop(), 0);

    // Unclaimed past `pool.unclaimed_grace`, it goes.
    state.write_config("[pool]\nunclaimed_grace = \"300ms\"\n");
    let mut daemon = state.start(&[]);
    let mut c = RawConn::open(state.socket(), "pool");
    let reply = c.request(&json!({"type": "take", "pool": "slow", "timeout_ms": 50}));
    assert_eq!(reply["code"], "take_timeout", "{reply}");
    wait_pool(&state, "slow", "the build to end", |s| s["builds"] == 1 && s["building"] == 0);
    wait_pool(&state, "slow", "its removal after the grace", |s| s["ready"] == 0);
    assert!(daemon.log_text().contains("the pool holds more than its target"), "{}", daemon.log_text());
    assert_eq!(daemon.stop(), 0);
}

/// Ten takes a second from a pool of six, each keeping its resource: the
/// replacements start within 200 ms of the take that called for them, so
/// every take finds one ready.
#[test]
fn a_steady_take_rate_never_runs_the_pool_dry() {
    let state = StateDir::new();
    state.write_config(&format!("[pool]\nmax_concurrent_builds = 2\n{}", mkdir_pool("steady", 6, "")));
    let _daemon = state.start(&[]);
    wait_pool(&state, "steady", "6 ready", |s| s["ready"] == 6 && s["building"] == 0);
    let mut c = RawConn::open(state.socket(), "pool");
    let mut outcomes = String::new();
    let start = std::time::Instant::now();
    for n in 0..40u32 {
        // The load's shape, not a wait for the daemon: one take every 100 ms.
        let due = start + Duration::from_millis(100) * n;
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        let reply = c.request(&json!({"type": "take", "pool": "steady", "timeout_ms": 0}));
        outcomes.push(if reply["type"] == "taken" { 'o' } else { '.' });
    }
    assert_eq!(outcomes, "o".repeat(40), "o: a warm take, .: the pool was dry");
    let status = pool_status(&state, "steady");
    assert_eq!((status["taken"].as_u64(), status["warm_takes"].as_u64()), (Some(40), Some(40)), "{status}");
}

#[test]
fn a_loosened_pools_directory_is_made_private_again_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let state = StateDir::new();
    state.write_config("");
    let mut daemon = state.start(&[]);
    let pools = state.state_dir().join("pools");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pools), 0o700);
    assert_eq!(daemon.stop(), 0);
    std::fs::set_permissions(&pools, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _daemon = state.start(&[]);
    assert_eq!(mode(&pools), 0o700, "narrowed again, as queue/ and blobs/ are");
    assert!(daemon_status(&state)["channels"].as_array().unwrap().contains(&json!("pool")));
}
