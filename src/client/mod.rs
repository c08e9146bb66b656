//! The client: connect, handshake, typed requests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearth::client::ClientError> {
//! use hearth::client::{ensure_daemon_running, EnsureOptions, StatusClient};
//! use hearth::paths::Paths;
//!
//! let paths = Paths::resolve(None, None)?;
//! ensure_daemon_running(&EnsureOptions::new(paths.clone())).await?;
//! let mut client = StatusClient::connect(paths.socket()).await?;
//! client.ping().await?;
//! # Ok(()) }
//! ```

use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use crate::connection::Connection;
use crate::paths::{PathError, check_socket_path};
use crate::protocol::frame::{DEFAULT_MAX_FRAME, FrameError};
use crate::protocol::handshake::{Accepted, DaemonIdent, Handshake, HandshakeReply};
use crate::protocol::status::{StatusChannel, StatusReport, StatusRequest, StatusResponse};
use crate::protocol::{ChannelProtocol, ErrorCode, Response, WireError};

pub mod blob;
pub mod blocking;
mod ensure;
mod events;
pub mod pool;
pub mod process;
pub mod queue;
pub mod sync;

pub use blob::{BlobClient, BlockingIo, PutOptions};

pub use ensure::{ENV_DAEMON_BIN, EnsureOptions, Ensured, ReplacePolicy, ensure_daemon_running, find_daemon_binary};
pub use events::Notice;
pub use pool::PoolClient;
pub use process::ProcessClient;
pub use queue::{JobPage, QueueClient, Submitted};
#[cfg(feature = "replica")]
pub use sync::ReplicaClient;
pub use sync::{SyncClient, SyncEvent, Written};

/// This library's `client` string in handshakes.
pub const DEFAULT_CLIENT_NAME: &str = concat!("hearth-client/", env!("CARGO_PKG_VERSION"));

/// Everything that can go wrong talking to the daemon. Each condition a caller
/// may branch on has its own variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket (it is missing, or stale).
    #[error("no daemon is running at {socket:?} ({source})")]
    NotRunning {
        /// The socket tried.
        socket: PathBuf,
        /// What connect said.
        #[source]
        source: io::Error,
    },
    /// The socket exists but cannot be connected to (e.g. permissions).
    #[error("cannot connect to {socket:?}: {source}")]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// What connect said.
        #[source]
        source: io::Error,
    },
    /// The process serving the socket runs as another user: nothing was
    /// sent to it. (A socket in a directory others can write may be theirs.)
    #[error("refusing to talk to the daemon at {socket:?}: it runs as uid {uid}, not as you (uid {me})")]
    ForeignDaemon {
        /// The socket tried.
        socket: PathBuf,
        /// The user serving it.
        uid: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// A path is unusable (e.g. the socket path is too long).
    #[error(transparent)]
    Path(#[from] PathError),
    /// The daemon refused the handshake.
    #[error("the daemon refused the connection: {error}")]
    Refused {
        /// Why.
        error: WireError,
        /// Who refused, when the daemon said.
        daemon: Option<DaemonIdent>,
    },
    /// A request failed; the connection is still usable.
    #[error("{0}")]
    Daemon(WireError),
    /// No answer within the deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The daemon closed the connection before answering.
    #[error("the daemon closed the connection")]
    Closed,
    /// Framing failed (including a frame over the limit).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The daemon answered something this client cannot understand.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// `hearthd` could not be found.
    #[error("cannot find the hearthd binary (looked at: {searched}); set HEARTH_DAEMON_BIN")]
    DaemonBinaryNotFound {
        /// The places searched, comma-separated.
        searched: String,
    },
    /// `hearthd` could not be executed.
    #[error("cannot run {bin:?}: {source}")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading the source of a streamed upload or writing the destination
    /// of a download failed (the local side, not the daemon).
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The blocking client could not create its runtime.
    #[error("cannot create the client's runtime: {0}")]
    Runtime(#[source] io::Error),
    /// `hearthd` ran but could not start; `code` and `message` are its own.
    #[error("hearthd could not start: {message} ({code})")]
    StartFailed {
        /// The daemon's startup error code.
        code: crate::protocol::info::LaunchCode,
        /// The daemon's own explanation.
        message: String,
    },
}

impl ClientError {
    /// The daemon's error code, for errors the daemon sent.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Refused { error, .. } | ClientError::Daemon(error) => Some(&error.code),
            _ => None,
        }
    }

    /// True when no daemon answers on the socket.
    pub fn is_not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning { .. })
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// `<name>/<version>` sent in the handshake.
    pub client_name: String,
    /// Deadline for connect plus handshake.
    pub timeout: Duration,
}

