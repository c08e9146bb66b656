"""What every channel client shares: one lazily opened connection, reopened after a failure.

A channel client owns one connection to its channel. It is opened on the
first call and, when a call fails in a way that closed it (a timeout, a
cancellation, the daemon going away), opened again by the next call. Give
each thread (or asyncio task that runs calls concurrently) its own client.
"""

from __future__ import annotations

from typing import ClassVar, Mapping, Optional, Union

from ._transport import DEFAULT_TIMEOUT, AsyncConnection, Connection
from .paths import Paths
from .protocol import DEFAULT_CLIENT_NAME, Json

__all__ = ["DEFAULT", "TimeoutArg", "ConnectSettings", "SyncChannel", "AsyncChannel"]


class _Default:
    """The client's default deadline (see ``Client(timeout=...)``)."""

    _instance: ClassVar[Optional["_Default"]] = None

    def __repr__(self) -> str:
        return "DEFAULT"


#: Pass as ``timeout`` to use the client's default deadline.
DEFAULT = _Default()

#: A deadline in seconds, ``None`` for none, or :data:`DEFAULT`.
TimeoutArg = Union[float, None, _Default]


class ConnectSettings:
    """Where and how a client connects."""

    __slots__ = ("paths", "client_name", "timeout", "handshake")

    def __init__(
        self,
        paths: Paths,
        client_name: Optional[str] = DEFAULT_CLIENT_NAME,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        handshake: Optional[Mapping[str, object]] = None,
    ) -> None:
        self.paths = paths
        self.client_name = client_name
        #: The default deadline of a connect plus handshake, and of each request.
        self.timeout = timeout
        #: Extra handshake fields (a channel may take more, e.g. ``sync``'s ``doc``).
        self.handshake = handshake

    def resolve(self, timeout: TimeoutArg) -> Optional[float]:
        return self.timeout if isinstance(timeout, _Default) else timeout


def _merged(
    common: Optional[Mapping[str, object]], own: Optional[Mapping[str, object]]
) -> Optional[Mapping[str, object]]:
    if not own:
        return common
    return {**(common or {}), **own}


class SyncChannel:
    """The blocking base of a channel client.

    ``handshake`` adds fields to this channel's handshake only (``sync``
    names its document there: ``{"doc": "settings"}``).
    """

    CHANNEL: ClassVar[str]

    def __init__(self, settings: ConnectSettings, handshake: Optional[Mapping[str, object]] = None) -> None:
        self._settings = settings
        self._handshake = _merged(settings.handshake, handshake)
        self._conn: Optional[Connection] = None

    def connection(self) -> Connection:
        """This channel's connection, opened (again) when needed."""
        conn = self._conn
        if conn is None or conn.closed:
            s = self._settings
            conn = Connection.open(
                s.paths.socket, self.CHANNEL, client_name=s.client_name, handshake=self._handshake, timeout=s.timeout
            )
            self._conn = conn
        return conn

    def close(self) -> None:
        """Closes the connection (the next call opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, request: Json, timeout: TimeoutArg = DEFAULT) -> Json:
        return self.connection().request(request, self._settings.resolve(timeout))


class AsyncChannel:
    """The asyncio base of a channel client (see :class:`SyncChannel` for ``handshake``)."""

    CHANNEL: ClassVar[str]

    def __init__(self, settings: ConnectSettings, handshake: Optional[Mapping[str, object]] = None) -> None:
        self._settings = settings
        self._handshake = _merged(settings.handshake, handshake)
        self._conn: Optional[AsyncConnection] = None

    async def connection(self) -> AsyncConnection:
        """This channel's connection, opened (again) when needed."""
        conn = self._conn
        if conn is None or conn.closed:
            s = self._settings
            conn = await AsyncConnection.open(
                s.paths.socket, self.CHANNEL, client_name=s.client_name, handshake=self._handshake, timeout=s.timeout
            )
            self._conn = conn
        return conn

    def close(self) -> None:
        """Closes the connection (the next call opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _request(self, request: Json, timeout: TimeoutArg = DEFAULT) -> Json:
        conn = await self.connection()
        return await conn.request(request, self._settings.resolve(timeout))
