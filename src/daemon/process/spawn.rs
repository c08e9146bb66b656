//! Starting one instance of a process: its environment, working directory
//! and pipes, and its run record, written before its program runs (behind
//! the gate of `child::Gated::spawn`), so that no instance ever runs that a
//! restarted daemon could not find.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, ChildStderr, ChildStdout};

use super::store::Store;
use crate::daemon::child;
use crate::protocol::process::{ProcessCheck, ProcessDefinition};

/// What one instance is started with.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub(crate) name: &'a str,
    pub(crate) instance: u64,
    pub(crate) def: &'a ProcessDefinition,
    pub(crate) cwd: PathBuf,
    /// The notify socket, for a notify check.
    pub(crate) notify: Option<PathBuf>,
    /// The heartbeat file (absolute), for a heartbeat check.
    pub(crate) heartbeat: Option<PathBuf>,
    pub(crate) started_at_ms: u64,
}

/// An instance whose program runs, its record written.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

/// Why an instance could not start.
#[derive(Debug)]
pub(crate) struct SpawnError {
    pub(crate) message: String,
    /// Trying again cannot help: the program or the directory is missing
    /// or not usable.
    pub(crate) permanent: bool,
}

impl SpawnError {
    fn of(e: &io::Error) -> Self {
        let permanent = matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied)
            || matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENOEXEC | libc::EISDIR | libc::ELOOP));
        SpawnError { message: e.to_string(), permanent }
    }
}

/// Starts `launch`, recorded in `store` before its program runs.
pub(crate) async fn start(store: &Store, launch: &Launch<'_>) -> Result<Started, SpawnError> {
    let def = launch.def;
    let mut cmd = child::command(&def.argv[0], &def.argv[1..]);
    cmd.env_clear()
        .envs(environment(launch))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let gated = child::Gated::spawn(cmd).await.map_err(|e| SpawnError::of(&e))?;
    let pid = gated.pid;
    if let Err(e) = store.write_run(launch.name, launch.instance, pid, launch.started_at_ms) {
        gated.abort().await;
        return Err(SpawnError { message: format!("cannot record the process: {e}"), permanent: false });
    }
    match gated.open().await {
        Ok(mut child) => {
            let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
                let _ = child::kill_group(pid, libc::SIGKILL);
                let _ = child.wait().await;
                store.remove_run(launch.name);
                return Err(SpawnError { message: "its output pipes are missing".into(), permanent: false });
            };
            Ok(Started { child, pid, stdout, stderr })
        }
        Err(e) => {
            store.remove_run(launch.name);
            Err(SpawnError::of(&e))
        }
    }
}

/// The daemon's environment (less the service manager's variables), the
/// definition's, and the supervisor's: `HEARTH_PROCESS`,
/// `HEARTH_PROCESS_INSTANCE`, and for checks `NOTIFY_SOCKET` (with
/// `WATCHDOG_USEC`) or `HEARTH_HEARTBEAT_FILE`.
fn environment(launch: &Launch<'_>) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> =
        std::env::vars_os().filter(|(k, _)| !child::SERVICE_MANAGER_VARS.iter().any(|v| k == v)).collect();
    env.extend(launch.def.env.iter().map(|(k, v)| (k.into(), v.into())));
    env.insert("HEARTH_PROCESS".into(), launch.name.into());
    env.insert("HEARTH_PROCESS_INSTANCE".into(), launch.instance.to_string().into());
    if let Some(socket) = &launch.notify {
        env.insert("NOTIFY_SOCKET".into(), socket.into());
        if let Some(ProcessCheck::Notify { watchdog_ms: Some(ms), .. }) = &launch.def.check {
            env.insert("WATCHDOG_USEC".into(), (ms * 1000).to_string().into());
        }
    }
    if let Some(file) = &launch.heartbeat {
        env.insert("HEARTH_HEARTBEAT_FILE".into(), file.into());
    }
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_record_is_there_before_the_program_runs_and_missing_programs_are_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("processes")).unwrap();
        store.create_dir("w").unwrap();
        let run = store.dir("w").join("run.json");
        let script = r#"cat "$RUN"; echo; echo "$HEARTH_PROCESS $HEARTH_PROCESS_INSTANCE $NOTIFY_SOCKET $WATCHDOG_USEC $GREETING"; pwd; echo oops >&2"#;
        let mut def = ProcessDefinition {
            name: "w".into(),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            check: Some(ProcessCheck::Notify { watchdog_ms: Some(2000), start_timeout_ms: None }),
            ..Default::default()
        };
        def.env.insert("RUN".into(), run.to_string_lossy().into_owned());
        def.env.insert("GREETING".into(), "hello".into());
        let launch = Launch {
            name: "w",
            instance: 4,
            def: &def,
            cwd: dir.path().to_owned(),
            notify: Some("/run/n".into()),
            heartbeat: None,
            started_at_ms: 77,
        };
        let Started { mut child, pid, mut stdout, mut stderr } = start(&store, &launch).await.unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        stdout.read_to_string(&mut out).await.unwrap();
        stderr.read_to_string(&mut err).await.unwrap();
        assert!(child.wait().await.unwrap().success());
        let mut lines = out.lines();
        let record: super::super::store::RunRecord = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!((record.instance, record.pid, record.started_at_ms), (4, pid, 77));
        assert_eq!(lines.next(), Some("w 4 /run/n 2000000 hello"));
        assert_eq!(lines.next(), Some(dir.path().canonicalize().unwrap().to_str().unwrap()));
        assert_eq!(err, "oops\n");

        std::fs::remove_file(&run).unwrap();
        let missing = ProcessDefinition { argv: vec!["hearth-test-no-such-program".into()], ..def.clone() };
        let e = start(&store, &Launch { def: &missing, ..launch }).await.unwrap_err();
        assert!(e.permanent, "{}", e.message);
        assert!(!run.exists(), "no record of a program that never ran");
    }
}
