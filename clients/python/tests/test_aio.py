"""The asyncio client against a real hearthd, and cancellation that never desynchronises a connection."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import unittest
from typing import Any, ClassVar, Coroutine, TypeVar

import hearth_client
from hearth_client import aio

from support import DaemonFixture

CONFIG = """
[blob]
http = false

[queue]
workers = 2

[pool.scratch]
create = ["sh", "-c", "echo built > {path}/marker"]
"""

FAR_FUTURE_MS = 4102444800000
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a test coroutine with an overall deadline (a test never hangs)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(bounded())


class AsyncClientTests(unittest.TestCase):
    fixture: ClassVar[DaemonFixture]

    @classmethod
    def setUpClass(cls) -> None:
        cls.fixture = DaemonFixture(CONFIG)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fixture.close()

    def test_every_channel(self) -> None:
        async def main() -> None:
            async with aio.Client(self.fixture.socket, timeout=10.0) as client:
                await client.ping()
                self.assertEqual((await client.status())["pid"], self.fixture.daemon.pid)

                async with client.pool.take("scratch", timeout_ms=30_000) as env:
                    self.assertTrue(os.path.exists(os.path.join(env.path, "marker")))
                    self.assertEqual(len(await client.pool.leases("scratch")), 1)
                self.assertEqual(await client.pool.leases("scratch"), [])
                lease = await client.pool.take("scratch", timeout_ms=30_000)
                self.assertEqual((await lease.release()).outcome, "removed")
                with self.assertRaises(hearth_client.UnknownPool):
                    await client.pool.take("nope")

                job = (await client.queue.submit(["sh", "-c", "echo async"])).job
                states = [j["state"] async for j in client.queue.wait(job["id"], timeout=30)]
                self.assertEqual(states[-1], "succeeded")
                logs = client.queue.logs(job["id"])
                self.assertEqual(b"".join([c.data async for c in logs]), b"async\n")
                self.assertEqual(logs.state, "succeeded")
                self.assertEqual((await client.queue.get(job["id"])).job["exit_code"], 0)
                with self.assertRaises(hearth_client.JobNotFound):
                    await client.queue.get(99999)

                data = os.urandom(2 * 1024 * 1024 + 5)
                stored = await client.blob.put(io.BytesIO(data))
                self.assertEqual(stored.hash, "sha256:" + hashlib.sha256(data).hexdigest())
                self.assertEqual(await client.blob.get_bytes(stored.hash), data)
                self.assertTrue(await client.blob.has(stored.hash))
                with self.assertRaises(hearth_client.SizeMismatch):
                    await client.blob.put(data, size=1)
                self.assertEqual(await client.blob.get_bytes((await client.blob.put(b"ok")).hash), b"ok")

        run(main())

    def test_async_sources_and_destinations(self) -> None:
        class Source:
            def __init__(self, data: bytes) -> None:
                self.data = io.BytesIO(data)

            async def read(self, n: int) -> bytes:
                await asyncio.sleep(0)
                return self.data.read(n)

        class Sink:
            def __init__(self) -> None:
                self.data = bytearray()

            async def write(self, chunk: bytes) -> None:
                await asyncio.sleep(0)
                self.data += chunk

        async def main() -> None:
            async with aio.Client(self.fixture.socket) as client:
                data = os.urandom(1024 * 1024 * 3)
                stored = await client.blob.put(Source(data))
                sink = Sink()
                await client.blob.get(stored.hash, sink)
                self.assertEqual(bytes(sink.data), data)

        run(main())

    def test_cancelling_a_wait_closes_its_connection_and_nothing_else(self) -> None:
        async def main() -> None:
            async with aio.Client(self.fixture.socket) as client:
                job_id = (await client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS)).job["id"]
                seen: list[str] = []

                async def watch() -> None:
                    async for job in client.queue.wait(job_id):
                        seen.append(job["state"])

                task = asyncio.ensure_future(watch())
                while not seen:
                    await asyncio.sleep(0.005)
                conn = await client.queue.connection()
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                self.assertTrue(conn.closed, "a cancelled stream closes its connection")
                # A fresh connection; the answers line up with the requests.
                self.assertEqual((await client.queue.get(job_id)).job["state"], "queued")
                self.assertEqual((await client.queue.cancel(job_id))["state"], "canceled")

        run(main())

    def test_cancelling_mid_frame_never_desynchronises(self) -> None:
        async def main() -> None:
            async with aio.Client(self.fixture.socket) as client:
                data = os.urandom(8 * 1024 * 1024)
                stored = await client.blob.put(data)
                for delay in (0.0, 0.001, 0.003, 0.01):
                    task = asyncio.ensure_future(client.blob.get_bytes(stored.hash))
                    await asyncio.sleep(delay)
                    task.cancel()
                    try:
                        got = await task
                        self.assertEqual(got, data)
                    except asyncio.CancelledError:
                        pass
                    self.assertEqual(await client.blob.get_bytes(stored.hash), data)
                    await client.ping()

        run(main())

    def test_a_deadline_is_a_timeout_not_a_cancellation(self) -> None:
        async def main() -> None:
            async with aio.Client(self.fixture.socket) as client:
                job_id = (await client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS)).job["id"]
                with self.assertRaises(hearth_client.Timeout):
                    await client.queue.wait_done(job_id, timeout=0.2)
                self.assertEqual((await client.queue.cancel(job_id))["state"], "canceled")

        run(main())

    def test_concurrent_tasks_with_their_own_clients(self) -> None:
        async def one(i: int) -> int:
            async with aio.Client(self.fixture.socket) as client:
                submitted = await client.queue.submit(["true"], key=f"aio-{i}", run_at_ms=FAR_FUTURE_MS)
                await client.queue.cancel(submitted.job["id"])
                return int(submitted.job["id"])

        async def main() -> None:
            ids = await asyncio.gather(*(one(i) for i in range(16)))
            self.assertEqual(len(set(ids)), 16)

        run(main())


if __name__ == "__main__":
    unittest.main()
