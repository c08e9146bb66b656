//! The pool service: prewarmed resources built in the background and
//! handed out by lease.
//!
//! - `settings`: the `[pool]` section of config.toml.
//! - `definition`: validating definitions, the built-in `venv` pool, the
//!   commands a definition runs.
//! - `store`: records and directories on disk, and recovery at start-up.
//! - `state`: the pools in memory and the plan that keeps them at target.
//! - `scheduler`: the background task that carries the plan out (builds,
//!   checks, resets, removals).
//! - `runner`: running one command with a deadline and a bounded log.
//! - `handler`: the channel's requests.
//!
//! One mutex guards the state; it is never held across an `.await`. A
//! resource changes hands in two steps: it is claimed in memory (so no one
//! else can touch it), then its record is written, then it is published.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::definition::{MAX_POOLS, MAX_SIZE, builtin_venv, check_command, fingerprint, normalize};
use self::state::{Clock, Holder, Policy, Pool, ResState, Resource, State, Waiter, unknown_pool};
use self::store::{LeaseRecord, Record, RecordState, Store};
use crate::daemon::Config;
use crate::daemon::events::EventBus;
use crate::daemon::services::{BoxFuture, Opened, Service, StartCtx, StartError, StartService};
use crate::paths::Paths;
use crate::protocol::Channel;
use crate::protocol::pool::{
    BuildFailure, DefinitionSource, Lease, LeaseId, PoolBrief, PoolDefinition, PoolStatus, PoolSummary, PoolsReport,
    ReleaseOutcome,
};
use crate::protocol::status::{HealthCode, HealthReason, ServiceSummaries};
use crate::protocol::{ErrorCode, WireError};
use crate::time::{now_ms, rfc3339_ms};

mod definition;
mod handler;
mod runner;
mod scheduler;
pub mod settings;
mod state;
mod store;

/// Descriptors one build, check or reset holds at its peak.
const FDS_PER_BUILD: u64 = 10;

/// How long shutdown waits for builds to be killed and cleaned up.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// The pool service of one daemon.
#[derive(Debug)]
pub(crate) struct PoolService {
    settings: settings::PoolSettings,
    store: Store,
    state: Mutex<State>,
    /// Wakes the scheduler: something changed.
    wake: Notify,
    /// Wakes the trash collector.
    trash: Notify,
    /// Lease files to fsync, and what wakes their syncer.
    unsynced: Mutex<Vec<(String, String)>>,
    sync: Notify,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Where builds, takes and releases are told.
    events: Arc<EventBus>,
}

/// What `release` answers.
#[derive(Debug)]
pub(crate) struct Released {
    /// The pool the resource came from.
    pub(crate) pool: String,
    pub(crate) outcome: ReleaseOutcome,
    pub(crate) reason: Option<String>,
}

