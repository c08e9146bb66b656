"""Every failure is a :class:`HearthError` with a stable ``code`` and a human ``message``.

The families a caller handles:

- :class:`NotRunning`: no daemon listens on the socket;
- :class:`Refused`: the daemon refused the handshake (``code`` says why);
- :class:`RequestError`: a request failed and the connection is still usable;
- :class:`Timeout`: no answer within the deadline (the connection is closed);
- :class:`StartFailed`: ``hearthd`` could not start (``code`` and ``message`` are its own);
- :class:`ConnectionClosed`: the daemon closed the connection, or it broke;
- :class:`ProtocolError`: the daemon answered something this client cannot read.

Each wire error code of ``proto-docs/errors.md`` has its own class too
(``UnknownPool``, ``BlobNotFound``, ...), listed in :data:`ERROR_CLASSES`, so
that ``except hearth_client.BlobNotFound`` works. A code this library does not
know (from a newer daemon) raises the family class with that code.
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional, Tuple, Type

__all__ = [
    "HearthError",
    "NotRunning",
    "ConnectError",
    "ForeignDaemon",
    "Refused",
    "RequestError",
    "Timeout",
    "StartFailed",
    "DaemonBinaryNotFound",
    "ConnectionClosed",
    "ProtocolError",
    "LocalIOError",
    "ERROR_CLASSES",
    "error_for_code",
    "InvalidHandshake",
    "UnsupportedProtocol",
    "UnknownChannel",
    "ChannelUnavailable",
    "HandshakeTimeout",
    "TooManyConnections",
    "PermissionDenied",
    "ShuttingDown",
    "FrameTooLarge",
    "IdleTimeout",
    "MalformedJson",
    "ResponseTooLarge",
    "UnknownRequest",
    "InvalidRequest",
    "Internal",
    "UnknownPool",
    "UnknownLease",
    "TakeTimeout",
    "BuildFailed",
    "InvalidDefinition",
    "NotRuntimeDefined",
    "TooManyPools",
    "JobNotFound",
    "IdempotencyConflict",
    "JobFinished",
    "JobNotDead",
    "InputTooLarge",
    "CommandTooLarge",
    "StoreFailed",
    "BlobNotFound",
    "HashMismatch",
    "SizeMismatch",
    "BlobTooLarge",
    "BlobPinned",
    "RangeNotSatisfiable",
    "StorageFull",
    "UnknownProcess",
    "TooManyProcesses",
    "ProcessStartFailed",
    "RestartStorm",
    "NotReady",
    "InvalidDocName",
    "TooManyDocs",
    "RoomFull",
    "DocNotFound",
    "NoDocument",
    "InvalidSyncMessage",
    "SyncMessageTooLarge",
    "PathNotFound",
    "NotAContainer",
    "WrongType",
    "ValueTooLarge",
    "DocTooLarge",
    "UnknownRevision",
    "ViewTooLarge",
    "RoomClosed",
    "PeerTooSlow",
]


class HearthError(Exception):
    """A failure talking to hearth: a stable snake_case ``code`` and a ``message`` for people."""

    code: str
    message: str
    #: The wire code a class stands for (empty for the families).
    wire_code: ClassVar[str] = ""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class NotRunning(HearthError):
    """Nothing listens on the socket (it is missing, or stale)."""


class ConnectError(HearthError):
    """The socket exists but cannot be connected to (permissions, a path too long)."""


class ForeignDaemon(HearthError):
    """The process serving the socket runs as another user: nothing was sent to it."""


class Refused(HearthError):
    """The daemon refused the handshake and closed the connection."""

    daemon: Optional[Dict[str, object]]

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        #: The daemon's ``{"version", "pid"}``, when it said who it is.
        self.daemon = None


class RequestError(HearthError):
    """A request failed; the connection stays usable unless ``proto-docs/errors.md`` says otherwise."""


class Timeout(HearthError):
    """No answer within the deadline. The call's connection is closed, never left half-read."""


class StartFailed(HearthError):
    """``hearthd`` ran but could not start; ``code`` and ``message`` are the daemon's own."""


class DaemonBinaryNotFound(StartFailed):
    """``hearthd`` was not found (argument, ``HEARTH_DAEMON_BIN``, next to the interpreter, ``PATH``)."""


class ConnectionClosed(HearthError):
    """The daemon closed the connection (or it broke) before answering."""


class ProtocolError(HearthError):
    """The daemon sent something this client cannot understand (or a frame over the limit)."""


class LocalIOError(HearthError):
    """Reading the source of an upload or writing the destination of a download failed."""


# One class per wire code of protocol 1, in the order of proto-docs/errors.md.
# A code sent only in handshakes subclasses Refused, one sent only as a request
# error subclasses RequestError; a code sent in both places is raised as a class
# that is both its own and the family of where it came (see error_for_code).


