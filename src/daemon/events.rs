//! The event bus: services publish what they did; `subscribe`rs on the
//! status channel read it.
//!
//! An event is numbered and encoded once, when it is published, into the
//! very frame every subscriber sends: a subscriber only checks its filter
//! and copies bytes. The bus is a `tokio::sync::broadcast` ring of
//! `daemon.event_buffer` events shared by all subscribers: memory does not
//! grow with their number, and one that falls a whole ring behind is told
//! how many events it missed (`lagged`), while the others go on. The last
//! `daemon.event_buffer` events are also kept, so that a subscriber that
//! reconnects can resume after the last sequence number it saw (`since`).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::protocol::Channel;
use crate::protocol::event::{Event, EventData, EventKind};
use crate::protocol::status::StatusResponse;

/// One published event, ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) seq: u64,
    pub(crate) service: Channel,
    pub(crate) kind: EventKind,
    pub(crate) subject: Option<String>,
    /// The `event` response, encoded.
    pub(crate) frame: Bytes,
}

/// A new subscription: where it starts, what it missed, what it replays.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// The sequence number of the last event published before it.
    pub(crate) seq: u64,
    /// Events after the subscriber's `since` that fell out of the buffer.
    pub(crate) missed: u64,
    /// Events after its `since` still in the buffer, oldest first.
    pub(crate) replay: Vec<Published>,
    /// Everything published from now on.
    pub(crate) live: broadcast::Receiver<Published>,
}

#[derive(Debug)]
struct Recent {
    /// The last sequence number given out.
    seq: u64,
    /// The last `capacity` events, for subscribers that resume (`since`).
    events: VecDeque<Published>,
}

/// The daemon's event bus.
#[derive(Debug)]
pub(crate) struct EventBus {
    tx: broadcast::Sender<Published>,
    /// Held while an event is numbered, kept and sent, so that subscribers
    /// see the numbers in order and a resuming subscriber misses nothing
    /// between its replay and its live events.
    recent: Mutex<Recent>,
    capacity: usize,
}

impl EventBus {
    /// A bus that keeps the last `capacity` events, and whose subscribers
    /// may fall that far behind.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Self { tx, recent: Mutex::new(Recent { seq: 0, events: VecDeque::with_capacity(capacity) }), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes an event of `service`.
    pub(crate) fn publish(&self, service: Channel, data: EventData) {
        let (kind, subject) = (data.kind(), data.subject());
        let mut recent = self.lock();
        let seq = recent.seq + 1;
        let event = Event { seq, at_ms: crate::time::now_ms(), service, data };
        let frame = match serde_json::to_vec(&StatusResponse::Event(event)) {
            Ok(frame) => Bytes::from(frame),
            Err(e) => return tracing::error!("cannot encode an event: {e}"),
        };
        recent.seq = seq;
        let published = Published { seq, service, kind, subject, frame };
        if recent.events.len() == self.capacity {
            recent.events.pop_front();
        }
        recent.events.push_back(published.clone());
        // No receiver is not an error: the event is kept for resumes.
        let _ = self.tx.send(published);
    }

    /// A new subscription. With `since`, the events after that sequence
    /// number still kept are replayed first, and those no longer kept are
    /// counted as missed.
    pub(crate) fn subscribe(&self, since: Option<u64>) -> Subscription {
        let recent = self.lock();
        let live = self.tx.subscribe();
        let seq = recent.seq;
        let Some(since) = since.map(|s| s.min(seq)) else {
            return Subscription { seq, missed: 0, replay: Vec::new(), live };
        };
        let oldest = recent.events.front().map_or(seq + 1, |e| e.seq);
        let missed = oldest.saturating_sub(since + 1);
        let replay = recent.events.iter().filter(|e| e.seq > since).cloned().collect();
        Subscription { seq, missed, replay, live }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64) -> EventData {
        EventData::JobState { id, queue: "q".into(), from: None, to: None }
    }

    fn seq_of(p: &Published) -> u64 {
        let StatusResponse::Event(event) = serde_json::from_slice(&p.frame).unwrap() else { panic!("not an event") };
        assert_eq!(event.seq, p.seq);
        event.seq
    }

    #[test]
    fn numbers_in_order_and_tells_a_slow_subscriber_what_it_missed() {
        let bus = EventBus::new(4);
        bus.publish(Channel::Queue, job(1));
        let mut sub = bus.subscribe(None);
        assert_eq!((sub.seq, sub.missed, sub.replay.len()), (1, 0, 0));
        for id in 2..=7 {
            bus.publish(Channel::Queue, job(id));
        }
        assert!(matches!(sub.live.try_recv(), Err(broadcast::error::TryRecvError::Lagged(2))));
        assert_eq!(seq_of(&sub.live.try_recv().unwrap()), 4);
    }

    #[test]
    fn a_resuming_subscriber_replays_what_is_kept_and_counts_the_rest() {
        let bus = EventBus::new(3);
        for id in 1..=5 {
            bus.publish(Channel::Queue, job(id));
        }
        let sub = bus.subscribe(Some(1));
        assert_eq!(sub.missed, 1, "event 2 fell out of the buffer");
        assert_eq!(sub.replay.iter().map(seq_of).collect::<Vec<_>>(), vec![3, 4, 5]);
        let caught_up = bus.subscribe(Some(5));
        assert_eq!((caught_up.missed, caught_up.replay.len()), (0, 0));
        let ahead = bus.subscribe(Some(99));
        assert_eq!((ahead.seq, ahead.missed, ahead.replay.len()), (5, 0, 0));
    }
}
