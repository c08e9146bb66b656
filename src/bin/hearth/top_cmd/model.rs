//! What `hearth top` knows and shows: the daemon's last snapshot, the
//! events that arrived since, the throughput they add up to, and what the
//! person selected or asked. No I/O: the feed writes into it, the view
//! reads it, and the tests drive it directly.

use std::collections::VecDeque;
use std::time::Instant;

use hearth::client::Notice;
use hearth::protocol::event::EventData;
use hearth::protocol::handshake::DaemonIdent;
use hearth::protocol::pool::PoolsReport;
use hearth::protocol::queue::{Job, JobState, QueueStats};
use hearth::protocol::status::StatusReport;

/// Seconds of throughput the sparklines can show.
pub(super) const HISTORY: usize = 240;

/// Everything one refresh read from the daemon.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    pub(super) status: StatusReport,
    /// `None` when the daemon does not serve the queue.
    pub(super) queue: Option<QueueStats>,
    /// Jobs not yet ended, then the latest ended ones (see [`job_order`]).
    pub(super) jobs: Vec<Job>,
    /// `None` when the daemon does not serve pools.
    pub(super) pools: Option<PoolsReport>,
}

/// The link to the daemon.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Link {
    /// Connected to this daemon since then.
    Up { daemon: DaemonIdent },
    /// No daemon answers; `top` keeps trying. `why` says what happened,
    /// `at` is the wall clock then (ms since the epoch).
    Down { why: String, at_ms: u64 },
}

/// What the feed tells the model.
#[derive(Debug)]
pub(super) enum Update {
    Up(DaemonIdent),
    Down(String),
    Snapshot(Box<Snapshot>),
    Notice(Notice),
    /// An action ended: what to say, and whether it failed.
    Done {
        message: String,
        failed: bool,
    },
}

/// Something the person asked the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    CancelJob(u64),
    RetryJob(u64),
}

impl Action {
    pub(super) fn describe(&self) -> String {
        match self {
            Action::CancelJob(id) => format!("cancel job {id}"),
            Action::RetryJob(id) => format!("retry job {id}"),
        }
    }
}

/// What the keyboard drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mode {
    Normal,
    Help,
    /// Waiting for y/n before doing this.
    Confirm(Action),
}

/// Counts per second, for a sparkline.
#[derive(Debug, Default)]
pub(super) struct Rate {
    /// Whole seconds, oldest first.
    pub(super) samples: VecDeque<u64>,
    /// The second under way.
    current: u64,
}

impl Rate {
    fn add(&mut self, n: u64) {
        self.current += n;
    }

    fn roll(&mut self) {
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(std::mem::take(&mut self.current));
    }

    /// The last whole second's count.
    pub(super) fn last(&self) -> u64 {
        self.samples.back().copied().unwrap_or(0)
    }

    /// The highest count in the last `n` seconds.
    pub(super) fn peak(&self, n: usize) -> u64 {
        self.samples.iter().rev().take(n).copied().max().unwrap_or(0)
    }
}

/// A line at the bottom: the outcome of an action, or a warning.
#[derive(Debug, Clone)]
pub(super) struct Message {
    pub(super) text: String,
    pub(super) failed: bool,
    pub(super) at: Instant,
}

#[derive(Debug)]
pub(super) struct Model {
    pub(super) link: Link,
    /// The last snapshot, kept (and marked stale) while the daemon is down.
    pub(super) snapshot: Option<Snapshot>,
    pub(super) mode: Mode,
    /// The selected job, by id, so that it stays selected as rows move.
    pub(super) selected: Option<u64>,
    /// Whether the person chose it; until then the first row is selected,
    /// whichever job that is (the view keeps the running jobs in sight).
    chosen: bool,
    pub(super) jobs_ended: Rate,
    pub(super) events: Rate,
    /// Events this dashboard fell behind on (it was told it missed them).
    pub(super) missed: u64,
    pub(super) message: Option<Message>,
}

