"""The ``status`` channel: ``ping``, ``status``, ``shutdown``, ``subscribe`` (proto-docs/status.md).

The event types and streams are in :mod:`.events`.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, TypedDict, Union, cast

from ._channel import DEFAULT, AsyncChannel, ConnectSettings, SyncChannel, TimeoutArg
from ._transport import AsyncConnection, Connection
from .errors import RequestError
from .events import AsyncEventStream, EventStream, read_subscribed, subscribe_request
from .protocol import Json, drop_none, encode_json, expect_type

__all__ = ["StatusReport", "Health", "HealthReason", "ShutdownAnswer", "StatusClient", "AsyncStatusClient"]


class HealthReason(TypedDict):
    """One thing that is not right: ``code``, ``severity`` (``degraded``/``unhealthy``), ``message``."""

    code: str
    severity: str
    message: str


class Health(TypedDict):
    """``state`` is ``healthy``, ``degraded`` or ``unhealthy``: the worst of ``reasons``."""

    state: str
    reasons: List[HealthReason]


class StatusReport(TypedDict, total=False):
    """The daemon's status (unknown fields from newer daemons are kept)."""

    type: str
    pid: int
    version: str
    protocol: int
    uptime_ms: int
    started_at: str
    socket: str
    state_dir: str
    connections: Dict[str, int]
    channels: List[str]
    health: Health
    limits: Dict[str, int]
    services: Dict[str, Any]


class ShutdownAnswer(TypedDict, total=False):
    """The answer to ``shutdown``: the stop has begun (not ended)."""

    type: str
    grace_ms: int
    drain_ms: int


# -- sans-IO: requests and the reading of their answers ----------------------

PING: Json = {"type": "ping"}
STATUS: Json = {"type": "status"}
# Constant requests are encoded once.
PING_FRAME = encode_json(PING)
STATUS_FRAME = encode_json(STATUS)


def shutdown_request(reason: Optional[str], drain: bool) -> Json:
    return drop_none({"type": "shutdown", "reason": reason, "drain": True if drain else None})


def read_pong(response: Json) -> None:
    expect_type(response, "pong")


def read_status(response: Json) -> StatusReport:
    return cast(StatusReport, expect_type(response, "status"))


def read_shutdown(response: Json) -> ShutdownAnswer:
    return cast(ShutdownAnswer, expect_type(response, "shutting_down"))


def _subscribe_timeout(control: Optional[float], deadline: Optional[float]) -> Optional[float]:
    """The subscribe round trip's deadline: the client's, or the stream's if nearer."""
    if deadline is None:
        return control
    remaining = max(deadline - time.monotonic(), 1e-6)
    return remaining if control is None else min(control, remaining)


# -- the clients ----------------------------------------------------------


