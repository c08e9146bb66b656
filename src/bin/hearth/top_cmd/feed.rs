//! `hearth top`'s link to the daemon: one event subscription, a snapshot
//! (`status`, queue `stats` and `list`, pool `status`) every second and
//! soon after each event that changes what is shown, and the actions the
//! person asks for. It never starts a daemon: when none answers it says so
//! and tries again, with a backoff of up to two seconds, until one does.

use std::sync::Arc;
use std::time::Duration;

use hearth::client::{Client, ClientError, ConnectOptions, PoolClient, QueueClient, StatusClient};
use hearth::protocol::event::EventFilter;
use hearth::protocol::queue::{JobState, ListFilter, QueueChannel, Selection};
use hearth::protocol::{ChannelProtocol, ErrorCode};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::model::{Action, Snapshot, Update};
use crate::watch::EventFeed;

/// A snapshot at least this often.
const REFRESH: Duration = Duration::from_secs(1);
/// ... and no more often than this, however many events arrive.
const MIN_REFRESH: Duration = Duration::from_millis(150);
/// Jobs not yet ended that are shown at most (the oldest first).
const ACTIVE_JOBS: u32 = 500;
/// Ended jobs shown (the newest).
const ENDED_JOBS: u32 = 50;
/// A snapshot not read within this long: the daemon counts as not answering.
const ANSWER: Duration = Duration::from_secs(5);
/// The longest pause between two attempts to reach a daemon.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The running link; dropping it ends it.
#[derive(Debug)]
pub(super) struct Feed {
    supervisor: tokio::task::JoinHandle<()>,
    /// Actions are served whether or not a session is up (each has its
    /// own connection, and says so when no daemon answers), and one under
    /// way is never cut short by a session that ends.
    actor: tokio::task::JoinHandle<()>,
    actions: mpsc::Sender<Action>,
}

impl Feed {
    /// Starts the link; what it learns arrives on `updates`.
    pub(super) fn start(options: ConnectOptions, updates: mpsc::Sender<Update>) -> Self {
        let (actions, requests) = mpsc::channel(16);
        let nudge = Arc::new(Notify::new());
        let actor = tokio::spawn(serve_actions(options.clone(), updates.clone(), Arc::clone(&nudge), requests));
        let supervisor = tokio::spawn(supervise(options, updates, nudge));
        Self { supervisor, actor, actions }
    }

    /// Asks for `action`; its outcome arrives as [`Update::Done`].
    pub(super) fn act(&self, action: Action) {
        // Full means the person typed faster than the daemon answers: dropping
        // a keystroke then is what a terminal would do too.
        let _ = self.actions.try_send(action);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.supervisor.abort();
        self.actor.abort();
    }
}

