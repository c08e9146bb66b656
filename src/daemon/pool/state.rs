//! The pools in memory, and the plan that keeps each at its target.
//!
//! Everything here runs under the service's one mutex and does no I/O: the
//! plan marks resources (building, checking, removed) and returns the
//! actions that the scheduler then carries out outside the lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::definition::{check_command, fingerprint};
use super::store::{LeaseRecord, PoolFile};
use crate::protocol::pool::{BuildFailure, DefinitionSource, Lease, LeaseId, PoolDefinition};
use crate::protocol::{ErrorCode, WireError};

/// Who takes: from the connection's handshake and credentials.
#[derive(Debug, Clone, Default)]
pub(crate) struct Holder {
    pub(crate) client: Option<String>,
    pub(crate) pid: Option<u32>,
}

/// A take waiting for an on-demand build.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) since: Instant,
    pub(crate) holder: Holder,
    pub(crate) lease: LeaseId,
    pub(crate) tx: oneshot::Sender<Result<Lease, WireError>>,
}

/// Where a resource is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResState {
    /// Its build runs.
    Building,
    /// Built. `verified`: checked since the daemon started (adopted
    /// resources are handed out only after their check).
    Ready { verified: bool, checked: Instant },
    /// Its check runs; not handed out meanwhile.
    Checking,
    /// Handed out.
    Taken(LeaseRecord),
    /// Released with reuse: waiting for a build slot, or its reset runs.
    Resetting { running: bool },
    /// Between memory and disk: an operation owns it for a moment.
    Claimed,
}

/// One resource.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub(crate) state: ResState,
    /// The fingerprint of the definition it was built from.
    pub(crate) spec: String,
    /// When its build finished; while building, when it started.
    pub(crate) created_at_ms: u64,
    pub(crate) build_ms: u64,
    /// While building: stops the build early.
    pub(crate) cancel: Option<CancellationToken>,
}

/// Counters since the daemon started.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) takes: u64,
    pub(crate) warm_takes: u64,
    pub(crate) builds: u64,
    pub(crate) build_ms_total: u64,
    /// Failed builds in a row.
    pub(crate) failures: u64,
    pub(crate) failures_total: u64,
    pub(crate) expired: u64,
    pub(crate) check_failed: u64,
    pub(crate) last_error: Option<BuildFailure>,
}

/// While builds fail: when the next background build may start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) delay: Duration,
    pub(crate) until: Instant,
    pub(crate) until_ms: u64,
}

/// The delay after `failures` failed builds in a row: `base`, doubling, capped.
pub(crate) fn backoff_delay(failures: u64, base: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(32) as u32;
    base.saturating_mul(1u32 << shift.min(31)).min(max)
}

/// One pool.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) name: String,
    /// Its `[pool.<name>]` table, normalized.
    pub(crate) config: Option<PoolDefinition>,
    /// The built-in definition of this name, if any.
    pub(crate) builtin: Option<PoolDefinition>,
    /// What `define`, `warm` and `drain` said (persisted).
    pub(crate) file: PoolFile,
    pub(crate) resources: BTreeMap<String, Resource>,
    pub(crate) waiters: VecDeque<Waiter>,
    pub(crate) stats: Stats,
    pub(crate) backoff: Option<Backoff>,
    /// When a take last emptied a slot: replacement builds wait a moment.
    pub(crate) last_take: Option<Instant>,
}

/// How long replacement builds wait after a take, so that they do not
/// compete for the CPU with the taker starting up, and so that a burst of
/// takes is refilled in one go. Takes that wait are never delayed.
pub(crate) const REPLENISH_DELAY: Duration = Duration::from_millis(200);

/// How many resources are in each state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Ready and verified: can be handed out now.
    pub(crate) ready: u32,
    /// Ready but waiting for their first check, or being checked.
    pub(crate) unverified: u32,
    pub(crate) building: u32,
    pub(crate) resetting: u32,
    pub(crate) taken: u32,
}