impl ConnectOptions {
    /// Defaults for `socket`: this library's name, a 5 s deadline.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), client_name: DEFAULT_CLIENT_NAME.into(), timeout: Duration::from_secs(5) }
    }

    /// Sets the client name sent in the handshake.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Sets the connect + handshake deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A handshaked connection to one channel.
#[derive(Debug)]
pub struct Client<C: ChannelProtocol> {
    conn: Connection,
    accepted: Accepted,
    peer_pid: Option<u32>,
    _channel: PhantomData<C>,
}

/// A client of the `status` channel.
pub type StatusClient = Client<StatusChannel>;

impl<C: ChannelProtocol> Client<C> {
    /// Connects to `socket` with default options.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with(&ConnectOptions::new(socket.as_ref())).await
    }

    /// Connects and completes the handshake within `options.timeout`.
    pub async fn connect_with(options: &ConnectOptions) -> Result<Self, ClientError> {
        Self::connect_with_fields(options, serde_json::Map::new()).await
    }

    /// Connects with a handshake that carries the channel's own `fields`
    /// beside `channel`, `protocol` and `client` (the sync channel's `doc`).
    pub(crate) async fn connect_with_fields(
        options: &ConnectOptions,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, ClientError> {
        let work = Self::connect_inner(options, fields);
        match tokio::time::timeout(options.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { what: "connect and handshake", after: options.timeout }),
        }
    }

    async fn connect_inner(
        options: &ConnectOptions,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, ClientError> {
        check_socket_path(&options.socket)?;
        let stream = UnixStream::connect(&options.socket).await.map_err(|source| {
            let socket = options.socket.clone();
            match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning { socket, source }
                }
                _ => ClientError::Connect { socket, source },
            }
        })?;
        let peer_pid = check_daemon_user(&stream, &options.socket)?;
        let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME);
        let mut handshake = Handshake::new(C::CHANNEL, Some(options.client_name.clone()));
        handshake.params = fields;
        conn.write_json(&handshake).await.map_err(closed_on_reset)?;
        let frame = conn.read_frame().await.map_err(closed_on_reset)?.ok_or(ClientError::Closed)?;
        let reply: HandshakeReply =
            serde_json::from_slice(&frame).map_err(|e| ClientError::Protocol(format!("bad handshake reply: {e}")))?;
        match reply {
            HandshakeReply::Accepted(accepted) => {
                conn.set_max_frame(usize::try_from(accepted.max_frame).unwrap_or(usize::MAX));
                Ok(Client { conn, accepted, peer_pid, _channel: PhantomData })
            }
            HandshakeReply::Refused(r) => Err(ClientError::Refused { error: r.error, daemon: r.daemon }),
        }
    }

    /// The daemon that accepted the handshake.
    pub fn daemon(&self) -> &DaemonIdent {
        &self.accepted.daemon
    }

    /// The pid of the process serving the socket, as the kernel records it
    /// (`SO_PEERCRED`: the process that called `listen`, in this pid
    /// namespace; a service manager's, for a socket it passed), where the
    /// platform says. Unlike [`daemon`](Self::daemon)'s pid, it is not the
    /// daemon's own word.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }

    /// The largest frame the daemon accepts on this connection.
    pub fn max_frame(&self) -> u64 {
        self.accepted.max_frame
    }

    /// Sends one request and reads its response; an `error` response becomes
    /// [`ClientError::Daemon`].
    pub async fn request(&mut self, request: &C::Request) -> Result<C::Response, ClientError> {
        self.send(request).await?;
        self.recv().await
    }

    /// Sends one request without waiting (for streamed exchanges).
    pub async fn send(&mut self, request: &C::Request) -> Result<(), ClientError> {
        self.conn.write_json(request).await.map_err(closed_on_reset)
    }

    /// Reads the next response; an `error` response becomes [`ClientError::Daemon`].
    pub async fn recv(&mut self) -> Result<C::Response, ClientError> {
        let frame = self.conn.read_frame().await.map_err(closed_on_reset)?.ok_or(ClientError::Closed)?;
        let response: C::Response = serde_json::from_slice(&frame)
            .map_err(|e| ClientError::Protocol(format!("cannot decode response: {e}")))?;
        response.into_result().map_err(ClientError::Daemon)
    }

    /// The framed connection, for channels that stream raw frames.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// The daemon must run as this user, as it only serves this user: the
