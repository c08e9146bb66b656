"""Events: what the daemon's services do, as it happens (proto-docs/status.md, "subscribe").

>>> with hearth_client.Client() as client:                          # doctest: +SKIP
...     with client.events(kinds=["job_state"]) as events:
...         for notice in events:
...             if isinstance(notice, JobStateEvent):
...                 print(notice.id, notice.from_state, "->", notice.to_state)

A subscription is a stream on a ``status`` connection of its own: the
status client hands its connection to the stream (and opens another for
its own calls meanwhile), and takes it back when the stream is closed with
``unsubscribe``. Each event is a frozen dataclass, one class per kind,
with the wire's fields (``from`` and ``to`` are ``from_state`` and
``to_state``); an event of a kind this version does not know (from a newer
daemon) is an :class:`UnknownEvent` holding the whole frame, and fields it
does not know are ignored. A subscriber that fell behind the daemon's
buffer gets one :class:`Lagged` with how many events it missed.

This module holds the event types and the reading of a subscription's
frames (no I/O); :class:`EventStream` and :class:`AsyncEventStream` drive
them over a connection.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    Generator,
    Iterable,
    List,
    Literal,
    Optional,
    Tuple,
    Type,
    Union,
)

from .errors import HearthError, ProtocolError
from .protocol import Json, encode_json, expect_type

if TYPE_CHECKING:
    from ._transport import AsyncConnection, Connection

__all__ = [
    "EVENT_KINDS",
    "Event",
    "JobStateEvent",
    "PoolBuildStartedEvent",
    "PoolBuildEndedEvent",
    "PoolTakeEvent",
    "PoolReleaseEvent",
    "BlobPutEvent",
    "BlobDeleteEvent",
    "BlobGcEvent",
    "HealthChangedEvent",
    "SyncRoomOpenedEvent",
    "SyncRoomClosedEvent",
    "SyncPeerJoinedEvent",
    "SyncPeerLeftEvent",
    "SyncCompactedEvent",
    "SyncSettingsEditEvent",
    "UnknownEvent",
    "Lagged",
    "Notice",
    "EventStream",
    "AsyncEventStream",
]

#: The kinds of events this version knows, for the ``kinds`` filter.
EVENT_KINDS = (
    "job_state",
    "pool_build_started",
    "pool_build_ended",
    "pool_take",
    "pool_release",
    "blob_put",
    "blob_delete",
    "blob_gc",
    "health_changed",
    "sync_room_opened",
    "sync_room_closed",
    "sync_peer_joined",
    "sync_peer_left",
    "sync_compacted",
    "sync_settings_edit",
)


@dataclass(frozen=True)
class Event:
    """What every event has: its sequence number, when, which service, and its ``kind``.

    ``seq`` grows by one per event the daemon publishes: a gap in a filtered
    stream only means the events between did not pass the filter.
    """

    seq: int
    #: When it happened, in milliseconds since the Unix epoch.
    at_ms: int
    #: The service it comes from (a channel name: ``queue``, ``pool``, ``blob``, ``status``).
    service: str
    kind: str = field(init=False, default="")


@dataclass(frozen=True)
class JobStateEvent(Event):
    """A job changed state; ``from_state`` is ``None`` when it was just submitted, ``to_state`` when purged."""

    id: int
    queue: str
    from_state: Optional[str]
    to_state: Optional[str]
    kind: Literal["job_state"] = field(init=False, default="job_state", repr=False)


@dataclass(frozen=True)
class PoolBuildStartedEvent(Event):
    """A pool began building (or resetting) a resource."""

    pool: str
    resource: str
    kind: Literal["pool_build_started"] = field(init=False, default="pool_build_started", repr=False)


@dataclass(frozen=True)
class PoolBuildEndedEvent(Event):
    """A build (or reset) ended: ``ok`` when the resource is ready, after ``ms`` milliseconds."""

    pool: str
    resource: str
    ok: bool
    ms: int
    kind: Literal["pool_build_ended"] = field(init=False, default="pool_build_ended", repr=False)


@dataclass(frozen=True)
class PoolTakeEvent(Event):
    """A resource was taken; ``warm`` when it was ready at once."""

    pool: str
    lease: str
    warm: bool
    kind: Literal["pool_take"] = field(init=False, default="pool_take", repr=False)


@dataclass(frozen=True)
class PoolReleaseEvent(Event):
    """A lease was released."""

    pool: str
    lease: str
    kind: Literal["pool_release"] = field(init=False, default="pool_release", repr=False)


@dataclass(frozen=True)
class BlobPutEvent(Event):
    """A blob was stored (``existed``: a put found it stored already)."""

    hash: str
    size: int
    existed: bool
    kind: Literal["blob_put"] = field(init=False, default="blob_put", repr=False)


@dataclass(frozen=True)
class BlobDeleteEvent(Event):
    """A blob was deleted."""

    hash: str
    size: int
    kind: Literal["blob_delete"] = field(init=False, default="blob_delete", repr=False)


@dataclass(frozen=True)
class BlobGcEvent(Event):
    """A collection removed ``removed`` blobs holding ``bytes`` bytes."""

    removed: int
    bytes: int
    kind: Literal["blob_gc"] = field(init=False, default="blob_gc", repr=False)


@dataclass(frozen=True)
class HealthChangedEvent(Event):
    """The daemon's health changed state (``healthy``, ``degraded``, ``unhealthy``); ``codes`` are its reasons now."""

    from_state: str
    to_state: str
    codes: Tuple[str, ...]
    kind: Literal["health_changed"] = field(init=False, default="health_changed", repr=False)


