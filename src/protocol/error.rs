//! Stable error codes and the error object that carries them on the wire.

use serde::{Deserialize, Serialize};

use super::codes::stable_codes;

stable_codes! {
    /// A stable, snake_case error code a client matches on (listed in
    /// proto-docs/errors.md).
    pub enum ErrorCode {
        // Connection and handshake.
        /// The first frame was not a valid handshake object.
        InvalidHandshake => "invalid_handshake",
        /// The handshake asked for a protocol version this daemon does not speak.
        UnsupportedProtocol => "unsupported_protocol",
        /// The handshake named a channel that does not exist.
        UnknownChannel => "unknown_channel",
        /// The channel exists but this daemon does not serve it (disabled, or its
        /// service failed to start; `status` says why).
        ChannelUnavailable => "channel_unavailable",
        /// No complete handshake arrived within the handshake deadline.
        HandshakeTimeout => "handshake_timeout",
        /// The daemon is at its connection limit; try again later.
        TooManyConnections => "too_many_connections",
        /// The peer runs as a different user than the daemon.
        PermissionDenied => "permission_denied",
        /// The daemon is shutting down and takes no new work.
        ShuttingDown => "shutting_down",
        /// A frame's length prefix exceeds the maximum frame size.
        FrameTooLarge => "frame_too_large",
        /// The connection was idle for longer than the idle timeout.
        IdleTimeout => "idle_timeout",
        // Requests.
        /// A frame was not valid UTF-8 JSON (or nested too deeply).
        MalformedJson => "malformed_json",
        /// The request's `type` is not a request of this channel.
        UnknownRequest => "unknown_request",
        /// The request is well-formed JSON of a known type, but its fields are
        /// missing, of the wrong type, or out of range.
        InvalidRequest => "invalid_request",
        /// The daemon failed in a way that is not the request's fault; the log has details.
        Internal => "internal",
        // The pool channel.
        /// No pool of that name is defined.
        UnknownPool => "unknown_pool",
        /// No resource is held under that lease (never issued, or already released).
        UnknownLease => "unknown_lease",
        /// No resource became ready within the take's timeout.
        TakeTimeout => "take_timeout",
        /// The build a take waited for failed; the message carries its error.
        BuildFailed => "build_failed",
        /// A pool or process definition is invalid; the message names the field.
        InvalidDefinition => "invalid_definition",
        /// The pool's or process's definition comes from config.toml (or is
        /// built in), so it cannot be removed at run time.
        NotRuntimeDefined => "not_runtime_defined",
        /// The daemon already has its maximum number of pools.
        TooManyPools => "too_many_pools",
        // The queue channel.
        /// No job has this id (it never existed, or it was purged or pruned).
        JobNotFound => "job_not_found",
        /// The idempotency key is in use in this queue by a job with a different
        /// command, environment, working directory or input.
        IdempotencyConflict => "idempotency_conflict",
        /// The job already ended, so it cannot be canceled.
        JobFinished => "job_finished",
        /// `retry` and `purge` act on dead jobs only.
        JobNotDead => "job_not_dead",
        /// The job's input is larger than `queue.max_input`.
        InputTooLarge => "input_too_large",
        /// The queue's store failed (disk full, I/O error); nothing was changed.
        StoreFailed => "store_failed",
        // The blob channel.
        /// No blob with this hash is stored.
        BlobNotFound => "blob_not_found",
        /// A put's data does not hash to the `sha256` the client announced.
        HashMismatch => "hash_mismatch",
        /// A put's data is not as long as the `size` the client announced.
        SizeMismatch => "size_mismatch",
        /// A put is larger than the store accepts (`blob.max_blob_size`).
        BlobTooLarge => "blob_too_large",
        /// The blob is pinned; delete it with `force`, or unpin it first.
        BlobPinned => "blob_pinned",
        /// A get's byte range starts past the end of the blob.
        RangeNotSatisfiable => "range_not_satisfiable",
        /// The store's filesystem is full or over quota.
        StorageFull => "storage_full",
        // The sync channel.
        /// A document name breaks the naming rules (the message says which).
        InvalidDocName => "invalid_doc_name",
        /// Creating this document would exceed `sync.max_docs`.
        TooManyDocs => "too_many_docs",
        /// The room already has `sync.max_peers_per_room` peers.
        RoomFull => "room_full",
        /// No document has this name (`inspect` does not create documents).
        DocNotFound => "doc_not_found",
        /// The request needs a document, and this connection's handshake named none.
        NoDocument => "no_document",
        /// A binary frame is not a valid Automerge sync message, or its changes do not apply.
        InvalidSyncMessage => "invalid_sync_message",
        /// A sync message is larger than `sync.max_sync_message`.
        SyncMessageTooLarge => "sync_message_too_large",
        /// A path names a key or index that does not exist.
        PathNotFound => "path_not_found",
        /// A path goes through a scalar value (a string, a number...) as if it were a map or list.
        NotAContainer => "not_a_container",
        /// An operation does not fit what the path names (a key into a list, a
        /// splice of a non-text, an increment of a non-counter, a bad `as`).
        WrongType => "wrong_type",
        /// A written value is larger than `sync.max_value_size` or nested too deeply.
        ValueTooLarge => "value_too_large",
        /// The change would take the document over `sync.max_doc_size`.
        DocTooLarge => "doc_too_large",
        /// A revision names a change this document does not have.
        UnknownRevision => "unknown_revision",
        /// The answer (a document or value as JSON) would not fit in one frame.
        ViewTooLarge => "view_too_large",
        /// The room was closed (`close`, or the daemon is stopping); reconnect to reload it.
        RoomClosed => "room_closed",
        /// The peer did not take what it was sent within `sync.peer_write_timeout`; it was disconnected.
        PeerTooSlow => "peer_too_slow",
        // The process channel.
        /// No process of that name (or with that label) is defined.
        UnknownProcess => "unknown_process",
        /// The daemon already supervises its maximum number of processes.
        TooManyProcesses => "too_many_processes",
        /// The process could not be started (its program or working directory
        /// is missing), or it failed before it was ready and is not restarted.
        StartFailed => "start_failed",
        /// The process was restarted too often within its window and is now
        /// `failed`; `start` tries again.
        RestartStorm => "restart_storm",
        /// The process did not become ready in time; a rolling restart stops there.
        NotReady => "not_ready",
    }
}

/// The error object: `{"code": "...", "message": "..."}`. Inside a response it
/// appears as `{"type": "error", "code": ..., "message": ...}`; in a refused
/// handshake as `{"ok": false, "error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct WireError {
    /// The stable code a client matches on.
    pub code: ErrorCode,
    /// Human text: what went wrong and, where useful, what to do.
    pub message: String,
}

impl WireError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip_and_are_snake_case() {
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert_eq!(&ErrorCode::from_code(s), code);
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *code);
        }
    }

    #[test]
    fn unknown_codes_are_kept() {
        let code: ErrorCode = serde_json::from_str(r#""from_the_future""#).unwrap();
        assert_eq!(code, ErrorCode::Other("from_the_future".into()));
        assert_eq!(serde_json::to_string(&code).unwrap(), r#""from_the_future""#);
    }
}
