//! The `[process]` section of config.toml: the service's settings, and one
//! `[process.<name>]` table per supervised process.
//!
//! ```toml
//! [process]
//! log_max = "10MiB"
//!
//! [process.worker]
//! argv = ["python3", "-m", "myapp.worker"]
//! cwd = "/home/ada/src/myapp"
//! labels = ["workers"]
//! restart = "on-failure"
//! check = { kind = "heartbeat", path = "/home/ada/.cache/myapp/worker.beat", stale = "30s" }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocol::process::{ProcessCheck, ProcessDefinition, RestartPolicy};
use crate::units::{ByteSize, HumanDuration};

/// The process service's settings and the processes config.toml defines.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    /// Serve the process channel and supervise processes.
    pub enabled: bool,
    /// Processes defined at once (config and run time together); each holds
    /// a few of the daemon's descriptors, reserved at start-up.
    pub max_processes: u32,
    /// A process's log is rotated when it reaches this size (unless its
    /// definition says otherwise).
    pub log_max: ByteSize,
    /// Rotated logs kept per process (unless its definition says otherwise).
    pub log_keep: u32,
    /// `[process.<name>]` tables.
    pub processes: BTreeMap<String, ProcessEntry>,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        Self { enabled: true, max_processes: 16, log_max: ByteSize(10 << 20), log_keep: 3, processes: BTreeMap::new() }
    }
}

const GLOBAL_KEYS: [&str; 4] = ["enabled", "max_processes", "log_max", "log_keep"];

/// The most `max_processes` can be.
const MAX_PROCESSES: u32 = 1024;

/// One `[process.<name>]` table: a definition in config.toml's words
/// (durations and sizes written with units).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessEntry {
    /// The program and its arguments.
    #[serde(default)]
    pub argv: Vec<String>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Added to the environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Groups, for `start`, `stop` and `restart`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// `always`, `on-failure` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// The first restart delay after a failure; it doubles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base: Option<HumanDuration>,
    /// The longest restart delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<HumanDuration>,
    /// Restarts allowed within `restart_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// The window of `max_restarts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_window: Option<HumanDuration>,
    /// `SIGTERM` (default), `SIGINT`, `SIGHUP`, `SIGQUIT`, `SIGUSR1`, `SIGUSR2` or `SIGKILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Time to stop before `SIGKILL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<HumanDuration>,
    /// Readiness and liveness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckEntry>,
    /// Rotate the log at this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max: Option<ByteSize>,
    /// Rotated logs kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_keep: Option<u32>,
}

/// A `check` table: `kind` and the fields of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckEntry {
    /// `heartbeat`, `command` or `notify`.
    pub kind: String,
    /// heartbeat: the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// heartbeat: older than this is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<HumanDuration>,
    /// command: the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// command: how often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// command: how long a run may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// command: failures in a row that restart the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// notify: the watchdog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<HumanDuration>,
    /// Any kind: time to become ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<HumanDuration>,
}

fn ms(d: Option<HumanDuration>) -> Option<u64> {
    d.map(|d| d.0.as_millis() as u64)
}

impl CheckEntry {
    fn to_check(&self) -> Result<ProcessCheck, String> {
        let start_timeout_ms = ms(self.start_timeout);
        let unused = |kind: &str, fields: &[(&str, bool)]| match fields.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(format!("check.{field} is not a field of a {kind} check")),
            None => Ok(()),
        };
        match self.kind.as_str() {
            "heartbeat" => {
                unused(
                    "heartbeat",
                    &[
                        ("argv", self.argv.is_some()),
                        ("interval", self.interval.is_some()),
                        ("timeout", self.timeout.is_some()),
                        ("failures", self.failures.is_some()),
                        ("watchdog", self.watchdog.is_some()),
                    ],
                )?;
                Ok(ProcessCheck::Heartbeat {
                    path: self.path.clone().ok_or("a heartbeat check needs check.path")?,
                    stale_ms: ms(self.stale).ok_or("a heartbeat check needs check.stale (like \"30s\")")?,
                    start_timeout_ms,
                })
            }
            "command" => {
                unused(
                    "command",
                    &[
                        ("path", self.path.is_some()),
                        ("stale", self.stale.is_some()),
                        ("watchdog", self.watchdog.is_some()),
                    ],
                )?;
                Ok(ProcessCheck::Command {
                    argv: self.argv.clone().ok_or("a command check needs check.argv")?,
                    interval_ms: ms(self.interval),
                    timeout_ms: ms(self.timeout),
                    failures: self.failures,
                    start_timeout_ms,
                })
            }
            "notify" => {
                unused(
                    "notify",
                    &[
                        ("path", self.path.is_some()),
                        ("stale", self.stale.is_some()),
                        ("argv", self.argv.is_some()),
                        ("interval", self.interval.is_some()),
                        ("timeout", self.timeout.is_some()),
                        ("failures", self.failures.is_some()),
                    ],
                )?;
                Ok(ProcessCheck::Notify { watchdog_ms: ms(self.watchdog), start_timeout_ms })
            }
            other => Err(format!("check.kind {other:?} is not heartbeat, command or notify")),
        }
    }
}