class StatusClient(SyncChannel):
    """The ``status`` channel, blocking."""

    CHANNEL = "status"

    def __init__(self, settings: ConnectSettings, handshake: Optional[Mapping[str, object]] = None) -> None:
        super().__init__(settings, handshake)
        self._streams: "weakref.WeakSet[EventStream]" = weakref.WeakSet()

    def events(
        self,
        *,
        services: Optional[Iterable[str]] = None,
        kinds: Optional[Iterable[str]] = None,
        ids: Optional[Iterable[Union[str, int]]] = None,
        since: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> EventStream:
        """Subscribes to the daemon's events; returns once subscribed (nothing published after is missed).

        Each filter given (channel names, kinds of :data:`~hearth_client.events.EVENT_KINDS`,
        subjects: job ids, pool names, blob hashes) must match. ``since``
        resumes after that sequence number (a stream's :attr:`~EventStream.seq`):
        the events the daemon still keeps come first, older ones as one
        :class:`~hearth_client.events.Lagged`. ``timeout`` bounds the whole
        stream (default: none). An unknown kind is refused with
        :class:`~hearth_client.InvalidRequest`.

        The stream takes this client's connection until it is closed; the
        client's own calls meanwhile open another.
        """
        request = subscribe_request(services, kinds, ids, since)
        deadline = None if timeout is None else time.monotonic() + timeout
        control = self._settings.timeout
        conn = self.connection()
        self._conn = None
        try:
            seq = read_subscribed(conn.request(request, _subscribe_timeout(control, deadline)))
        except RequestError:
            self._give_back(conn)
            raise
        except BaseException:
            conn.close()
            raise
        stream = EventStream(conn, seq, deadline, control, self._give_back)
        self._streams.add(stream)
        return stream

    def _give_back(self, conn: Connection) -> None:
        """Takes back a connection a stream is done with (or closes it, holding another already)."""
        if self._conn is None or self._conn.closed:
            self._conn = conn
        else:
            conn.close()

    def close(self) -> None:
        """Closes the connection and those of its event streams."""
        for stream in list(self._streams):
            stream._abandon()
        super().close()

    def ping(self, timeout: TimeoutArg = DEFAULT) -> None:
        """The cheapest round trip: proves the daemon answers."""
        read_pong(self.connection().request_frame(PING_FRAME, self._settings.resolve(timeout)))

    def status(self, timeout: TimeoutArg = DEFAULT) -> StatusReport:
        """Health, identity, connections, limits and per-service summaries."""
        return read_status(self.connection().request_frame(STATUS_FRAME, self._settings.resolve(timeout)))

    def shutdown(
        self, reason: Optional[str] = None, drain: bool = False, timeout: TimeoutArg = DEFAULT
    ) -> ShutdownAnswer:
        """Asks the daemon to stop gracefully (with ``drain``: after its running work); it still runs on return."""
        return read_shutdown(self._request(shutdown_request(reason, drain), timeout))


class AsyncStatusClient(AsyncChannel):
    """The ``status`` channel, asyncio."""

    CHANNEL = "status"

    def __init__(self, settings: ConnectSettings, handshake: Optional[Mapping[str, object]] = None) -> None:
        super().__init__(settings, handshake)
        self._streams: "weakref.WeakSet[AsyncEventStream]" = weakref.WeakSet()

    def events(
        self,
        *,
        services: Optional[Iterable[str]] = None,
        kinds: Optional[Iterable[str]] = None,
        ids: Optional[Iterable[Union[str, int]]] = None,
        since: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> AsyncEventStream:
        """The daemon's events (see :meth:`StatusClient.events`): ``await`` it or ``async with`` it to subscribe.

        ``async for`` alone subscribes when iteration starts.
        """
        request = subscribe_request(services, kinds, ids, since)
        control = self._settings.timeout

        async def start(deadline: Optional[float]) -> Tuple[AsyncConnection, int]:
            conn = await self.connection()
            self._conn = None
            try:
                seq = read_subscribed(await conn.request(request, _subscribe_timeout(control, deadline)))
            except RequestError:
                self._give_back(conn)
                raise
            except BaseException:
                conn.close()
                raise
            return conn, seq

        stream = AsyncEventStream(start, timeout, control, self._give_back)
        self._streams.add(stream)
        return stream

    def _give_back(self, conn: AsyncConnection) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = conn
        else:
            conn.close()

    def close(self) -> None:
        """Closes the connection and those of its event streams."""
        for stream in list(self._streams):
            stream._abandon()
        super().close()

    async def ping(self, timeout: TimeoutArg = DEFAULT) -> None:
        """The cheapest round trip: proves the daemon answers."""
        conn = await self.connection()
        read_pong(await conn.request_frame(PING_FRAME, self._settings.resolve(timeout)))

    async def status(self, timeout: TimeoutArg = DEFAULT) -> StatusReport:
        """Health, identity, connections, limits and per-service summaries."""
        conn = await self.connection()
        return read_status(await conn.request_frame(STATUS_FRAME, self._settings.resolve(timeout)))

    async def shutdown(
        self, reason: Optional[str] = None, drain: bool = False, timeout: TimeoutArg = DEFAULT
    ) -> ShutdownAnswer:
        """Asks the daemon to stop gracefully. It is still running on return."""
        return read_shutdown(await self._request(shutdown_request(reason, drain), timeout))
