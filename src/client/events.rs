//! Event subscriptions on the `status` channel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth::client::ClientError> {
//! use hearth::client::{Notice, StatusClient};
//! use hearth::protocol::event::{EventFilter, EventKind};
//!
//! let mut client = StatusClient::connect("/run/user/1000/hearth.sock").await?;
//! let filter = EventFilter { kinds: vec![EventKind::JobState], ..EventFilter::default() };
//! client.subscribe(filter).await?;
//! while let Notice::Event(event) = client.next_event().await? {
//!     println!("#{} {:?}", event.seq, event.data);
//! }
//! client.unsubscribe().await?;
//! # Ok(()) }
//! ```

use super::{Client, ClientError, unexpected};
use crate::protocol::event::{Event, EventFilter, Subscribe};
use crate::protocol::status::{StatusChannel, StatusRequest, StatusResponse};

/// What a subscription delivers next.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// An event that passed the filter.
    Event(Event),
    /// The subscriber fell behind the daemon's buffer: this many events were
    /// dropped for it (the next event's `seq` shows the gap).
    Lagged {
        /// How many.
        missed: u64,
    },
}

impl Client<StatusChannel> {
    /// Starts streaming the events that pass `filter`; returns the sequence
    /// number of the last event before the subscription. Until
    /// [`Client::unsubscribe`], the connection only delivers events.
    pub async fn subscribe(&mut self, filter: EventFilter) -> Result<u64, ClientError> {
        self.subscribe_since(None, filter).await
    }

    /// [`Client::subscribe`], resuming after the event numbered `since`
    /// (the last one seen before a reconnect): the events after it that the
    /// daemon still keeps come first; older ones arrive as one
    /// [`Notice::Lagged`].
    pub async fn subscribe_since(&mut self, since: Option<u64>, filter: EventFilter) -> Result<u64, ClientError> {
        match self.request(&StatusRequest::Subscribe(Subscribe { since, filter })).await? {
            StatusResponse::Subscribed { seq } => Ok(seq),
            other => Err(unexpected("subscribed", other)),
        }
    }

    /// The next event (or lag notice) of the subscription; waits as long as
    /// it takes. A daemon that stops ends it with `shutting_down`.
    pub async fn next_event(&mut self) -> Result<Notice, ClientError> {
        match self.recv().await? {
            StatusResponse::Event(event) => Ok(Notice::Event(event)),
            StatusResponse::Lagged { missed } => Ok(Notice::Lagged { missed }),
            other => Err(unexpected("event or lagged", other)),
        }
    }

    /// Ends the subscription (events already on the way are skipped); the
    /// connection takes requests again.
    pub async fn unsubscribe(&mut self) -> Result<(), ClientError> {
        self.send(&StatusRequest::Unsubscribe).await?;
        loop {
            match self.recv().await? {
                StatusResponse::Unsubscribed => return Ok(()),
                StatusResponse::Event(_) | StatusResponse::Lagged { .. } => {}
                other => return Err(unexpected("unsubscribed", other)),
            }
        }
    }
}