impl PoolService {
    /// Recovers the pools on disk, then starts the scheduler.
    pub(crate) async fn open(
        config: &Config,
        paths: &Paths,
        events: Arc<EventBus>,
    ) -> Result<Arc<PoolService>, StartError> {
        let root = paths.state_dir().join("pools");
        let store = Store::open(root.clone()).map_err(|source| StartError::Io { path: root.clone(), source })?;
        let recovering = store.clone();
        let found = tokio::task::spawn_blocking(move || recovering.recover())
            .await
            .map_err(|e| StartError::join("the pools' recovery", &e))?
            .map_err(|source| StartError::Io { path: root.clone(), source })?;
        let mut state = State::default();
        adopt_recovered(&mut state, found);
        for (name, entry) in &config.pool.pools {
            let def = normalize(entry.to_definition(name))
                .map_err(|e| StartError::Config { section: format!("pool.{name}"), message: e.to_string() })?;
            state.pools.entry(name.clone()).or_insert_with(|| Pool::new(name.clone())).config = Some(def);
        }
        let venv = builtin_venv();
        let name = venv.name.clone();
        state.pools.entry(name.clone()).or_insert_with(|| Pool::new(name)).builtin = Some(venv);
        mark_unchecked(&mut state);
        let adopted: usize = state
            .pools
            .values()
            .map(|p| p.resources.values().filter(|r| matches!(r.state, ResState::Ready { .. })).count())
            .sum();
        tracing::info!(pools = state.pools.len(), adopted, leases = state.leases.len(), "pool service ready");

        let stop = CancellationToken::new();
        state.stop = stop.clone();
        let service = Arc::new(PoolService {
            settings: config.pool.clone(),
            store,
            state: Mutex::new(state),
            wake: Notify::new(),
            trash: Notify::new(),
            unsynced: Mutex::new(Vec::new()),
            sync: Notify::new(),
            stop,
            tasks: TaskTracker::new(),
            events,
        });
        service.tasks.spawn(scheduler::run(service.clone()));
        service.tasks.spawn(scheduler::collect_trash(service.clone()));
        service.tasks.spawn(scheduler::sync_leases(service.clone()));
        service.trash.notify_one();
        Ok(service)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn clock() -> Clock {
        Clock { now: Instant::now(), now_ms: now_ms() }
    }

    fn policy(&self) -> Policy {
        Policy { max_builds: self.settings.max_concurrent_builds, unclaimed_grace: self.settings.unclaimed_grace.0 }
    }

    fn lease_view(&self, pool: &str, id: &str, r: &Resource, lease: &LeaseRecord, now_ms: u64) -> Lease {
        Lease {
            lease: lease.id.clone(),
            pool: pool.to_owned(),
            resource: id.to_owned(),
            path: self.store.resource_dir(pool, id),
            warm: lease.warm,
            created_at: rfc3339_ms(r.created_at_ms),
            taken_at: rfc3339_ms(lease.taken_at_ms),
            age_ms: now_ms.saturating_sub(r.created_at_ms),
            build_ms: r.build_ms,
            wait_ms: lease.wait_ms,
            holder: lease.holder.clone(),
            holder_pid: lease.holder_pid,
        }
    }

    fn record_of(id: &str, r: &Resource, state: RecordState) -> Record {
        Record { id: id.to_owned(), state, spec: r.spec.clone(), created_at_ms: r.created_at_ms, build_ms: r.build_ms }
    }

    /// Hands over a resource: a ready one at once, else one built on demand.
    pub(crate) async fn take(
        &self,
        pool: &str,
        timeout_ms: Option<u64>,
        holder: &Holder,
        stop: &CancellationToken,
    ) -> Result<Lease, WireError> {
        let lease = new_lease()?;
        let clock = Self::clock();
        let (waiter, mut rx) = {
            let mut state = self.lock();
            let p = state.pool_mut(pool)?;
            if let Some(id) = p.pick_ready(clock.now_ms) {
                let record = LeaseRecord {
                    id: lease.clone(),
                    taken_at_ms: clock.now_ms,
                    warm: true,
                    wait_ms: 0,
                    holder: holder.client.clone(),
                    holder_pid: holder.pid,
                };
                p.took(clock.now);
                p.stats.takes += 1;
                p.stats.warm_takes += 1;
                let r = p.resources.get_mut(&id).expect("picked");
                r.state = ResState::Taken(record.clone());
                r.for_take = false;
                let r = r.clone();
                state.leases.insert(lease.clone(), (pool.to_owned(), id.clone()));
                drop(state);
                return self
                    .hand_over(pool, &id, &record)
                    .map(|()| self.lease_view(pool, &id, &r, &record, clock.now_ms));
            }
            if timeout_ms == Some(0) {
                return Err(WireError::new(
                    ErrorCode::TakeTimeout,
                    format!("pool {pool:?} has no ready resource (timeout_ms 0 takes only a ready one)"),
                ));
            }
            let (tx, rx) = oneshot::channel();
            state.next_waiter += 1;
            let id = state.next_waiter;
            let p = state.pool_mut(pool)?;
            p.waiters.push_back(Waiter { id, since: clock.now, holder: holder.clone(), lease, tx });
            (id, rx)
        };
        self.wake.notify_one();
        let wait = Duration::from_millis(timeout_ms.unwrap_or(definition::DEFAULT_TAKE_TIMEOUT.as_millis() as u64));
        let gave_up = tokio::select! {
            got = tokio::time::timeout(wait, &mut rx) => match got {
                Ok(Ok(result)) => return result,
                Ok(Err(_)) => return Err(WireError::new(ErrorCode::ShuttingDown, "the pool service stopped")),
                Err(_) => WireError::new(
                    ErrorCode::TakeTimeout,
                    format!("no resource of pool {pool:?} became ready within {wait:?}; its build goes on and will serve the next take"),
                ),
            },
            () = stop.cancelled() => WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down"),
        };
        // Still waiting? Then leave. If not, a build is handing this take
        // its resource right now: accept it rather than lose it.
        let still_waiting = {
            let mut state = self.lock();
            let p = state.pools.get_mut(pool);
            match p.and_then(|p| p.waiters.iter().position(|w| w.id == waiter).map(|i| (p, i))) {
                Some((p, i)) => {
                    p.waiters.remove(i);
                    true
                }
                None => false,
            }
        };
        if still_waiting {
            self.wake.notify_one();
            return Err(gave_up);
        }
        rx.await.unwrap_or(Err(gave_up))
    }

    /// Records a take on disk (before its answer is sent), to be fsynced
    /// right after. On failure the resource goes back to ready.
    fn hand_over(&self, pool: &str, id: &str, lease: &LeaseRecord) -> Result<(), WireError> {
        if let Err(e) = self.store.write_lease(pool, id, lease) {
            tracing::error!(pool, resource = %id, "cannot record a take: {e}");
            let mut state = self.lock();
            state.leases.remove(&lease.id);
            if let Some(r) = state.pools.get_mut(pool).and_then(|p| p.resources.get_mut(id)) {
                r.state = ResState::Ready { verified: true, checked: Instant::now() };
            }
            return Err(WireError::new(ErrorCode::Internal, format!("cannot record the take: {e}")));
        }
        self.unsynced.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((pool.to_owned(), id.to_owned()));
        self.sync.notify_one();
        self.wake.notify_one();
        Ok(())
    }

    /// Undoes a take whose answer could not be delivered: the resource was
    /// never seen by anyone, so it goes back to ready. One built for that
    /// take is kept like one whose take timed out (see `Policy`).
    pub(crate) fn untake(&self, lease: &LeaseId) {
        let (pool, id) = {
            let mut state = self.lock();
            let Some((pool, id)) = state.leases.remove(lease) else { return };
            let r = state.pools.get_mut(&pool).and_then(|p| p.resources.get_mut(&id)).expect("leased");
            r.for_take = matches!(&r.state, ResState::Taken(lease) if !lease.warm);
            r.state = ResState::Claimed;
            (pool, id)
        };
        tracing::info!(pool, resource = %id, "the taker left before its answer; the resource is ready again");
        let back = self.store.clear_lease(&pool, &id);
        let mut state = self.lock();
        if let Some(p) = state.pools.get_mut(&pool) {
            if back.is_ok() {
                if let Some(r) = p.resources.get_mut(&id) {
                    r.state = ResState::Ready { verified: true, checked: Instant::now() };
                }
            } else {
                p.resources.remove(&id);
                drop(state);
                self.remove_resource(&pool, &id);
            }
        }
        self.wake.notify_one();
    }

    /// Gives a resource back.
    pub(crate) fn release(&self, lease: &LeaseId, reuse: bool) -> Result<Released, WireError> {
        let (pool, id, r, held, reason) = {
            let mut state = self.lock();
            let Some((pool, id)) = state.leases.remove(lease) else {
                return Err(WireError::new(
                    ErrorCode::UnknownLease,
                    format!("no resource is held under lease {lease} (never issued, or already released)"),
                ));
            };
            let p = state.pools.get_mut(&pool).expect("a leased resource's pool exists");
            let reason = if reuse { reuse_refusal(p, &id, now_ms()) } else { Some("not asked to reuse") };
            let r = p.resources.get_mut(&id).expect("leased");
            let next = if reason.is_none() { ResState::Resetting { running: false } } else { ResState::Claimed };
            let held = std::mem::replace(&mut r.state, next);
            let r = r.clone();
            if reason.is_none() {
                // The reset resource takes the place of a build still under
                // way (the one this take started, usually): stop that build.
                let c = p.counts();
                let have = c.ready + c.unverified + c.resetting;
                let need = (p.target() + p.waiters.len() as u32).saturating_sub(have);
                let live = p.live_builds().count() as u32;
                if live > need && p.cancel_builds(live - need) > 0 {
                    tracing::info!(pool, "a released resource makes a build under way unnecessary; cancelling it");
                }
            }
            (pool, id, r, held, reason)
        };
        if reason.is_none() {
            // Resetting first: a crash between the two writes removes the
            // resource at the next start, as a release asked for.
            let record = Self::record_of(&id, &r, RecordState::Resetting { process: None });
            if self.store.write_record(&pool, &record).is_ok() {
                if let Err(e) = self.store.clear_lease(&pool, &id) {
                    tracing::warn!(pool, resource = %id, "cannot clear a lease file: {e}");
                }
                self.wake.notify_one();
                return Ok(Released { pool, outcome: ReleaseOutcome::Resetting, reason: None });
            }
        }
        // The record goes first: a lease file without a record is a release
        // under way, finished at the next start.
        if let Err(e) = self.store.delete_record(&pool, &id) {
            tracing::error!(pool, resource = %id, "cannot delete a record: {e}");
            let mut state = self.lock();
            state.leases.insert(lease.clone(), (pool.clone(), id.clone()));
            if let Some(r) = state.pools.get_mut(&pool).and_then(|p| p.resources.get_mut(&id)) {
                r.state = held;
            }
            return Err(WireError::new(ErrorCode::Internal, format!("cannot release: {e}")));
        }
        if let Some(p) = self.lock().pools.get_mut(&pool) {
            p.resources.remove(&id);
        }
        self.remove_resource(&pool, &id);
        self.wake.notify_one();
        let reason = reason.filter(|_| reuse).map(str::to_owned);
        Ok(Released { pool, outcome: ReleaseOutcome::Removed, reason })
    }

    /// Deletes a forgotten resource's record and lease file, and moves its
    /// directory to the trash.
    fn remove_resource(&self, pool: &str, id: &str) {
        if let Err(e) = self.store.delete_record(pool, id) {
            tracing::warn!(pool, resource = %id, "cannot delete the record: {e}");
        }
        if let Err(e) = self.store.delete_lease(pool, id) {
            tracing::warn!(pool, resource = %id, "cannot delete the lease file: {e}");
        }
        if let Err(e) = self.store.trash_resource(pool, id) {
            tracing::warn!(pool, resource = %id, "cannot remove the directory: {e}");
        }
        self.trash.notify_one();
    }

    /// Every lease, oldest first.
    pub(crate) fn leases(&self, pool: Option<&str>) -> Result<Vec<Lease>, WireError> {
        let state = self.lock();
        if let Some(name) = pool
            && !state.pools.contains_key(name)
        {
            return Err(unknown_pool(name));
        }
        let now = now_ms();
        let mut out = Vec::new();
        for (name, p) in state.pools.iter().filter(|(n, _)| pool.is_none_or(|want| want == n.as_str())) {
            for (id, r) in &p.resources {
                if let ResState::Taken(lease) = &r.state {
                    out.push(self.lease_view(name, id, r, lease, now));
                }
            }
        }
        out.sort_by(|a, b| (&a.taken_at, &a.lease).cmp(&(&b.taken_at, &b.lease)));
        Ok(out)
    }

    /// Sets a pool's target; returns the previous one.
    pub(crate) fn warm(&self, pool: &str, size: u32) -> Result<u32, WireError> {
        if size > MAX_SIZE {
            return Err(WireError::new(ErrorCode::InvalidRequest, format!("size must be at most {MAX_SIZE}")));
        }
        let previous = {
            let mut state = self.lock();
            let p = state.pool_mut(pool)?;
            let previous = p.target();
            let before = p.file.size.replace(size);
            if let Err(e) = self.store.write_pool_file(pool, &p.file) {
                p.file.size = before;
                return Err(WireError::new(ErrorCode::Internal, format!("cannot save the target: {e}")));
            }
            previous
        };
        self.wake.notify_one();
        Ok(previous)
    }

    /// Removes the ready resources and sets the target to 0.
    pub(crate) fn drain(&self, pool: &str) -> Result<u32, WireError> {
        let removed = {
            let mut state = self.lock();
            let p = state.pool_mut(pool)?;
            let before = p.file.size.replace(0);
            if let Err(e) = self.store.write_pool_file(pool, &p.file) {
                p.file.size = before;
                return Err(WireError::new(ErrorCode::Internal, format!("cannot save the target: {e}")));
            }
            let ready: Vec<String> = p
                .resources
                .iter()
                .filter(|(_, r)| matches!(r.state, ResState::Ready { .. }))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ready {
                p.resources.remove(id);
            }
            p.cancel_builds(u32::MAX);
            ready
        };
        for id in &removed {
            self.remove_resource(pool, id);
        }
        self.wake.notify_one();
        Ok(removed.len() as u32)
    }

    /// Stores a run-time definition; returns the source in force and whether
    /// anything changed.
    pub(crate) fn define(&self, definition: PoolDefinition) -> Result<(String, DefinitionSource, bool), WireError> {
        let def = normalize(definition).map_err(|e| WireError::new(ErrorCode::InvalidDefinition, e))?;
        let name = def.name.clone();
        let result = {
            let mut state = self.lock();
            let defined = state.pools.values().filter(|p| p.effective().is_some()).count();
            let exists = state.pools.get(&name).is_some_and(|p| p.effective().is_some());
            if !exists && defined >= MAX_POOLS {
                return Err(WireError::new(
                    ErrorCode::TooManyPools,
                    format!("{defined} pools are defined, the most a daemon keeps; undefine one first"),
                ));
            }
            let p = state.pools.entry(name.clone()).or_insert_with(|| Pool::new(name.clone()));
            let changed = p.file.definition.as_ref() != Some(&def);
            if changed {
                let before = std::mem::replace(&mut p.file, store::PoolFile { definition: Some(def), size: None });
                if let Err(e) = self.store.write_pool_file(&name, &p.file) {
                    p.file = before;
                    return Err(WireError::new(ErrorCode::Internal, format!("cannot save the definition: {e}")));
                }
                // A new definition deserves a fresh start.
                p.backoff = None;
                p.stats.failures = 0;
            }
            let source = p.effective().expect("just defined").0;
            (name, source, changed)
        };
        self.wake.notify_one();
        Ok(result)
    }

    /// Removes a run-time definition; returns the source in force now.
    pub(crate) fn undefine(&self, pool: &str) -> Result<Option<DefinitionSource>, WireError> {
        let source = {
            let mut state = self.lock();
            let p = state.pools.get_mut(pool).ok_or_else(|| unknown_pool(pool))?;
            if p.file.definition.is_none() {
                return Err(match p.effective() {
                    Some((source, _)) => WireError::new(
                        ErrorCode::NotRuntimeDefined,
                        format!(
                            "pool {pool:?} is defined {}; only run-time definitions can be removed",
                            match source {
                                DefinitionSource::Config => "in config.toml",
                                _ => "into the daemon",
                            }
                        ),
                    ),
                    None => unknown_pool(pool),
                });
            }
            let before = std::mem::take(&mut p.file);
            if let Err(e) = self.store.write_pool_file(pool, &p.file) {
                p.file = before;
                return Err(WireError::new(ErrorCode::Internal, format!("cannot save: {e}")));
            }
            p.effective().map(|(s, _)| s)
        };
        self.wake.notify_one();
        Ok(source)
    }

    /// Every pool's state, or one pool's.
    pub(crate) fn status(&self, pool: Option<&str>) -> Result<PoolsReport, WireError> {
        let uv = definition::find_uv();
        let state = self.lock();
        if let Some(name) = pool
            && !state.pools.contains_key(name)
        {
            return Err(unknown_pool(name));
        }
        let pools = state
            .pools
            .values()
            .filter(|p| pool.is_none_or(|want| want == p.name))
            .map(|p| pool_status(p, uv.as_deref()))
            .collect();
        Ok(PoolsReport {
            pools,
            builds_running: state.builds_running,
            max_concurrent_builds: self.settings.max_concurrent_builds,
        })
    }

    /// The status channel's summary.
    pub(crate) fn summary(&self) -> PoolSummary {
        let state = self.lock();
        let pools = state
            .pools
            .values()
            .map(|p| {
                let c = p.counts();
                let s = &p.stats;
                let brief = PoolBrief {
                    target: p.target(),
                    ready: c.ready,
                    building: c.building + c.resetting,
                    taken: c.taken,
                    warm_hit_rate: hit_rate(s.warm_takes, s.takes),
                    mean_build_ms: s.build_ms_total.checked_div(s.builds),
                    failures: s.failures,
                    builds: s.builds,
                    failures_total: s.failures_total,
                    last_error: s.last_error.as_ref().map(|e| e.message.lines().next().unwrap_or("").to_owned()),
                };
                (p.name.clone(), brief)
            })
            .collect();
        PoolSummary { pools, builds_running: state.builds_running }
    }
}

impl StartService for PoolService {
    const CHANNEL: Channel = Channel::Pool;

