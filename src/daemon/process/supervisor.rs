//! The background work: plan, then spawn, signal, kill and check, until
//! the daemon stops; one task per instance, from its spawn until its whole
//! process group is gone; and what the previous daemon left (see the
//! service's docs, "After a crash").

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ProcessService;
use super::spawn::{self, Launch, Started};
use super::state::{Action, CheckState, Clock, Exit, Instance, Phase, Probe, Proc, State};
use super::store::{Found, Store};
use crate::daemon::child;
use crate::protocol::process::{ProcessCheck, ProcessDefinition};
use crate::time::{rfc3339_ms, unix_ms};

/// The longest the supervisor sleeps without being woken.
const IDLE_PLAN: Duration = Duration::from_secs(3600);
/// How long an instance's output is still read after its group is gone
/// (a process that left the group may hold the pipe).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// The most of a check command's output kept for its result.
const CHECK_OUTPUT: usize = 1024;
/// How much output is read from a pipe at once.
const READ_CHUNK: usize = 64 << 10;

/// Plans and acts whenever something changes or a deadline comes.
pub(crate) async fn run(service: Arc<ProcessService>) {
    // What subscribers were last told; the processes found at start-up are not news.
    let mut published = service.states();
    loop {
        let (actions, wake) = service.lock().plan(ProcessService::clock());
        for action in actions {
            execute(&service, action);
        }
        service.publish_changes(&mut published);
        service.changed.send_modify(|n| *n = n.wrapping_add(1));
        let wake = wake.unwrap_or_else(|| Instant::now() + IDLE_PLAN);
        tokio::select! {
            () = service.wake.notified() => {}
            () = tokio::time::sleep_until(wake) => {}
            () = service.stop.cancelled() => break,
        }
    }
}

fn execute(service: &Arc<ProcessService>, action: Action) {
    match action {
        Action::Spawn { name, instance, def } => {
            let s = service.clone();
            service.tasks.spawn(async move { run_instance(&s, &name, instance, def).await });
        }
        Action::Signal { name, pid, signal } => {
            tracing::info!(process = %name, pid, "stopping it with {}", super::definition::signal_name(signal));
            if let Err(e) = child::kill_group(pid, signal) {
                tracing::warn!(process = %name, pid, "cannot signal its process group: {e}");
            }
        }
        Action::Kill { name, pid } => {
            tracing::warn!(process = %name, pid, "still running after its stop grace: SIGKILL");
            let _ = child::kill_group(pid, libc::SIGKILL);
        }
        Action::Check { name, instance, def } => {
            let s = service.clone();
            service.tasks.spawn(async move {
                let probe = run_check(&s, &name, &def).await;
                s.update(|state, clock| state.checked(&name, instance, probe, clock));
            });
        }
        Action::Forget { name } => {
            tracing::info!(process = %name, "no longer defined: removing its directory and logs");
            if let Some(cancel) = service.notify.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&name)
            {
                cancel.cancel();
            }
            service.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&name);
            let store = service.store.clone();
            service.tasks.spawn(async move {
                let removed = tokio::task::spawn_blocking(move || store.remove_dir(&name).map_err(|e| (name, e))).await;
                if let Ok(Err((name, e))) = removed {
                    tracing::warn!(process = %name, "cannot remove its directory: {e}");
                }
            });
        }
    }
}

/// One instance, from its spawn until its whole process group is gone.
async fn run_instance(service: &Arc<ProcessService>, name: &str, id: u64, def: ProcessDefinition) {
    let sink = service.log_sink(name, &def);
    let cwd = def.working_dir(&service.home);
    let heartbeat = match &def.check {
        Some(ProcessCheck::Heartbeat { path, .. }) => Some(cwd.join(path)),
        _ => None,
    };
    let started_at_ms = crate::time::now_ms();
    let prepared = match service.store.create_dir(name) {
        Ok(_) if def.wants_notify() => ensure_notify(service, name).map(Some),
        Ok(_) => Ok(None),
        Err(e) => Err(format!("cannot create its directory: {e}")),
    };
    let notify = match prepared {
        Ok(notify) => notify,
        Err(message) => {
            tracing::error!(process = %name, "cannot start: {message}");
            service.update(|s, c| s.spawn_failed(name, id, &message, true, c));
            return;
        }
    };
    let baseline = match &heartbeat {
        Some(path) => modified_ms(path).await,
        None => None,
    };
    let launch = Launch { name, instance: id, def: &def, cwd, notify, heartbeat, started_at_ms };
    let Started { mut child, pid, stdout, stderr } = match spawn::start(&service.store, &launch).await {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!(process = %name, "cannot start: {}", e.message);
            let note = format!("[hearth: {name} could not start: {}]\n", e.message);
            write_log(&sink, note.into_bytes()).await;
            service.update(|s, c| s.spawn_failed(name, id, &e.message, e.permanent, c));
            return;
        }
    };
    tracing::info!(process = %name, pid, instance = id, "started");
    let note = format!("[hearth: {name} started at {}, pid {pid} (instance {id})]\n", rfc3339_ms(started_at_ms));
    write_log(&sink, note.into_bytes()).await;
    service.update(|s, c| s.spawned(name, id, pid, baseline, c));
    let pump = tokio::spawn(pump_output(stdout, stderr, sink.clone()));
    let status = child.wait().await;
    end_group(pid, def.stop_grace()).await;
    if tokio::time::timeout(OUTPUT_DRAIN, pump).await.is_err() {
        tracing::debug!(process = %name, "a process that left its group still holds the output pipes");
    }
    service.store.remove_run(name);
    let exit = match status {
        Ok(status) => Exit { code: status.code(), signal: status.signal(), note: None },
        Err(e) => Exit { note: Some(format!("ended; its status could not be read: {e}")), ..Exit::default() },
    };
    tracing::info!(process = %name, pid, code = ?exit.code, signal = ?exit.signal, "exited");
    let what = match (exit.code, exit.signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by {}", super::definition::signal_name(signal)),
        _ => "ended".into(),
    };
    write_log(&sink, format!("[hearth: {name} {what}]\n").into_bytes()).await;
    service.update(|s, c| s.exited(name, id, &exit, c));
}

