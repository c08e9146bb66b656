"""The ``queue`` channel: durable jobs, ``wait`` and ``logs`` streams (proto-docs/queue.md).

``wait`` and ``logs`` are iterators (async iterators in :mod:`hearth_client.aio`):
the request is sent when iteration starts, and the connection belongs to the
stream until it ends. Leaving a stream early (``break``, an exception, a
timeout) closes the connection: the daemon notices at once and frees the
stream; the job is not affected. The next call opens a new connection.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterator,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    TypedDict,
    cast,
)

from ._channel import DEFAULT, AsyncChannel, SyncChannel, TimeoutArg
from .errors import ProtocolError, RequestError
from .protocol import Json, as_list, drop_none, expect_type

__all__ = [
    "FINAL_STATES",
    "Job",
    "Attempt",
    "QueueStats",
    "Submitted",
    "JobDetails",
    "JobPage",
    "LogChunk",
    "QueueClient",
    "AsyncQueueClient",
]

#: States a job never leaves (except ``dead``, by ``retry``).
FINAL_STATES = frozenset({"succeeded", "dead", "canceled"})


class Job(TypedDict, total=False):
    """A job as the daemon reports it (see proto-docs/queue.md, "Jobs")."""

    id: int
    queue: str
    state: str
    priority: int
    argv: List[str]
    env: Dict[str, str]
    cwd: str
    input_bytes: int
    key: Optional[str]
    attempts: int
    max_attempts: int
    timeout_ms: Optional[int]
    backoff_base_ms: int
    backoff_cap_ms: int
    created_at_ms: int
    run_at_ms: int
    started_at_ms: Optional[int]
    finished_at_ms: Optional[int]
    exit_code: Optional[int]
    signal: Optional[int]
    last_error: Optional[str]


class Attempt(TypedDict, total=False):
    """One attempt of a job; ``outcome`` is ``None`` while it runs."""

    n: int
    started_at_ms: int
    ended_at_ms: Optional[int]
    pid: Optional[int]
    outcome: Optional[str]
    exit_code: Optional[int]
    signal: Optional[int]
    error: Optional[str]
    counted: bool
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool


class QueueStats(TypedDict, total=False):
    """Counts per state and queue, backlog and throughput."""

    type: str
    states: Dict[str, int]
    queues: Dict[str, Dict[str, int]]
    oldest_queued_ms: Optional[int]
    finished_last_minute: int
    workers: int
    busy_workers: int
    store: str
    store_recovered: Optional[Dict[str, Any]]


class Submitted(NamedTuple):
    """The answer to a submit: the job (the earlier one when ``deduplicated``)."""

    job: Job
    deduplicated: bool


class JobDetails(NamedTuple):
    """A job and every attempt it had, oldest first."""

    job: Job
    attempts: List[Attempt]


class JobPage(NamedTuple):
    """A page of jobs, newest first; ``next_before_id`` pages on (``None`` on the last page)."""

    jobs: List[Job]
    next_before_id: Optional[int]


class LogChunk(NamedTuple):
    """Bytes of a job's output, starting at ``offset`` in its log."""

    offset: int
    data: bytes


# -- sans-IO ------------------------------------------------------------------


def _current_dir() -> Optional[str]:
    """This process's current directory, where a job without ``cwd`` runs, as a process started here would;
    ``None`` (the daemon user's home) when it was removed."""
    try:
        return os.getcwd()
    except OSError:
        return None


def submit_request(
    argv: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    input: Any = None,
    queue: Optional[str] = None,
    priority: Optional[int] = None,
    key: Optional[str] = None,
    max_attempts: Optional[int] = None,
    timeout_ms: Optional[int] = None,
    backoff_base_ms: Optional[int] = None,
    backoff_cap_ms: Optional[int] = None,
    run_at_ms: Optional[int] = None,
) -> Json:
    if isinstance(argv, str):
        raise TypeError("argv is a sequence of arguments, not one string")
    return drop_none(
        {
            "type": "submit",
            "argv": list(argv),
            "env": dict(env) if env else None,
            "cwd": cwd if cwd is not None else _current_dir(),
            "input": input,
            "queue": queue,
            "priority": priority,
            "key": key,
            "max_attempts": max_attempts,
            "timeout_ms": timeout_ms,
            "backoff_base_ms": backoff_base_ms,
            "backoff_cap_ms": backoff_cap_ms,
            "run_at_ms": run_at_ms,
        }
    )


