//! The `[pool]` section of config.toml: the service's settings, and one
//! `[pool.<name>]` table per pool definition.
//!
//! ```toml
//! [pool]
//! max_concurrent_builds = 1
//!
//! [pool.venv]                 # the built-in venv pool, with packages
//! size = 2
//! packages = ["ipykernel"]
//!
//! [pool.scratch]
//! create = ["sh", "-c", "mkdir -p {path}/work"]
//! size = 4
//! max_age = "1d"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocol::pool::{PoolDefinition, PoolKind};
use crate::units::{ByteSize, HumanDuration};

/// The pool service's settings and the pools config.toml defines.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// Serve the pool channel and build resources.
    pub enabled: bool,
    /// Builds (and resets) running at once, all pools together.
    pub max_concurrent_builds: u32,
    /// Output kept per build: the first 4 KiB and the rest from the end.
    pub build_log_max: ByteSize,
    /// The delay before retrying a failed build; it doubles with each
    /// failure in a row.
    pub retry_base: HumanDuration,
    /// The longest delay between retries.
    pub retry_max: HumanDuration,
    /// Builds failing in a row before the daemon's health turns degraded.
    pub failures_degraded: u32,
    /// How long a resource built for a take that stopped waiting (its
    /// `take_timeout`, or its caller left) is kept, even over its pool's
    /// target, so that the next take gets it.
    pub unclaimed_grace: HumanDuration,
    /// `[pool.<name>]` tables.
    pub pools: BTreeMap<String, PoolEntry>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_builds: 1,
            build_log_max: ByteSize(64 << 10),
            retry_base: HumanDuration(Duration::from_secs(1)),
            retry_max: HumanDuration(Duration::from_secs(300)),
            failures_degraded: 3,
            unclaimed_grace: HumanDuration(DEFAULT_UNCLAIMED_GRACE),
            pools: BTreeMap::new(),
        }
    }
}

/// As long as a take waits by default: a caller that gave up will be back.
const DEFAULT_UNCLAIMED_GRACE: Duration = super::definition::DEFAULT_TAKE_TIMEOUT;
/// The longest `unclaimed_grace`.
const MAX_UNCLAIMED_GRACE: Duration = Duration::from_secs(24 * 3600);

const GLOBAL_KEYS: [&str; 7] = [
    "enabled",
    "max_concurrent_builds",
    "build_log_max",
    "retry_base",
    "retry_max",
    "failures_degraded",
    "unclaimed_grace",
];

/// One `[pool.<name>]` table: a definition in config.toml's words
/// (durations written with units).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    /// `command` or `venv`; default `command` when `create` is given, else `venv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PoolKind>,
    /// Argument vector building a resource in `{path}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<Vec<String>>,
    /// Argument vector that exits 0 when a ready resource is still good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Vec<String>>,
    /// Argument vector that makes a released resource reusable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Vec<String>>,
    /// `venv`: packages to install.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// `venv`: the interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Ready resources to keep.
    #[serde(default)]
    pub size: u32,
    /// Ready resources older than this are rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// A build taking longer is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_timeout: Option<HumanDuration>,
    /// How often ready resources are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_interval: Option<HumanDuration>,
    /// Added to the environment of the pool's commands.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl PoolEntry {
    /// The wire definition of this table, named `name` (not yet validated).
    pub fn to_definition(&self, name: &str) -> PoolDefinition {
        let ms = |d: Option<HumanDuration>| d.map(|d| d.0.as_millis() as u64);
        PoolDefinition {
            name: name.to_owned(),
            kind: self.kind,
            create: self.create.clone(),
            check: self.check.clone(),
            reset: self.reset.clone(),
            packages: self.packages.clone(),
            python: self.python.clone(),
            size: self.size,
            max_age_ms: ms(self.max_age),
            create_timeout_ms: ms(self.create_timeout),
            check_interval_ms: ms(self.check_interval),
            env: self.env.clone(),
        }
    }

    /// Reads the `[pool.<name>]` tables of a TOML document (config.toml, or
    /// a file given to `hearth pool define --file`).
    pub fn parse_file(text: &str) -> Result<Vec<PoolDefinition>, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let Some(pool) = table.get("pool") else {
            return Err("no [pool.<name>] table in the file".into());
        };
        let settings = PoolSettings::deserialize(pool.clone()).map_err(|e| e.to_string())?;
        if let Some(key) = GLOBAL_KEYS.iter().find(|k| pool.get(**k).is_some()) {
            return Err(format!("pool.{key} is a daemon setting: it belongs in config.toml"));
        }
        if settings.pools.is_empty() {
            return Err("no [pool.<name>] table in the file".into());
        }
        Ok(settings.pools.iter().map(|(name, entry)| entry.to_definition(name)).collect())
    }
}