@dataclass(frozen=True)
class SyncRoomOpenedEvent(Event):
    """A sync document was loaded into a room; ``created`` when it did not exist before."""

    doc: str
    created: bool
    kind: Literal["sync_room_opened"] = field(init=False, default="sync_room_opened", repr=False)


@dataclass(frozen=True)
class SyncRoomClosedEvent(Event):
    """A sync room unloaded, ``why``: ``idle``, ``evicted``, ``store_failed`` or ``shutdown``; ``peers`` were in it."""

    doc: str
    why: str
    peers: int
    kind: Literal["sync_room_closed"] = field(init=False, default="sync_room_closed", repr=False)


@dataclass(frozen=True)
class SyncPeerJoinedEvent(Event):
    """A peer joined a sync room."""

    doc: str
    peer: int
    client: Optional[str]
    pid: Optional[int]
    mode: str
    kind: Literal["sync_peer_joined"] = field(init=False, default="sync_peer_joined", repr=False)


@dataclass(frozen=True)
class SyncPeerLeftEvent(Event):
    """A peer left a sync room."""

    doc: str
    peer: int
    kind: Literal["sync_peer_left"] = field(init=False, default="sync_peer_left", repr=False)


@dataclass(frozen=True)
class SyncCompactedEvent(Event):
    """A sync document's file was compacted to ``bytes`` bytes."""

    doc: str
    bytes: int
    kind: Literal["sync_compacted"] = field(init=False, default="sync_compacted", repr=False)


@dataclass(frozen=True)
class SyncSettingsEditEvent(Event):
    """A person's edit of settings.json was merged (``applied``) or refused (``reason`` says why)."""

    applied: bool
    reason: Optional[str]
    kind: Literal["sync_settings_edit"] = field(init=False, default="sync_settings_edit", repr=False)


@dataclass(frozen=True)
class UnknownEvent(Event):
    """An event of a kind this version does not know (a newer daemon's): ``kind`` and the whole frame."""

    kind: str = ""
    fields: Json = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Lagged:
    """The subscriber fell behind the daemon's buffer: ``missed`` events were dropped for it.

    The next event's ``seq`` shows the gap. A subscription that resumes
    (``since``) is told the same way of events the daemon no longer keeps.
    """

    missed: int


#: What a subscription delivers: an event, or word of events missed.
Notice = Union[Event, Lagged]


# -- sans-IO: the requests, and the reading of a subscription's frames --------

UNSUBSCRIBE_FRAME = encode_json({"type": "unsubscribe"})


def _names(value: Optional[Iterable[Any]], what: str) -> Optional[List[str]]:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} is a list of names, not one string")
    return [str(v) for v in value]