impl ProcessEntry {
    /// The wire definition of this table, named `name` (not yet validated).
    pub fn to_definition(&self, name: &str) -> Result<ProcessDefinition, String> {
        Ok(ProcessDefinition {
            name: name.to_owned(),
            argv: self.argv.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            labels: self.labels.clone(),
            restart: self.restart,
            backoff_base_ms: ms(self.backoff_base),
            backoff_max_ms: ms(self.backoff_max),
            max_restarts: self.max_restarts,
            restart_window_ms: ms(self.restart_window),
            stop_signal: self.stop_signal.clone(),
            stop_grace_ms: ms(self.stop_grace),
            check: self.check.as_ref().map(CheckEntry::to_check).transpose()?,
            log_max: self.log_max.map(|b| b.0),
            log_keep: self.log_keep,
        })
    }

    /// Reads the `[process.<name>]` tables of a TOML document (config.toml,
    /// or a file given to `hearth proc add --file`).
    pub fn parse_file(text: &str) -> Result<Vec<ProcessDefinition>, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let Some(section) = table.get("process") else {
            return Err("no [process.<name>] table in the file".into());
        };
        let settings = ProcessSettings::deserialize(section.clone()).map_err(|e| e.to_string())?;
        if let Some(key) = GLOBAL_KEYS.iter().find(|k| section.get(**k).is_some()) {
            return Err(format!("process.{key} is a daemon setting: it belongs in config.toml"));
        }
        if settings.processes.is_empty() {
            return Err("no [process.<name>] table in the file".into());
        }
        settings.processes.iter().map(|(name, entry)| entry.to_definition(name)).collect()
    }
}

impl ProcessSettings {
    /// Checks the settings and every definition.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_processes == 0 || self.max_processes > MAX_PROCESSES {
            return Err(format!("process.max_processes must be 1 to {MAX_PROCESSES}, not {}", self.max_processes));
        }
        let (lo, hi) = super::definition::LOG_MAX_RANGE;
        if !(lo..=hi).contains(&self.log_max.0) {
            return Err(format!("process.log_max must be {} to {}, not {}", ByteSize(lo), ByteSize(hi), self.log_max));
        }
        if self.log_keep > super::definition::MAX_LOG_KEEP {
            return Err(format!("process.log_keep must be at most {}", super::definition::MAX_LOG_KEEP));
        }
        if self.processes.len() > self.max_processes as usize {
            return Err(format!("{} processes are defined, more than process.max_processes", self.processes.len()));
        }
        for (name, entry) in &self.processes {
            let def = entry.to_definition(name).map_err(|e| format!("[process.{name}]: {e}"))?;
            super::definition::validate(&def).map_err(|e| format!("[process.{name}]: {e}"))?;
        }
        Ok(())
    }

    /// The definitions of the `[process.<name>]` tables.
    pub(crate) fn definitions(&self) -> Result<Vec<ProcessDefinition>, (String, String)> {
        self.processes.iter().map(|(name, entry)| entry.to_definition(name).map_err(|e| (name.clone(), e))).collect()
    }

    /// The log limits of `def`: its own, else these settings'.
    pub(crate) fn log_limits(&self, def: &ProcessDefinition) -> (u64, u32) {
        (def.log_max.unwrap_or(self.log_max.0), def.log_keep.unwrap_or(self.log_keep))
    }
}

