//! A real terminal for the tests: a detached tmux session of a fixed size
//! on a tmux server of its own, keys sent with `send-keys`, the screen read
//! with `capture-pane`. Every wait polls the screen with a deadline and
//! fails showing the last screen.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{StateDir, hearth_bin, hearthd_bin, wait_for};

/// How long a screen may take to show what a test waits for.
pub const SCREEN_LIMIT: Duration = Duration::from_secs(30);

/// A tmux server with one session running a shell script.
pub struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Runs `script` with `sh -c` in a `width`×`height` terminal, in the
    /// environment of `state`'s CLI (`hearth` on PATH, its state directory,
    /// `HEARTH_DAEMON_BIN`), plus `env`.
    pub fn start(state: &StateDir, width: u16, height: u16, script: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new().prefix("hearth-tmux-").tempdir().expect("temp dir");
        let socket = dir.path().join("tmux.sock");
        let bin_dir = hearth_bin().parent().expect("the binaries' directory").to_owned();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let mut vars = vec![
            ("PATH".to_owned(), path),
            ("HEARTH_STATE_DIR".to_owned(), state.state_dir().display().to_string()),
            ("HEARTH_DAEMON_BIN".to_owned(), hearthd_bin().display().to_string()),
            ("TERM".to_owned(), "xterm-256color".to_owned()),
        ];
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&socket).args(["-f", "/dev/null", "new-session", "-d", "-s", "t"]);
        cmd.args(["-x", &width.to_string(), "-y", &height.to_string()]);
        for (key, value) in &vars {
            cmd.arg("-e").arg(format!("{key}={value}"));
        }
        // tmux gives a new session's command the PATH of the client that made it.
        cmd.args(["sh", "-c", script])
            .env("PATH", &vars[0].1)
            .env_remove("TMUX")
            .env_remove("HEARTH_SOCKET")
            .env_remove("HEARTH_CONFIG");
        let out = cmd.stdin(Stdio::null()).output().expect("tmux is installed (.ci/run installs it)");
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        Self { socket, _dir: dir }
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).stdin(Stdio::null()).output();
        let out = out.expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// What the terminal shows now, one line per row.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Waits until the screen satisfies `check`; returns that screen. Past
    /// the deadline the test fails, naming `what` and showing the screen.
    pub fn wait_screen(&self, what: &str, mut check: impl FnMut(&str) -> bool) -> String {
        let mut last = String::new();
        let shown = wait_for(SCREEN_LIMIT, || {
            last = self.screen();
            check(&last)
        });
        assert!(shown, "the screen did not show {what} within {SCREEN_LIMIT:?}; it shows:\n{last}");
        last
    }

    /// Waits until the screen contains `text`.
    pub fn wait_text(&self, text: &str) -> String {
        self.wait_screen(&format!("{text:?}"), |screen| screen.contains(text))
    }

    /// Types keys (tmux key names: `Up`, `Escape`, `C-c`, or plain text).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Resizes the terminal, as a person dragging the window's corner.
    pub fn resize(&self, width: u16, height: u16) {
        self.tmux(&["resize-window", "-t", "t", "-x", &width.to_string(), "-y", &height.to_string()]);
    }

    /// A format of the pane (`#{cursor_flag}`, `#{alternate_on}`, `#{pane_pid}`).
    pub fn pane(&self, format: &str) -> String {
        String::from_utf8_lossy(&self.tmux(&["display-message", "-p", "-t", "t", format]).stdout).trim().to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server").output();
    }
}

/// A named pipe that holds up whatever reads it (`cat GATE`) until the
/// test opens it: a job or a build that ends exactly when the test says.
pub struct Gate {
    pub path: PathBuf,
}

impl Gate {
    pub fn new(state: &StateDir, name: &str) -> Self {
        let path = state.dir.path().join(name);
        let out = Command::new("mkfifo").arg(&path).output().expect("mkfifo");
        assert!(out.status.success(), "mkfifo {path:?}: {}", String::from_utf8_lossy(&out.stderr));
        Self { path }
    }

    /// A command that waits at the gate, then exits 0.
    pub fn command(&self) -> String {
        format!("cat {}", self.path.display())
    }

    /// Lets every reader through: waits until one has the pipe open (a
    /// non-blocking open for writing fails until then), then closes it,
    /// which they read as the end of their input.
    pub fn open(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = wait_for(SCREEN_LIMIT, || {
            std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.path).is_ok()
        });
        assert!(opened, "nothing read the gate {:?} within {SCREEN_LIMIT:?}", self.path);
    }
}
