//! Process definitions: validation, and the values in force for the fields
//! a definition leaves out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::process::{ProcessCheck, ProcessDefinition, RestartPolicy};

/// The longest name (names become directory names).
const MAX_NAME: usize = 64;
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 8192;
const MAX_ENV: usize = 128;
const MAX_LABELS: usize = 16;
const MAX_PATH: usize = 4096;
/// A definition's JSON at most: keeps `status` of every process well
/// within a frame.
const MAX_ENCODED: usize = 16 << 10;
/// The most `max_restarts` can be.
const MAX_RESTARTS: u32 = 10_000;
/// The longest of any duration a definition gives.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_MAX_RESTARTS: u32 = 5;
pub(crate) const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_CHECK_FAILURES: u32 = 3;
/// The smallest and largest log size before rotation.
pub(crate) const LOG_MAX_RANGE: (u64, u64) = (4 << 10, 1 << 30);
/// The most rotated logs kept.
pub(crate) const MAX_LOG_KEEP: u32 = 20;

/// The signals a process may be asked to stop with.
const STOP_SIGNALS: [(&str, libc::c_int); 7] = [
    ("SIGTERM", libc::SIGTERM),
    ("SIGINT", libc::SIGINT),
    ("SIGHUP", libc::SIGHUP),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGKILL", libc::SIGKILL),
];

/// Whether `name` is a valid process name or label: 1 to 64 ASCII letters,
/// digits, `_` or `-`, starting with a letter or digit (so it is always a
/// plain, non-hidden directory name).
pub(crate) fn validate_name(what: &str, name: &str) -> Result<(), String> {
    crate::daemon::fsutil::validate_dir_name(what, name, MAX_NAME)
}

/// The signal number of a stop signal's name (`TERM`, `SIGTERM`, `sigterm`).
pub(crate) fn signal_number(name: &str) -> Option<libc::c_int> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    STOP_SIGNALS.iter().find(|(n, _)| *n == full).map(|(_, s)| *s)
}

/// The name of a signal number, for messages (`SIGKILL`), or its number.
pub(crate) fn signal_name(signal: i32) -> String {
    const NAMES: [(&str, libc::c_int); 10] = [
        ("SIGKILL", libc::SIGKILL),
        ("SIGSEGV", libc::SIGSEGV),
        ("SIGABRT", libc::SIGABRT),
        ("SIGBUS", libc::SIGBUS),
        ("SIGPIPE", libc::SIGPIPE),
        ("SIGALRM", libc::SIGALRM),
        ("SIGFPE", libc::SIGFPE),
        ("SIGILL", libc::SIGILL),
        ("SIGTRAP", libc::SIGTRAP),
        ("SIGSYS", libc::SIGSYS),
    ];
    STOP_SIGNALS
        .iter()
        .chain(&NAMES)
        .find(|(_, s)| *s == signal)
        .map_or_else(|| format!("signal {signal}"), |(n, _)| (*n).to_owned())
}

/// Checks `def`; the message names the field at fault.
pub(crate) fn validate(def: &ProcessDefinition) -> Result<(), String> {
    validate_name("process name", &def.name)?;
    argv("argv", &def.argv)?;
    if let Some(cwd) = &def.cwd {
        path("cwd", cwd)?;
        if !cwd.is_absolute() {
            return Err(format!("cwd must be an absolute path, not {}", cwd.display()));
        }
    }
    if def.env.len() > MAX_ENV {
        return Err(format!("env: at most {MAX_ENV} variables"));
    }
    for (k, v) in &def.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') || k.len() + v.len() > MAX_ARG_BYTES {
            return Err(format!("env: invalid variable {:?}", k.chars().take(80).collect::<String>()));
        }
    }
    if def.labels.len() > MAX_LABELS {
        return Err(format!("labels: at most {MAX_LABELS}"));
    }
    for label in &def.labels {
        validate_name("label", label)?;
    }
    for (key, value) in [
        ("backoff_base_ms", def.backoff_base_ms),
        ("backoff_max_ms", def.backoff_max_ms),
        ("restart_window_ms", def.restart_window_ms),
        ("stop_grace_ms", def.stop_grace_ms),
    ] {
        duration(key, value, false)?;
    }
    if def.backoff_base() > def.backoff_max() {
        return Err(format!(
            "backoff_base_ms ({}) must not exceed backoff_max_ms ({})",
            def.backoff_base().as_millis(),
            def.backoff_max().as_millis()
        ));
    }
    if def.restart_window_ms == Some(0) {
        return Err("restart_window_ms must be longer than 0".into());
    }
    if let Some(n) = def.max_restarts
        && (n == 0 || n > MAX_RESTARTS)
    {
        return Err(format!("max_restarts must be 1 to {MAX_RESTARTS}, not {n}"));
    }
    if let Some(signal) = &def.stop_signal
        && signal_number(signal).is_none()
    {
        let names: Vec<&str> = STOP_SIGNALS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "stop_signal {:?} is not one of {}",
            signal.chars().take(20).collect::<String>(),
            names.join(", ")
        ));
    }
    if let Some(check) = &def.check {
        validate_check(check)?;
    }
    if let Some(max) = def.log_max {
        let (lo, hi) = LOG_MAX_RANGE;
        if !(lo..=hi).contains(&max) {
            return Err(format!("log_max must be {lo} to {hi} bytes, not {max}"));
        }
    }
    if def.log_keep.is_some_and(|k| k > MAX_LOG_KEEP) {
        return Err(format!("log_keep must be at most {MAX_LOG_KEEP}"));
    }
    let encoded = serde_json::to_vec(def).map_or(usize::MAX, |v| v.len());
    if encoded > MAX_ENCODED {
        return Err(format!("the definition is {encoded} bytes of JSON, more than the {MAX_ENCODED} allowed"));
    }
    Ok(())
}

