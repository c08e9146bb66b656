//! A thin blocking wrapper for programs without an async runtime.
//!
//! Each wrapper owns a current-thread tokio runtime and drives the async
//! client on it; there is one copy of the protocol code.
//!
//! ```no_run
//! use hearth::client::blocking;
//! use hearth::client::EnsureOptions;
//! use hearth::paths::Paths;
//!
//! let paths = Paths::resolve(None, None)?;
//! blocking::ensure_daemon_running(&EnsureOptions::new(paths.clone()))?;
//! let mut client = blocking::StatusClient::connect(paths.socket())?;
//! let report = client.status()?;
//! println!("hearthd {} is {}", report.version, report.health.state.as_str());
//! # Ok::<(), hearth::client::ClientError>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

use super::{ClientError, ConnectOptions, EnsureOptions, Ensured};
use crate::protocol::ChannelProtocol;
use crate::protocol::event::EventFilter;
use crate::protocol::handshake::DaemonIdent;
use crate::protocol::pool::{Lease, LeaseId, PoolChannel};
use crate::protocol::process::{ProcessBrief, ProcessChannel, ProcessDefinition, ProcessesReport, Selector};
use crate::protocol::queue::{Job, JobSpec, QueueChannel};
use crate::protocol::status::{StatusChannel, StatusReport};

fn runtime() -> Result<Runtime, ClientError> {
    Builder::new_current_thread().enable_all().build().map_err(ClientError::Runtime)
}

/// [`super::ensure_daemon_running`], blocking.
pub fn ensure_daemon_running(options: &EnsureOptions) -> Result<Ensured, ClientError> {
    runtime()?.block_on(super::ensure_daemon_running(options))
}

/// A blocking client of one channel.
#[derive(Debug)]
pub struct Client<C: ChannelProtocol> {
    runtime: Runtime,
    inner: super::Client<C>,
}

/// A blocking client of the `status` channel.
pub type StatusClient = Client<StatusChannel>;

/// A blocking client of the `pool` channel.
pub type PoolClient = Client<PoolChannel>;
/// A blocking client of the `queue` channel.
pub type QueueClient = Client<QueueChannel>;
/// A blocking client of the `blob` channel.
pub type BlobClient = Client<crate::protocol::blob::BlobChannel>;
/// A blocking client of the `process` channel.
pub type ProcessClient = Client<ProcessChannel>;

impl<C: ChannelProtocol> Client<C> {
    /// Connects to `socket` with default options.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with(&ConnectOptions::new(socket.as_ref()))
    }

    /// Connects with `options`.
    pub fn connect_with(options: &ConnectOptions) -> Result<Self, ClientError> {
        let runtime = runtime()?;
        let inner = runtime.block_on(super::Client::connect_with(options))?;
        Ok(Self { runtime, inner })
    }

    /// The daemon that accepted the handshake.
    pub fn daemon(&self) -> &DaemonIdent {
        self.inner.daemon()
    }

    /// Sends one request and reads its response.
    pub fn request(&mut self, request: &C::Request) -> Result<C::Response, ClientError> {
        self.runtime.block_on(self.inner.request(request))
    }

    /// Runs any async client call to completion, e.g.
    /// `client.call(async |c| c.ping().await)`.
    pub fn call<T>(&mut self, f: impl AsyncFnOnce(&mut super::Client<C>) -> T) -> T {
        self.runtime.block_on(f(&mut self.inner))
    }
}

impl Client<StatusChannel> {
    /// `ping` → `pong`.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.ping())
    }

    /// The daemon's status report.
    pub fn status(&mut self) -> Result<StatusReport, ClientError> {
        self.runtime.block_on(self.inner.status())
    }

    /// Asks the daemon to stop gracefully; returns its grace period.
    pub fn shutdown(&mut self, reason: Option<String>) -> Result<Duration, ClientError> {
        self.runtime.block_on(self.inner.shutdown(reason))
    }

    /// Starts an event subscription; see [`super::Client::subscribe`].
    pub fn subscribe(&mut self, filter: EventFilter) -> Result<u64, ClientError> {
        self.runtime.block_on(self.inner.subscribe(filter))
    }

    /// The next event of the subscription; blocks until one comes.
    pub fn next_event(&mut self) -> Result<super::Notice, ClientError> {
        self.runtime.block_on(self.inner.next_event())
    }

    /// Ends the subscription.
    pub fn unsubscribe(&mut self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.unsubscribe())
    }
}

impl Client<PoolChannel> {
    /// Takes a resource: a ready one at once, else one built on demand.
    pub fn take(&mut self, pool: &str) -> Result<Lease, ClientError> {
        self.runtime.block_on(self.inner.take(pool))
    }

    /// Takes a resource, waiting at most `timeout` for an on-demand build.
    pub fn take_within(&mut self, pool: &str, timeout: Duration) -> Result<Lease, ClientError> {
        self.runtime.block_on(self.inner.take_within(pool, timeout))
    }

    /// Gives a resource back (reset and reused, or removed).
    pub fn release(&mut self, lease: &LeaseId, reuse: bool) -> Result<super::pool::Released, ClientError> {
        self.runtime.block_on(self.inner.release(lease, reuse))
    }
}

impl Client<QueueChannel> {
    /// Submits a job; returns once it is durable.
    pub fn submit(&mut self, spec: JobSpec) -> Result<super::Submitted, ClientError> {
        self.runtime.block_on(self.inner.submit(spec))
    }

    /// Waits until the job ends; returns it.
    pub fn wait(&mut self, id: u64) -> Result<Job, ClientError> {
        self.runtime.block_on(self.inner.wait(id, |_| {}))
    }
}

impl Client<ProcessChannel> {
    /// Every process's status.
    pub fn status(&mut self) -> Result<ProcessesReport, ClientError> {
        self.runtime.block_on(self.inner.status())
    }

    /// Defines or redefines a process; a new one is started.
    pub fn define(&mut self, definition: ProcessDefinition) -> Result<super::process::Defined, ClientError> {
        self.runtime.block_on(self.inner.define(definition))
    }

    /// Stops a process and removes its run-time definition.
    pub fn remove(&mut self, name: &str) -> Result<Option<crate::protocol::process::ProcessSource>, ClientError> {
        self.runtime.block_on(self.inner.remove(name))
    }

    /// Starts processes and waits until each is ready.
    pub fn start(&mut self, select: impl Into<Selector>) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        self.runtime.block_on(self.inner.start(select))
    }

    /// Stops processes and waits until they have exited.
    pub fn stop(&mut self, select: impl Into<Selector>) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        self.runtime.block_on(self.inner.stop(select))
    }

    /// Restarts processes all at once and waits until each is ready.
    pub fn restart(&mut self, select: impl Into<Selector>) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        self.runtime.block_on(self.inner.restart(select))
    }

    /// Restarts processes one at a time, each ready before the next.
    pub fn rolling_restart(
        &mut self,
        select: impl Into<Selector>,
    ) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        self.runtime.block_on(self.inner.rolling_restart(select))
    }
}