def subscribe_request(
    services: Optional[Iterable[str]],
    kinds: Optional[Iterable[str]],
    ids: Optional[Iterable[Union[str, int]]],
    since: Optional[int],
) -> Json:
    """``subscribe``: each list that is given and not empty must match; ``ids`` take job ids as ints too."""
    request: Json = {"type": "subscribe"}
    for name, value in (
        ("services", _names(services, "services")),
        ("kinds", _names(kinds, "kinds")),
        ("ids", _names(ids, "ids")),
    ):
        if value:
            request[name] = value
    if since is not None:
        request["since"] = since
    return request


def read_subscribed(response: Json) -> int:
    """The sequence number of the last event published before the subscription."""
    return _int(expect_type(response, "subscribed"), "seq")


def _bad(frame: Json, why: str) -> ProtocolError:
    return ProtocolError("protocol_error", f"an event {why}: {frame!r:.300}")


def _int(frame: Json, name: str) -> int:
    value = frame.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(frame, f"without an integer `{name}`")
    return value


def _str(frame: Json, name: str) -> str:
    value = frame.get(name)
    if not isinstance(value, str):
        raise _bad(frame, f"without a string `{name}`")
    return value


def _opt_str(frame: Json, name: str) -> Optional[str]:
    value = frame.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(frame, f"with a `{name}` that is neither a string nor null")
    return value


def _opt_int(frame: Json, name: str) -> Optional[int]:
    value = frame.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(frame, f"with a `{name}` that is neither an integer nor null")
    return value


def _bool(frame: Json, name: str) -> bool:
    value = frame.get(name)
    if not isinstance(value, bool):
        raise _bad(frame, f"without a boolean `{name}`")
    return value


def _str_tuple(frame: Json, name: str) -> Tuple[str, ...]:
    value = frame.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(frame, f"without a list of strings `{name}`")
    return tuple(value)


_Head = Tuple[int, int, str]

# One reader per known kind: the frame and its common fields in, the event out.
_KINDS: Dict[str, Callable[[Json, _Head], Event]] = {
    "job_state": lambda f, h: JobStateEvent(
        *h, _int(f, "id"), _str(f, "queue"), _opt_str(f, "from"), _opt_str(f, "to")
    ),
    "pool_build_started": lambda f, h: PoolBuildStartedEvent(*h, _str(f, "pool"), _str(f, "resource")),
    "pool_build_ended": lambda f, h: PoolBuildEndedEvent(
        *h, _str(f, "pool"), _str(f, "resource"), _bool(f, "ok"), _int(f, "ms")
    ),
    "pool_take": lambda f, h: PoolTakeEvent(*h, _str(f, "pool"), _str(f, "lease"), _bool(f, "warm")),
    "pool_release": lambda f, h: PoolReleaseEvent(*h, _str(f, "pool"), _str(f, "lease")),
    "blob_put": lambda f, h: BlobPutEvent(*h, _str(f, "hash"), _int(f, "size"), _bool(f, "existed")),
    "blob_delete": lambda f, h: BlobDeleteEvent(*h, _str(f, "hash"), _int(f, "size")),
    "blob_gc": lambda f, h: BlobGcEvent(*h, _int(f, "removed"), _int(f, "bytes")),
    "health_changed": lambda f, h: HealthChangedEvent(*h, _str(f, "from"), _str(f, "to"), _str_tuple(f, "codes")),
    "sync_room_opened": lambda f, h: SyncRoomOpenedEvent(*h, _str(f, "doc"), _bool(f, "created")),
    "sync_room_closed": lambda f, h: SyncRoomClosedEvent(*h, _str(f, "doc"), _str(f, "why"), _int(f, "peers")),
    "sync_peer_joined": lambda f, h: SyncPeerJoinedEvent(
        *h, _str(f, "doc"), _int(f, "peer"), _opt_str(f, "client"), _opt_int(f, "pid"), _str(f, "mode")
    ),
    "sync_peer_left": lambda f, h: SyncPeerLeftEvent(*h, _str(f, "doc"), _int(f, "peer")),
    "sync_compacted": lambda f, h: SyncCompactedEvent(*h, _str(f, "doc"), _int(f, "bytes")),
    "sync_settings_edit": lambda f, h: SyncSettingsEditEvent(*h, _bool(f, "applied"), _opt_str(f, "reason")),
}