impl PoolSettings {
    /// Checks the settings and every definition.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_builds == 0 || self.max_concurrent_builds > 64 {
            return Err(format!("pool.max_concurrent_builds must be 1 to 64, not {}", self.max_concurrent_builds));
        }
        if self.build_log_max.0 < 4096 || self.build_log_max.0 > 16 << 20 {
            return Err(format!("pool.build_log_max must be 4KiB to 16MiB, not {}", self.build_log_max));
        }
        if self.retry_base.0.is_zero() || self.retry_base > self.retry_max {
            return Err("pool.retry_base must be longer than 0s and at most pool.retry_max".into());
        }
        if self.failures_degraded == 0 {
            return Err("pool.failures_degraded must be at least 1".into());
        }
        if self.unclaimed_grace.0 > MAX_UNCLAIMED_GRACE {
            return Err(format!("pool.unclaimed_grace must be at most 24h, not {}", self.unclaimed_grace));
        }
        if self.pools.len() > super::definition::MAX_POOLS {
            return Err(format!("at most {} pools can be defined", super::definition::MAX_POOLS));
        }
        for (name, entry) in &self.pools {
            super::definition::normalize(entry.to_definition(name)).map_err(|e| format!("[pool.{name}]: {e}"))?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for PoolSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let mut out = PoolSettings::default();
        fn field<T: serde::de::DeserializeOwned, E: serde::de::Error>(key: &str, v: toml::Value) -> Result<T, E> {
            v.try_into().map_err(|e: toml::de::Error| E::custom(format!("pool.{key}: {}", e.message())))
        }
        for (key, value) in table {
            match key.as_str() {
                "enabled" => out.enabled = field(&key, value)?,
                "max_concurrent_builds" => out.max_concurrent_builds = field(&key, value)?,
                "build_log_max" => out.build_log_max = field(&key, value)?,
                "retry_base" => out.retry_base = field(&key, value)?,
                "retry_max" => out.retry_max = field(&key, value)?,
                "failures_degraded" => out.failures_degraded = field(&key, value)?,
                "unclaimed_grace" => out.unclaimed_grace = field(&key, value)?,
                _ if value.is_table() => {
                    let entry = field(&key, value)?;
                    out.pools.insert(key, entry);
                }
                _ => {
                    return Err(D::Error::custom(format!(
                        "unknown key pool.{key}: expected one of {} or a [pool.<name>] table",
                        GLOBAL_KEYS.join(", ")
                    )));
                }
            }
        }
        Ok(out)
    }
}

impl Serialize for PoolSettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(GLOBAL_KEYS.len() + self.pools.len()))?;
        map.serialize_entry("enabled", &self.enabled)?;
        map.serialize_entry("max_concurrent_builds", &self.max_concurrent_builds)?;
        map.serialize_entry("build_log_max", &self.build_log_max)?;
        map.serialize_entry("retry_base", &self.retry_base)?;
        map.serialize_entry("retry_max", &self.retry_max)?;
        map.serialize_entry("failures_degraded", &self.failures_degraded)?;
        map.serialize_entry("unclaimed_grace", &self.unclaimed_grace)?;
        for (name, entry) in &self.pools {
            map.serialize_entry(name, entry)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PoolSettings, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let settings: PoolSettings = table["pool"].clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn globals_and_tables() {
        let s = parse(
            "[pool]\nmax_concurrent_builds = 2\nretry_base = \"50ms\"\n\
             [pool.scratch]\ncreate = [\"sh\", \"-c\", \"mkdir -p {path}\"]\nsize = 3\nmax_age = \"1h\"\n\
             [pool.venv]\nsize = 1\npackages = [\"six\"]\n",
        )
        .unwrap();
        assert_eq!(s.max_concurrent_builds, 2);
        assert_eq!(s.retry_base.0, Duration::from_millis(50));
        assert_eq!(s.unclaimed_grace.0, Duration::from_secs(600), "the default");
        let scratch = s.pools["scratch"].to_definition("scratch");
        assert_eq!(scratch.size, 3);
        assert_eq!(scratch.max_age_ms, Some(3_600_000));
        assert_eq!(s.pools["venv"].packages, ["six"]);
    }

    #[test]
    fn mistakes_name_the_key() {
        let err = parse("[pool]\nmax_concurent_builds = 2\n").unwrap_err();
        assert!(err.contains("max_concurent_builds"), "{err}");
        let err = parse("[pool.x]\ncreate = [\"true\"]\nsise = 3\n").unwrap_err();
        assert!(err.contains("sise"), "{err}");
        let err = parse("[pool.\"bad name\"]\ncreate = [\"true\"]\n").unwrap_err();
        assert!(err.contains("bad name"), "{err}");
        let err = parse("[pool.x]\ncreate = []\n").unwrap_err();
        assert!(err.contains("[pool.x]: create must name a program"), "{err}");
        let err = parse("[pool]\nmax_concurrent_builds = 0\n").unwrap_err();
        assert!(err.contains("max_concurrent_builds"), "{err}");
        let err = parse("[pool]\nunclaimed_grace = \"2d\"\n").unwrap_err();
        assert!(err.contains("unclaimed_grace"), "{err}");
    }

    #[test]
    fn files_for_define_hold_only_tables() {
        let defs = PoolEntry::parse_file("[pool.a]\ncreate = [\"true\"]\n[pool.b]\nkind = \"venv\"\n").unwrap();
        assert_eq!(defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(PoolEntry::parse_file("[pool]\nretry_max = \"1m\"\n[pool.a]\ncreate = [\"true\"]\n").is_err());
        assert!(PoolEntry::parse_file("[server]\nmax_connections = 3\n").is_err());
    }
}
