"""The blocking client: one object, one connection per channel it uses."""

from __future__ import annotations

from types import TracebackType
from typing import Iterable, Mapping, Optional, Type, Union

from ._channel import DEFAULT, ConnectSettings, TimeoutArg
from ._transport import DEFAULT_TIMEOUT
from .blob import BlobClient
from .events import EventStream
from .paths import PathLike, Paths
from .pool import PoolClient
from .protocol import DEFAULT_CLIENT_NAME
from .queue import QueueClient
from .status import ShutdownAnswer, StatusClient, StatusReport
from .sync import SyncDoc

__all__ = ["Client"]


class Client:
    """hearth, blocking.

    >>> with Client() as client:                     # doctest: +SKIP
    ...     client.ping()
    ...     job = client.queue.submit(["make", "test"]).job
    ...     final = client.queue.wait_done(job["id"])
    ...     with client.events(kinds=["job_state"]) as events:
    ...         for event in events:
    ...             print(event)

    ``socket`` and ``state_dir`` resolve as :meth:`Paths.resolve` does
    (``HEARTH_SOCKET``, ``HEARTH_STATE_DIR``, the platform default). Each
    channel (:attr:`status_channel`, :attr:`pool`, :attr:`queue`, :attr:`blob`)
    opens its own connection on first use; :meth:`events` streams what the
    daemon does on a ``status`` connection of its own. ``timeout`` is the default
    deadline of a connect and of each request, in seconds (``None``: none).

    A client is not thread-safe: give each thread its own.
    """

    def __init__(
        self,
        socket: Optional[PathLike] = None,
        *,
        state_dir: Optional[PathLike] = None,
        client_name: Optional[str] = DEFAULT_CLIENT_NAME,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        handshake: Optional[Mapping[str, object]] = None,
    ) -> None:
        self.paths = Paths.resolve(state_dir, socket)
        settings = ConnectSettings(self.paths, client_name, timeout, handshake)
        self._settings = settings
        #: The ``status`` channel (``ping``, ``status`` and ``shutdown`` are also methods of the client).
        self.status_channel = StatusClient(settings)
        #: The ``pool`` channel: prewarmed resources.
        self.pool = PoolClient(settings)
        #: The ``queue`` channel: durable jobs.
        self.queue = QueueClient(settings)
        #: The ``blob`` channel: the content-addressed store.
        self.blob = BlobClient(settings)

    def ping(self, timeout: TimeoutArg = DEFAULT) -> None:
        """The cheapest round trip."""
        self.status_channel.ping(timeout)

    def status(self, timeout: TimeoutArg = DEFAULT) -> StatusReport:
        """The daemon's health, identity, limits and per-service summaries."""
        return self.status_channel.status(timeout)

    def shutdown(
        self, reason: Optional[str] = None, drain: bool = False, timeout: TimeoutArg = DEFAULT
    ) -> ShutdownAnswer:
        """Asks the daemon to stop (see :meth:`StatusClient.shutdown`)."""
        return self.status_channel.shutdown(reason, drain, timeout)

    def events(
        self,
        *,
        services: Optional[Iterable[str]] = None,
        kinds: Optional[Iterable[str]] = None,
        ids: Optional[Iterable[Union[str, int]]] = None,
        since: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> EventStream:
        """Subscribes to the daemon's events (see :meth:`StatusClient.events`)."""
        return self.status_channel.events(services=services, kinds=kinds, ids=ids, since=since, timeout=timeout)

    def sync(self, doc: Optional[str]) -> SyncDoc:
        """Joins ``doc``'s room of the ``sync`` channel in view mode, on a connection of its own
        (``None``: a control connection); close it (or use ``with``) when done. See :class:`SyncDoc`."""
        s = self._settings
        return SyncDoc.open(doc, s.paths.socket, client_name=s.client_name, timeout=s.timeout)

    def close(self) -> None:
        """Closes every connection."""
        for channel in (self.status_channel, self.pool, self.queue, self.blob):
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()
