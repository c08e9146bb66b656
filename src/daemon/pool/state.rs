//! The pools in memory, and the plan that keeps each at its target.
//!
//! Everything here runs under the service's one mutex and does no I/O: the
//! plan marks resources (building, checking, removed) and returns the
//! actions that the scheduler then carries out outside the lock. `plan()`
//! is a list of named steps, each a method of `Pool` below it.

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
    /// Built because a take was waiting for it, and not handed out yet:
    /// kept for a grace period even over the target (see `Policy`).
    pub(crate) for_take: bool,
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
    /// When the replacement builds that takes called for may start: set by
    /// the first take after the last ones started, never pushed back by
    /// later takes.
    pub(crate) refill_at: Option<Instant>,
}

/// How long replacement builds wait after the take that called for them,
/// so that they do not compete for the CPU with the taker starting up, and
/// so that a burst of takes is refilled in one go. Measured from the first
/// take, so a steady stream of takes cannot hold them off. Takes that wait
/// are never delayed.
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
            refill_at: None,
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

    /// A take handed a ready resource over: its replacement is due
    /// [`REPLENISH_DELAY`] from now, or sooner when an earlier take's is.
    pub(crate) fn took(&mut self, now: Instant) {
        self.refill_at.get_or_insert(now + REPLENISH_DELAY);
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

    /// Decides what to do now, in four steps: each pool's upkeep (retired
    /// pools, stale and due-for-check resources), its surplus, then build
    /// slots to pools in order (waiting takes first), for resets and then
    /// for replenishment.
    pub(crate) fn plan(&mut self, clock: Clock, policy: Policy, mut new_id: impl FnMut() -> String) -> Plan {
        let mut plan = Plan::default();
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in &names {
            let pool = self.pools.get_mut(name).expect("listed");
            if pool.effective().is_none() {
                if pool.retire(&mut plan) {
                    self.pools.remove(name);
                }
                continue;
            }
            pool.upkeep(clock, &mut plan);
            pool.trim_surplus(clock, policy.unclaimed_grace, &mut plan);
        }
        let mut slots = Slots { running: &mut self.builds_running, max: policy.max_builds };
        for name in build_order(&self.pools) {
            let pool = self.pools.get_mut(&name).expect("listed");
            pool.start_resets(&mut slots, &mut plan);
            pool.replenish(clock, self.draining, &self.stop, &mut slots, &mut new_id, &mut plan);
        }
        plan
    }
}

/// What bounds a plan: the service's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Builds and resets running at once, all pools together.
    pub(crate) max_builds: u32,
    /// How long a resource built for a take that stopped waiting is kept,
    /// even over its pool's target, for the take that comes next.
    pub(crate) unclaimed_grace: Duration,
}

/// What one plan decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) actions: Vec<Action>,
    /// When to plan again at the latest (`None`: only when something changes).
    pub(crate) wake: Option<Instant>,
}

impl Plan {
    fn wake_at(&mut self, at: Instant) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    fn remove(&mut self, pool: &str, id: String, why: &'static str) {
        self.actions.push(Action::Remove { pool: pool.to_owned(), id, why });
    }
}

/// The build slots during one plan, shared by every pool.
struct Slots<'a> {
    running: &'a mut u32,
    max: u32,
}

impl Slots<'_> {
    fn free(&self) -> bool {
        *self.running < self.max
    }

    fn take(&mut self) {
        *self.running += 1;
    }
}

/// The order in which pools get build slots: those with waiting takes
/// first (the oldest take first), then the others by name.
fn build_order(pools: &BTreeMap<String, Pool>) -> Vec<String> {
    let mut order: Vec<(bool, Option<Instant>, &String)> = pools
        .values()
        .filter(|p| p.effective().is_some())
        .map(|p| {
            let first = p.waiters.front().map(|w| w.since);
            (first.is_none(), first, &p.name)
        })
        .collect();
    order.sort();
    order.into_iter().map(|(_, _, name)| name.clone()).collect()
}

