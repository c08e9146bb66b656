//! Typed calls of the `queue` channel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth::client::ClientError> {
//! use hearth::client::QueueClient;
//! use hearth::protocol::queue::JobSpec;
//!
//! let mut queue = QueueClient::connect("/run/user/1000/hearth.sock").await?;
//! let spec = JobSpec { argv: vec!["make".into(), "test".into()], key: Some("build-42".into()), ..JobSpec::default() };
//! let submitted = queue.submit(spec).await?;
//! let done = queue.wait(submitted.job.id, |job| println!("job {} is {}", job.id, job.state)).await?;
//! println!("exit code: {:?}", done.exit_code);
//! # Ok(()) }
//! ```

use super::{Client, ClientError, unexpected};
use crate::protocol::queue::{
    Attempt, Job, JobSpec, JobState, ListFilter, LogsRequest, QueueChannel, QueueRequest, QueueResponse, QueueStats,
    Selection,
};

/// A client of the `queue` channel.
pub type QueueClient = Client<QueueChannel>;

/// The answer to a submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The job: the new one, or the one the idempotency key already named.
    pub job: Job,
    /// True when the key matched an earlier submit.
    pub deduplicated: bool,
}

/// A page of jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    /// The jobs, newest first: fewer than the limit when more would not
    /// fit in one frame (`next_before_id` is set then).
    pub jobs: Vec<Job>,
    /// `before_id` for the next page, `None` on the last.
    pub next_before_id: Option<u64>,
    /// Matching jobs too large to send at all (see proto-docs/queue.md).
    pub omitted: Vec<u64>,
}

impl Client<QueueChannel> {
    /// Submits a job; returns once it is durable. A spec without `cwd` runs
    /// in this process's current directory (as a process started here
    /// would), when that is valid UTF-8; else in the daemon user's home.
    pub async fn submit(&mut self, mut spec: JobSpec) -> Result<Submitted, ClientError> {
        if spec.cwd.is_none() {
            spec.cwd = std::env::current_dir().ok().and_then(|dir| dir.into_os_string().into_string().ok());
        }
        match self.request(&QueueRequest::Submit(spec)).await? {
            QueueResponse::Submitted { job, deduplicated } => Ok(Submitted { job, deduplicated }),
            other => Err(unexpected("submitted", other)),
        }
    }

    /// One job and its attempts.
    pub async fn get(&mut self, id: u64) -> Result<(Job, Vec<Attempt>), ClientError> {
        match self.request(&QueueRequest::Get { id }).await? {
            QueueResponse::Job { job, attempts } => Ok((job, attempts)),
            other => Err(unexpected("job", other)),
        }
    }

    /// A page of jobs, newest first.
    pub async fn list(&mut self, filter: ListFilter) -> Result<JobPage, ClientError> {
        match self.request(&QueueRequest::List(filter)).await? {
            QueueResponse::Jobs { jobs, next_before_id, omitted } => Ok(JobPage { jobs, next_before_id, omitted }),
            other => Err(unexpected("jobs", other)),
        }
    }

    /// Cancels a job; a running one is killed first. Returns the canceled job.
    pub async fn cancel(&mut self, id: u64) -> Result<Job, ClientError> {
        match self.request(&QueueRequest::Cancel { id }).await? {
            QueueResponse::Canceled { job } => Ok(job),
            other => Err(unexpected("canceled", other)),
        }
    }

    /// Follows a job until it ends, calling `on_event` with each state it
    /// passes through (the current one first); returns the ended job.
    pub async fn wait(&mut self, id: u64, mut on_event: impl FnMut(&Job)) -> Result<Job, ClientError> {
        self.send(&QueueRequest::Wait { id }).await?;
        loop {
            match self.recv().await? {
                QueueResponse::JobEvent { job } => {
                    on_event(&job);
                    if job.state.is_final() {
                        return Ok(job);
                    }
                }
                other => return Err(unexpected("job_event", other)),
            }
        }
    }

    /// Streams a job's log from `request.offset`, calling `on_data` with each
    /// chunk; with `request.follow`, until the job ends. Returns the offset
    /// after the last byte and the job's state then.
    pub async fn logs(
        &mut self,
        request: LogsRequest,
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<(u64, JobState), ClientError> {
        self.send(&QueueRequest::Logs(request)).await?;
        loop {
            match self.recv().await? {
                QueueResponse::LogData { data, .. } => on_data(&data.0),
                QueueResponse::LogEnd { offset, state } => return Ok((offset, state)),
                other => return Err(unexpected("log_data or log_end", other)),
            }
        }
    }

    /// Counts per state and queue, backlog, throughput.
    pub async fn stats(&mut self) -> Result<QueueStats, ClientError> {
        match self.request(&QueueRequest::Stats).await? {
            QueueResponse::Stats(stats) => Ok(*stats),
            other => Err(unexpected("stats", other)),
        }
    }

    /// Requeues dead jobs with a fresh attempt budget; returns their ids.
    pub async fn retry(&mut self, selection: Selection) -> Result<Vec<u64>, ClientError> {
        match self.request(&QueueRequest::Retry(selection)).await? {
            QueueResponse::Retried { ids } => Ok(ids),
            other => Err(unexpected("retried", other)),
        }
    }

    /// Deletes dead jobs and their logs; returns their ids.
    pub async fn purge(&mut self, selection: Selection) -> Result<Vec<u64>, ClientError> {
        match self.request(&QueueRequest::Purge(selection)).await? {
            QueueResponse::Purged { ids } => Ok(ids),
            other => Err(unexpected("purged", other)),
        }
    }
}
