"""Event subscriptions against a real hearthd: every kind jobs, pools and blobs publish, filters,
resuming after a reconnect, a subscriber that falls behind, unsubscribing, the daemon stopping,
cancellation; and the reading of kinds and fields this version does not know."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import tempfile
import threading
import unittest
from typing import Any, Awaitable, Callable, ClassVar, Coroutine, Iterator, List, Optional, Tuple, TypeVar

import hearth_client
from hearth_client import (
    BlobDeleteEvent,
    BlobGcEvent,
    BlobPutEvent,
    Client,
    Event,
    EventStream,
    HealthChangedEvent,
    JobStateEvent,
    Lagged,
    Notice,
    PoolBuildEndedEvent,
    PoolBuildStartedEvent,
    PoolReleaseEvent,
    PoolTakeEvent,
    UnknownEvent,
    aio,
)
from hearth_client.events import AsyncEventStream, Subscription, read_event
from hearth_client.protocol import Json

from support import DaemonFixture, wait_for

CONFIG = """
[blob]
http = false

[queue]
workers = 2
"""

#: The deadline of every wait on a stream.
LONG = 20.0
FAR_FUTURE_MS = 4102444800000
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a test coroutine with an overall deadline (a test never hangs)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 90)

    return asyncio.run(bounded())


def event(stream: EventStream, what: str) -> Event:
    """The stream's next notice, which must be an event (a lag fails the test)."""
    try:
        notice = next(stream)
    except StopIteration:
        raise AssertionError(f"the stream ended while waiting for {what}") from None
    if isinstance(notice, Lagged):
        raise AssertionError(f"lagged by {notice.missed} while waiting for {what}")
    return notice


async def aevent(stream: AsyncEventStream, what: str) -> Event:
    """:func:`event`, asyncio (the stream's own ``timeout`` bounds the wait)."""
    try:
        notice = await stream.__anext__()
    except StopAsyncIteration:
        raise AssertionError(f"the stream ended while waiting for {what}") from None
    if isinstance(notice, Lagged):
        raise AssertionError(f"lagged by {notice.missed} while waiting for {what}")
    return notice


