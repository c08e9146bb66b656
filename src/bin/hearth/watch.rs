//! An event subscription for commands that wait on what the daemon does
//! (`queue wait` with several jobs, `pool warm --wait`, `top`).
//!
//! The subscription is read by a task of its own and handed over a bounded
//! channel, so a command can wait on it in `select!` beside a deadline or
//! its keyboard: a frame read never sits in `select!` half-done, and a
//! command that falls behind leaves the daemon to count what it missed
//! (`lagged`) instead of buffering without bound.

use hearth::client::{Client, ClientError, ConnectOptions, Notice, StatusClient};
use hearth::protocol::event::EventFilter;
use hearth::protocol::handshake::DaemonIdent;
use hearth::protocol::{ChannelProtocol, ErrorCode, WireError};
use tokio::sync::mpsc;

/// Notices the reading task may hold before it waits for the command.
const BUFFER: usize = 256;

/// A live subscription; dropping it ends it (and its connection).
#[derive(Debug)]
pub(crate) struct EventFeed {
    rx: mpsc::Receiver<Result<Notice, ClientError>>,
    reader: tokio::task::JoinHandle<()>,
    daemon: DaemonIdent,
}

impl EventFeed {
    /// Connects, subscribes and returns once the daemon confirmed: every
    /// event after that reaches [`EventFeed::next`].
    pub(crate) async fn start(options: &ConnectOptions, filter: EventFilter) -> Result<Self, ClientError> {
        let mut client = StatusClient::connect_with(options).await?;
        client.subscribe(filter).await?;
        let daemon = client.daemon().clone();
        let (tx, rx) = mpsc::channel(BUFFER);
        let reader = tokio::spawn(async move {
            loop {
                let notice = client.next_event().await;
                let ended = notice.is_err();
                if tx.send(notice).await.is_err() || ended {
                    return;
                }
            }
        });
        Ok(Self { rx, reader, daemon })
    }

    /// The next notice; an error when the subscription ended (the daemon
    /// stopped, or the connection broke). Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Notice, ClientError> {
        self.rx.recv().await.unwrap_or(Err(ClientError::Closed))
    }

    /// The daemon that serves the subscription.
    pub(crate) fn daemon(&self) -> &DaemonIdent {
        &self.daemon
    }
}

impl Drop for EventFeed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Makes a request of `call` on `client`; when the daemon had closed that
/// connection (a wait can outlast `server.connection_idle_timeout`),
/// makes it once more on a fresh one, which replaces it.
pub(crate) async fn reconnecting<C: ChannelProtocol, T>(
    options: &ConnectOptions,
    client: &mut Client<C>,
    mut call: impl AsyncFnMut(&mut Client<C>) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    match call(client).await {
        // The daemon says why it closes a connection, when it can.
        Err(ClientError::Closed | ClientError::Daemon(WireError { code: ErrorCode::IdleTimeout, .. })) => {
            *client = Client::connect_with(options).await?;
            call(client).await
        }
        other => other,
    }
}