impl Pool {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            config: None,
            builtin: None,
            file: PoolFile::default(),
            resources: BTreeMap::new(),
            waiters: VecDeque::new(),
            stats: Stats::default(),
            backoff: None,
            last_take: None,
        }
    }

    /// The definition in force: config.toml, else the run-time one, else the built-in one.
    pub(crate) fn effective(&self) -> Option<(DefinitionSource, &PoolDefinition)> {
        self.config
            .as_ref()
            .map(|d| (DefinitionSource::Config, d))
            .or_else(|| self.file.definition.as_ref().map(|d| (DefinitionSource::Runtime, d)))
            .or_else(|| self.builtin.as_ref().map(|d| (DefinitionSource::Builtin, d)))
    }

    /// Ready resources to keep: `warm`/`drain`'s word, else the definition's size.
    pub(crate) fn target(&self) -> u32 {
        match self.effective() {
            Some((_, def)) => self.file.size.unwrap_or(def.size),
            None => 0,
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for r in self.resources.values() {
            match r.state {
                ResState::Ready { verified: true, .. } => c.ready += 1,
                ResState::Ready { verified: false, .. } | ResState::Checking => c.unverified += 1,
                ResState::Building => c.building += 1,
                ResState::Resetting { .. } => c.resetting += 1,
                ResState::Taken(_) => c.taken += 1,
                ResState::Claimed => {}
            }
        }
        c
    }

    /// Whether this pool should be kept in memory at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.effective().is_none() && self.resources.is_empty() && self.waiters.is_empty()
    }

    /// The oldest verified ready resource that has not expired.
    pub(crate) fn pick_ready(&self, now_ms: u64) -> Option<String> {
        let max_age = self.effective().and_then(|(_, d)| d.max_age_ms);
        self.resources
            .iter()
            .filter(|(_, r)| matches!(r.state, ResState::Ready { verified: true, .. }))
            .filter(|(_, r)| max_age.is_none_or(|max| now_ms.saturating_sub(r.created_at_ms) < max))
            .min_by_key(|(id, r)| (r.created_at_ms, (*id).clone()))
            .map(|(id, _)| id.clone())
    }

    /// Cancels up to `n` builds, the most recently started first, except
    /// those that waiting takes need; returns how many.
    pub(crate) fn cancel_builds(&mut self, n: u32) -> u32 {
        let running: Vec<&Resource> = self.live_builds().collect();
        let spare = (running.len() as u32).saturating_sub(self.waiters.len() as u32).min(n);
        let mut newest: Vec<(u64, CancellationToken)> =
            running.iter().filter_map(|r| Some((r.created_at_ms, r.cancel.clone()?))).collect();
        newest.sort_by_key(|(started, _)| std::cmp::Reverse(*started));
        for (_, cancel) in newest.iter().take(spare as usize) {
            cancel.cancel();
        }
        spare
    }

    /// Builds running and not cancelled.
    pub(crate) fn live_builds(&self) -> impl Iterator<Item = &Resource> {
        self.resources
            .values()
            .filter(|r| r.state == ResState::Building && r.cancel.as_ref().is_some_and(|c| !c.is_cancelled()))
    }

    /// Fails every waiting take with `error`.
    pub(crate) fn fail_waiters(&mut self, error: &WireError) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.tx.send(Err(error.clone()));
        }
    }
}

/// Every pool, and who holds which lease.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) pools: BTreeMap<String, Pool>,
    /// lease → (pool, resource id)
    pub(crate) leases: HashMap<LeaseId, (String, String)>,
    /// Builds and resets running, all pools together.
    pub(crate) builds_running: u32,
    /// A draining shutdown: only takes that wait make builds start.
    pub(crate) draining: bool,
    pub(crate) next_waiter: u64,
    /// The parent of every build's cancellation: the service's stop.
    pub(crate) stop: CancellationToken,
}

/// Something the scheduler does outside the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Build resource `id` (marked building, a slot taken) unless `cancel`.
    Build { pool: String, id: String, def: PoolDefinition, cancel: CancellationToken },
    /// Reset released resource `id` (marked running, a slot taken).
    Reset { pool: String, id: String, def: PoolDefinition },
    /// Check ready resource `id` (marked checking).
    Check { pool: String, id: String, def: PoolDefinition },
    /// Delete record and directory of `id`, already forgotten in memory.
    Remove { pool: String, id: String, why: &'static str },
    /// Remove the directory of a pool that is gone.
    DropPool { pool: String },
}

/// Plan inputs that do not live in the state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: Instant,
    pub(crate) now_ms: u64,
}

impl State {
    pub(crate) fn pool_mut(&mut self, name: &str) -> Result<&mut Pool, WireError> {
        self.pools.get_mut(name).filter(|p| p.effective().is_some()).ok_or_else(|| unknown_pool(name))
    }