impl Model {
    pub(super) fn new() -> Self {
        Self {
            link: Link::Down { why: "connecting".into(), at_ms: hearth::time::now_ms() },
            snapshot: None,
            mode: Mode::Normal,
            selected: None,
            chosen: false,
            jobs_ended: Rate::default(),
            events: Rate::default(),
            missed: 0,
            message: None,
        }
    }

    pub(super) fn apply(&mut self, update: Update) {
        match update {
            Update::Up(daemon) => self.link = Link::Up { daemon },
            Update::Down(why) => {
                if matches!(self.link, Link::Up { .. }) || self.snapshot.is_none() {
                    self.link = Link::Down { why, at_ms: hearth::time::now_ms() };
                }
            }
            Update::Snapshot(snapshot) => {
                let mut snapshot = *snapshot;
                snapshot.jobs.sort_by(job_order);
                self.snapshot = Some(snapshot);
                self.keep_selection();
            }
            Update::Notice(Notice::Event(event)) => {
                self.events.add(1);
                if let EventData::JobState { id, to, .. } = event.data {
                    if to.is_none_or(JobState::is_final) {
                        self.jobs_ended.add(1);
                    }
                    // Shown at once; the refresh it prompts brings the rest.
                    if let (Some(job), Some(to)) = (self.job_mut(id), to) {
                        job.state = to;
                        if let Some(snapshot) = &mut self.snapshot {
                            snapshot.jobs.sort_by(job_order);
                        }
                        self.keep_selection();
                    }
                }
            }
            Update::Notice(Notice::Lagged { missed }) => {
                self.missed += missed;
                self.events.add(missed);
            }
            Update::Done { message, failed } => self.say(message, failed),
        }
    }

    /// A second passed: the sparklines move on.
    pub(super) fn tick(&mut self) {
        self.jobs_ended.roll();
        self.events.roll();
    }

    pub(super) fn say(&mut self, text: impl Into<String>, failed: bool) {
        self.message = Some(Message { text: text.into(), failed, at: Instant::now() });
    }

    pub(super) fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    pub(super) fn jobs(&self) -> &[Job] {
        self.snapshot.as_ref().map_or(&[], |s| s.jobs.as_slice())
    }

    fn job_mut(&mut self, id: u64) -> Option<&mut Job> {
        self.snapshot.as_mut()?.jobs.iter_mut().find(|j| j.id == id)
    }

    /// The selected job's row.
    pub(super) fn selected_index(&self) -> Option<usize> {
        let id = self.selected?;
        self.jobs().iter().position(|j| j.id == id)
    }

    pub(super) fn selected_job(&self) -> Option<&Job> {
        self.selected_index().map(|i| &self.jobs()[i])
    }

    /// Moves the selection by `delta` rows (clamped to the list).
    pub(super) fn select_by(&mut self, delta: isize) {
        let count = self.jobs().len();
        if count == 0 {
            self.selected = None;
            return;
        }
        let next = match self.selected_index() {
            Some(i) => i.saturating_add_signed(delta).min(count - 1),
            None if delta < 0 => count - 1,
            None => 0,
        };
        self.selected = Some(self.jobs()[next].id);
        self.chosen = true;
    }

    pub(super) fn select_edge(&mut self, last: bool) {
        let jobs = self.jobs();
        self.selected = if last { jobs.last() } else { jobs.first() }.map(|j| j.id);
        self.chosen = true;
    }

    /// Until the person chooses, the first row is selected; a job they
    /// chose that left the list (purged, or older than what is shown)
    /// hands the selection back to the first row.
    fn keep_selection(&mut self) {
        if !self.chosen || self.selected_index().is_none() {
            self.selected = self.jobs().first().map(|j| j.id);
            self.chosen = false;
        }
    }

    /// What `c` asks: cancel the selected job, if it has not ended.
    pub(super) fn cancel_selected(&mut self) -> Option<Action> {
        match self.selected_job() {
            Some(job) if !job.state.is_final() => Some(Action::CancelJob(job.id)),
            Some(job) => {
                let text = format!("job {} has ended ({}): nothing to cancel", job.id, job.state);
                self.say(text, true);
                None
            }
            None => None,
        }
    }