def read_event(frame: Json) -> Event:
    """An ``event`` frame as its kind's class (:class:`UnknownEvent` for a kind this version does not know)."""
    head = (_int(frame, "seq"), _int(frame, "at_ms"), _str(frame, "service"))
    kind = _str(frame, "kind")
    reader = _KINDS.get(kind)
    if reader is None:
        return UnknownEvent(*head, kind=kind, fields=frame)
    return reader(frame, head)


class Subscription:
    """Reads a subscription's frames: ``event`` and ``lagged`` until ``unsubscribed``.

    Once :attr:`unsubscribing` is set (the ``unsubscribe`` request is on its
    way), events still arriving are skipped: the caller asked for no more.
    """

    __slots__ = ("seq", "unsubscribing", "ended")

    def __init__(self, seq: int) -> None:
        #: The last event's sequence number (at first, the last one published before the subscription).
        self.seq = seq
        self.unsubscribing = False
        self.ended = False

    def on_response(self, response: Json) -> Optional[Notice]:
        kind = response.get("type")
        if kind == "event":
            if self.unsubscribing:
                return None
            event = read_event(response)
            self.seq = event.seq
            return event
        if kind == "lagged":
            if self.unsubscribing:
                return None
            return Lagged(_int(response, "missed"))
        if kind == "unsubscribed" and self.unsubscribing:
            self.ended = True
            return None
        raise ProtocolError("protocol_error", f"expected event or lagged, got {response!r:.300}")


def _remaining(deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 1e-6)


# -- the streams --------------------------------------------------------------


class EventStream:
    """A subscription, blocking: an iterator of :data:`Notice` s; a context manager that unsubscribes.

    Made by :meth:`hearth_client.StatusClient.events`, subscribed already.
    :meth:`close` (or leaving the ``with`` block) unsubscribes and gives the
    connection back to the status client. Iteration waits as long as it
    takes, within the stream's ``timeout`` if one was given; it ends after
    :meth:`close`, and any failure (:class:`~hearth_client.ShuttingDown`
    when the daemon stops, a deadline, the connection lost) closes the
    stream's connection and is raised. :attr:`seq` is where to resume
    (``since=stream.seq``) on a new subscription.

    A stream dropped without :meth:`close` (a ``for`` loop over
    ``client.events()`` left early) closes its connection instead: the
    daemon ends the subscription at once.
    """

    def __init__(
        self,
        conn: "Connection",
        seq: int,
        deadline: Optional[float],
        control_timeout: Optional[float],
        give_back: Callable[["Connection"], None],
    ) -> None:
        self._conn: Optional[Connection] = conn
        self._sub = Subscription(seq)
        self._deadline = deadline
        self._control_timeout = control_timeout
        self._give_back = give_back

    @property
    def seq(self) -> int:
        """The last event's sequence number (at first, the last published before the subscription)."""
        return self._sub.seq

    @property
    def closed(self) -> bool:
        """True once the stream has ended (closed, or failed)."""
        return self._conn is None

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> Notice:
        conn = self._conn
        if conn is None:
            raise StopIteration
        try:
            while True:
                notice = self._sub.on_response(conn.recv(_remaining(self._deadline), "an event"))
                if notice is not None:
                    return notice
        except BaseException:
            self._abandon()
            raise

    def close(self) -> None:
        """Unsubscribes; the connection goes back to the status client (closed instead if that fails).

        Events already on their way are skipped. Never raises a
        :class:`~hearth_client.HearthError`: a stream that cannot end
        cleanly is cut off.
        """
        conn, self._conn = self._conn, None
        if conn is None or conn.closed:
            return
        deadline = None if self._control_timeout is None else time.monotonic() + self._control_timeout
        # Set first: whatever arrives from now on is skipped.
        self._sub.unsubscribing = True
        try:
            conn.send_bytes(UNSUBSCRIBE_FRAME, _remaining(deadline))
            while not self._sub.ended:
                self._sub.on_response(conn.recv(_remaining(deadline), "the end of the subscription"))
        except HearthError:
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)

    def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped while subscribed: no request can be made here, so cut it off.
        if getattr(self, "_conn", None) is not None:
            self._abandon()