def list_request(
    states: Optional[Iterable[str]], queue: Optional[str], limit: Optional[int], before_id: Optional[int]
) -> Json:
    return drop_none(
        {
            "type": "list",
            "states": list(states) if states is not None else None,
            "queue": queue,
            "limit": limit,
            "before_id": before_id,
        }
    )


def selection_request(kind: str, ids: Optional[Iterable[int]], all: bool, queue: Optional[str]) -> Json:
    if (ids is None) == (not all):
        raise ValueError(f"{kind}: pass either ids or all=True")
    return drop_none(
        {"type": kind, "ids": list(ids) if ids is not None else None, "all": True if all else None, "queue": queue}
    )


def logs_request(job_id: int, stream: str, offset: int, follow: bool) -> Json:
    return {"type": "logs", "id": job_id, "stream": stream, "offset": offset, "follow": follow}


def read_submitted(response: Json) -> Submitted:
    expect_type(response, "submitted")
    return Submitted(response["job"], bool(response.get("deduplicated")))


def read_job(response: Json, kind: str) -> Job:
    job: Job = expect_type(response, kind)["job"]
    return job


def read_details(response: Json) -> JobDetails:
    expect_type(response, "job")
    return JobDetails(response["job"], as_list(response.get("attempts", [])))


def read_page(response: Json) -> JobPage:
    expect_type(response, "jobs")
    return JobPage(as_list(response["jobs"]), response.get("next_before_id"))


def read_ids(response: Json, kind: str) -> List[int]:
    return as_list(expect_type(response, kind)["ids"])


class LogReader:
    """Reads a ``logs`` stream: ``log_data`` frames, then one ``log_end``."""

    __slots__ = ("offset", "state", "done")

    def __init__(self, offset: int) -> None:
        #: The offset after the last byte received (the next ``offset`` to ask for).
        self.offset = offset
        #: The job's state when the stream ended (``None`` until then).
        self.state: Optional[str] = None
        self.done = False

    def on_response(self, response: Json) -> Optional[LogChunk]:
        kind = response.get("type")
        if kind == "log_data":
            try:
                data = base64.b64decode(response["data"], validate=True)
            except (binascii.Error, KeyError, TypeError) as e:
                raise ProtocolError("protocol_error", f"log_data with bad base64: {e}") from None
            chunk = LogChunk(int(response["offset"]), data)
            self.offset = chunk.offset + len(data)
            return chunk
        if kind == "log_end":
            self.offset = int(response["offset"])
            self.state = str(response["state"])
            self.done = True
            return None
        raise ProtocolError("protocol_error", f"expected log_data or log_end, got {response!r:.300}")


def _remaining(deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 1e-6)


# -- the clients --------------------------------------------------------------