fn validate_check(check: &ProcessCheck) -> Result<(), String> {
    duration("check.start_timeout_ms", check.start_timeout_ms(), true)?;
    match check {
        ProcessCheck::Heartbeat { path: file, stale_ms, .. } => {
            path("check.path", file)?;
            if file.as_os_str().is_empty() {
                return Err("check.path must name the heartbeat file".into());
            }
            duration("check.stale_ms", Some(*stale_ms), true)?;
            if *stale_ms < 100 {
                return Err(format!("check.stale_ms must be at least 100, not {stale_ms}"));
            }
        }
        ProcessCheck::Command { argv: args, interval_ms, timeout_ms, failures, .. } => {
            argv("check.argv", args)?;
            duration("check.interval_ms", *interval_ms, true)?;
            duration("check.timeout_ms", *timeout_ms, true)?;
            if interval_ms.is_some_and(|ms| ms < 100) {
                return Err("check.interval_ms must be at least 100".into());
            }
            if failures.is_some_and(|n| n == 0 || n > 100) {
                return Err("check.failures must be 1 to 100".into());
            }
        }
        ProcessCheck::Notify { watchdog_ms, .. } => {
            duration("check.watchdog_ms", *watchdog_ms, true)?;
            if watchdog_ms.is_some_and(|ms| ms < 100) {
                return Err("check.watchdog_ms must be at least 100".into());
            }
        }
    }
    Ok(())
}

fn argv(field: &str, args: &[String]) -> Result<(), String> {
    if args.is_empty() || args[0].is_empty() {
        return Err(format!("{field} must name a program"));
    }
    if args.len() > MAX_ARGS || args.iter().any(|a| a.len() > MAX_ARG_BYTES || a.contains('\0')) {
        return Err(format!("{field}: at most {MAX_ARGS} arguments of at most {MAX_ARG_BYTES} bytes, without NUL"));
    }
    Ok(())
}

fn path(field: &str, p: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    if bytes.len() > MAX_PATH || bytes.contains(&0) {
        return Err(format!("{field}: at most {MAX_PATH} bytes, without NUL"));
    }
    Ok(())
}

fn duration(field: &str, ms: Option<u64>, positive: bool) -> Result<(), String> {
    match ms {
        Some(0) if positive => Err(format!("{field} must be longer than 0")),
        Some(ms) if Duration::from_millis(ms) > MAX_DURATION => {
            Err(format!("{field} must be at most {} ms (7 days)", MAX_DURATION.as_millis()))
        }
        _ => Ok(()),
    }
}

/// The values in force for what a definition leaves out.
impl ProcessDefinition {
    pub(crate) fn restart_policy(&self) -> RestartPolicy {
        self.restart.unwrap_or(RestartPolicy::Always)
    }

    pub(crate) fn backoff_base(&self) -> Duration {
        self.backoff_base_ms.map_or(DEFAULT_BACKOFF_BASE, Duration::from_millis)
    }

    pub(crate) fn backoff_max(&self) -> Duration {
        self.backoff_max_ms.map_or(DEFAULT_BACKOFF_MAX.max(self.backoff_base()), Duration::from_millis)
    }

