"""The ``status`` channel: ``ping``, ``status``, ``shutdown`` (proto-docs/status.md)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict, cast

from ._channel import DEFAULT, AsyncChannel, SyncChannel, TimeoutArg
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


# -- the clients ----------------------------------------------------------


class StatusClient(SyncChannel):
    """The ``status`` channel, blocking."""

    CHANNEL = "status"

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
