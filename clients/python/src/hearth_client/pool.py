"""The ``pool`` channel: prewarmed resources handed out with leases (proto-docs/pool.md).

``take`` returns a :class:`Lease`, a context manager that releases the
resource when the block ends::

    with client.pool.take("venv") as env:
        subprocess.run([f"{env.path}/bin/python", "-c", "print(1)"])

and in :mod:`hearth_client.aio`::

    async with client.pool.take("venv") as env:
        ...
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Dict, Generator, List, Mapping, NamedTuple, Optional, Type, TypedDict, cast

from ._channel import DEFAULT, AsyncChannel, SyncChannel, TimeoutArg
from .protocol import Json, as_list, drop_none, expect_type

__all__ = [
    "LeaseInfo",
    "PoolStatus",
    "PoolsReport",
    "Released",
    "Defined",
    "Lease",
    "AsyncLease",
    "PoolClient",
    "AsyncPoolClient",
]

# The daemon waits this long for an on-demand build when a take names no timeout_ms.
_DAEMON_TAKE_TIMEOUT_MS = 600_000


class LeaseInfo(TypedDict, total=False):
    """A resource handed out: its lease, directory and history."""

    lease: str
    pool: str
    resource: str
    path: str
    warm: bool
    created_at: str
    taken_at: str
    age_ms: int
    build_ms: int
    wait_ms: int
    holder: str
    holder_pid: int


class PoolStatus(TypedDict, total=False):
    """One pool's definition in force, state and counters."""

    name: str
    source: str
    definition: Dict[str, Any]
    commands: Dict[str, Any]
    target: int
    ready: int
    building: int
    checking: int
    resetting: int
    taken: int
    waiting: int
    takes: int
    warm_takes: int
    warm_hit_rate: float
    builds: int
    mean_build_ms: int
    failures: int
    failures_total: int
    last_error: Dict[str, Any]
    backoff_ms: int
    retry_at: str
    expired: int
    check_failed: int


class PoolsReport(TypedDict, total=False):
    """Every pool, and the builds running across them."""

    type: str
    pools: List[PoolStatus]
    builds_running: int
    max_concurrent_builds: int


class Released(NamedTuple):
    """What ``release`` did: ``removed`` or ``resetting``; ``reason`` when reuse was refused."""

    outcome: str
    reason: Optional[str]


class Defined(NamedTuple):
    """What ``define`` did: the definition in force (``config`` wins over ``runtime``), and whether it changed."""

    source: str
    changed: bool


class TargetSet(NamedTuple):
    """What ``warm`` did."""

    target: int
    previous: int


# -- sans-IO ------------------------------------------------------------------


def take_request(pool: str, timeout_ms: Optional[int]) -> Json:
    return drop_none({"type": "take", "pool": pool, "timeout_ms": timeout_ms})


def take_deadline(timeout_ms: Optional[int], margin: Optional[float]) -> Optional[float]:
    """How long the client waits for a take: the daemon's own wait, plus the ordinary deadline."""
    if margin is None:
        return None
    wait_ms = _DAEMON_TAKE_TIMEOUT_MS if timeout_ms is None else timeout_ms
    return wait_ms / 1000.0 + margin


def release_request(lease: str, reuse: bool) -> Json:
    return drop_none({"type": "release", "lease": lease, "reuse": True if reuse else None})


def read_taken(response: Json) -> LeaseInfo:
    return cast(LeaseInfo, expect_type(response, "taken"))


def read_released(response: Json) -> Released:
    expect_type(response, "released")
    return Released(str(response["outcome"]), response.get("reason"))


def read_defined(response: Json) -> Defined:
    expect_type(response, "defined")
    return Defined(str(response["source"]), bool(response["changed"]))


def read_target(response: Json) -> TargetSet:
    expect_type(response, "target_set")
    return TargetSet(int(response["target"]), int(response["previous"]))