async def await_for(what: str, condition: Callable[[], Awaitable[bool]], timeout: float = LONG) -> None:
    """Polls ``condition`` with backoff; fails naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.001
    while not await condition():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def active_connections(client: Client) -> int:
    return int(client.status()["connections"]["active"])


class EventTests(unittest.TestCase):
    fixture: ClassVar[DaemonFixture]

    @classmethod
    def setUpClass(cls) -> None:
        cls.fixture = DaemonFixture(CONFIG)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fixture.close()

    def client(self) -> Client:
        client = Client(self.fixture.socket, timeout=10.0)
        self.addCleanup(client.close)
        return client

    def test_every_service_tells_what_it_did_in_order(self) -> None:
        client = self.client()
        with client.events(timeout=LONG) as events:
            last = events.seq

            def next_event(what: str) -> Event:
                nonlocal last
                got = event(events, what)
                self.assertEqual(got.seq, last + 1, f"sequence numbers grow by one: {got}")
                last = got.seq
                return got

            job_id = client.queue.submit(["true"]).job["id"]
            states: List[Tuple[Optional[str], Optional[str]]] = []
            while len(states) < 3:
                got = next_event("the job's three state changes")
                assert isinstance(got, JobStateEvent), got
                self.assertEqual((got.id, got.queue, got.service, got.kind), (job_id, "default", "queue", "job_state"))
                states.append((got.from_state, got.to_state))
            self.assertEqual(states, [(None, "queued"), ("queued", "running"), ("running", "succeeded")])
            # The stream has a connection of its own: the client's status calls go on.
            self.assertEqual(client.status()["type"], "status")

            stored = client.blob.put(b"an event")
            put = next_event("the blob put")
            self.assertEqual(put, BlobPutEvent(put.seq, put.at_ms, "blob", stored.hash, 8, False))
            client.blob.put(b"an event")
            again = next_event("the second put")
            assert isinstance(again, BlobPutEvent)
            self.assertTrue(again.existed)
            client.blob.delete(stored.hash)
            deleted = next_event("the blob delete")
            self.assertEqual(deleted, BlobDeleteEvent(deleted.seq, deleted.at_ms, "blob", stored.hash, 8))
            client.blob.put(b"to collect")
            next_event("the put to collect")
            report = client.blob.gc(target_bytes=0)
            collected = next_event("the collection")
            assert isinstance(collected, BlobGcEvent), collected
            self.assertEqual((collected.removed, collected.bytes), (report["removed"], report["freed_bytes"]))
            self.assertGreaterEqual(collected.removed, 1)

            client.pool.define({"name": "scratch", "create": ["true"], "size": 0})
            lease = client.pool.take("scratch", timeout_ms=30_000)
            lease.release()
            pool_events: List[Event] = []
            while not isinstance(pool_events[-1:] and pool_events[-1], PoolReleaseEvent):
                pool_events.append(next_event("the pool's build, take and release"))
            started, ended, take, release = pool_events
            assert isinstance(started, PoolBuildStartedEvent), started
            assert isinstance(ended, PoolBuildEndedEvent), ended
            assert isinstance(take, PoolTakeEvent), take
            assert isinstance(release, PoolReleaseEvent), release
            self.assertEqual({e.service for e in pool_events}, {"pool"})
            self.assertEqual({started.pool, ended.pool, take.pool, release.pool}, {"scratch"})
            self.assertEqual(started.resource, ended.resource)
            self.assertTrue(ended.ok)
            self.assertGreaterEqual(ended.ms, 0)
            self.assertEqual((take.lease, take.warm), (lease.lease, False))
            self.assertEqual(release.lease, lease.lease)
            self.assertEqual(events.seq, release.seq, "the stream remembers where to resume")

    def test_filters_pick_by_service_kind_and_subject(self) -> None:
        client = self.client()
        first = client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS).job["id"]
        wanted = first + 1
        with (
            client.events(kinds=["job_state"], ids=[wanted], timeout=LONG) as by_subject,
            client.events(services=["blob"], timeout=LONG) as by_service,
        ):
            client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS)
            client.queue.cancel(first)
            self.assertEqual(client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS).job["id"], wanted + 1)
            client.queue.cancel(wanted)
            stored = client.blob.put(b"filtered")
            submitted = event(by_subject, "the wanted job's submit")
            canceled = event(by_subject, "the wanted job's cancel")
            assert isinstance(submitted, JobStateEvent) and isinstance(canceled, JobStateEvent)
            self.assertEqual((submitted.id, submitted.to_state), (wanted, "queued"))
            self.assertEqual((canceled.id, canceled.to_state), (wanted, "canceled"))
            put = event(by_service, "the blob put, after all those job events")
            assert isinstance(put, BlobPutEvent), put
            self.assertEqual((put.service, put.hash), ("blob", stored.hash))

    def test_an_unknown_kind_is_refused_and_the_connection_stays(self) -> None:
        client = self.client()
        conn = client.status_channel.connection()
        with self.assertRaises(hearth_client.InvalidRequest) as caught:
            client.events(kinds=["job_state", "moon_phase"])
        self.assertIn("moon_phase", caught.exception.message)
        with self.assertRaises(hearth_client.InvalidRequest):
            client.events(services=["moon"])
        with self.assertRaises(TypeError):
            client.events(kinds="job_state")
        self.assertIs(client.status_channel.connection(), conn, "a refused subscribe leaves the connection usable")
        client.ping()

    def test_unsubscribing_gives_the_connection_back(self) -> None:
        client = self.client()
        conn = client.status_channel.connection()
        events = client.events(kinds=["job_state"], timeout=LONG)
        client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS)
        self.assertIsInstance(event(events, "a job's submit"), JobStateEvent)
        # Events still on their way when it ends are skipped.
        client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS)
        events.close()
        self.assertTrue(events.closed)
        self.assertEqual(list(events), [], "a closed stream ends")
        self.assertIs(client.status_channel.connection(), conn, "the client has its connection back")
        client.ping()
        self.assertEqual(client.status()["type"], "status")

    def test_a_stream_left_early_closes_its_connection(self) -> None:
        client = self.client()
        client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS)
        before = active_connections(client)
        for _notice in client.events(kinds=["job_state"], since=0, timeout=LONG):
            break
        # The stream took the client's status connection and closed it when it was dropped.
        wait_for(
            "the daemon to see the dropped stream's connection close", lambda: active_connections(client) <= before
        )

    def test_a_reconnecting_subscriber_resumes_where_it_was(self) -> None:
        client = self.client()
        events = client.events(timeout=LONG)
        job_id = client.queue.submit(["true"]).job["id"]
        seen = event(events, "the submit's event").seq
        client.close()  # the connection goes, and the subscription with it
        self.assertTrue(events.closed)
        self.assertEqual(client.queue.wait_done(job_id, timeout=LONG)["state"], "succeeded")

        with client.events(since=seen, timeout=LONG) as again:
            running = event(again, "the replayed start")
            finished = event(again, "the replayed end")
        self.assertEqual((running.seq, finished.seq), (seen + 1, seen + 2), "nothing missed, nothing twice")
        assert isinstance(finished, JobStateEvent)
        self.assertEqual((finished.id, finished.to_state), (job_id, "succeeded"))

    def test_a_stream_deadline_is_a_timeout(self) -> None:
        client = self.client()
        events = client.events(ids=["no-such-subject"], timeout=0.2)
        with self.assertRaises(hearth_client.Timeout):
            next(events)
        self.assertTrue(events.closed)
        self.assertEqual(list(events), [])
        client.ping()

    # -- asyncio -----------------------------------------------------------------

    def test_asyncio_streams_what_happens(self) -> None:
        async def main() -> None:
            async with aio.Client(self.fixture.socket, timeout=10.0) as client:
                async with client.events(services=["queue", "blob"], timeout=LONG) as events:
                    start = events.seq
                    assert start is not None
                    job_id = (await client.queue.submit(["true"])).job["id"]
                    stored = await client.blob.put(b"async event")
                    seen: List[Event] = []
                    while not any(isinstance(e, BlobPutEvent) for e in seen) or len(seen) < 4:
                        seen.append(await aevent(events, "the job's changes and the put"))
                    jobs = [e for e in seen if isinstance(e, JobStateEvent)]
                    self.assertEqual(
                        [(e.id, e.to_state) for e in jobs],
                        [(job_id, "queued"), (job_id, "running"), (job_id, "succeeded")],
                    )
                    puts = [e for e in seen if isinstance(e, BlobPutEvent)]
                    self.assertEqual([p.hash for p in puts], [stored.hash])
                    self.assertEqual(sorted(e.seq for e in seen), list(range(start + 1, start + 5)))
                    self.assertEqual(events.seq, seen[-1].seq)
                # Leaving the block unsubscribed: the connection serves the client again.
                self.assertTrue(events.closed)
                await client.ping()

                # `async for` alone subscribes when the loop starts.
                stream = client.events(kinds=["job_state"], since=start, timeout=LONG)
                async for notice in stream:
                    assert isinstance(notice, JobStateEvent), notice
                    self.assertEqual((notice.seq, notice.to_state), (start + 1, "queued"))
                    break
                await stream.aclose()

        run(main())

    def test_cancelling_the_iterating_task_closes_its_connection(self) -> None:
        async def main() -> None:
            async with aio.Client(self.fixture.socket, timeout=10.0) as client:
                await client.queue.stats()
                before = int((await client.status())["connections"]["active"])
                events = await client.events(kinds=["job_state"], timeout=LONG)
                seen: List[Notice] = []
                got_one = asyncio.Event()

                async def follow() -> None:
                    async for notice in events:
                        seen.append(notice)
                        got_one.set()

                task = asyncio.ensure_future(follow())
                job_id = (await client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS)).job["id"]
                await asyncio.wait_for(got_one.wait(), LONG)
                # The task is back waiting on the socket.
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                self.assertTrue(events.closed, "a cancelled stream closes its connection")
                self.assertEqual([n.id for n in seen if isinstance(n, JobStateEvent)], [job_id])

                async def freed() -> bool:
                    return int((await client.status())["connections"]["active"]) <= before

                await await_for("the daemon to see the cancelled stream's connection close", freed)
                # The client goes on, and so do new subscriptions.
                async with client.events(kinds=["job_state"], ids=[job_id], timeout=LONG) as again:
                    await client.queue.cancel(job_id)
                    canceled = await aevent(again, "the cancel")
                    assert isinstance(canceled, JobStateEvent)
                    self.assertEqual(canceled.to_state, "canceled")

        run(main())

    def test_aclose_from_another_task_ends_the_loop_and_gives_the_connection_back(self) -> None:
        async def main() -> None:
            async with aio.Client(self.fixture.socket, timeout=10.0) as client:
                await client.ping()
                conn = await client.status_channel.connection()
                events = await client.events(ids=["no-such-subject"], timeout=LONG)
                reading = asyncio.Event()
                notices: List[Notice] = []

                async def follow() -> None:
                    reading.set()
                    async for notice in events:
                        notices.append(notice)

                task = asyncio.ensure_future(follow())
                await asyncio.wait_for(reading.wait(), LONG)
                self.assertTrue(events._reading, "the task waits on the socket")
                await asyncio.wait_for(events.aclose(), LONG)
                await asyncio.wait_for(task, LONG)
                self.assertEqual(notices, [])
                self.assertTrue(events.closed)
                self.assertIs(await client.status_channel.connection(), conn)
                await client.ping()

        run(main())


class FallingBehindTests(unittest.TestCase):
    """A subscriber that does not read while the daemon publishes more than fits in its socket and buffer."""

    # The daemon keeps 64 events; the subscriber's socket holds a few hundred
    # more (about 200 KiB at 150 bytes an event): 3000 events overflow both
    # many times over. The subscriber stays stalled for as long as publishing
    # takes, so the daemon's write timeout is raised far above that.
    EVENTS = 3000
    CONFIG = '[daemon]\nevent_buffer = 64\n\n[server]\nwrite_timeout = "10m"\n\n[blob]\nhttp = false\n'

    def test_a_stalled_subscriber_is_told_what_it_missed_and_the_rest_go_on(self) -> None:
        fixture = DaemonFixture(self.CONFIG)
        self.addCleanup(fixture.close)

        async def main() -> None:
            with Client(fixture.socket, timeout=30.0) as client:
                async with aio.Client(fixture.socket, timeout=30.0) as aclient:
                    slow = client.events(timeout=120)
                    aslow = await aclient.events(timeout=120)
                    self.assertEqual(aslow.seq, slow.seq)
                    start = slow.seq
                    # A put of a stored blob is one round trip, and one event.
                    stored = client.blob.put(b"again and again")
                    for _ in range(self.EVENTS - 1):
                        client.blob.put(b"again and again", sha256=stored.hash)
                    last = start + self.EVENTS
                    got, missed = drain(iter(slow), last)
                    self.assertGreater(missed, 0, f"{self.EVENTS} events past a stalled reader: some were missed")
                    self.assertEqual(got + missed, self.EVENTS, "every event arrives or is counted as missed")
                    agot, amissed = await adrain(aslow, last)
                    self.assertGreater(amissed, 0)
                    self.assertEqual(agot + amissed, self.EVENTS)
                    slow.close()
                    await aslow.aclose()
                    client.ping()
                    await aclient.ping()

        run(main())


def drain(stream: Iterator[Notice], last: int) -> Tuple[int, int]:
    """Reads up to the event numbered ``last``: how many events arrived, how many were reported missed."""
    got = missed = seq = 0
    while seq < last:
        notice = next(stream)
        if isinstance(notice, Lagged):
            missed += notice.missed
        else:
            assert notice.seq > seq, f"in order: {notice.seq} after {seq}"
            seq = notice.seq
            got += 1
    return got, missed


async def adrain(stream: AsyncEventStream, last: int) -> Tuple[int, int]:
    got = missed = seq = 0
    while seq < last:
        notice = await stream.__anext__()
        if isinstance(notice, Lagged):
            missed += notice.missed
        else:
            assert notice.seq > seq, f"in order: {notice.seq} after {seq}"
            seq = notice.seq
            got += 1
    return got, missed


class DaemonStopTests(unittest.TestCase):
    def test_a_stopping_daemon_ends_the_stream_with_shutting_down(self) -> None:
        fixture = DaemonFixture(CONFIG)
        self.addCleanup(fixture.close)

        async def main() -> None:
            with Client(fixture.socket, timeout=10.0) as client:
                async with aio.Client(fixture.socket, timeout=10.0) as aclient:
                    events = client.events(timeout=LONG)
                    aevents = await aclient.events(timeout=LONG)
                    fixture.daemon.stop()
                    with self.assertRaises(hearth_client.ShuttingDown) as caught:
                        for _ in events:
                            pass
                    self.assertEqual(caught.exception.code, "shutting_down")
                    self.assertTrue(events.closed)
                    with self.assertRaises(hearth_client.ShuttingDown):
                        async for _ in aevents:
                            pass
                    self.assertTrue(aevents.closed)
                    with self.assertRaises(hearth_client.NotRunning):
                        client.ping()

        run(main())


# -- a newer daemon ---------------------------------------------------------------

NEWER_FRAMES: List[Json] = [
    # A known kind with a field this version does not know.
    {
        "type": "event",
        "seq": 11,
        "at_ms": 1,
        "service": "queue",
        "kind": "job_state",
        "id": 7,
        "queue": "default",
        "from": None,
        "to": "queued",
        "tenant": "acme",
    },
    # A kind this version does not know.
    {"type": "event", "seq": 12, "at_ms": 2, "service": "process", "kind": "process_exited", "name": "web", "code": 0},
    {"type": "lagged", "missed": 3},
    {
        "type": "event",
        "seq": 16,
        "at_ms": 3,
        "service": "status",
        "kind": "health_changed",
        "from": "healthy",
        "to": "degraded",
        "codes": ["queue_backlog"],
    },
]


def _send(sock: socket.socket, value: Json) -> None:
    payload = json.dumps(value).encode()
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def _recv(sock: socket.socket) -> Json:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the client closed the connection")
            data += chunk
        return data

    (length,) = struct.unpack(">I", exactly(4))
    value: Json = json.loads(exactly(length))
    return value


class NewerDaemon:
    """A peer on a real Unix socket that answers as a newer daemon would: kinds and fields this version lacks.

    No daemon this repository builds sends them, so this one is scripted:
    the handshake, ``subscribed``, :data:`NEWER_FRAMES`, then ``unsubscribed``.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="hc-", dir="/tmp")
        self.socket = os.path.join(self.dir, "newer.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.socket)
        self.server.listen(1)
        self.server.settimeout(LONG)
        self.requests: List[Json] = []
        self.failure: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
            with conn:
                conn.settimeout(LONG)
                self.requests.append(_recv(conn))
                daemon = {"version": "9.0.0", "pid": os.getpid()}
                _send(conn, {"ok": True, "protocol": 1, "daemon": daemon, "channel": "status", "max_frame": 1 << 24})
                self.requests.append(_recv(conn))
                _send(conn, {"type": "subscribed", "seq": 10})
                for frame in NEWER_FRAMES:
                    _send(conn, frame)
                self.requests.append(_recv(conn))
                _send(conn, {"type": "unsubscribed"})
                self.requests.append(_recv(conn))
                _send(conn, {"type": "pong"})
        except BaseException as e:
            self.failure = e

    def close(self) -> None:
        self.server.close()
        self.thread.join(LONG)
        assert not self.thread.is_alive(), "the scripted daemon never finished"
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


class NewerDaemonTests(unittest.TestCase):
    def test_unknown_kinds_and_fields_do_not_break_iteration(self) -> None:
        newer = NewerDaemon()
        self.addCleanup(newer.close)
        with Client(newer.socket, timeout=LONG) as client:
            events = client.events(kinds=["job_state"], ids=[7], since=10)
            notices = [next(events) for _ in NEWER_FRAMES]
            events.close()
            client.ping()
        self.assertIsNone(newer.failure)
        self.assertEqual(newer.requests[1], {"type": "subscribe", "kinds": ["job_state"], "ids": ["7"], "since": 10})
        self.assertEqual(newer.requests[2:], [{"type": "unsubscribe"}, {"type": "ping"}])
        job, unknown, lagged, health = notices
        self.assertEqual(job, JobStateEvent(11, 1, "queue", 7, "default", None, "queued"))
        assert isinstance(unknown, UnknownEvent), unknown
        self.assertEqual((unknown.seq, unknown.service, unknown.kind), (12, "process", "process_exited"))
        self.assertEqual(unknown.fields["name"], "web")
        self.assertEqual(lagged, Lagged(3))
        self.assertEqual(health, HealthChangedEvent(16, 3, "status", "healthy", "degraded", ("queue_backlog",)))
        self.assertEqual(events.seq, 16)

    def test_a_malformed_event_is_a_protocol_error(self) -> None:
        reader = Subscription(0)
        with self.assertRaises(hearth_client.ProtocolError):
            reader.on_response({"type": "event", "seq": "1", "at_ms": 1, "service": "queue", "kind": "job_state"})
        with self.assertRaises(hearth_client.ProtocolError):
            read_event({"type": "event", "seq": 1, "at_ms": 1, "service": "blob", "kind": "blob_put", "hash": 5})
        with self.assertRaises(hearth_client.ProtocolError):
            reader.on_response({"type": "unsubscribed"})  # not asked for
        with self.assertRaises(hearth_client.ProtocolError):
            reader.on_response({"type": "pong"})


if __name__ == "__main__":
    unittest.main()