impl<'de> Deserialize<'de> for ProcessSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let mut out = ProcessSettings::default();
        fn field<T: serde::de::DeserializeOwned, E: serde::de::Error>(key: &str, v: toml::Value) -> Result<T, E> {
            v.try_into().map_err(|e: toml::de::Error| E::custom(format!("process.{key}: {}", e.message())))
        }
        for (key, value) in table {
            match key.as_str() {
                "enabled" => out.enabled = field(&key, value)?,
                "max_processes" => out.max_processes = field(&key, value)?,
                "log_max" => out.log_max = field(&key, value)?,
                "log_keep" => out.log_keep = field(&key, value)?,
                _ if value.is_table() => {
                    let entry = field(&key, value)?;
                    out.processes.insert(key, entry);
                }
                _ => {
                    return Err(D::Error::custom(format!(
                        "unknown key process.{key}: expected one of {} or a [process.<name>] table",
                        GLOBAL_KEYS.join(", ")
                    )));
                }
            }
        }
        Ok(out)
    }
}

impl Serialize for ProcessSettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(GLOBAL_KEYS.len() + self.processes.len()))?;
        map.serialize_entry("enabled", &self.enabled)?;
        map.serialize_entry("max_processes", &self.max_processes)?;
        map.serialize_entry("log_max", &self.log_max)?;
        map.serialize_entry("log_keep", &self.log_keep)?;
        for (name, entry) in &self.processes {
            map.serialize_entry(name, entry)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProcessSettings, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let settings: ProcessSettings =
            table["process"].clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn globals_and_tables() {
        let s = parse(
            "[process]\nlog_keep = 5\n\
             [process.worker]\nargv = [\"python3\", \"w.py\"]\nrestart = \"on-failure\"\nstop_grace = \"3s\"\n\
             labels = [\"workers\"]\n\
             check = { kind = \"heartbeat\", path = \"/tmp/hb\", stale = \"30s\", start_timeout = \"1m\" }\n",
        )
        .unwrap();
        assert_eq!(s.log_keep, 5);
        let def = s.processes["worker"].to_definition("worker").unwrap();
        assert_eq!(def.restart, Some(RestartPolicy::OnFailure));
        assert_eq!(def.stop_grace_ms, Some(3000));
        assert_eq!(
            def.check,
            Some(ProcessCheck::Heartbeat { path: "/tmp/hb".into(), stale_ms: 30_000, start_timeout_ms: Some(60_000) })
        );
        assert_eq!(s.log_limits(&def), (10 << 20, 5));
    }

    #[test]
    fn mistakes_name_the_key() {
        let err = parse("[process]\nlog_mac = 3\n").unwrap_err();
        assert!(err.contains("log_mac"), "{err}");
        let err = parse("[process.w]\nargv = [\"x\"]\nrestrat = \"always\"\n").unwrap_err();
        assert!(err.contains("restrat"), "{err}");
        let err = parse("[process.w]\nargv = [\"x\"]\ncheck = { kind = \"heartbeat\", stale = \"1s\" }\n").unwrap_err();
        assert!(err.contains("check.path"), "{err}");
        let err = parse("[process.w]\nargv = [\"x\"]\ncheck = { kind = \"notify\", path = \"/x\" }\n").unwrap_err();
        assert!(err.contains("check.path"), "{err}");
        let err = parse("[process.w]\nargv = [\"x\"]\ncheck = { kind = \"vibes\" }\n").unwrap_err();
        assert!(err.contains("vibes"), "{err}");
        let err = parse("[process.w]\nargv = []\n").unwrap_err();
        assert!(err.contains("[process.w]") && err.contains("argv"), "{err}");
        let err = parse("[process]\nmax_processes = 0\n").unwrap_err();
        assert!(err.contains("max_processes"), "{err}");
    }

    #[test]
    fn files_for_add_hold_only_tables() {
        let defs = ProcessEntry::parse_file("[process.a]\nargv = [\"a\"]\n[process.b]\nargv = [\"b\"]\n").unwrap();
        assert_eq!(defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(ProcessEntry::parse_file("[process]\nlog_keep = 1\n[process.a]\nargv = [\"a\"]\n").is_err());
        assert!(ProcessEntry::parse_file("[pool.a]\ncreate = [\"true\"]\n").is_err());
    }
}
