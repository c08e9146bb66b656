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
use crate::protocol::sync::{DocSummary, PatchOp, PathElem, PeerInfo, Revision, RoomReport, ValueKind};

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

/// A blocking view-mode (or control) connection to the `sync` channel:
/// [`super::SyncClient`] driven on its own runtime.
///
/// ```no_run
/// use hearth::client::blocking;
/// use hearth::client::SyncEvent;
/// use serde_json::json;
///
/// let socket = "/run/user/1000/hearth.sock";
/// let mut settings = blocking::SyncClient::open(socket, "settings")?;
/// settings.put(&["theme".into()], json!("dark"))?;
/// let (_revision, value) = settings.watch(&[], None)?;
/// println!("{value:?}");
/// if let Some(SyncEvent::Changed { patches, .. }) = settings.next_event_within(std::time::Duration::from_secs(1))? {
///     println!("{patches:?}");
/// }
/// # Ok::<(), hearth::client::ClientError>(())
/// ```
#[derive(Debug)]
pub struct SyncClient {
    runtime: Runtime,
    inner: super::SyncClient,
}

impl SyncClient {
    /// Joins `doc`'s room in view mode.
    pub fn open(socket: impl AsRef<Path>, doc: &str) -> Result<Self, ClientError> {
        Self::open_with(&ConnectOptions::new(socket.as_ref()), doc)
    }

    /// Joins `doc`'s room in view mode, with `options`.
    pub fn open_with(options: &ConnectOptions, doc: &str) -> Result<Self, ClientError> {
        let runtime = runtime()?;
        let inner = runtime.block_on(super::SyncClient::open_with(options, doc))?;
        Ok(Self { runtime, inner })
    }

    /// A control connection, joined to no room: `list`, `inspect`, `close`.
    pub fn control(options: &ConnectOptions) -> Result<Self, ClientError> {
        let runtime = runtime()?;
        let inner = runtime.block_on(super::SyncClient::control(options))?;
        Ok(Self { runtime, inner })
    }

    /// The document this connection joined.
    pub fn doc(&self) -> Option<&crate::protocol::sync::DocName> {
        self.inner.doc()
    }

    /// This connection's peer id in its room.
    pub fn peer_id(&self) -> u64 {
        self.inner.peer_id()
    }

    /// The value at `path` (empty: the whole document) and its revision.
    pub fn get(&mut self, path: &[PathElem]) -> Result<(Revision, serde_json::Value), ClientError> {
        self.runtime.block_on(self.inner.get(path))
    }

    /// Applies `ops` as one change; returns once it is durable.
    pub fn write(&mut self, ops: Vec<PatchOp>, base: Option<Revision>) -> Result<super::Written, ClientError> {
        self.runtime.block_on(self.inner.write(ops, base))
    }

    /// Sets the value at `path`; returns once it is durable.
    pub fn put(&mut self, path: &[PathElem], value: serde_json::Value) -> Result<super::Written, ClientError> {
        self.runtime.block_on(self.inner.put(path, value))
    }

    /// Sets the value at `path` as a text, counter or timestamp.
    pub fn put_as(
        &mut self,
        path: &[PathElem],
        value: serde_json::Value,
        kind: ValueKind,
    ) -> Result<super::Written, ClientError> {
        self.runtime.block_on(self.inner.put_as(path, value, kind))
    }

    /// Removes a map key or a list element.
    pub fn delete(&mut self, path: &[PathElem]) -> Result<super::Written, ClientError> {
        self.runtime.block_on(self.inner.delete(path))
    }

    /// Inserts `values` into a list before the path's last index.
    pub fn insert(&mut self, path: &[PathElem], values: Vec<serde_json::Value>) -> Result<super::Written, ClientError> {
        self.runtime.block_on(self.inner.insert(path, values))
    }

    /// Edits the text at `path`: removes `delete` characters at `index`, inserts `insert`.
    pub fn splice(
        &mut self,
        path: &[PathElem],
        index: u64,
        delete: u64,
        insert: &str,
    ) -> Result<super::Written, ClientError> {
        self.runtime.block_on(self.inner.splice(path, index, delete, insert))
    }

