//! The pools' counters (takes, warm takes, builds and their times), kept
//! across restarts in `<state-dir>/pools/stats.json`, so that a warm-hit
//! ratio or a build-time histogram means the pool's life, not the
//! daemon's uptime.
//!
//! Counters change on the hot path (a take), so they are written in the
//! background: every [`SAVE_EVERY`] when they changed, and when the daemon
//! stops. A crash loses at most the last interval's counts, never a
//! resource or a lease (those have their own records).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PoolService;
use super::state::{State, Stats};
use crate::daemon::fsutil;
use crate::daemon::metrics::Buckets;

/// The counters' file, beside the pools' directories.
pub(crate) const FILE: &str = "stats.json";
/// How often changed counters are written.
const SAVE_EVERY: Duration = Duration::from_secs(10);
/// A counters file larger than this is not ours.
const MAX_FILE: u64 = 4 << 20;

/// Build-time buckets, in seconds.
const BUILD_BOUNDS: &[f64] = &[0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// How long successful builds took.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BuildTimes(pub(crate) Buckets);

impl Default for BuildTimes {
    fn default() -> Self {
        Self(Buckets::new(BUILD_BOUNDS))
    }
}

impl BuildTimes {
    pub(crate) fn observe(&mut self, ms: u64) {
        self.0.observe(ms as f64 / 1000.0);
    }
}

/// A pool's counters: since this daemon started ([`Stats::counts`]), as
/// earlier daemons left them ([`Stats::earlier`]), or both together
/// ([`Stats::lifetime`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) takes: u64,
    pub(crate) warm_takes: u64,
    pub(crate) builds: u64,
    pub(crate) build_ms_total: u64,
    pub(crate) failures_total: u64,
    pub(crate) expired: u64,
    pub(crate) check_failed: u64,
}

impl Stats {
    /// The counters since this daemon started.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            takes: self.takes,
            warm_takes: self.warm_takes,
            builds: self.builds,
            build_ms_total: self.build_ms_total,
            failures_total: self.failures_total,
            expired: self.expired,
            check_failed: self.check_failed,
        }
    }

    /// The counters over the pool's life: earlier daemons' and this one's.
    pub(crate) fn lifetime(&self) -> Counts {
        let (now, before) = (self.counts(), self.earlier);
        Counts {
            takes: before.takes + now.takes,
            warm_takes: before.warm_takes + now.warm_takes,
            builds: before.builds + now.builds,
            build_ms_total: before.build_ms_total + now.build_ms_total,
            failures_total: before.failures_total + now.failures_total,
            expired: before.expired + now.expired,
            check_failed: before.check_failed + now.check_failed,
        }
    }
}

/// One pool's counters as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Saved {
    takes: u64,
    warm_takes: u64,
    builds: u64,
    build_ms_total: u64,
    failures_total: u64,
    expired: u64,
    check_failed: u64,
    /// The buckets' upper bounds in seconds (`+Inf` implied), so that
    /// counts written with other bounds are never misread.
    build_bounds_s: Vec<f64>,
    build_counts: Vec<u64>,
    build_sum_s: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedFile {
    pools: BTreeMap<String, Saved>,
}

impl Saved {
    fn of(s: &Stats) -> Self {
        let b = &s.build_times.0;
        let c = s.lifetime();
        Saved {
            takes: c.takes,
            warm_takes: c.warm_takes,
            builds: c.builds,
            build_ms_total: c.build_ms_total,
            failures_total: c.failures_total,
            expired: c.expired,
            check_failed: c.check_failed,
            build_bounds_s: b.bounds.to_vec(),
            build_counts: b.counts.clone(),
            build_sum_s: b.sum,
        }
    }

    /// Restores into `earlier`: the counters `status` shows start at zero
    /// with the daemon, as the protocol says.
    fn restore(self, s: &mut Stats) {
        s.earlier = Counts {
            takes: self.takes,
            warm_takes: self.warm_takes,
            builds: self.builds,
            build_ms_total: self.build_ms_total,
            failures_total: self.failures_total,
            expired: self.expired,
            check_failed: self.check_failed,
        };
        if self.build_bounds_s == BUILD_BOUNDS && self.build_counts.len() == BUILD_BOUNDS.len() + 1 {
            s.build_times.0.counts = self.build_counts;
            s.build_times.0.sum = self.build_sum_s;
        }
    }
}