    fn enabled(config: &Config) -> bool {
        config.pool.enabled
    }

    fn reserved_fds(config: &Config) -> u64 {
        u64::from(config.pool.max_concurrent_builds) * FDS_PER_BUILD
    }

    async fn start(ctx: StartCtx<'_>) -> Result<Arc<Self>, StartError> {
        PoolService::open(ctx.config, ctx.paths, ctx.events.clone()).await
    }
}

impl Service for PoolService {
    fn serve(self: Arc<Self>, opened: Opened) -> BoxFuture<'static, ()> {
        let holder = Holder { client: opened.handshake.client.clone(), pid: opened.peer_pid };
        Box::pin(handler::serve(opened.session(), self, holder))
    }

    fn summarize(&self, summaries: &mut ServiceSummaries) {
        summaries.pool = Some(self.summary());
    }

    /// Pools whose builds keep failing make the daemon degraded.
    fn health(&self, reasons: &mut Vec<HealthReason>) {
        let state = self.lock();
        for p in state.pools.values().filter(|p| p.stats.failures >= u64::from(self.settings.failures_degraded)) {
            let last = p.stats.last_error.as_ref().map_or("", |e| e.message.lines().next().unwrap_or(""));
            let retry = p.backoff.map_or(String::new(), |b| {
                format!("; retrying in {}s", b.until.saturating_duration_since(Instant::now()).as_secs())
            });
            let message = format!("pool {}: {} builds failed in a row ({last}){retry}", p.name, p.stats.failures);
            reasons.push(HealthReason::new(HealthCode::PoolFailing, message));
        }
    }