    pub(crate) fn max_restarts_in_window(&self) -> u32 {
        self.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS)
    }

    pub(crate) fn restart_window(&self) -> Duration {
        self.restart_window_ms.map_or(DEFAULT_RESTART_WINDOW, Duration::from_millis)
    }

    pub(crate) fn stop_signal_number(&self) -> libc::c_int {
        self.stop_signal.as_deref().and_then(signal_number).unwrap_or(libc::SIGTERM)
    }

    pub(crate) fn stop_grace(&self) -> Duration {
        self.stop_grace_ms.map_or(DEFAULT_STOP_GRACE, Duration::from_millis)
    }

    /// How long it may take to become ready; `None` without a check (it is
    /// ready once started).
    pub(crate) fn start_timeout(&self) -> Option<Duration> {
        let check = self.check.as_ref()?;
        Some(check.start_timeout_ms().map_or(DEFAULT_START_TIMEOUT, Duration::from_millis))
    }

    /// Whether the process gets a notify socket.
    pub(crate) fn wants_notify(&self) -> bool {
        matches!(self.check, Some(ProcessCheck::Notify { .. }))
    }

    /// The working directory: the definition's, else `home`.
    pub(crate) fn working_dir(&self, home: &Path) -> PathBuf {
        self.cwd.clone().unwrap_or_else(|| home.to_owned())
    }
}

/// The directory processes without a `cwd` run in: `$HOME`, else `/`.
pub(crate) fn home_dir() -> PathBuf {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The delay before restart number `failures` in a row: the base, doubling, capped.
pub(crate) fn backoff_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ProcessDefinition {
        ProcessDefinition { name: "w".into(), argv: vec!["sleep".into(), "9".into()], ..Default::default() }
    }

    fn err(edit: impl FnOnce(&mut ProcessDefinition)) -> String {
        let mut d = def();
        edit(&mut d);
        validate(&d).unwrap_err()
    }

    #[test]
    fn mistakes_name_the_field() {
        assert!(validate(&def()).is_ok());
        assert!(err(|d| d.name = "../x".into()).contains("process name"));
        assert!(err(|d| d.name = "-x".into()).contains("process name"));
        assert!(err(|d| d.argv.clear()).contains("argv"));
        assert!(err(|d| d.argv = vec![String::new()]).contains("argv"));
        assert!(err(|d| d.argv.push("a\0b".into())).contains("argv"));
        assert!(err(|d| d.cwd = Some("relative".into())).contains("cwd"));
        assert!(err(|d| d.labels = vec!["a b".into()]).contains("label"));
        assert!(err(|d| d.stop_signal = Some("SIGSTOP".into())).contains("stop_signal"));
        assert!(err(|d| d.max_restarts = Some(0)).contains("max_restarts"));
        assert!(err(|d| d.restart_window_ms = Some(0)).contains("restart_window_ms"));
        assert!(err(|d| (d.backoff_base_ms, d.backoff_max_ms) = (Some(5000), Some(10))).contains("backoff"));
        assert!(err(|d| d.log_max = Some(10)).contains("log_max"));
        assert!(err(|d| d.log_keep = Some(99)).contains("log_keep"));
        assert!(err(|d| d.env.insert("A=B".into(), "x".into()).map_or((), drop)).contains("env"));
        let hb = |stale_ms| ProcessCheck::Heartbeat { path: "/tmp/hb".into(), stale_ms, start_timeout_ms: None };
        assert!(err(|d| d.check = Some(hb(5))).contains("stale_ms"));
        let cmd = ProcessCheck::Command {
            argv: vec![],
            interval_ms: None,
            timeout_ms: None,
            failures: None,
            start_timeout_ms: None,
        };
        assert!(err(|d| d.check = Some(cmd)).contains("check.argv"));
        assert!(err(|d| d.argv = vec!["x".repeat(8000); 3]).contains("bytes of JSON"));
        let huge = ProcessCheck::Notify { watchdog_ms: Some(u64::MAX), start_timeout_ms: None };
        assert!(err(|d| d.check = Some(huge)).contains("watchdog_ms"));
    }

    #[test]
    fn defaults_and_signals() {
        let d = def();
        assert_eq!(d.restart_policy(), RestartPolicy::Always);
        assert_eq!(d.stop_signal_number(), libc::SIGTERM);
        assert_eq!(d.start_timeout(), None, "no check: ready once started");
        assert_eq!(signal_number("term"), Some(libc::SIGTERM));
        assert_eq!(signal_number("SIGINT"), Some(libc::SIGINT));
        assert_eq!(signal_number("STOP"), None);
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(64), "signal 64");
        let slow = ProcessDefinition { backoff_base_ms: Some(120_000), ..def() };
        assert!(validate(&slow).is_ok(), "the default cap grows with a longer base");
        assert_eq!(slow.backoff_max(), Duration::from_secs(120));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let delays: Vec<u128> = (1..=6).map(|n| backoff_delay(n, base, max).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_delay(1000, base, max), max);
        assert_eq!(backoff_delay(3, Duration::ZERO, max), Duration::ZERO);
    }
}