class AsyncEventStream:
    """A subscription, asyncio: an async iterator of :data:`Notice` s and an async context manager.

    Made by :meth:`hearth_client.aio.AsyncStatusClient.events`. ``await``
    it, or enter it with ``async with``, to subscribe before anything else
    happens (nothing published after that is missed); ``async for`` alone
    subscribes when iteration starts. :meth:`aclose` (or leaving the
    ``async with`` block) unsubscribes and gives the connection back; it
    may be called from another task than the one iterating, whose loop then
    ends. Cancelling the iterating task closes the connection (the daemon
    ends the subscription at once), as does dropping a stream left open.
    """

    def __init__(
        self,
        start: Callable[[Optional[float]], Awaitable[Tuple["AsyncConnection", int]]],
        timeout: Optional[float],
        control_timeout: Optional[float],
        give_back: Callable[["AsyncConnection"], None],
    ) -> None:
        self._start_with = start
        self._timeout = timeout
        self._deadline: Optional[float] = None
        self._control_timeout = control_timeout
        self._give_back = give_back
        self._conn: Optional[AsyncConnection] = None
        self._sub: Optional[Subscription] = None
        self._started = False
        self._reading = False
        self._closing = False
        self._ended: Optional[asyncio.Event] = None

    @property
    def seq(self) -> Optional[int]:
        """The last event's sequence number (at first, the last before the subscription); ``None`` until subscribed."""
        return None if self._sub is None else self._sub.seq

    @property
    def closed(self) -> bool:
        """True once the stream has ended (closed, or failed)."""
        return self._started and self._conn is None

    async def _start(self) -> "AsyncEventStream":
        if self._started:
            return self
        self._started = True
        self._ended = asyncio.Event()
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout
        conn, seq = await self._start_with(self._deadline)
        self._conn = conn
        self._sub = Subscription(seq)
        return self

    def __await__(self) -> Generator[Any, None, "AsyncEventStream"]:
        return self._start().__await__()

    async def __aenter__(self) -> "AsyncEventStream":
        return await self._start()

    async def __aexit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> "AsyncEventStream":
        return self

    async def __anext__(self) -> Notice:
        if not self._started:
            await self._start()
        conn, sub, ended = self._conn, self._sub, self._ended
        if conn is None or sub is None or ended is None:
            raise StopAsyncIteration
        if self._reading:
            raise RuntimeError("another task is already reading this event stream")
        if self._closing:
            # aclose() is reading up to the end itself.
            await ended.wait()
            raise StopAsyncIteration
        self._reading = True
        try:
            while not sub.ended:
                notice = sub.on_response(await conn.recv(_remaining(self._deadline), "an event"))
                if notice is not None:
                    return notice
        except BaseException:
            self._abandon()
            raise
        finally:
            self._reading = False
        # aclose() from another task: this loop read up to `unsubscribed`.
        self._finish(conn)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Unsubscribes; the connection goes back to the status client (closed instead if that fails).

        Never raises a :class:`~hearth_client.HearthError`.
        """
        conn, sub, ended = self._conn, self._sub, self._ended
        self._started = True
        if conn is None or sub is None or ended is None:
            return
        if self._closing:
            await ended.wait()
            return
        self._closing = True
        timeout = self._control_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        # Set before sending: the iterating task may read `unsubscribed` first.
        sub.unsubscribing = True
        try:
            await conn.send_bytes(UNSUBSCRIBE_FRAME, _remaining(deadline))
            if self._reading:
                # The iterating task reads up to `unsubscribed` and ends its loop.
                await asyncio.wait_for(ended.wait(), _remaining(deadline))
                return
            while not sub.ended:
                sub.on_response(await conn.recv(_remaining(deadline), "the end of the subscription"))
        except (HearthError, asyncio.TimeoutError):
            self._abandon()
            return
        except BaseException:
            self._abandon()
            raise
        self._finish(conn)

    def _finish(self, conn: "AsyncConnection") -> None:
        self._conn = None
        if self._ended is not None:
            self._ended.set()
        self._give_back(conn)

    def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._ended is not None:
            self._ended.set()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
