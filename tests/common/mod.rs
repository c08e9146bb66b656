//! Helpers shared by the integration tests: a real `hearthd` on a temp state
//! directory, the real `hearth` CLI, raw frames over a real socket, and
//! polling with deadlines (never fixed sleeps).
#![allow(dead_code, unreachable_pub)]

pub mod tmux;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hearth::paths::Paths;
use serde_json::{Value, json};

/// The `hearthd` binary cargo built for these tests.
pub fn hearthd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hearthd"))
}

/// The `hearth` binary cargo built for these tests.
pub fn hearth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hearth"))
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit; after `limit` it is killed and the test fails,
/// naming `what` it waited for.
pub fn wait_child(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    let exited = wait_for(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not exit within {limit:?}");
    }
    status.expect("exited")
}

/// Awaits `future` for at most `limit`; past it the test fails, naming
/// `what` it waited for.
pub async fn within<T>(limit: Duration, what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("no {what} within {limit:?}"),
    }
}

/// Runs `cmd` to completion with piped output, killing it after `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let what = format!("{cmd:?}");
    output_within(child, limit, &what)
}

/// Collects a spawned child's output; after `limit` it is killed and the
/// test fails, naming `what` it waited for.
pub fn output_within(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = hearth::sys::kill(pid, libc::SIGKILL);
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

/// A temp state directory (removed on drop).
pub struct StateDir {
    pub dir: tempfile::TempDir,
    pub paths: Paths,
}

impl StateDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("hearth-test-").tempdir().expect("temp dir");
        let paths = Paths::new(dir.path().join("state"));
        Self { dir, paths }
    }

    pub fn state_dir(&self) -> &Path {
        self.paths.state_dir()
    }

    pub fn socket(&self) -> &Path {
        self.paths.socket()
    }

    /// Writes `<state-dir>/config.toml`, creating the state directory (0700).
    pub fn write_config(&self, text: &str) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(self.state_dir()).expect("state dir");
        std::fs::write(self.paths.config_file(), text).expect("config.toml");
    }

    /// The `hearth` CLI pointed at this state directory, with a clean environment.
    pub fn hearth(&self) -> Command {
        let mut cmd = Command::new(hearth_bin());
        cmd.env_remove("HEARTH_SOCKET")
            .env_remove("HEARTH_CONFIG")
            .env("HEARTH_STATE_DIR", self.state_dir())
            .env("HEARTH_DAEMON_BIN", hearthd_bin())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the CLI with `args` and returns its output. A CLI still running
    /// after two minutes is a hang: it is killed and the test fails.
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.hearth().args(args), Duration::from_secs(120))
    }

    /// A `hearthd` command on this state directory, in the foreground, its
    /// stderr (the log) going to `<tempdir>/hearthd.<n>.log`.
    pub fn hearthd(&self) -> Command {
        let mut cmd = Command::new(hearthd_bin());
        cmd.env_remove("HEARTH_SOCKET")
            .env_remove("HEARTH_CONFIG")
            .env("HEARTH_LOG", "debug")
            .arg("--state-dir")
            .arg(self.state_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// `daemon.json` as JSON.
    pub fn daemon_info(&self) -> Value {
        let text = std::fs::read_to_string(self.paths.info_file()).expect("daemon.json");
        serde_json::from_str(&text).expect("daemon.json is JSON")
    }

    /// The blob HTTP server's base URL, from `daemon.json`.
    pub fn blob_url(&self) -> String {
        self.daemon_info()["endpoints"]["blob_http"].as_str().expect("endpoints.blob_http").to_owned()
    }

    /// Starts `hearthd` in the foreground with extra `args` and waits until
    /// it answers.
    pub fn start(&self, args: &[&str]) -> Daemon {
        let mut cmd = self.hearthd();
        cmd.args(args);
        self.start_cmd(cmd)
    }

    /// Starts a prepared `hearthd` command (see [`StateDir::hearthd`]) and
    /// waits until it answers.
    pub fn start_cmd(&self, cmd: Command) -> Daemon {
        self.start_cmd_on(cmd, self.socket())
    }

    /// [`StateDir::start_cmd`] for a daemon given another `--socket`.
    pub fn start_cmd_on(&self, mut cmd: Command, socket: &Path) -> Daemon {
        let log = self.dir.path().join(format!("hearthd.{}.log", unique()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = cmd.stderr(stderr).spawn().expect("spawn hearthd");
        let mut daemon = Daemon { child: Some(child), log, socket: socket.to_owned(), info: self.paths.info_file() };
        daemon.wait_ready();
        daemon
    }
}

/// How long a command the tests run may take before it counts as a hang.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A `hearthd` child process (killed on drop if still running).
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub info: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the daemon answers and has published its `daemon.json`
    /// (which it writes just after it starts accepting).
    fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        let info = self.info.clone();
        let pid = self.pid();
        let ready = wait_for(Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("hearthd exited during start-up with {status}; log:\n{}", self.log_text());
            }
            let published = std::fs::read(&info)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["pid"] == json!(pid));
            published
                && RawConn::try_connect(&socket)
                    .is_some_and(|mut c| c.handshake("status").get("ok") == Some(&json!(true)))
        });
        assert!(ready, "hearthd did not answer within 20s; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        hearth::sys::kill(pid, signal).unwrap_or_else(|e| panic!("kill({pid}, {signal}): {e}"));
    }

    /// Waits for the daemon to exit and returns its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_for(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let status = status?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> i32 {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(20)).expect("hearthd did not exit after SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Raw frames over a real socket, with read and write timeouts.