class _LeaseBase:
    __slots__ = ("info", "released")

    def __init__(self, info: LeaseInfo) -> None:
        #: Everything ``taken`` said.
        self.info = info
        #: What the release did, once released.
        self.released: Optional[Released] = None

    @property
    def lease(self) -> str:
        """The lease id (32 hex digits)."""
        return self.info["lease"]

    @property
    def path(self) -> str:
        """The resource's directory: the taker's until released."""
        return self.info["path"]

    @property
    def pool(self) -> str:
        return self.info["pool"]

    @property
    def warm(self) -> bool:
        """True when the resource was ready at once (not built on demand)."""
        return bool(self.info.get("warm"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pool={self.pool!r}, lease={self.lease!r}, path={self.path!r})"


class Lease(_LeaseBase):
    """A taken resource; a context manager that releases it on exit."""

    __slots__ = ("_client",)

    def __init__(self, info: LeaseInfo, client: "PoolClient") -> None:
        super().__init__(info)
        self._client = client

    def release(self, reuse: bool = False, timeout: TimeoutArg = DEFAULT) -> Released:
        """Gives the resource back (removed, or with ``reuse`` reset and returned to the pool when it can be)."""
        if self.released is None:
            self.released = self._client.release(self.lease, reuse, timeout)
        return self.released

    def __enter__(self) -> "Lease":
        return self

    def __exit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.release()


class AsyncLease(_LeaseBase):
    """A taken resource; an async context manager that releases it on exit."""

    __slots__ = ("_client",)

    def __init__(self, info: LeaseInfo, client: "AsyncPoolClient") -> None:
        super().__init__(info)
        self._client = client

    async def release(self, reuse: bool = False, timeout: TimeoutArg = DEFAULT) -> Released:
        """Gives the resource back."""
        if self.released is None:
            self.released = await self._client.release(self.lease, reuse, timeout)
        return self.released

    async def __aenter__(self) -> "AsyncLease":
        return self

    async def __aexit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.release()


class PoolClient(SyncChannel):
    """The ``pool`` channel, blocking."""

    CHANNEL = "pool"

    def status(self, pool: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> PoolsReport:
        """Every pool's state and counters (or one pool's)."""
        response = self._request(drop_none({"type": "status", "pool": pool}), timeout)
        return cast(PoolsReport, expect_type(response, "status"))

    def take(self, pool: str, timeout_ms: Optional[int] = None, timeout: TimeoutArg = DEFAULT) -> Lease:
        """Takes a resource: a ready one at once, else one built on demand within ``timeout_ms``
        (the daemon's default is 10 minutes; ``0`` takes only a ready one)."""
        deadline = take_deadline(timeout_ms, self._settings.resolve(timeout))
        info = read_taken(self.connection().request(take_request(pool, timeout_ms), deadline))
        return Lease(info, self)

    def release(self, lease: str, reuse: bool = False, timeout: TimeoutArg = DEFAULT) -> Released:
        """Gives a resource back by its lease id."""
        return read_released(self._request(release_request(lease, reuse), timeout))

    def leases(self, pool: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> List[LeaseInfo]:
        """The resources handed out and not released, oldest take first."""
        response = self._request(drop_none({"type": "leases", "pool": pool}), timeout)
        return as_list(expect_type(response, "leases")["leases"])

    def warm(self, pool: str, size: int, timeout: TimeoutArg = DEFAULT) -> TargetSet:
        """Sets how many ready resources ``pool`` keeps (persisted)."""
        return read_target(self._request({"type": "warm", "pool": pool, "size": size}, timeout))

    def drain(self, pool: str, timeout: TimeoutArg = DEFAULT) -> int:
        """Sets the target to 0 and removes the ready resources; returns how many were removed."""
        return int(expect_type(self._request({"type": "drain", "pool": pool}, timeout), "drained")["removed"])

    def define(self, definition: Mapping[str, Any], timeout: TimeoutArg = DEFAULT) -> Defined:
        """Defines or redefines a pool (persisted); the same definition again changes nothing."""
        return read_defined(self._request({"type": "define", "definition": dict(definition)}, timeout))

    def undefine(self, pool: str, timeout: TimeoutArg = DEFAULT) -> Optional[str]:
        """Removes a run-time definition; returns the definition that applies now (``builtin``), if any."""
        response = expect_type(self._request({"type": "undefine", "pool": pool}, timeout), "undefined")
        source = response.get("source")
        return str(source) if source is not None else None


class _Take:
    """``await client.pool.take(...)`` gives an :class:`AsyncLease`; ``async with`` releases it too."""

    __slots__ = ("_client", "_pool", "_timeout_ms", "_timeout", "_lease")

    def __init__(self, client: "AsyncPoolClient", pool: str, timeout_ms: Optional[int], timeout: TimeoutArg) -> None:
        self._client = client
        self._pool = pool
        self._timeout_ms = timeout_ms
        self._timeout = timeout
        self._lease: Optional[AsyncLease] = None

    async def _take(self) -> AsyncLease:
        client = self._client
        deadline = take_deadline(self._timeout_ms, client._settings.resolve(self._timeout))
        conn = await client.connection()
        info = read_taken(await conn.request(take_request(self._pool, self._timeout_ms), deadline))
        return AsyncLease(info, client)

    def __await__(self) -> Generator[Any, None, AsyncLease]:
        return self._take().__await__()

    async def __aenter__(self) -> AsyncLease:
        self._lease = await self._take()
        return self._lease

    async def __aexit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self._lease is not None:
            await self._lease.release()


class AsyncPoolClient(AsyncChannel):
    """The ``pool`` channel, asyncio."""

    CHANNEL = "pool"

    async def status(self, pool: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> PoolsReport:
        """Every pool's state and counters (or one pool's)."""
        response = await self._request(drop_none({"type": "status", "pool": pool}), timeout)
        return cast(PoolsReport, expect_type(response, "status"))

    def take(self, pool: str, timeout_ms: Optional[int] = None, timeout: TimeoutArg = DEFAULT) -> _Take:
        """Takes a resource: ``lease = await pool.take("venv")``, or ``async with pool.take("venv") as env:``."""
        return _Take(self, pool, timeout_ms, timeout)

    async def release(self, lease: str, reuse: bool = False, timeout: TimeoutArg = DEFAULT) -> Released:
        """Gives a resource back by its lease id."""
        return read_released(await self._request(release_request(lease, reuse), timeout))

    async def leases(self, pool: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> List[LeaseInfo]:
        """The resources handed out and not released."""
        response = await self._request(drop_none({"type": "leases", "pool": pool}), timeout)
        return as_list(expect_type(response, "leases")["leases"])

    async def warm(self, pool: str, size: int, timeout: TimeoutArg = DEFAULT) -> TargetSet:
        """Sets how many ready resources ``pool`` keeps."""
        return read_target(await self._request({"type": "warm", "pool": pool, "size": size}, timeout))

    async def drain(self, pool: str, timeout: TimeoutArg = DEFAULT) -> int:
        """Sets the target to 0 and removes the ready resources."""
        response = await self._request({"type": "drain", "pool": pool}, timeout)
        return int(expect_type(response, "drained")["removed"])

    async def define(self, definition: Mapping[str, Any], timeout: TimeoutArg = DEFAULT) -> Defined:
        """Defines or redefines a pool."""
        return read_defined(await self._request({"type": "define", "definition": dict(definition)}, timeout))

    async def undefine(self, pool: str, timeout: TimeoutArg = DEFAULT) -> Optional[str]:
        """Removes a run-time definition."""
        response = expect_type(await self._request({"type": "undefine", "pool": pool}, timeout), "undefined")
        source = response.get("source")
        return str(source) if source is not None else None