class InvalidHandshake(Refused):
    """``invalid_handshake``: The first frame is not ``{"channel": ..., "protocol": ...}``."""

    wire_code = "invalid_handshake"


class UnsupportedProtocol(Refused):
    """``unsupported_protocol``: The daemon speaks another protocol version (the reply's ``protocol`` says
    which); upgrade the older side.
    """

    wire_code = "unsupported_protocol"


class UnknownChannel(Refused):
    """``unknown_channel``: No such channel."""

    wire_code = "unknown_channel"


class ChannelUnavailable(Refused):
    """``channel_unavailable``: The channel exists but this daemon does not serve it; ``status`` lists the
    channels it serves and its health reasons say why.
    """

    wire_code = "channel_unavailable"


class HandshakeTimeout(Refused):
    """``handshake_timeout``: No complete handshake within the deadline."""

    wire_code = "handshake_timeout"


class TooManyConnections(Refused):
    """``too_many_connections``: The daemon serves its maximum of connections; retry with backoff."""

    wire_code = "too_many_connections"


class PermissionDenied(Refused):
    """``permission_denied``: The peer is another user."""

    wire_code = "permission_denied"


class ShuttingDown(HearthError):
    """``shutting_down``: The daemon is stopping and takes no new work; retry after it restarts."""

    wire_code = "shutting_down"


class FrameTooLarge(HearthError):
    """``frame_too_large``: A length prefix above the maximum frame size; the message names the length and the limit."""

    wire_code = "frame_too_large"


class IdleTimeout(RequestError):
    """``idle_timeout``: No request for longer than the idle timeout; reconnect when needed."""

    wire_code = "idle_timeout"


class MalformedJson(RequestError):
    """``malformed_json``: The frame is not valid UTF-8 JSON, or nests deeper than 128 levels."""

    wire_code = "malformed_json"


class ResponseTooLarge(RequestError):
    """``response_too_large``: The answer would be larger than the maximum frame size, so it was not sent; a
    change the request asked for was made all the same."""

    wire_code = "response_too_large"


class UnknownRequest(RequestError):
    """``unknown_request``: The ``type`` is not a request of this channel; the message lists the ones that are."""

    wire_code = "unknown_request"


class InvalidRequest(RequestError):
    """``invalid_request``: A known ``type`` with missing, mistyped or out-of-range fields; the message names the
    field.
    """

    wire_code = "invalid_request"


class Internal(RequestError):
    """``internal``: The daemon failed in a way that is not the request's fault; its log has details."""

    wire_code = "internal"


class UnknownPool(RequestError):
    """``unknown_pool``: No pool of that name is defined (``status`` lists them)."""

    wire_code = "unknown_pool"


class UnknownLease(RequestError):
    """``unknown_lease``: No resource is held under that lease: never issued, or already released; nothing was
    touched.
    """

    wire_code = "unknown_lease"


class TakeTimeout(RequestError):
    """``take_timeout``: No resource became ready within ``timeout_ms`` (or none was ready with ``timeout_ms:
    0``); the build under way goes on and serves the next take.
    """

    wire_code = "take_timeout"


class BuildFailed(RequestError):
    """``build_failed``: The build the take waited for failed; the message carries the command, its exit status
    and its last lines of output.
    """

    wire_code = "build_failed"


class InvalidDefinition(RequestError):
    """``invalid_definition``: A definition field is missing or out of range; the message names it."""

    wire_code = "invalid_definition"


class NotRuntimeDefined(RequestError):
    """``not_runtime_defined``: The pool is defined in config.toml or built in; only ``define``d pools can be
    undefined.
    """

    wire_code = "not_runtime_defined"


class TooManyPools(RequestError):
    """``too_many_pools``: The daemon already has its maximum of 64 pools."""

    wire_code = "too_many_pools"


class JobNotFound(RequestError):
    """``job_not_found``: No job has this id: it never existed, or was purged or pruned."""

    wire_code = "job_not_found"


class IdempotencyConflict(RequestError):
    """``idempotency_conflict``: The key is taken in this queue (within its retention window) by a job with a
    different ``argv``, ``env``, ``cwd`` or ``input``; use another key, or submit the same job.
    """

    wire_code = "idempotency_conflict"


class JobFinished(RequestError):
    """``job_finished``: The job already ended (the message says how), so there is nothing to cancel."""

    wire_code = "job_finished"


class JobNotDead(RequestError):
    """``job_not_dead``: Only dead jobs can be retried or purged; nothing was changed."""

    wire_code = "job_not_dead"


class InputTooLarge(RequestError):
    """``input_too_large``: The job's input is larger than ``queue.max_input`` (1 MiB by default)."""

    wire_code = "input_too_large"