impl Pool {
    /// The ids of the resources in a state that `select` accepts.
    fn ids_where(&self, select: impl Fn(&ResState) -> bool) -> Vec<String> {
        self.resources.iter().filter(|(_, r)| select(&r.state)).map(|(id, _)| id.clone()).collect()
    }

    /// A pool no longer defined: its waiting takes fail and its ready
    /// resources go; only its leases remain. True when nothing is left of it.
    fn retire(&mut self, plan: &mut Plan) -> bool {
        self.fail_waiters(&unknown_pool(&self.name));
        for id in self.ids_where(|s| matches!(s, ResState::Ready { .. })) {
            self.resources.remove(&id);
            plan.remove(&self.name, id, "its pool is no longer defined");
        }
        let gone = self.is_empty();
        if gone {
            plan.actions.push(Action::DropPool { pool: self.name.clone() });
        }
        gone
    }

    /// Removes the ready resources built from another definition or older
    /// than `max_age`, and starts the checks that are due.
    fn upkeep(&mut self, clock: Clock, plan: &mut Plan) {
        let def = self.effective().expect("a defined pool").1.clone();
        let spec = fingerprint(&def);
        let check = check_command(&def).is_some();
        let interval = Duration::from_millis(def.check_interval_ms.unwrap_or(u64::MAX / 4));
        let mut remove = Vec::new();
        for (id, r) in &mut self.resources {
            let ResState::Ready { verified, checked } = r.state else { continue };
            let age = clock.now_ms.saturating_sub(r.created_at_ms);
            if r.spec != spec {
                remove.push((id.clone(), "its pool's definition changed"));
            } else if def.max_age_ms.is_some_and(|max| age >= max) {
                remove.push((id.clone(), EXPIRED));
            } else if check && (!verified || clock.now >= checked + interval) {
                r.state = ResState::Checking;
                plan.actions.push(Action::Check { pool: self.name.clone(), id: id.clone(), def: def.clone() });
            } else {
                if let Some(max) = def.max_age_ms {
                    plan.wake_at(clock.now + Duration::from_millis(max - age));
                }
                if check {
                    plan.wake_at(checked + interval);
                }
            }
        }
        for (id, why) in remove {
            if why == EXPIRED {
                self.stats.expired += 1;
            }
            self.resources.remove(&id);
            plan.remove(&self.name, id, why);
        }
    }

    /// More ready than the target (after `warm` lowered it, a reuse, or an
    /// on-demand build whose take stopped waiting): the oldest go, except
    /// the resources built for a take, which stay for `grace` after their
    /// build for the take that comes next. Nothing goes while takes wait.
    fn trim_surplus(&mut self, clock: Clock, grace: Duration, plan: &mut Plan) {
        if !self.waiters.is_empty() {
            return;
        }
        let mut ready: Vec<(u64, String)> = self
            .resources
            .iter()
            .filter(|(_, r)| matches!(r.state, ResState::Ready { .. }))
            .map(|(id, r)| (r.created_at_ms, id.clone()))
            .collect();
        let checking = self.resources.values().filter(|r| r.state == ResState::Checking).count();
        let mut surplus = (ready.len() + checking).saturating_sub(self.target() as usize).min(ready.len());
        ready.sort();
        for (created_at_ms, id) in ready {
            if surplus == 0 {
                break;
            }
            let kept_until_ms = created_at_ms.saturating_add(grace.as_millis() as u64);
            if self.resources[&id].for_take && kept_until_ms > clock.now_ms {
                plan.wake_at(clock.now + Duration::from_millis(kept_until_ms - clock.now_ms));
                continue;
            }
            self.resources.remove(&id);
            plan.remove(&self.name, id, "the pool holds more than its target");
            surplus -= 1;
        }
    }