/// Gives the pools in `state` the counters saved under `root`; a missing
/// or unreadable file starts them at zero (and says so, when unreadable).
pub(crate) fn restore(root: &Path, state: &mut State) {
    let path = root.join(FILE);
    let bytes = match fsutil::read_small(&path, MAX_FILE) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => return tracing::warn!("cannot read {}: {e}; pool counters start at zero", path.display()),
    };
    let file: SavedFile = match serde_json::from_slice(&bytes) {
        Ok(file) => file,
        Err(e) => return tracing::warn!("{} is unreadable ({e}); pool counters start at zero", path.display()),
    };
    for (name, saved) in file.pools {
        if let Some(pool) = state.pools.get_mut(&name) {
            saved.restore(&mut pool.stats);
        }
    }
}

fn encode(state: &State) -> Vec<u8> {
    let pools = state.pools.iter().map(|(name, p)| (name.clone(), Saved::of(&p.stats))).collect();
    serde_json::to_vec(&SavedFile { pools }).unwrap_or_default()
}

/// Writes the counters when they changed, every [`SAVE_EVERY`] and once
/// more when the service stops.
pub(crate) async fn keep(service: Arc<PoolService>) {
    let mut written = encode(&service.lock());
    loop {
        let stopping = tokio::select! {
            () = service.stop.cancelled() => true,
            () = tokio::time::sleep(SAVE_EVERY) => false,
        };
        let now = encode(&service.lock());
        if now != written {
            let path = service.store.counters_file();
            let bytes = now.clone();
            let saved = tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, &bytes, 0o600, false)).await;
            match saved {
                Ok(Ok(())) => written = now,
                Ok(Err(e)) => tracing::warn!("cannot save the pool counters: {e}"),
                Err(e) => tracing::warn!("cannot save the pool counters: {e}"),
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::pool::state::Pool;

    #[test]
    fn counters_survive_a_save_and_a_restore_and_foreign_buckets_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::default();
        let mut pool = Pool::new("venv".into());
        pool.stats.takes = 7;
        pool.stats.warm_takes = 5;
        pool.stats.builds = 2;
        pool.stats.build_ms_total = 4_000;
        pool.stats.build_times.observe(1_500);
        pool.stats.build_times.observe(2_500);
        state.pools.insert("venv".into(), pool);
        fsutil::write_atomic(&dir.path().join(FILE), &encode(&state), 0o600, false).unwrap();

        let mut fresh = State::default();
        fresh.pools.insert("venv".into(), Pool::new("venv".into()));
        restore(dir.path(), &mut fresh);
        let s = &fresh.pools["venv"].stats;
        assert_eq!(s.counts(), Counts::default(), "status counts from this daemon's start");
        let life = s.lifetime();
        assert_eq!((life.takes, life.warm_takes, life.builds, life.build_ms_total), (7, 5, 2, 4_000));
        assert_eq!(s.build_times, state.pools["venv"].stats.build_times);
        assert_eq!(s.build_times.0.count(), 2);

        let other = r#"{"pools":{"venv":{"takes":3,"build_bounds_s":[1.0],"build_counts":[1,1],"build_sum_s":9.0}}}"#;
        std::fs::write(dir.path().join(FILE), other).unwrap();
        let mut fresh = State::default();
        fresh.pools.insert("venv".into(), Pool::new("venv".into()));
        restore(dir.path(), &mut fresh);
        assert_eq!(fresh.pools["venv"].stats.lifetime().takes, 3);
        assert_eq!(fresh.pools["venv"].stats.build_times, BuildTimes::default(), "other bounds are not misread");

        std::fs::write(dir.path().join(FILE), "not json").unwrap();
        let mut fresh = State::default();
        fresh.pools.insert("venv".into(), Pool::new("venv".into()));
        restore(dir.path(), &mut fresh);
        assert_eq!(fresh.pools["venv"].stats.lifetime().takes, 0);
    }
}
