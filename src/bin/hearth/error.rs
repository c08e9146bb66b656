//! Errors as the CLI reports them: a stable code, a message, a hint, and an
//! exit status.

use hearth::client::ClientError;
use hearth::protocol::ErrorCode;

/// Exit status: success.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status: the command failed (the daemon answered with an error, or
/// something else went wrong).
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit status: no daemon is running (commands that never start one).
pub(crate) const EXIT_NOT_RUNNING: u8 = 3;
/// Exit status: no answer within the deadline.
pub(crate) const EXIT_TIMEOUT: u8 = 4;
/// Exit status of `daemon stop` and `restart`: the process holding the lock
/// could not be proven to be this state directory's hearthd, so nothing
/// was signalled.
pub(crate) const EXIT_REFUSED: u8 = 5;

#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
    pub(crate) exit: u8,
}

impl CliError {
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), hint: None, exit: EXIT_FAILED }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn exit(mut self, exit: u8) -> Self {
        self.exit = exit;
        self
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let message = e.to_string();
        match e {
            ClientError::NotRunning { .. } => {
                CliError::new("not_running", message).hint("start it with `hearth daemon start`").exit(EXIT_NOT_RUNNING)
            }
            ClientError::Connect { .. } => CliError::new("connect_failed", message)
                .hint("check the socket's owner and mode; `hearth daemon status` shows what runs"),
            ClientError::ForeignDaemon { .. } => CliError::new("daemon_of_another_user", message)
                .hint("use a socket path in a directory only you can write (--socket, HEARTH_SOCKET)"),
            ClientError::Path(_) => CliError::new("socket_path_too_long", message),
            ClientError::Refused { ref error, .. } | ClientError::Daemon(ref error) => {
                let hint = hint_for(&error.code);
                let mut out = CliError::new(error.code.as_str(), error.message.clone());
                out.hint = hint.map(str::to_owned);
                out
            }
            ClientError::Timeout { .. } => CliError::new("timeout", message)
                .hint("the daemon may be overloaded or hung; see `hearth daemon status` and its log")
                .exit(EXIT_TIMEOUT),
            ClientError::Closed => CliError::new("connection_closed", message)
                .hint("the daemon may have stopped; see `hearth daemon status`"),
            ClientError::DaemonBinaryNotFound { .. } => CliError::new("daemon_binary_not_found", message)
                .hint("install hearthd next to hearth or on PATH, or set HEARTH_DAEMON_BIN"),
            ClientError::StartFailed { ref code, .. } => {
                CliError::new(code.as_str(), message).hint("`hearth daemon logs` may say more")
            }
            ClientError::Spawn { .. } => CliError::new("spawn_failed", message),
            ClientError::Io { .. } => CliError::new("io_error", message),
            ClientError::Frame(_) | ClientError::Protocol(_) => CliError::new("protocol_error", message).hint(
                "are hearth and hearthd from the same release? `hearth daemon status` shows the daemon's version",
            ),
            _ => CliError::new("client_error", message),
        }
    }
}

fn hint_for(code: &ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::TooManyConnections => "retry later, or raise server.max_connections",
        ErrorCode::PermissionDenied => "the daemon on this socket belongs to another user",
        ErrorCode::ShuttingDown => "the daemon is stopping; retry in a moment",
        ErrorCode::ChannelUnavailable => "`hearth status` shows which channels this daemon serves and why",
        ErrorCode::UnsupportedProtocol => "upgrade hearth or hearthd so that both speak the same protocol",
        ErrorCode::BlobNotFound => "`hearth blob ls` lists the stored blobs",
        ErrorCode::BlobPinned => "`hearth blob unpin HASH` first, or `hearth blob rm --force HASH`",
        ErrorCode::StorageFull => "free disk space, or lower blob.max_bytes and run `hearth blob gc`",
        ErrorCode::BlobTooLarge => "raise blob.max_blob_size in config.toml",
        _ => return None,
    })
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new("io_error", e.to_string())
    }
}