    /// Starts the resets of released resources, as far as slots allow.
    fn start_resets(&mut self, slots: &mut Slots<'_>, plan: &mut Plan) {
        let released = self.ids_where(|s| *s == ResState::Resetting { running: false });
        for id in released {
            if !slots.free() {
                break;
            }
            let def = self.effective().expect("a defined pool").1.clone();
            self.resources.get_mut(&id).expect("listed").state = ResState::Resetting { running: true };
            slots.take();
            plan.actions.push(Action::Reset { pool: self.name.clone(), id, def });
        }
    }

    /// Starts the builds that bring `ready + checking + building +
    /// resetting` up to `target + waiting`, as far as slots allow. Builds
    /// that only refill the pool wait while it backs off from failures, or
    /// until the replacement a take called for is due, and do not start
    /// during a draining shutdown; builds for waiting takes never wait.
    fn replenish(
        &mut self,
        clock: Clock,
        draining: bool,
        stop: &CancellationToken,
        slots: &mut Slots<'_>,
        new_id: &mut impl FnMut() -> String,
        plan: &mut Plan,
    ) {
        let c = self.counts();
        let supply = c.ready + c.unverified + c.building + c.resetting;
        let waiting = self.waiters.len() as u32;
        let mut want = (self.target() + waiting).saturating_sub(supply);
        let for_waiters = waiting.saturating_sub(c.building + c.resetting);
        if let Some(until) = self.hold(clock.now) {
            if want > for_waiters {
                plan.wake_at(until);
            }
            want = want.min(for_waiters);
        }
        if draining {
            want = want.min(for_waiters);
        }
        let def = self.effective().expect("a defined pool").1.clone();
        let spec = fingerprint(&def);
        let mut started = 0;
        while started < want && slots.free() {
            let id = new_id();
            let cancel = stop.child_token();
            let resource = Resource {
                state: ResState::Building,
                spec: spec.clone(),
                created_at_ms: clock.now_ms,
                build_ms: 0,
                cancel: Some(cancel.clone()),
                for_take: started < for_waiters,
            };
            self.resources.insert(id.clone(), resource);
            slots.take();
            started += 1;
            plan.actions.push(Action::Build { pool: self.name.clone(), id, def: def.clone(), cancel });
        }
    }

    /// Until when builds that only refill the pool wait, if they do: the
    /// failure backoff, or a replacement not due yet. A replacement that
    /// is due starts now, and the next take sets a new one.
    fn hold(&mut self, now: Instant) -> Option<Instant> {
        if self.refill_at.is_some_and(|at| at <= now) {
            self.refill_at = None;
        }
        self.backoff.map(|b| b.until).into_iter().chain(self.refill_at).filter(|until| *until > now).max()
    }
}