/// The rest of a process group whose leader has exited: asked to stop,
/// then killed after `grace`, so that nothing is left running untracked.
async fn end_group(pgid: u32, grace: Duration) {
    if !child::group_alive(pgid) {
        return;
    }
    let _ = child::kill_group(pgid, libc::SIGTERM);
    if !gone_within(pgid, None, grace).await {
        let _ = child::kill_group(pgid, libc::SIGKILL);
        gone_within(pgid, None, Duration::from_secs(5)).await;
    }
}

/// Polls until the group `pgid` (led by a process started at `start_time`,
/// when known) is gone, for at most `limit`; whether it is.
async fn gone_within(pgid: u32, start_time: Option<u64>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut delay = Duration::from_millis(1);
    let alive = || match start_time {
        Some(_) => child::recorded_group_alive(pgid, start_time),
        None => child::group_alive(pgid),
    };
    while alive() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    true
}

/// Copies stdout and stderr, as they come, into the log, until both end.
async fn pump_output(
    mut stdout: tokio::process::ChildStdout,
    mut stderr: tokio::process::ChildStderr,
    sink: Arc<super::logs::LogSink>,
) {
    let (mut out_buf, mut err_buf) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        // Reads from a pipe are cancel-safe: a read that loses the race
        // has taken nothing.
        let chunk = tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read {
                Ok(0) | Err(_) => { out_open = false; continue }
                Ok(n) => out_buf[..n].to_vec(),
            },
            read = stderr.read(&mut err_buf), if err_open => match read {
                Ok(0) | Err(_) => { err_open = false; continue }
                Ok(n) => err_buf[..n].to_vec(),
            },
        };
        write_log(&sink, chunk).await;
    }
}

async fn write_log(sink: &Arc<super::logs::LogSink>, bytes: Vec<u8>) {
    let sink = sink.clone();
    match tokio::task::spawn_blocking(move || sink.write(&bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot write a process's log: {e}"),
        Err(e) => tracing::warn!("cannot write a process's log: {e}"),
    }
}

/// Binds the notify socket of `name` and starts its receiver, once.
fn ensure_notify(service: &Arc<ProcessService>, name: &str) -> Result<PathBuf, String> {
    let path = service.store.notify_socket(name);
    let mut receivers = service.notify.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if receivers.contains_key(name) {
        return Ok(path);
    }
    let socket = super::notify::bind(&path).map_err(|e| format!("cannot create its notify socket: {e}"))?;
    let cancel = CancellationToken::new();
    receivers.insert(name.to_owned(), cancel.clone());
    let s = service.clone();
    service.tasks.spawn(super::notify::receive(socket, name.to_owned(), s, cancel));
    Ok(path)
}

/// The modification time of `path` in ms since the epoch, if it exists.
async fn modified_ms(path: &Path) -> Option<u64> {
    tokio::fs::metadata(path).await.ok()?.modified().ok().map(unix_ms)
}

/// Runs the check of `def` once.
async fn run_check(service: &ProcessService, name: &str, def: &ProcessDefinition) -> Probe {
    let cwd = def.working_dir(&service.home);
    match &def.check {
        Some(ProcessCheck::Heartbeat { path, .. }) => Probe::Heartbeat { mtime_ms: modified_ms(&cwd.join(path)).await },
        Some(ProcessCheck::Command { argv, timeout_ms, .. }) => {
            let timeout = timeout_ms.map_or(super::definition::DEFAULT_CHECK_TIMEOUT, Duration::from_millis);
            let (ok, message) = check_command(name, argv, &cwd, def, timeout).await;
            Probe::Command { ok, message }
        }
        Some(ProcessCheck::Notify { .. }) | None => Probe::Command { ok: true, message: String::new() },
    }
}

/// Runs a check command in the process's directory and environment, with
/// a timeout that kills its group; whether it passed, and what it said.
async fn check_command(
    name: &str,
    argv: &[String],
    cwd: &Path,
    def: &ProcessDefinition,
    timeout: Duration,
) -> (bool, String) {
    let mut cmd = child::command(&argv[0], &argv[1..]);
    cmd.envs(&def.env)
        .env("HEARTH_PROCESS", name)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return (false, format!("cannot run {}: {e}", argv[0])),
    };
    let pid = child.id().unwrap_or(0);
    let mut output = Vec::new();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (mut out, err) = tokio::join!(read_capped(stdout), read_capped(stderr));
        out.extend(err);
        (out, child.wait().await)
    };
    let (ok, status) = match tokio::time::timeout(timeout, run).await {
        Ok((out, status)) => {
            output = out;
            match status {
                Ok(status) if status.success() => (true, "exited with status 0".to_owned()),
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => (false, format!("exited with status {code}")),
                    (None, Some(sig)) => (false, format!("killed by {}", super::definition::signal_name(sig))),
                    _ => (false, "ended".to_owned()),
                },
                Err(e) => (false, format!("cannot wait for it: {e}")),
            }
        }
        Err(_) => {
            let _ = child::kill_group(pid, libc::SIGKILL);
            (false, format!("timed out after {}", crate::units::HumanDuration(timeout)))
        }
    };
    let _ = child::kill_group(pid, libc::SIGKILL);
    let said = String::from_utf8_lossy(&output[..output.len().min(CHECK_OUTPUT)]).trim().to_owned();
    let message = if said.is_empty() { format!("check {status}") } else { format!("check {status}: {said}") };
    (ok, message)
}