pub struct RawConn {
    pub stream: UnixStream,
}

impl RawConn {
    pub fn connect(socket: &Path) -> Self {
        Self::try_connect(socket).unwrap_or_else(|| panic!("cannot connect to {socket:?}"))
    }

    pub fn try_connect(socket: &Path) -> Option<Self> {
        let stream = UnixStream::connect(socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        stream.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
        Some(Self { stream })
    }

    /// Connects and completes a handshake for `channel`; panics if refused.
    pub fn open(socket: &Path, channel: &str) -> Self {
        let mut conn = Self::connect(socket);
        let reply = conn.handshake(channel);
        assert_eq!(reply["ok"], json!(true), "handshake refused: {reply}");
        conn
    }

    pub fn handshake(&mut self, channel: &str) -> Value {
        self.send_json(&json!({"channel": channel, "protocol": 1, "client": "tests/1"}));
        self.read_json().unwrap_or(Value::Null)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send_frame(&mut self, payload: &[u8]) {
        let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(payload);
        self.send_raw(&buf).expect("send frame");
    }

    pub fn send_json(&mut self, value: &Value) {
        self.send_frame(&serde_json::to_vec(value).expect("json"));
    }

    /// The next frame; `None` at end of stream (or a reset).
    pub fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).ok()?;
        let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stream.read_exact(&mut payload).ok()?;
        Some(payload)
    }

    pub fn read_json(&mut self) -> Option<Value> {
        self.read_frame().map(|f| serde_json::from_slice(&f).expect("response is JSON"))
    }

    /// Sends a request and reads its response.
    pub fn request(&mut self, value: &Value) -> Value {
        self.send_json(value);
        self.read_json().expect("a response")
    }

    /// True once the daemon has closed this connection.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.stream.read(&mut buf), Ok(0) | Err(_))
    }
}

/// Processes whose command line mentions `needle` (Linux /proc).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// One HTTP exchange through the real `curl`: status, headers (lowercased
/// names) and body.
pub struct CurlResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CurlResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Runs `curl` with `args` (plus flags that capture the status and headers).
pub fn curl(args: &[&str]) -> CurlResponse {
    let headers_file = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-D"])
        .arg(headers_file.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = std::fs::read_to_string(headers_file.path()).unwrap_or_default();
    let mut status = 0;
    let mut headers = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("HTTP/") {
            status = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            headers.clear();
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    CurlResponse { status, headers, body: out.stdout }
}

/// Stdout of an output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr of an output, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl StateDir {
    /// A `hearthd` command on this state directory (see [`StateDir::hearthd`])
    /// started through `wrapper` (e.g. `["prlimit", "--nofile=256:256", "--"]`),
    /// which must exec it so that the daemon keeps the wrapper's pid.
    pub fn hearthd_via(&self, wrapper: &[&str]) -> Command {
        let plain = self.hearthd();
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(plain.get_program()).args(plain.get_args());
        for (key, value) in plain.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }
}

/// Processes (zombies excluded) whose command line or environment contains
/// `marker`, other than this test process.
pub fn processes_marked(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let contains = |bytes: &[u8]| bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && (contains(&cmdline) || contains(&environ))
        })
        .collect()
}

/// A process's resident set size in KiB (Linux `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How many descriptors a process has open (Linux `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// What each of `pid`'s open descriptors refers to (`socket:[…]`, a path…),
/// sorted: to say which ones a failing check found.
#[allow(dead_code)]
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).map(|t| t.display().to_string()).collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