/// Why an expired resource is removed (also counted in `expired`).
const EXPIRED: &str = "it is older than max_age";

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
            for_take: false,
        }
    }

    const GRACE: Duration = Duration::from_secs(60);

    fn policy(max_builds: u32) -> Policy {
        Policy { max_builds, unclaimed_grace: GRACE }
    }

    fn after(c: Clock, d: Duration) -> Clock {
        Clock { now: c.now + d, now_ms: c.now_ms + d.as_millis() as u64 }
    }

    fn waiter(id: u64, since: Instant) -> (Waiter, oneshot::Receiver<Result<Lease, WireError>>) {
        let (tx, rx) = oneshot::channel();
        let lease = LeaseId::parse(&format!("{id:032x}")).unwrap();
        (Waiter { id, since, holder: Holder::default(), lease, tx }, rx)
    }

    fn removed(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    fn builds(actions: &[Action]) -> usize {
        actions.iter().filter(|a| matches!(a, Action::Build { .. })).count()
    }

    #[test]
    fn builds_respect_the_global_bound() {
        let mut state = state_with(&[def("a", 3), def("b", 2)]);
        let Plan { actions, .. } = state.plan(clock(), policy(1), ids());
        assert_eq!(builds(&actions), 1);
        assert_eq!(state.builds_running, 1);
        let Plan { actions, .. } = state.plan(clock(), policy(1), ids());
        assert_eq!(builds(&actions), 0, "the one slot is taken");
        let Plan { actions, .. } = state.plan(clock(), policy(10), ids());
        assert_eq!(builds(&actions), 4, "3 + 2 wanted, 1 already building");
        assert_eq!(state.plan(clock(), policy(10), ids()).actions, vec![]);
    }

    #[test]
    fn waiting_takes_get_slots_first() {
        let mut state = state_with(&[def("a", 3), def("b", 0)]);
        let (w, _rx) = waiter(1, Instant::now());
        state.pools.get_mut("b").unwrap().waiters.push_back(w);
        let Plan { actions, .. } = state.plan(clock(), policy(1), ids());
        assert!(matches!(&actions[..], [Action::Build { pool, .. }] if pool == "b"), "{actions:?}");
    }

    #[test]
    fn backoff_holds_replenishment_but_not_waiters() {
        let mut state = state_with(&[def("a", 2)]);
        let c = clock();
        let until = c.now + Duration::from_secs(5);
        state.pools.get_mut("a").unwrap().backoff = Some(Backoff { delay: Duration::from_secs(5), until, until_ms: 0 });
        let Plan { actions, wake } = state.plan(c, policy(4), ids());
        assert_eq!(builds(&actions), 0);
        assert_eq!(wake, Some(until));
        let (w, _rx) = waiter(1, c.now);
        state.pools.get_mut("a").unwrap().waiters.push_back(w);
        let Plan { actions, .. } = state.plan(c, policy(4), ids());
        assert_eq!(builds(&actions), 1, "a waiting take is an explicit retry");
        let later = Clock { now: until, now_ms: c.now_ms + 5000 };
        let Plan { actions, .. } = state.plan(later, policy(4), ids());
        assert_eq!(builds(&actions), 2, "after the backoff, back to the target");
    }

    #[test]
    fn replacements_wait_a_moment_after_a_take() {
        let mut state = state_with(&[def("a", 2)]);
        let c = clock();
        state.pools.get_mut("a").unwrap().took(c.now);
        let Plan { actions, wake } = state.plan(c, policy(4), ids());
        assert_eq!(builds(&actions), 0);
        assert_eq!(wake, Some(c.now + REPLENISH_DELAY));
        let later = after(c, REPLENISH_DELAY);
        assert_eq!(builds(&state.plan(later, policy(4), ids()).actions), 2);
    }

    /// Takes every 100 ms, each holding its resource: the replacements are
    /// due 200 ms after the first take, not 200 ms after the last, so the
    /// pool never runs dry.
    #[test]
    fn a_steady_stream_of_takes_does_not_hold_replacements_off() {
        let mut state = state_with(&[def("a", 6)]);
        let c = clock();
        assert_eq!(builds(&state.plan(c, policy(4), ids()).actions), 4, "the first fill");
        let mut building = 0;
        for n in 1..=30u32 {
            let now = after(c, Duration::from_millis(100) * n);
            let pool = state.pools.get_mut("a").unwrap();
            // The builds started last round are ready now; a take gets one.
            for r in pool.resources.values_mut().filter(|r| r.state == ResState::Building) {
                r.state = ResState::Ready { verified: true, checked: now.now };
            }
            state.builds_running = 0;
            let pool = state.pools.get_mut("a").unwrap();
            let id = pool.pick_ready(now.now_ms).unwrap_or_else(|| panic!("take {n} found the pool dry"));
            pool.resources.get_mut(&id).unwrap().state = ResState::Claimed;
            pool.took(now.now);
            let Plan { actions, wake } = state.plan(now, policy(4), ids());
            building += builds(&actions);
            if let Some(wake) = wake {
                assert!(wake <= now.now + REPLENISH_DELAY, "take {n}: replacements held off until {wake:?}");
            }
        }
        assert!(building >= 24, "{building} replacements for 30 takes");
    }

    /// A pool of size 0, and a take that stops waiting before its build
    /// ends: the resource is kept for the grace period, for the next take.
    #[test]
    fn a_resource_built_for_a_take_that_left_is_kept_for_the_grace_period() {
        let mut state = state_with(&[def("a", 0)]);
        let c = clock();
        let (w, _rx) = waiter(1, c.now);
        state.pools.get_mut("a").unwrap().waiters.push_back(w);
        let Plan { actions, .. } = state.plan(c, policy(4), ids());
        let [Action::Build { id, .. }] = &actions[..] else { panic!("one build: {actions:?}") };
        // The take gives up; the build then ends, for nobody.
        let pool = state.pools.get_mut("a").unwrap();
        pool.waiters.clear();
        let built = after(c, Duration::from_millis(400));
        let r = pool.resources.get_mut(id).unwrap();
        assert!(r.for_take, "a build for a waiting take says so");
        r.state = ResState::Ready { verified: true, checked: built.now };
        r.created_at_ms = built.now_ms;
        state.builds_running = 0;

        let Plan { actions, wake } = state.plan(built, policy(4), ids());
        assert_eq!(actions, vec![], "kept, over the target of 0");
        assert_eq!(wake, Some(built.now + GRACE), "until the grace is over");
        assert_eq!(state.pools["a"].pick_ready(built.now_ms).as_ref(), Some(id), "for the next take");
        let almost = after(built, GRACE - Duration::from_millis(1));
        assert_eq!(state.plan(almost, policy(4), ids()).actions, vec![]);
        let Plan { actions, wake } = state.plan(after(built, GRACE), policy(4), ids());
        assert_eq!(removed(&actions), [id.as_str()], "removed once the grace is over");
        assert_eq!(wake, None);
    }

    #[test]
    fn only_resources_built_for_takes_outlive_a_surplus() {
        let d = def("a", 1);
        let spec = fingerprint(&d);
        let mut state = state_with(&[d]);
        let c = clock();
        let pool = state.pools.get_mut("a").unwrap();
        pool.resources.insert("r1".into(), ready(&spec, c.now_ms - 30));
        let mut kept = ready(&spec, c.now_ms - 20);
        kept.for_take = true;
        pool.resources.insert("r2".into(), kept);
        pool.resources.insert("r3".into(), ready(&spec, c.now_ms - 10));
        let Plan { actions, .. } = state.plan(c, policy(4), ids());
        assert_eq!(removed(&actions), ["r1", "r3"], "the surplus of 2 spares the one built for a take");

        // Of the builds a waiting take starts, one is for it; the rest refill.
        let (w, _rx) = waiter(2, c.now);
        let pool = state.pools.get_mut("a").unwrap();
        pool.resources.clear();
        pool.waiters.push_back(w);
        let Plan { actions, .. } = state.plan(c, policy(4), ids());
        assert_eq!(builds(&actions), 2);
        let for_take = state.pools["a"].resources.values().filter(|r| r.for_take).count();
        assert_eq!(for_take, 1);
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
        let Plan { actions, wake } = state.plan(c, policy(4), ids());
        assert_eq!(removed(&actions), ["old", "other", "r1"], "expired, rebuilt, then the oldest surplus");
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
        let Plan { actions, .. } = state.plan(clock(), policy(4), ids());
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
        let Plan { actions, .. } = state.plan(clock(), policy(4), ids());
        assert!(matches!(&actions[..], [Action::Remove { id, .. }] if id == "r"), "{actions:?}");
        assert!(state.pools.contains_key("a"), "kept for its lease");
        state.pools.get_mut("a").unwrap().resources.clear();
        let Plan { actions, .. } = state.plan(clock(), policy(4), ids());
        assert_eq!(actions, vec![Action::DropPool { pool: "a".into() }]);
        assert!(state.pools.is_empty());
    }
}