class CommandTooLarge(RequestError):
    """``command_too_large``: The job's ``argv``, ``env`` and ``cwd`` take more than a job may hold, or more than
    this system can execute (``ARG_MAX``); nothing was stored."""

    wire_code = "command_too_large"


class StoreFailed(RequestError):
    """``store_failed``: The queue's store could not commit or read (disk full, I/O error); nothing was changed;
    the daemon's log has details.
    """

    wire_code = "store_failed"


class BlobNotFound(RequestError):
    """``blob_not_found``: No blob with that hash is stored (or it was deleted or collected meanwhile)."""

    wire_code = "blob_not_found"


class HashMismatch(RequestError):
    """``hash_mismatch``: The data does not hash to the ``sha256`` the put announced; nothing was stored."""

    wire_code = "hash_mismatch"


class SizeMismatch(RequestError):
    """``size_mismatch``: The data is longer or shorter than the ``size`` the put announced; nothing was stored."""

    wire_code = "size_mismatch"


class BlobTooLarge(RequestError):
    """``blob_too_large``: The blob exceeds ``blob.max_blob_size``; nothing was stored."""

    wire_code = "blob_too_large"


class BlobPinned(RequestError):
    """``blob_pinned``: The blob is pinned; ``unpin`` it first or ``delete`` with ``"force": true``."""

    wire_code = "blob_pinned"


class RangeNotSatisfiable(RequestError):
    """``range_not_satisfiable``: The ``offset`` is past the end of the blob."""

    wire_code = "range_not_satisfiable"


class StorageFull(RequestError):
    """``storage_full``: The store's filesystem is full or over quota; free space or run ``gc``; nothing was stored."""

    wire_code = "storage_full"


class UnknownProcess(RequestError):
    """``unknown_process``: No process of that name (or with that label) is defined."""

    wire_code = "unknown_process"


class TooManyProcesses(RequestError):
    """``too_many_processes``: The daemon already supervises ``process.max_processes`` processes."""

    wire_code = "too_many_processes"


class ProcessStartFailed(RequestError):
    """``start_failed``: A supervised process could not be started, or failed before it was ready."""

    wire_code = "start_failed"


class RestartStorm(RequestError):
    """``restart_storm``: The process was restarted ``max_restarts`` times within its window and is now ``failed``."""

    wire_code = "restart_storm"


class NotReady(RequestError):
    """``not_ready``: A process did not become ready within its start timeout; a rolling restart stops there."""

    wire_code = "not_ready"


class InvalidDocName(HearthError):
    """``invalid_doc_name``: A document name breaks the rules of proto-docs/sync.md
    (lowercase segments, no ``..``, no leading ``.``).
    """

    wire_code = "invalid_doc_name"


class TooManyDocs(Refused):
    """``too_many_docs``: The sync store holds ``sync.max_docs`` documents; creating another is refused."""

    wire_code = "too_many_docs"


class RoomFull(Refused):
    """``room_full``: The room has ``sync.max_peers_per_room`` peers."""

    wire_code = "room_full"


class DocNotFound(RequestError):
    """``doc_not_found``: No sync document has this name."""

    wire_code = "doc_not_found"


class NoDocument(RequestError):
    """``no_document``: A request that needs a document, on a control connection (no ``doc`` in the handshake)."""

    wire_code = "no_document"


class InvalidSyncMessage(RequestError):
    """``invalid_sync_message``: A binary frame that is not an Automerge sync message (or on a
    view connection), or whose changes do not apply.
    """

    wire_code = "invalid_sync_message"


class SyncMessageTooLarge(RequestError):
    """``sync_message_too_large``: A sync message larger than ``sync.max_sync_message``."""

    wire_code = "sync_message_too_large"


class PathNotFound(RequestError):
    """``path_not_found``: A path step does not exist (or an index is past the end);
    nothing of the write was applied.
    """

    wire_code = "path_not_found"


class NotAContainer(RequestError):
    """``not_a_container``: A path goes through a scalar as if it were a map or list;
    nothing of the write was applied.
    """

    wire_code = "not_a_container"


class WrongType(RequestError):
    """``wrong_type``: The operation does not fit what the path names (a key into a list, a splice of a non-text...)."""

    wire_code = "wrong_type"


class ValueTooLarge(RequestError):
    """``value_too_large``: A value over ``sync.max_value_size``, or nested deeper than 64 levels."""

    wire_code = "value_too_large"


class DocTooLarge(RequestError):
    """``doc_too_large``: The document is at ``sync.max_doc_size``; nothing was applied."""

    wire_code = "doc_too_large"


class UnknownRevision(RequestError):
    """``unknown_revision``: A revision names a change the document does not have."""

    wire_code = "unknown_revision"


class ViewTooLarge(RequestError):
    """``view_too_large``: The answer would not fit in one frame; read a smaller path."""

    wire_code = "view_too_large"