class LogStream:
    """An iterator of :class:`LogChunk`; :attr:`offset` and :attr:`state` tell where it ended."""

    def __init__(self, chunks: Iterator[LogChunk], reader: LogReader) -> None:
        self._chunks = chunks
        self._reader = reader

    def __iter__(self) -> "LogStream":
        return self

    def __next__(self) -> LogChunk:
        return next(self._chunks)

    @property
    def offset(self) -> int:
        """The offset after the last byte received."""
        return self._reader.offset

    @property
    def state(self) -> Optional[str]:
        """The job's state when the stream ended (``None`` before the end)."""
        return self._reader.state

    def close(self) -> None:
        """Stops reading (closing the connection if the stream had not ended)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class QueueClient(SyncChannel):
    """The ``queue`` channel, blocking."""

    CHANNEL = "queue"

    def submit(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        input: Any = None,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        key: Optional[str] = None,
        max_attempts: Optional[int] = None,
        timeout_ms: Optional[int] = None,
        backoff_base_ms: Optional[int] = None,
        backoff_cap_ms: Optional[int] = None,
        run_at_ms: Optional[int] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> Submitted:
        """Submits a job; returns once it is durable. ``key`` makes the submit idempotent. Without ``cwd``, the
        job runs in this process's current directory."""
        request = submit_request(
            argv,
            env=env,
            cwd=cwd,
            input=input,
            queue=queue,
            priority=priority,
            key=key,
            max_attempts=max_attempts,
            timeout_ms=timeout_ms,
            backoff_base_ms=backoff_base_ms,
            backoff_cap_ms=backoff_cap_ms,
            run_at_ms=run_at_ms,
        )
        return read_submitted(self._request(request, timeout))

    def get(self, job_id: int, timeout: TimeoutArg = DEFAULT) -> JobDetails:
        """One job and its attempts."""
        return read_details(self._request({"type": "get", "id": job_id}, timeout))

    def list(
        self,
        states: Optional[Iterable[str]] = None,
        queue: Optional[str] = None,
        limit: Optional[int] = None,
        before_id: Optional[int] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> JobPage:
        """A page of jobs, newest first (``states=["dead"]`` is the dead-letter queue)."""
        return read_page(self._request(list_request(states, queue, limit, before_id), timeout))

    def cancel(self, job_id: int, timeout: TimeoutArg = DEFAULT) -> Job:
        """Cancels a job (a running one is killed first); returns it, canceled."""
        return read_job(self._request({"type": "cancel", "id": job_id}, timeout), "canceled")

    def wait(self, job_id: int, timeout: Optional[float] = None) -> Generator[Job, None, None]:
        """The job now, then at each change of state, until a final state (the last item).

        ``timeout`` bounds the whole stream (default: none).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self.connection()
        conn.send_json({"type": "wait", "id": job_id}, _remaining(deadline))
        ended = False
        try:
            while True:
                try:
                    response = conn.recv(_remaining(deadline), f"job {job_id} to change")
                except RequestError:
                    ended = True
                    raise
                job = read_job(response, "job_event")
                ended = job.get("state") in FINAL_STATES
                yield job
                if ended:
                    return
        finally:
            if not ended:
                conn.close()

    def wait_done(self, job_id: int, timeout: Optional[float] = None) -> Job:
        """Waits until the job is final and returns it."""
        last: Optional[Job] = None
        for job in self.wait(job_id, timeout):
            last = job
        assert last is not None
        return last

    def logs(
        self,
        job_id: int,
        stream: str = "stdout",
        offset: int = 0,
        follow: bool = False,
        timeout: Optional[float] = None,
    ) -> LogStream:
        """A job's ``stdout`` or ``stderr`` from ``offset``; with ``follow``, until the job ends.

        ``timeout`` bounds the whole stream (default: none).
        """
        reader = LogReader(offset)
        return LogStream(self._logs(logs_request(job_id, stream, offset, follow), reader, timeout), reader)

    def _logs(self, request: Json, reader: LogReader, timeout: Optional[float]) -> Iterator[LogChunk]:
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self.connection()
        conn.send_json(request, _remaining(deadline))
        ended = False
        try:
            while True:
                try:
                    response = conn.recv(_remaining(deadline), "the job's output")
                except RequestError:
                    ended = True
                    raise
                chunk = reader.on_response(response)
                if chunk is None:
                    ended = True
                    return
                yield chunk
        finally:
            if not ended:
                conn.close()

    def stats(self, timeout: TimeoutArg = DEFAULT) -> QueueStats:
        """Counts per state and queue, backlog, throughput."""
        return cast(QueueStats, expect_type(self._request({"type": "stats"}, timeout), "stats"))

    def retry(
        self,
        ids: Optional[Iterable[int]] = None,
        *,
        all: bool = False,
        queue: Optional[str] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> List[int]:
        """Requeues dead jobs (``ids``, or ``all`` of ``queue``) with a fresh attempt budget."""
        return read_ids(self._request(selection_request("retry", ids, all, queue), timeout), "retried")

    def purge(
        self,
        ids: Optional[Iterable[int]] = None,
        *,
        all: bool = False,
        queue: Optional[str] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> List[int]:
        """Deletes dead jobs and their logs."""
        return read_ids(self._request(selection_request("purge", ids, all, queue), timeout), "purged")


class AsyncLogStream:
    """An async iterator of :class:`LogChunk`; :attr:`offset` and :attr:`state` tell where it ended."""

    def __init__(self, chunks: AsyncIterator[LogChunk], reader: LogReader) -> None:
        self._chunks = chunks
        self._reader = reader

    def __aiter__(self) -> "AsyncLogStream":
        return self

    async def __anext__(self) -> LogChunk:
        return await self._chunks.__anext__()

    @property
    def offset(self) -> int:
        return self._reader.offset

    @property
    def state(self) -> Optional[str]:
        return self._reader.state

    async def aclose(self) -> None:
        """Stops reading (closing the connection if the stream had not ended)."""
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


class AsyncQueueClient(AsyncChannel):
    """The ``queue`` channel, asyncio."""

    CHANNEL = "queue"

    async def submit(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        input: Any = None,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        key: Optional[str] = None,
        max_attempts: Optional[int] = None,
        timeout_ms: Optional[int] = None,
        backoff_base_ms: Optional[int] = None,
        backoff_cap_ms: Optional[int] = None,
        run_at_ms: Optional[int] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> Submitted:
        """Submits a job; returns once it is durable. Without ``cwd``, the job runs in this process's current
        directory."""
        request = submit_request(
            argv,
            env=env,
            cwd=cwd,
            input=input,
            queue=queue,
            priority=priority,
            key=key,
            max_attempts=max_attempts,
            timeout_ms=timeout_ms,
            backoff_base_ms=backoff_base_ms,
            backoff_cap_ms=backoff_cap_ms,
            run_at_ms=run_at_ms,
        )
        return read_submitted(await self._request(request, timeout))

    async def get(self, job_id: int, timeout: TimeoutArg = DEFAULT) -> JobDetails:
        """One job and its attempts."""
        return read_details(await self._request({"type": "get", "id": job_id}, timeout))

    async def list(
        self,
        states: Optional[Iterable[str]] = None,
        queue: Optional[str] = None,
        limit: Optional[int] = None,
        before_id: Optional[int] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> JobPage:
        """A page of jobs, newest first."""
        return read_page(await self._request(list_request(states, queue, limit, before_id), timeout))

    async def cancel(self, job_id: int, timeout: TimeoutArg = DEFAULT) -> Job:
        """Cancels a job; returns it, canceled."""
        return read_job(await self._request({"type": "cancel", "id": job_id}, timeout), "canceled")

    async def wait(self, job_id: int, timeout: Optional[float] = None) -> AsyncGenerator[Job, None]:
        """The job now, then at each change of state, until a final state (the last item)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = await self.connection()
        await conn.send_json({"type": "wait", "id": job_id}, _remaining(deadline))
        ended = False
        try:
            while True:
                try:
                    response = await conn.recv(_remaining(deadline), f"job {job_id} to change")
                except RequestError:
                    ended = True
                    raise
                job = read_job(response, "job_event")
                ended = job.get("state") in FINAL_STATES
                yield job
                if ended:
                    return
        finally:
            if not ended:
                conn.close()

    async def wait_done(self, job_id: int, timeout: Optional[float] = None) -> Job:
        """Waits until the job is final and returns it."""
        last: Optional[Job] = None
        async for job in self.wait(job_id, timeout):
            last = job
        assert last is not None
        return last

    def logs(
        self,
        job_id: int,
        stream: str = "stdout",
        offset: int = 0,
        follow: bool = False,
        timeout: Optional[float] = None,
    ) -> AsyncLogStream:
        """A job's output from ``offset``; with ``follow``, until the job ends."""
        reader = LogReader(offset)
        return AsyncLogStream(self._logs(logs_request(job_id, stream, offset, follow), reader, timeout), reader)

    async def _logs(self, request: Json, reader: LogReader, timeout: Optional[float]) -> AsyncIterator[LogChunk]:
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = await self.connection()
        await conn.send_json(request, _remaining(deadline))
        ended = False
        try:
            while True:
                try:
                    response = await conn.recv(_remaining(deadline), "the job's output")
                except RequestError:
                    ended = True
                    raise
                chunk = reader.on_response(response)
                if chunk is None:
                    ended = True
                    return
                yield chunk
        finally:
            if not ended:
                conn.close()

    async def stats(self, timeout: TimeoutArg = DEFAULT) -> QueueStats:
        """Counts per state and queue, backlog, throughput."""
        return cast(QueueStats, expect_type(await self._request({"type": "stats"}, timeout), "stats"))

    async def retry(
        self,
        ids: Optional[Iterable[int]] = None,
        *,
        all: bool = False,
        queue: Optional[str] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> List[int]:
        """Requeues dead jobs with a fresh attempt budget."""
        return read_ids(await self._request(selection_request("retry", ids, all, queue), timeout), "retried")

    async def purge(
        self,
        ids: Optional[Iterable[int]] = None,
        *,
        all: bool = False,
        queue: Optional[str] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> List[int]:
        """Deletes dead jobs and their logs."""
        return read_ids(await self._request(selection_request("purge", ids, all, queue), timeout), "purged")