/// kernel's record of who listens on the socket is checked before anything
/// (a job's command line, a blob's bytes) is sent. Returns the peer's pid,
/// when the platform says.
fn check_daemon_user(stream: &UnixStream, socket: &Path) -> Result<Option<u32>, ClientError> {
    let me = crate::sys::euid();
    let cred = stream.peer_cred().map_err(|source| ClientError::Connect { socket: socket.to_owned(), source })?;
    if cred.uid() != me {
        return Err(ClientError::ForeignDaemon { socket: socket.to_owned(), uid: cred.uid(), me });
    }
    Ok(cred.pid().and_then(|pid| u32::try_from(pid).ok()).filter(|pid| *pid > 0))
}

/// A reset or broken pipe from the daemon means it closed the connection.
fn closed_on_reset(e: FrameError) -> ClientError {
    match &e {
        FrameError::Io(io) if matches!(io.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
            ClientError::Closed
        }
        _ => ClientError::Frame(e),
    }
}

fn unexpected<T: std::fmt::Debug>(what: &str, got: T) -> ClientError {
    ClientError::Protocol(format!("expected {what}, got {got:?}"))
}

impl Client<StatusChannel> {
    /// `ping` → `pong`.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        match self.request(&StatusRequest::Ping).await? {
            StatusResponse::Pong => Ok(()),
            other => Err(unexpected("pong", other)),
        }
    }

    /// The daemon's status report.
    pub async fn status(&mut self) -> Result<StatusReport, ClientError> {
        match self.request(&StatusRequest::Status).await? {
            StatusResponse::Status(report) => Ok(*report),
            other => Err(unexpected("status", other)),
        }
    }

    /// Asks the daemon to stop gracefully; returns its grace period. The
    /// daemon is still running when this returns.
    pub async fn shutdown(&mut self, reason: Option<String>) -> Result<Duration, ClientError> {
        match self.request(&StatusRequest::Shutdown { reason, drain: false }).await? {
            StatusResponse::ShuttingDown { grace_ms, .. } => Ok(Duration::from_millis(grace_ms)),
            other => Err(unexpected("shutting_down", other)),
        }
    }

    /// Asks the daemon to let running work (jobs, builds) finish first, while
    /// it keeps serving, and then stop; returns the longest the drain may take.
    pub async fn drain_and_shutdown(&mut self, reason: Option<String>) -> Result<Duration, ClientError> {
        match self.request(&StatusRequest::Shutdown { reason, drain: true }).await? {
            StatusResponse::ShuttingDown { drain_ms, grace_ms } => {
                Ok(Duration::from_millis(drain_ms.unwrap_or(0) + grace_ms))
            }
            other => Err(unexpected("shutting_down", other)),
        }
    }
}