    /// Decides what to do now; returns the actions and when to plan again
    /// at the latest (`None`: only when something changes).
    pub(crate) fn plan(
        &mut self,
        clock: Clock,
        max_builds: u32,
        mut new_id: impl FnMut() -> String,
    ) -> (Vec<Action>, Option<Instant>) {
        let mut actions = Vec::new();
        let mut wake: Option<Instant> = None;
        let mut soonest = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));

        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in &names {
            let pool = self.pools.get_mut(name).expect("listed");
            let Some((_, def)) = pool.effective() else {
                // No longer defined: only its leases remain.
                pool.fail_waiters(&unknown_pool(name));
                let ready: Vec<String> = pool
                    .resources
                    .iter()
                    .filter(|(_, r)| matches!(r.state, ResState::Ready { .. }))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ready {
                    pool.resources.remove(&id);
                    actions.push(Action::Remove { pool: name.clone(), id, why: "its pool is no longer defined" });
                }
                if pool.is_empty() {
                    self.pools.remove(name);
                    actions.push(Action::DropPool { pool: name.clone() });
                }
                continue;
            };
            let def = def.clone();
            let spec = fingerprint(&def);
            let check = check_command(&def);
            let interval = Duration::from_millis(def.check_interval_ms.unwrap_or(u64::MAX / 4));
            let target = pool.target();

            let mut remove = Vec::new();
            for (id, r) in pool.resources.iter_mut() {
                let ResState::Ready { verified, checked } = r.state else { continue };
                let age = clock.now_ms.saturating_sub(r.created_at_ms);
                if r.spec != spec {
                    remove.push((id.clone(), "its pool's definition changed"));
                } else if def.max_age_ms.is_some_and(|max| age >= max) {
                    remove.push((id.clone(), "it is older than max_age"));
                } else if check.is_some() && (!verified || clock.now >= checked + interval) {
                    r.state = ResState::Checking;
                    actions.push(Action::Check { pool: name.clone(), id: id.clone(), def: def.clone() });
                } else {
                    if let Some(max) = def.max_age_ms {
                        soonest(clock.now + Duration::from_millis(max - age));
                    }
                    if check.is_some() {
                        soonest(checked + interval);
                    }
                }
            }
            for (id, why) in remove {
                if why == "it is older than max_age" {
                    pool.stats.expired += 1;
                }
                pool.resources.remove(&id);
                actions.push(Action::Remove { pool: name.clone(), id, why });
            }

            // More ready than the target (after `warm` lowered it, a reuse,
            // or an on-demand build whose take gave up): remove the oldest.
            if pool.waiters.is_empty() {
                let mut ready: Vec<(u64, String)> = pool
                    .resources
                    .iter()
                    .filter(|(_, r)| matches!(r.state, ResState::Ready { .. }))
                    .map(|(id, r)| (r.created_at_ms, id.clone()))
                    .collect();
                let checking = pool.resources.values().filter(|r| r.state == ResState::Checking).count();
                let surplus = (ready.len() + checking).saturating_sub(target as usize).min(ready.len());
                ready.sort();
                for (_, id) in ready.into_iter().take(surplus) {
                    pool.resources.remove(&id);
                    actions.push(Action::Remove { pool: name.clone(), id, why: "the pool holds more than its target" });
                }
            }
        }

        // Build slots go to pools with waiting takes first (oldest first),
        // then to replenishment.
        let mut order: Vec<(u8, Option<Instant>, String)> = self
            .pools
            .values()
            .filter(|p| p.effective().is_some())
            .map(|p| {
                let first = p.waiters.front().map(|w| w.since);
                (u8::from(first.is_none()), first, p.name.clone())
            })
            .collect();
        order.sort();
        for (_, _, name) in order {
            let pool = self.pools.get_mut(&name).expect("listed");
            let def = pool.effective().expect("defined").1.clone();
            let spec = fingerprint(&def);
            for (id, r) in pool.resources.iter_mut() {
                if self.builds_running >= max_builds {
                    break;
                }
                if r.state == (ResState::Resetting { running: false }) {
                    r.state = ResState::Resetting { running: true };
                    self.builds_running += 1;
                    actions.push(Action::Reset { pool: name.clone(), id: id.clone(), def: def.clone() });
                }
            }
            let c = pool.counts();
            let supply = c.ready + c.unverified + c.building + c.resetting;
            let waiting = pool.waiters.len() as u32;
            let mut want = (pool.target() + waiting).saturating_sub(supply);
            // While failing, or right after a take, only takes that wait
            // make a build start early.
            let hold = pool.backoff.map(|b| b.until).into_iter().chain(pool.last_take.map(|t| t + REPLENISH_DELAY));
            let for_waiters = waiting.saturating_sub(c.building + c.resetting);
            if let Some(until) = hold.filter(|until| *until > clock.now).max() {
                if want > for_waiters {
                    soonest(until);
                }
                want = want.min(for_waiters);
            }
            if self.draining {
                want = want.min(for_waiters);
            }
            while want > 0 && self.builds_running < max_builds {
                let id = new_id();
                let cancel = self.stop.child_token();
                pool.resources.insert(
                    id.clone(),
                    Resource {
                        state: ResState::Building,
                        spec: spec.clone(),
                        created_at_ms: clock.now_ms,
                        build_ms: 0,
                        cancel: Some(cancel.clone()),
                    },
                );
                self.builds_running += 1;
                want -= 1;
                actions.push(Action::Build { pool: name.clone(), id, def: def.clone(), cancel });
            }
        }
        (actions, wake)
    }
}