    /// Proves the pool state is not stuck under its lock.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for _ in 0..100 {
                let free = !matches!(self.state.try_lock(), Err(std::sync::TryLockError::WouldBlock));
                if free {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err("the pool state has been locked for over a second".into())
        })
    }

    /// What keeps the daemon from being idle: builds, resets and checks
    /// under way, and takes waiting for them.
    fn busy(&self) -> Option<String> {
        let state = self.lock();
        let waiting: usize = state.pools.values().map(|p| p.waiters.len()).sum();
        (state.builds_running > 0 || waiting > 0)
            .then(|| format!("{} pool builds running, {waiting} takes waiting", state.builds_running))
    }

    /// `; pools: 3 ready, 1 building` for a `STATUS=` line.
    fn status_line(&self, line: &mut String) {
        let state = self.lock();
        let (ready, taken) =
            state.pools.values().map(state::Pool::counts).fold((0, 0), |(r, t), c| (r + c.ready, t + c.taken));
        if ready + taken + state.builds_running > 0 {
            line.push_str(&format!("; pools: {ready} ready, {taken} taken, {} building", state.builds_running));
        }
    }

    /// A draining shutdown: start no more replenishment builds (only builds
    /// a waiting take needs), and wait for the ones under way, until `deadline`.
    fn drain(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.lock().draining = true;
            self.wake.notify_one();
            loop {
                let running = self.lock().builds_running;
                if running == 0 || tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Stops the scheduler, kills running builds and waits for their cleanup.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.cancel();
            self.tasks.close();
            if tokio::time::timeout(SHUTDOWN_WAIT, self.tasks.wait()).await.is_err() {
                tracing::warn!("pool tasks did not stop within {SHUTDOWN_WAIT:?}");
            }
            let mut state = self.lock();
            for pool in state.pools.values_mut() {
                pool.fail_waiters(&WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
            }
        })
    }
}

