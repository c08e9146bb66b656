//! Typed calls on the `pool` channel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth::client::ClientError> {
//! use hearth::client::PoolClient;
//! use hearth::paths::Paths;
//!
//! let paths = Paths::resolve(None, None)?;
//! let mut pool = PoolClient::connect(paths.socket()).await?;
//! let lease = pool.take("venv").await?;
//! println!("{} ({})", lease.path.display(), if lease.warm { "warm" } else { "built on demand" });
//! pool.release(&lease.lease, false).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use super::{Client, ClientError, unexpected};
use crate::protocol::pool::{
    DefinitionSource, Lease, LeaseId, PoolChannel, PoolDefinition, PoolRequest, PoolResponse, PoolStatus, PoolsReport,
    ReleaseOutcome,
};

/// A client of the `pool` channel.
pub type PoolClient = Client<PoolChannel>;

/// What `define` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defined {
    /// The definition in force now (`Config` when config.toml defines the
    /// same name: the run-time definition is stored but does not apply).
    pub source: DefinitionSource,
    /// False when the same definition was already stored.
    pub changed: bool,
}

/// What `release` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Removed, or being reset to go back to the pool.
    pub outcome: ReleaseOutcome,
    /// Why a resource asked to be reused is removed instead.
    pub reason: Option<String>,
}

impl Client<PoolChannel> {
    /// Every pool's state and counters.
    pub async fn status(&mut self) -> Result<PoolsReport, ClientError> {
        match self.request(&PoolRequest::Status { pool: None }).await? {
            PoolResponse::Status(report) => Ok(report),
            other => Err(unexpected("status", other)),
        }
    }

    /// One pool's state and counters.
    pub async fn pool_status(&mut self, pool: &str) -> Result<PoolStatus, ClientError> {
        match self.request(&PoolRequest::Status { pool: Some(pool.into()) }).await? {
            PoolResponse::Status(report) => {
                report.pools.into_iter().next().ok_or_else(|| unexpected("one pool", "none"))
            }
            other => Err(unexpected("status", other)),
        }
    }

    /// Takes a resource: a ready one at once (`warm`), else one built on
    /// demand, waiting up to the daemon's default (10 minutes).
    pub async fn take(&mut self, pool: &str) -> Result<Lease, ClientError> {
        self.take_request(pool, None).await
    }

    /// Takes a resource, waiting at most `timeout` for an on-demand build;
    /// `Duration::ZERO` takes only a ready one. Fails with `take_timeout`.
    pub async fn take_within(&mut self, pool: &str, timeout: Duration) -> Result<Lease, ClientError> {
        self.take_request(pool, Some(timeout.as_millis() as u64)).await
    }

    async fn take_request(&mut self, pool: &str, timeout_ms: Option<u64>) -> Result<Lease, ClientError> {
        match self.request(&PoolRequest::Take { pool: pool.into(), timeout_ms }).await? {
            PoolResponse::Taken(lease) => Ok(lease),
            other => Err(unexpected("taken", other)),
        }
    }

    /// Gives a resource back; with `reuse`, it is reset and returned to its
    /// pool when the pool can reset and needs one, else removed.
    pub async fn release(&mut self, lease: &LeaseId, reuse: bool) -> Result<Released, ClientError> {
        match self.request(&PoolRequest::Release { lease: lease.clone(), reuse }).await? {
            PoolResponse::Released { outcome, reason, .. } => Ok(Released { outcome, reason }),
            other => Err(unexpected("released", other)),
        }
    }

    /// The resources handed out and not released, oldest first.
    pub async fn leases(&mut self, pool: Option<&str>) -> Result<Vec<Lease>, ClientError> {
        match self.request(&PoolRequest::Leases { pool: pool.map(str::to_owned) }).await? {
            PoolResponse::Leases { leases } => Ok(leases),
            other => Err(unexpected("leases", other)),
        }
    }

    /// Sets how many ready resources `pool` keeps; returns the previous target.
    pub async fn warm(&mut self, pool: &str, size: u32) -> Result<u32, ClientError> {
        match self.request(&PoolRequest::Warm { pool: pool.into(), size }).await? {
            PoolResponse::TargetSet { previous, .. } => Ok(previous),
            other => Err(unexpected("target_set", other)),
        }
    }

    /// Removes `pool`'s ready resources and sets its target to 0; returns
    /// how many were removed.
    pub async fn drain(&mut self, pool: &str) -> Result<u32, ClientError> {
        match self.request(&PoolRequest::Drain { pool: pool.into() }).await? {
            PoolResponse::Drained { removed, .. } => Ok(removed),
            other => Err(unexpected("drained", other)),
        }
    }

    /// Defines or redefines a pool (persisted by the daemon). Defining the
    /// same definition again changes nothing, so an app can call this at
    /// every launch.
    pub async fn define(&mut self, definition: PoolDefinition) -> Result<Defined, ClientError> {
        match self.request(&PoolRequest::Define { definition }).await? {
            PoolResponse::Defined { source, changed, .. } => Ok(Defined { source, changed }),
            other => Err(unexpected("defined", other)),
        }
    }

    /// Removes a run-time definition; returns the definition in force now
    /// (the built-in one), if any.
    pub async fn undefine(&mut self, pool: &str) -> Result<Option<DefinitionSource>, ClientError> {
        match self.request(&PoolRequest::Undefine { pool: pool.into() }).await? {
            PoolResponse::Undefined { source, .. } => Ok(source),
            other => Err(unexpected("undefined", other)),
        }
    }
}