    /// Adds `by` to the counter at `path`.
    pub fn increment(&mut self, path: &[PathElem], by: i64) -> Result<super::Written, ClientError> {
        self.runtime.block_on(self.inner.increment(path, by))
    }

    /// Starts watching `path`; see [`super::SyncClient::watch`].
    pub fn watch(
        &mut self,
        path: &[PathElem],
        since: Option<Revision>,
    ) -> Result<(Revision, Option<serde_json::Value>), ClientError> {
        self.runtime.block_on(self.inner.watch(path, since))
    }

    /// The next event of the watch; blocks until one comes.
    pub fn next_event(&mut self) -> Result<super::SyncEvent, ClientError> {
        self.runtime.block_on(self.inner.next_event())
    }

    /// The next event of the watch, or `None` when none comes within
    /// `timeout`. A frame that was half read when the time ran out stays
    /// buffered for the next call: the connection stays in step.
    pub fn next_event_within(&mut self, timeout: Duration) -> Result<Option<super::SyncEvent>, ClientError> {
        self.runtime.block_on(async {
            match tokio::time::timeout(timeout, self.inner.next_event()).await {
                Ok(event) => event.map(Some),
                Err(_) => Ok(None),
            }
        })
    }

    /// Who is in this room.
    pub fn peers(&mut self) -> Result<Vec<PeerInfo>, ClientError> {
        self.runtime.block_on(self.inner.peers())
    }

    /// Every document (all pages).
    pub fn list(&mut self, prefix: Option<&str>) -> Result<Vec<DocSummary>, ClientError> {
        self.runtime.block_on(self.inner.list(prefix))
    }

    /// One document's room (this connection's when `doc` is `None`).
    pub fn inspect(&mut self, doc: Option<&str>) -> Result<RoomReport, ClientError> {
        self.runtime.block_on(self.inner.inspect(doc))
    }

    /// Evicts a room; returns how many peers were disconnected.
    pub fn close(&mut self, doc: &str) -> Result<u64, ClientError> {
        self.runtime.block_on(self.inner.close(doc))
    }

    /// Runs any async call of the view client to completion.
    pub fn call<T>(&mut self, f: impl AsyncFnOnce(&mut super::SyncClient) -> T) -> T {
        self.runtime.block_on(f(&mut self.inner))
    }
}

/// A blocking replica-mode connection: [`super::ReplicaClient`] driven on its own runtime.
#[cfg(feature = "replica")]
#[derive(Debug)]
pub struct ReplicaClient {
    runtime: Runtime,
    inner: super::ReplicaClient,
}

#[cfg(feature = "replica")]
impl ReplicaClient {
    /// Joins `doc`'s room in replica mode with an empty document.
    pub fn open(socket: impl AsRef<Path>, doc: &str) -> Result<Self, ClientError> {
        Self::open_with(&ConnectOptions::new(socket.as_ref()), doc, automerge::AutoCommit::new())
    }

    /// Joins with `options`, starting from `replica`.
    pub fn open_with(options: &ConnectOptions, doc: &str, replica: automerge::AutoCommit) -> Result<Self, ClientError> {
        let runtime = runtime()?;
        let inner = runtime.block_on(super::ReplicaClient::open_with(options, doc, replica))?;
        Ok(Self { runtime, inner })
    }

    /// The local replica.
    pub fn doc(&self) -> &automerge::AutoCommit {
        self.inner.doc()
    }

    /// The local replica, to change (then call [`ReplicaClient::push`]).
    pub fn doc_mut(&mut self) -> &mut automerge::AutoCommit {
        self.inner.doc_mut()
    }

    /// Gives the replica back (to keep for the next session).
    pub fn into_doc(self) -> automerge::AutoCommit {
        self.inner.into_doc()
    }

    /// Brings the replica up to the daemon's document as it is now.
    pub fn sync(&mut self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.sync())
    }

    /// Sends local changes; returns once the daemon has them on disk.
    pub fn push(&mut self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.push())
    }

    /// Waits until a change from another peer arrives and is applied.
    pub fn next_change(&mut self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.next_change())
    }

    /// Runs any async call of the replica client to completion.
    pub fn call<T>(&mut self, f: impl AsyncFnOnce(&mut super::ReplicaClient) -> T) -> T {
        self.runtime.block_on(f(&mut self.inner))
    }
}