/// Puts what the previous daemon left on disk into `state`: run-time
/// definitions, ready resources, and taken ones with their leases.
fn adopt_recovered(state: &mut State, found: std::collections::BTreeMap<String, store::Found>) {
    let now = Instant::now();
    for (name, found) in found {
        let mut pool = Pool::new(name.clone());
        pool.file = found.file;
        if let Some(def) = pool.file.definition.take() {
            match normalize(def) {
                Ok(def) if def.name == name => pool.file.definition = Some(def),
                Ok(_) | Err(_) => tracing::error!(pool = %name, "ignoring an invalid stored definition"),
            }
        }
        for (record, lease) in found.records {
            let state_now = match lease {
                Some(lease) => {
                    state.leases.insert(lease.id.clone(), (name.clone(), record.id.clone()));
                    ResState::Taken(lease)
                }
                None => ResState::Ready { verified: false, checked: now },
            };
            let resource = Resource {
                state: state_now,
                spec: record.spec,
                created_at_ms: record.created_at_ms,
                build_ms: record.build_ms,
                cancel: None,
                for_take: false,
            };
            pool.resources.insert(record.id, resource);
        }
        state.pools.insert(name, pool);
    }
}

/// Adopted resources without a check are ready at once; the others after
/// their check (the scheduler starts it first thing).
fn mark_unchecked(state: &mut State) {
    for pool in state.pools.values_mut() {
        let has_check = pool.effective().is_some_and(|(_, d)| check_command(d).is_some());
        for r in pool.resources.values_mut() {
            if let ResState::Ready { verified, .. } = &mut r.state {
                *verified = !has_check;
            }
        }
    }
}