async fn supervise(options: ConnectOptions, updates: mpsc::Sender<Update>, nudge: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let why = session(&options, &updates, &nudge, &mut backoff).await;
        if updates.send(Update::Down(why)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connected stretch: returns why it ended.
async fn session(
    options: &ConnectOptions,
    updates: &mpsc::Sender<Update>,
    nudge: &Notify,
    backoff: &mut Duration,
) -> String {
    let mut feed = match EventFeed::start(options, EventFilter::default()).await {
        Ok(feed) => feed,
        Err(e) => return why(&e),
    };
    let mut clients = match Clients::connect(options).await {
        Ok(clients) => clients,
        Err(e) => return why(&e),
    };
    *backoff = Duration::from_millis(100);
    if updates.send(Update::Up(feed.daemon().clone())).await.is_err() {
        return "closed".into();
    }
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            match tokio::time::timeout(ANSWER, clients.snapshot()).await {
                Ok(Ok(snapshot)) => {
                    if updates.send(Update::Snapshot(Box::new(snapshot))).await.is_err() {
                        return "closed".into();
                    }
                }
                Ok(Err(e)) => return why(&e),
                Err(_) => return format!("the daemon did not answer within {}", crate::output::duration(ANSWER)),
            }
            next = Instant::now() + REFRESH;
        }
        tokio::select! {
            notice = feed.next() => match notice {
                Ok(notice) => {
                    // What changed is read soon (the event says only what happened).
                    next = next.min(Instant::now() + MIN_REFRESH);
                    if updates.send(Update::Notice(notice)).await.is_err() {
                        return "closed".into();
                    }
                }
                Err(e) => return why(&e),
            },
            () = nudge.notified() => next = next.min(Instant::now() + MIN_REFRESH),
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

/// What a person reads when the link ends.
fn why(e: &ClientError) -> String {
    match e {
        ClientError::NotRunning { .. } => "no daemon is running".into(),
        ClientError::Closed => "the daemon stopped".into(),
        ClientError::Daemon(w) if w.code == ErrorCode::ShuttingDown => "the daemon stopped".into(),
        other => other.to_string(),
    }
}

/// The request connections of a session; a channel the daemon does not
/// serve is left out (and its section says so).
struct Clients {
    status: StatusClient,
    queue: Option<QueueClient>,
    pool: Option<PoolClient>,
}

impl Clients {
    async fn connect(options: &ConnectOptions) -> Result<Self, ClientError> {
        Ok(Self {
            status: StatusClient::connect_with(options).await?,
            queue: optional(options).await?,
            pool: optional(options).await?,
        })
    }

    async fn snapshot(&mut self) -> Result<Snapshot, ClientError> {
        let status = self.status.status().await?;
        let (queue, jobs) = match &mut self.queue {
            Some(queue) => {
                let stats = queue.stats().await?;
                let mut jobs =
                    list(queue, &[JobState::Running, JobState::RetryWait, JobState::Queued], ACTIVE_JOBS).await?;
                jobs.extend(list(queue, &[JobState::Dead, JobState::Canceled, JobState::Succeeded], ENDED_JOBS).await?);
                (Some(stats), jobs)
            }
            None => (None, Vec::new()),
        };
        let pools = match &mut self.pool {
            Some(pool) => Some(pool.status().await?),
            None => None,
        };
        Ok(Snapshot { status, queue, jobs, pools })
    }
}

async fn list(
    queue: &mut QueueClient,
    states: &[JobState],
    limit: u32,
) -> Result<Vec<hearth::protocol::queue::Job>, ClientError> {
    let filter = ListFilter { states: states.to_vec(), queue: None, limit: Some(limit), before_id: None };
    Ok(queue.list(filter).await?.jobs)
}

/// A client of a channel the daemon may not serve (`channel_unavailable`).
async fn optional<C: ChannelProtocol>(options: &ConnectOptions) -> Result<Option<Client<C>>, ClientError> {
    match Client::<C>::connect_with(options).await {
        Ok(client) => Ok(Some(client)),
        Err(ClientError::Refused { error, .. }) if error.code == ErrorCode::ChannelUnavailable => Ok(None),
        Err(e) => Err(e),
    }
}

async fn serve_actions(
    options: ConnectOptions,
    updates: mpsc::Sender<Update>,
    nudge: Arc<Notify>,
    mut actions: mpsc::Receiver<Action>,
) {
    while let Some(action) = actions.recv().await {
        let (message, failed) = match act(&options, &action).await {
            Ok(done) => (done, false),
            Err(e) => (format!("could not {}: {}", action.describe(), why(&e)), true),
        };
        nudge.notify_one();
        if updates.send(Update::Done { message, failed }).await.is_err() {
            return;
        }
    }
}

async fn act(options: &ConnectOptions, action: &Action) -> Result<String, ClientError> {
    let mut queue = Client::<QueueChannel>::connect_with(options).await?;
    match *action {
        Action::CancelJob(id) => {
            queue.cancel(id).await?;
            Ok(format!("canceled job {id}"))
        }
        Action::RetryJob(id) => {
            let ids = queue.retry(Selection { ids: vec![id], all: false, queue: None }).await?;
            Ok(if ids.is_empty() {
                format!("job {id} was not dead: nothing retried")
            } else {
                format!("requeued job {id}")
            })
        }
    }
}