    /// What `r` asks: retry the selected job, if it is dead.
    pub(super) fn retry_selected(&mut self) -> Option<Action> {
        match self.selected_job() {
            Some(job) if job.state == JobState::Dead => Some(Action::RetryJob(job.id)),
            Some(job) => {
                let text = format!("job {} is {}: only dead jobs are retried", job.id, job.state);
                self.say(text, true);
                None
            }
            None => None,
        }
    }
}

/// Running first, then waiting to retry, then queued (oldest first: the
/// next to run), then ended (newest first).
pub(super) fn job_order(a: &Job, b: &Job) -> std::cmp::Ordering {
    let rank = |j: &Job| match j.state {
        JobState::Running => 0,
        JobState::RetryWait => 1,
        JobState::Queued => 2,
        JobState::Succeeded | JobState::Dead | JobState::Canceled => 3,
    };
    rank(a).cmp(&rank(b)).then_with(|| if rank(a) == 3 { b.id.cmp(&a.id) } else { a.id.cmp(&b.id) })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use hearth::protocol::Channel;
    use hearth::protocol::event::Event;

    pub(in super::super) fn job(id: u64, state: JobState) -> Job {
        let value = serde_json::json!({
            "id": id, "queue": "default", "state": state, "priority": 0, "argv": ["sleep", "30"],
            "env": {}, "cwd": "/", "input_bytes": 0, "key": null, "attempts": 1, "max_attempts": 3,
            "timeout_ms": null, "backoff_base_ms": 1000, "backoff_cap_ms": 300000,
            "created_at_ms": 1, "run_at_ms": 1, "started_at_ms": null, "finished_at_ms": null,
            "exit_code": null, "signal": null, "last_error": null
        });
        serde_json::from_value(value).expect("a job")
    }

    fn job_event(id: u64, to: Option<JobState>) -> Update {
        Update::Notice(Notice::Event(Event {
            seq: 1,
            at_ms: 1,
            service: Channel::Queue,
            data: EventData::JobState { id, queue: "default".into(), from: None, to },
        }))
    }

    pub(in super::super) fn model_with(jobs: Vec<Job>) -> Model {
        let mut model = Model::new();
        let status: StatusReport = serde_json::from_value(serde_json::json!({
            "pid": 42, "version": "0.1.0", "protocol": 1, "uptime_ms": 61000,
            "started_at": "2026-01-01T00:00:00Z", "socket": "/s", "state_dir": "/d",
            "connections": {"active": 3, "total": 9, "refused_busy": 0, "refused_peer": 0},
            "channels": ["status", "queue"], "health": {"state": "healthy", "reasons": []},
            "limits": {"max_frame": 1, "handshake_max_frame": 1, "handshake_timeout_ms": 1,
                       "max_connections": 256, "connection_idle_timeout_ms": 1, "write_timeout_ms": 1,
                       "shutdown_grace_ms": 1},
            "services": {}
        }))
        .expect("a status report");
        let counts =
            serde_json::json!({"queued": 1, "running": 1, "retry_wait": 0, "succeeded": 5, "dead": 1, "canceled": 0});
        let queue = serde_json::from_value(serde_json::json!({
            "states": counts, "queues": {"default": counts}, "oldest_queued_ms": null, "finished_last_minute": 6,
            "workers": 4, "busy_workers": 1, "store": "/d/queue.sqlite3", "store_recovered": null
        }))
        .expect("queue stats");
        let pools =
            serde_json::from_value(serde_json::json!({"pools": [], "builds_running": 0, "max_concurrent_builds": 2}))
                .expect("a pools report");
        model.apply(Update::Up(DaemonIdent { version: "0.1.0".into(), pid: 42 }));
        model.apply(Update::Snapshot(Box::new(Snapshot { status, queue: Some(queue), jobs, pools: Some(pools) })));
        model
    }

    #[test]
    fn jobs_are_ordered_running_then_waiting_then_ended_newest_first() {
        let model = model_with(vec![
            job(1, JobState::Succeeded),
            job(2, JobState::Queued),
            job(3, JobState::Dead),
            job(4, JobState::Running),
            job(5, JobState::Queued),
        ]);
        let ids: Vec<u64> = model.jobs().iter().map(|j| j.id).collect();
        assert_eq!(ids, vec![4, 2, 5, 3, 1]);
    }

    #[test]
    fn the_selection_follows_its_job_and_moves_within_the_list() {
        let mut model = model_with(vec![job(1, JobState::Running), job(2, JobState::Queued)]);
        assert_eq!(model.selected, Some(1), "the first row is selected at first");
        // Not chosen yet: the first row stays selected, whichever job it is.
        let snapshot = |model: &Model, jobs: Vec<Job>| {
            Update::Snapshot(Box::new(Snapshot { jobs, ..model.snapshot.clone().expect("a snapshot") }))
        };
        model.apply(snapshot(&model, vec![job(0, JobState::Running), job(1, JobState::Running)]));
        assert_eq!(model.selected, Some(0));
        model.apply(snapshot(&model, vec![job(1, JobState::Running), job(2, JobState::Queued)]));
        assert_eq!(model.selected, Some(1));
        model.select_by(5);
        assert_eq!(model.selected, Some(2), "clamped at the end");
        model.select_by(-9);
        assert_eq!(model.selected, Some(1));
        model.select_by(1);
        // Chosen: job 2 starts running and moves up; it stays selected.
        model.apply(job_event(2, Some(JobState::Running)));
        model.apply(snapshot(&model, vec![job(2, JobState::Running), job(0, JobState::Running)]));
        assert_eq!(model.selected, Some(2));
        // It is purged: the selection goes back to the first row.
        model.apply(snapshot(&model, vec![job(1, JobState::Running)]));
        assert_eq!(model.selected, Some(1));
    }

    #[test]
    fn events_update_states_at_once_and_count_ends_per_second() {
        let mut model = model_with(vec![job(7, JobState::Running)]);
        model.apply(job_event(7, Some(JobState::Succeeded)));
        assert_eq!(model.jobs()[0].id, 7);
        model.apply(job_event(8, Some(JobState::Queued)));
        model.apply(Update::Notice(Notice::Lagged { missed: 5 }));
        assert_eq!(model.jobs()[0].state, JobState::Succeeded);
        model.tick();
        assert_eq!((model.jobs_ended.last(), model.events.last(), model.missed), (1, 7, 5));
        model.tick();
        assert_eq!((model.jobs_ended.last(), model.events.peak(2)), (0, 7));
        for _ in 0..HISTORY + 10 {
            model.tick();
        }
        assert_eq!(model.events.samples.len(), HISTORY, "the history is bounded");
    }

    #[test]
    fn only_unended_jobs_are_canceled_and_only_dead_ones_retried() {
        let mut model = model_with(vec![job(1, JobState::Running), job(2, JobState::Dead)]);
        assert_eq!(model.cancel_selected(), Some(Action::CancelJob(1)));
        assert_eq!(model.retry_selected(), None);
        assert!(model.message.as_ref().is_some_and(|m| m.failed && m.text.contains("only dead jobs")));
        model.select_by(1);
        assert_eq!(model.retry_selected(), Some(Action::RetryJob(2)));
        assert_eq!(model.cancel_selected(), None);
    }

    #[test]
    fn a_daemon_that_stops_is_said_once_with_when() {
        let mut model = model_with(vec![]);
        model.apply(Update::Down("the daemon stopped".into()));
        let Link::Down { why, at_ms } = model.link.clone() else { panic!("down") };
        assert_eq!(why, "the daemon stopped");
        // Retries that fail keep the first reason and time.
        model.apply(Update::Down("no daemon is running".into()));
        assert_eq!(model.link, Link::Down { why, at_ms });
        assert!(model.snapshot.is_some(), "the last snapshot stays on screen");
    }
}