/// Why a released resource cannot go back to its pool, if it cannot.
fn reuse_refusal(p: &Pool, id: &str, now_ms: u64) -> Option<&'static str> {
    let Some((_, def)) = p.effective() else { return Some("its pool is no longer defined") };
    let r = &p.resources[id];
    if def.reset.is_none() {
        return Some("the pool has no reset command");
    }
    if r.spec != fingerprint(def) {
        return Some("the pool's definition changed since it was built");
    }
    if def.max_age_ms.is_some_and(|max| now_ms.saturating_sub(r.created_at_ms) >= max) {
        return Some("it is older than the pool's max_age");
    }
    // Builds under way do not count: a reset is faster than any build, and
    // the plan trims whatever ends up over the target.
    let c = p.counts();
    if c.ready + c.unverified + c.resetting >= p.target() + p.waiters.len() as u32 {
        return Some("the pool already holds its target");
    }
    None
}

fn pool_status(p: &Pool, uv: Option<&std::path::Path>) -> PoolStatus {
    let c = p.counts();
    let s = &p.stats;
    let effective = p.effective();
    let backoff = p.backoff.filter(|b| b.until > Instant::now());
    PoolStatus {
        name: p.name.clone(),
        source: effective.map(|(s, _)| s),
        definition: effective.map(|(_, d)| d.clone()),
        commands: effective.map(|(_, d)| definition::commands(d, uv)),
        target: p.target(),
        ready: c.ready,
        building: c.building,
        checking: c.unverified,
        resetting: c.resetting,
        taken: c.taken,
        waiting: p.waiters.len() as u32,
        takes: s.takes,
        warm_takes: s.warm_takes,
        warm_hit_rate: hit_rate(s.warm_takes, s.takes),
        builds: s.builds,
        mean_build_ms: s.build_ms_total.checked_div(s.builds),
        failures: s.failures,
        failures_total: s.failures_total,
        last_error: s.last_error.clone(),
        backoff_ms: backoff.map(|b| b.delay.as_millis() as u64),
        retry_at: backoff.map(|b| rfc3339_ms(b.until_ms)),
        expired: s.expired,
        check_failed: s.check_failed,
    }
}

fn hit_rate(warm: u64, takes: u64) -> Option<f64> {
    (takes > 0).then(|| warm as f64 / takes as f64)
}

fn new_lease() -> Result<LeaseId, WireError> {
    crate::daemon::random::hex(16)
        .ok()
        .and_then(|hex| LeaseId::parse(&hex).ok())
        .ok_or_else(|| WireError::new(ErrorCode::Internal, "cannot read the kernel's random source"))
}

/// A failure as status shows it.
fn failure(message: String, log: Option<std::path::PathBuf>) -> BuildFailure {
    BuildFailure { at: rfc3339_ms(now_ms()), message, log }
}
