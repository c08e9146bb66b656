"""hearth from asyncio.

>>> from hearth_client import aio
>>> async def main() -> None:                        # doctest: +SKIP
...     await aio.ensure_daemon_running()
...     async with aio.Client() as client:
...         await client.ping()
...         async with client.pool.take("venv") as env:
...             print(env.path)
...         async for job in client.queue.wait(7):
...             print(job["state"])
...         async with client.events(kinds=["job_state"]) as events:
...             async for event in events:
...                 print(event)

A call cancelled (or timed out) part-way closes its connection rather than
leave half a frame on it; the next call opens a new one.
"""

from __future__ import annotations

from types import TracebackType
from typing import Iterable, Mapping, Optional, Type, Union

from .._channel import DEFAULT, ConnectSettings, TimeoutArg
from .._transport import DEFAULT_TIMEOUT, AsyncConnection
from ..blob import AsyncBlobClient
from ..ensure import async_ensure_daemon_running as ensure_daemon_running
from ..events import AsyncEventStream
from ..paths import PathLike, Paths
from ..pool import AsyncLease, AsyncPoolClient
from ..protocol import DEFAULT_CLIENT_NAME
from ..queue import AsyncLogStream, AsyncQueueClient
from ..status import AsyncStatusClient, ShutdownAnswer, StatusReport
from ..sync import AsyncSyncDoc, AsyncWatch

__all__ = [
    "Client",
    "ensure_daemon_running",
    "AsyncConnection",
    "AsyncStatusClient",
    "AsyncPoolClient",
    "AsyncQueueClient",
    "AsyncBlobClient",
    "AsyncLease",
    "AsyncLogStream",
    "AsyncEventStream",
    "AsyncSyncDoc",
    "AsyncWatch",
]


class Client:
    """hearth, asyncio: the same shape as :class:`hearth_client.Client`, with coroutines.

    Each channel opens its own connection on first use. Use one client per
    task that makes calls concurrently.
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
        self.status_channel = AsyncStatusClient(settings)
        self.pool = AsyncPoolClient(settings)
        self.queue = AsyncQueueClient(settings)
        self.blob = AsyncBlobClient(settings)

    async def ping(self, timeout: TimeoutArg = DEFAULT) -> None:
        """The cheapest round trip."""
        await self.status_channel.ping(timeout)

    async def status(self, timeout: TimeoutArg = DEFAULT) -> StatusReport:
        """The daemon's health, identity, limits and per-service summaries."""
        return await self.status_channel.status(timeout)

    async def shutdown(
        self, reason: Optional[str] = None, drain: bool = False, timeout: TimeoutArg = DEFAULT
    ) -> ShutdownAnswer:
        """Asks the daemon to stop."""
        return await self.status_channel.shutdown(reason, drain, timeout)

    def events(
        self,
        *,
        services: Optional[Iterable[str]] = None,
        kinds: Optional[Iterable[str]] = None,
        ids: Optional[Iterable[Union[str, int]]] = None,
        since: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> AsyncEventStream:
        """The daemon's events (see :meth:`AsyncStatusClient.events`): ``async with client.events() as events``."""
        return self.status_channel.events(services=services, kinds=kinds, ids=ids, since=since, timeout=timeout)

    async def sync(self, doc: Optional[str]) -> AsyncSyncDoc:
        """Joins ``doc``'s room of the ``sync`` channel in view mode, on a connection of its own."""
        s = self._settings
        return await AsyncSyncDoc.open(doc, s.paths.socket, client_name=s.client_name, timeout=s.timeout)

    def close(self) -> None:
        """Closes every connection."""
        for channel in (self.status_channel, self.pool, self.queue, self.blob):
            channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()