pub(crate) fn unknown_pool(name: &str) -> WireError {
    WireError::new(ErrorCode::UnknownPool, format!("no pool named {name:?} is defined"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::pool::definition::normalize;

    fn def(name: &str, size: u32) -> PoolDefinition {
        let create = Some(vec!["true".into()]);
        normalize(PoolDefinition { name: name.into(), create, size, ..Default::default() }).unwrap()
    }

    fn state_with(defs: &[PoolDefinition]) -> State {
        let mut state = State::default();
        for d in defs {
            let mut pool = Pool::new(d.name.clone());
            pool.config = Some(d.clone());
            state.pools.insert(d.name.clone(), pool);
        }
        state
    }

    fn clock() -> Clock {
        Clock { now: Instant::now(), now_ms: 1_000_000 }
    }

    fn ids() -> impl FnMut() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        || format!("{:032x}", N.fetch_add(1, Ordering::Relaxed))
    }

    fn ready(spec: &str, created_at_ms: u64) -> Resource {
        Resource {
            state: ResState::Ready { verified: true, checked: Instant::now() },
            spec: spec.into(),
            created_at_ms,
            build_ms: 1,
            cancel: None,
        }
    }

    fn builds(actions: &[Action]) -> usize {
        actions.iter().filter(|a| matches!(a, Action::Build { .. })).count()
    }

    #[test]
    fn builds_respect_the_global_bound() {
        let mut state = state_with(&[def("a", 3), def("b", 2)]);
        let (actions, _) = state.plan(clock(), 1, ids());
        assert_eq!(builds(&actions), 1);
        assert_eq!(state.builds_running, 1);
        let (actions, _) = state.plan(clock(), 1, ids());
        assert_eq!(builds(&actions), 0, "the one slot is taken");
        let (actions, _) = state.plan(clock(), 10, ids());
        assert_eq!(builds(&actions), 4, "3 + 2 wanted, 1 already building");
        assert_eq!(state.plan(clock(), 10, ids()).0, vec![]);
    }

    #[test]
    fn waiting_takes_get_slots_first() {
        let mut state = state_with(&[def("a", 3), def("b", 0)]);
        let (tx, _rx) = oneshot::channel();
        state.pools.get_mut("b").unwrap().waiters.push_back(Waiter {
            id: 1,
            since: Instant::now(),
            holder: Holder::default(),
            lease: LeaseId::parse(&"f".repeat(32)).unwrap(),
            tx,
        });
        let (actions, _) = state.plan(clock(), 1, ids());
        assert!(matches!(&actions[..], [Action::Build { pool, .. }] if pool == "b"), "{actions:?}");
    }

    #[test]
    fn backoff_holds_replenishment_but_not_waiters() {
        let mut state = state_with(&[def("a", 2)]);
        let c = clock();
        let until = c.now + Duration::from_secs(5);
        state.pools.get_mut("a").unwrap().backoff = Some(Backoff { delay: Duration::from_secs(5), until, until_ms: 0 });
        let (actions, wake) = state.plan(c, 4, ids());
        assert_eq!(builds(&actions), 0);
        assert_eq!(wake, Some(until));
        let (tx, _rx) = oneshot::channel();
        state.pools.get_mut("a").unwrap().waiters.push_back(Waiter {
            id: 1,
            since: c.now,
            holder: Holder::default(),
            lease: LeaseId::parse(&"f".repeat(32)).unwrap(),
            tx,
        });
        let (actions, _) = state.plan(c, 4, ids());
        assert_eq!(builds(&actions), 1, "a waiting take is an explicit retry");
        let later = Clock { now: until, now_ms: c.now_ms + 5000 };
        let (actions, _) = state.plan(later, 4, ids());
        assert_eq!(builds(&actions), 2, "after the backoff, back to the target");
    }

    #[test]
    fn replacements_wait_a_moment_after_a_take() {
        let mut state = state_with(&[def("a", 2)]);
        let c = clock();
        state.pools.get_mut("a").unwrap().last_take = Some(c.now);
        let (actions, wake) = state.plan(c, 4, ids());
        assert_eq!(builds(&actions), 0);
        assert_eq!(wake, Some(c.now + REPLENISH_DELAY));
        let later = Clock { now: c.now + REPLENISH_DELAY, now_ms: c.now_ms + 200 };
        assert_eq!(builds(&state.plan(later, 4, ids()).0), 2);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let delays: Vec<u128> = (1..=6).map(|n| backoff_delay(n, base, max).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_delay(1000, base, max), max);
    }

    #[test]
    fn stale_and_surplus_ready_resources_are_removed() {
        let mut d = def("a", 1);
        d.max_age_ms = Some(1000);
        let spec = fingerprint(&d);
        let mut state = state_with(&[d]);
        let c = clock();
        let pool = state.pools.get_mut("a").unwrap();
        pool.resources.insert("old".into(), ready(&spec, c.now_ms - 1000));
        pool.resources.insert("other".into(), ready("another definition", c.now_ms));
        pool.resources.insert("r1".into(), ready(&spec, c.now_ms - 10));
        pool.resources.insert("r2".into(), ready(&spec, c.now_ms - 5));
        let (actions, wake) = state.plan(c, 4, ids());
        let removed: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(removed, ["old", "other", "r1"], "expired, rebuilt, then the oldest surplus");
        assert_eq!(builds(&actions), 0);
        assert_eq!(state.pools["a"].stats.expired, 1);
        assert!(wake.is_some_and(|w| w <= c.now + Duration::from_millis(1000)));
    }

    #[test]
    fn unverified_resources_are_checked_before_use() {
        let mut d = def("a", 1);
        d.check = Some(vec!["true".into()]);
        let d = normalize(d).unwrap();
        let spec = fingerprint(&d);
        let mut state = state_with(&[d]);
        let mut r = ready(&spec, clock().now_ms);
        r.state = ResState::Ready { verified: false, checked: Instant::now() };
        state.pools.get_mut("a").unwrap().resources.insert("x".into(), r);
        assert_eq!(state.pools["a"].pick_ready(clock().now_ms), None, "not handed out before its check");
        let (actions, _) = state.plan(clock(), 4, ids());
        assert!(matches!(&actions[..], [Action::Check { id, .. }] if id == "x"), "{actions:?}");
        assert_eq!(builds(&actions), 0, "a resource being checked counts toward the target");
    }

    #[test]
    fn retired_pools_keep_only_their_leases() {
        let mut state = state_with(&[def("a", 1)]);
        let pool = state.pools.get_mut("a").unwrap();
        pool.config = None;
        pool.resources.insert("r".into(), ready("s", 1));
        let lease = LeaseRecord {
            id: LeaseId::parse(&"a".repeat(32)).unwrap(),
            taken_at_ms: 1,
            warm: true,
            wait_ms: 0,
            holder: None,
            holder_pid: None,
        };
        let mut taken = ready("s", 1);
        taken.state = ResState::Taken(lease);
        pool.resources.insert("t".into(), taken);
        let (actions, _) = state.plan(clock(), 4, ids());
        assert!(matches!(&actions[..], [Action::Remove { id, .. }] if id == "r"), "{actions:?}");
        assert!(state.pools.contains_key("a"), "kept for its lease");
        state.pools.get_mut("a").unwrap().resources.clear();
        let (actions, _) = state.plan(clock(), 4, ids());
        assert_eq!(actions, vec![Action::DropPool { pool: "a".into() }]);
        assert!(state.pools.is_empty());
    }
}