/// Reads `from` to its end, keeping the first [`CHECK_OUTPUT`] bytes.
async fn read_capped(from: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut from) = from else { return kept };
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = CHECK_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Puts what a previous daemon left into `state`: run-time definitions,
/// stopped flags, and instances whose process group is still alive, which
/// are stopped (by the plan: a restart) and started again. Returns the
/// survivors, to be watched: (name, instance, pid, pid start time).
pub(crate) fn recover(
    store: &Store,
    state: &mut State,
    found: BTreeMap<String, Found>,
    clock: Clock,
) -> Vec<(String, u64, u32, Option<u64>)> {
    let mut survivors = Vec::new();
    for (name, found) in found {
        let p = state.procs.entry(name.clone()).or_insert_with(|| Proc::new(name.clone()));
        p.file = found.file;
        if let Some(def) = p.file.definition.take() {
            match super::definition::validate(&def) {
                Ok(()) if def.name == name => p.file.definition = Some(def),
                Ok(()) | Err(_) => tracing::error!(process = %name, "ignoring an invalid stored definition"),
            }
        }
        let record = match found.run {
            None => continue,
            Some(Err(why)) => {
                tracing::warn!(process = %name, "dropping its run record: {why}");
                store.remove_run(&name);
                continue;
            }
            Some(Ok(record)) => record,
        };
        if !record.alive(store.boot_id()) {
            tracing::info!(process = %name, pid = record.pid, "its instance from before ended with the previous daemon");
            store.remove_run(&name);
            continue;
        }
        tracing::warn!(
            process = %name,
            pid = record.pid,
            "left running by a daemon that stopped unexpectedly: stopping it, to start it again under supervision"
        );
        let def = p.effective().map(|(_, d)| d.clone()).unwrap_or_else(|| ProcessDefinition {
            name: name.clone(),
            argv: vec!["(left by a previous daemon)".into()],
            ..Default::default()
        });
        let id = record.instance;
        p.next_instance = id + 1;
        p.instance = Some(Instance {
            id,
            def,
            pid: Some(record.pid),
            started: clock.now,
            started_at_ms: record.started_at_ms,
            survivor: true,
            check: CheckState::default(),
            doomed: None,
        });
        p.phase = Phase::Running { since: clock.now };
        p.restart_requested = true;
        survivors.push((name, id, record.pid, record.pid_start_time));
    }
    survivors
}

/// Waits until a survivor's process group is gone (it is not our child:
/// nothing tells us when it exits, so its group is looked at).
pub(crate) async fn watch_survivor(service: &Arc<ProcessService>, name: &str, id: u64, pid: u32, start: Option<u64>) {
    while !gone_within(pid, start, Duration::from_secs(3600)).await {}
    service.store.remove_run(name);
    let note = "left running by a daemon that stopped unexpectedly; ended so that it runs under supervision again";
    let exit = Exit { note: Some(note.into()), ..Exit::default() };
    tracing::info!(process = %name, pid, "the previous daemon's instance has ended");
    service.update(|s, c| s.exited(name, id, &exit, c));
}
