//! Typed calls on the `process` channel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth::client::ClientError> {
//! use hearth::client::ProcessClient;
//! use hearth::paths::Paths;
//! use hearth::protocol::process::{ProcessCheck, ProcessDefinition};
//!
//! let paths = Paths::resolve(None, None)?;
//! let mut procs = ProcessClient::connect(paths.socket()).await?;
//! procs
//!     .define(ProcessDefinition {
//!         name: "worker".into(),
//!         argv: vec!["python3".into(), "-m".into(), "myapp.worker".into()],
//!         check: Some(ProcessCheck::Heartbeat { path: "/tmp/worker.beat".into(), stale_ms: 30_000, start_timeout_ms: None }),
//!         ..Default::default()
//!     })
//!     .await?;
//! let started = procs.start("worker").await?; // waits until its first heartbeat
//! println!("worker runs as pid {:?}", started["worker"].pid);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use super::{Client, ClientError, unexpected};
use crate::protocol::process::{
    ProcessBrief, ProcessChannel, ProcessDefinition, ProcessRequest, ProcessResponse, ProcessSource, ProcessState,
    ProcessStatus, ProcessesReport, Selector,
};

/// A client of the `process` channel.
pub type ProcessClient = Client<ProcessChannel>;

/// What `define` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defined {
    /// The definition in force now (`Config` when config.toml defines the
    /// same name: the run-time definition is stored but does not apply).
    pub source: ProcessSource,
    /// False when the same definition was already stored.
    pub changed: bool,
    /// The process's state right after.
    pub state: ProcessState,
}

impl Client<ProcessChannel> {
    /// Every process's status.
    pub async fn status(&mut self) -> Result<ProcessesReport, ClientError> {
        self.status_of(Selector::default()).await
    }

    /// The status of the processes `select` picks.
    pub async fn status_of(&mut self, select: impl Into<Selector>) -> Result<ProcessesReport, ClientError> {
        match self.request(&ProcessRequest::Status { select: select.into() }).await? {
            ProcessResponse::Status(report) => Ok(report),
            other => Err(unexpected("status", other)),
        }
    }

    /// One process's status.
    pub async fn process(&mut self, name: &str) -> Result<ProcessStatus, ClientError> {
        let report = self.status_of(name).await?;
        report.processes.into_iter().next().ok_or_else(|| unexpected("one process", "none"))
    }

    /// Defines or redefines a process (persisted by the daemon); a new one
    /// is started (without waiting for it). Defining the same definition
    /// again changes nothing, so an app can call this at every launch.
    pub async fn define(&mut self, definition: ProcessDefinition) -> Result<Defined, ClientError> {
        self.define_with(definition, true).await
    }

    /// [`Client::define`], leaving a new process stopped unless `start`.
    pub async fn define_with(&mut self, definition: ProcessDefinition, start: bool) -> Result<Defined, ClientError> {
        match self.request(&ProcessRequest::Define { definition: Box::new(definition), start }).await? {
            ProcessResponse::Defined { source, changed, state, .. } => Ok(Defined { source, changed, state }),
            other => Err(unexpected("defined", other)),
        }
    }

    /// Stops a process and removes its run-time definition; returns the
    /// definition in force now (`Config`), if any.
    pub async fn remove(&mut self, name: &str) -> Result<Option<ProcessSource>, ClientError> {
        match self.request(&ProcessRequest::Remove { name: name.into() }).await? {
            ProcessResponse::Removed { source, .. } => Ok(source),
            other => Err(unexpected("removed", other)),
        }
    }

    /// Starts processes and waits until each is ready (its check passed) or
    /// has ended; fails with `start_failed`, `restart_storm` or `not_ready`.
    pub async fn start(&mut self, select: impl Into<Selector>) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        self.start_with(select, true).await
    }

    /// [`Client::start`], answering as soon as they are started unless `wait`.
    pub async fn start_with(
        &mut self,
        select: impl Into<Selector>,
        wait: bool,
    ) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        match self.request(&ProcessRequest::Start { select: select.into(), no_wait: !wait }).await? {
            ProcessResponse::Started { processes } => Ok(processes),
            other => Err(unexpected("started", other)),
        }
    }

    /// Stops processes (their stop signal, then `SIGKILL` after their grace)
    /// and waits until they have exited. They stay stopped, across daemon
    /// restarts too, until started.
    pub async fn stop(&mut self, select: impl Into<Selector>) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        match self.request(&ProcessRequest::Stop { select: select.into() }).await? {
            ProcessResponse::Stopped { processes } => Ok(processes),
            other => Err(unexpected("stopped", other)),
        }
    }

    /// Restarts processes all at once, and waits until each is ready.
    pub async fn restart(
        &mut self,
        select: impl Into<Selector>,
    ) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        self.restart_request(select.into(), false).await
    }

    /// Restarts processes one at a time, by name, each ready before the
    /// next is stopped; stops at the first that is not (`not_ready`,
    /// `restart_storm`, `start_failed`), leaving the others running.
    pub async fn rolling_restart(
        &mut self,
        select: impl Into<Selector>,
    ) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        self.restart_request(select.into(), true).await
    }

    async fn restart_request(
        &mut self,
        select: Selector,
        rolling: bool,
    ) -> Result<BTreeMap<String, ProcessBrief>, ClientError> {
        match self.request(&ProcessRequest::Restart { select, rolling, no_wait: false }).await? {
            ProcessResponse::Restarted { processes } => Ok(processes),
            other => Err(unexpected("restarted", other)),
        }
    }

    /// Streams a process's output (its last `lines` lines, or all of its
    /// current log) to `on_data`; with `follow`, keeps streaming what it
    /// writes until the connection is dropped. Returns the process's state
    /// when the stream ended.
    pub async fn logs(
        &mut self,
        name: &str,
        lines: Option<u32>,
        follow: bool,
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<ProcessState, ClientError> {
        self.send(&ProcessRequest::Logs { name: name.into(), lines, follow }).await?;
        loop {
            match self.recv().await? {
                ProcessResponse::LogData { data } => on_data(&data.0),
                ProcessResponse::LogEnd { state } => return Ok(state),
                other => return Err(unexpected("log_data or log_end", other)),
            }
        }
    }
}