class RoomClosed(RequestError):
    """``room_closed``: The room was closed (``close``, or a failed store); reconnect to load it again."""

    wire_code = "room_closed"


class PeerTooSlow(RequestError):
    """``peer_too_slow``: The peer took no frame for ``sync.peer_write_timeout`` and was disconnected."""

    wire_code = "peer_too_slow"


#: Every wire code's class, keyed by code.
ERROR_CLASSES: Dict[str, Type[HearthError]] = {
    InvalidHandshake.wire_code: InvalidHandshake,
    UnsupportedProtocol.wire_code: UnsupportedProtocol,
    UnknownChannel.wire_code: UnknownChannel,
    ChannelUnavailable.wire_code: ChannelUnavailable,
    HandshakeTimeout.wire_code: HandshakeTimeout,
    TooManyConnections.wire_code: TooManyConnections,
    PermissionDenied.wire_code: PermissionDenied,
    ShuttingDown.wire_code: ShuttingDown,
    FrameTooLarge.wire_code: FrameTooLarge,
    IdleTimeout.wire_code: IdleTimeout,
    MalformedJson.wire_code: MalformedJson,
    ResponseTooLarge.wire_code: ResponseTooLarge,
    UnknownRequest.wire_code: UnknownRequest,
    InvalidRequest.wire_code: InvalidRequest,
    Internal.wire_code: Internal,
    UnknownPool.wire_code: UnknownPool,
    UnknownLease.wire_code: UnknownLease,
    TakeTimeout.wire_code: TakeTimeout,
    BuildFailed.wire_code: BuildFailed,
    InvalidDefinition.wire_code: InvalidDefinition,
    NotRuntimeDefined.wire_code: NotRuntimeDefined,
    TooManyPools.wire_code: TooManyPools,
    JobNotFound.wire_code: JobNotFound,
    IdempotencyConflict.wire_code: IdempotencyConflict,
    JobFinished.wire_code: JobFinished,
    JobNotDead.wire_code: JobNotDead,
    InputTooLarge.wire_code: InputTooLarge,
    CommandTooLarge.wire_code: CommandTooLarge,
    StoreFailed.wire_code: StoreFailed,
    BlobNotFound.wire_code: BlobNotFound,
    HashMismatch.wire_code: HashMismatch,
    SizeMismatch.wire_code: SizeMismatch,
    BlobTooLarge.wire_code: BlobTooLarge,
    BlobPinned.wire_code: BlobPinned,
    RangeNotSatisfiable.wire_code: RangeNotSatisfiable,
    StorageFull.wire_code: StorageFull,
    UnknownProcess.wire_code: UnknownProcess,
    TooManyProcesses.wire_code: TooManyProcesses,
    ProcessStartFailed.wire_code: ProcessStartFailed,
    RestartStorm.wire_code: RestartStorm,
    NotReady.wire_code: NotReady,
    InvalidDocName.wire_code: InvalidDocName,
    TooManyDocs.wire_code: TooManyDocs,
    RoomFull.wire_code: RoomFull,
    DocNotFound.wire_code: DocNotFound,
    NoDocument.wire_code: NoDocument,
    InvalidSyncMessage.wire_code: InvalidSyncMessage,
    SyncMessageTooLarge.wire_code: SyncMessageTooLarge,
    PathNotFound.wire_code: PathNotFound,
    NotAContainer.wire_code: NotAContainer,
    WrongType.wire_code: WrongType,
    ValueTooLarge.wire_code: ValueTooLarge,
    DocTooLarge.wire_code: DocTooLarge,
    UnknownRevision.wire_code: UnknownRevision,
    ViewTooLarge.wire_code: ViewTooLarge,
    RoomClosed.wire_code: RoomClosed,
    PeerTooSlow.wire_code: PeerTooSlow,
}

_COMBINED: Dict[Tuple[str, bool], Type[HearthError]] = {}


def _combined(cls: Type[HearthError], family: Type[HearthError]) -> Type[HearthError]:
    key = (cls.__name__, family is Refused)
    found = _COMBINED.get(key)
    if found is None:
        found = type(cls.__name__, (cls, family), {"__doc__": cls.__doc__})
        found.__module__ = __name__
        _COMBINED[key] = found
    return found


def error_for_code(
    code: str, message: str, *, handshake: bool, daemon: Optional[Dict[str, object]] = None
) -> HearthError:
    """The exception for a wire error: the code's own class, within the family of where it was sent."""
    family: Type[HearthError] = Refused if handshake else RequestError
    cls = ERROR_CLASSES.get(code, family)
    if not issubclass(cls, family):
        cls = _combined(cls, family)
    error = cls(code, message)
    if isinstance(error, Refused):
        error.daemon = daemon
    return error
