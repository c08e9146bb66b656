"""The blocking client against a real hearthd: every channel, typed errors, deadlines."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import unittest
from typing import ClassVar

import hearth_client
from hearth_client import Client, Paths, StatusClient
from hearth_client._channel import ConnectSettings

from support import DaemonFixture

CONFIG = """
[blob]
http = false

[queue]
workers = 2
backoff_base = "10ms"
backoff_cap = "20ms"

[pool.scratch]
create = ["sh", "-c", "echo built > {path}/marker"]
reset = ["true"]

[pool.broken]
create = ["false"]
"""

FAR_FUTURE_MS = 4102444800000


class ClientTests(unittest.TestCase):
    fixture: ClassVar[DaemonFixture]

    @classmethod
    def setUpClass(cls) -> None:
        cls.fixture = DaemonFixture(CONFIG)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fixture.close()

    def client(self) -> Client:
        client = Client(self.fixture.socket, client_name="client-tests/1", timeout=10.0)
        self.addCleanup(client.close)
        return client

    # -- status ----------------------------------------------------------------

    def test_status(self) -> None:
        client = self.client()
        client.ping()
        report = client.status()
        self.assertEqual(report["pid"], self.fixture.daemon.pid)
        self.assertEqual(report["protocol"], 1)
        self.assertEqual(report["socket"], self.fixture.socket)
        self.assertIn(report["health"]["state"], ("healthy", "degraded"))
        self.assertEqual(set(report["channels"]), {"status", "pool", "queue", "blob", "sync", "process"})

    def test_not_running(self) -> None:
        missing = os.path.join(os.path.dirname(self.fixture.socket), "nothing.sock")
        with Client(missing) as client, self.assertRaises(hearth_client.NotRunning) as caught:
            client.ping()
        self.assertEqual(caught.exception.code, "not_running")

    def test_a_request_error_keeps_the_connection(self) -> None:
        client = self.client()
        conn = client.queue.connection()
        with self.assertRaises(hearth_client.JobNotFound) as caught:
            client.queue.get(987654)
        self.assertEqual(caught.exception.code, "job_not_found")
        self.assertIn("987654", caught.exception.message)
        self.assertIs(client.queue.connection(), conn, "the same connection serves on")
        self.assertFalse(conn.closed)
        client.queue.stats()

    def test_a_refused_handshake_is_typed(self) -> None:
        client = Client(self.fixture.socket, handshake={"protocol": 2})
        with client, self.assertRaises(hearth_client.UnsupportedProtocol) as caught:
            client.ping()
        self.assertIsInstance(caught.exception, hearth_client.Refused)
        self.assertEqual(
            caught.exception.daemon, {"version": hearth_client.__version__, "pid": self.fixture.daemon.pid}
        )

    def test_a_channel_can_add_its_own_handshake_fields(self) -> None:
        settings = ConnectSettings(Paths(self.fixture.state.state_dir), "client-tests/1", 10.0, {"client": "common/1"})
        status = StatusClient(settings, handshake={"protocol": 2})
        self.addCleanup(status.close)
        with self.assertRaises(hearth_client.UnsupportedProtocol):
            status.ping()
        plain = StatusClient(settings)
        self.addCleanup(plain.close)
        plain.ping()

    # -- pool --------------------------------------------------------------------

    def test_take_releases_on_exit(self) -> None:
        client = self.client()
        with client.pool.take("scratch", timeout_ms=30_000) as env:
            with open(os.path.join(env.path, "marker")) as marker:
                self.assertEqual(marker.read(), "built\n")
            self.assertFalse(env.warm)
            self.assertIn(env.lease, [lease["lease"] for lease in client.pool.leases("scratch")])
            self.assertEqual(env.info["holder"], "client-tests/1")
        assert env.released is not None
        self.assertEqual(env.released.outcome, "removed")
        self.assertNotIn(env.lease, [lease["lease"] for lease in client.pool.leases()])
        with self.assertRaises(hearth_client.UnknownLease):
            client.pool.release(env.lease)

    def test_take_releases_when_the_block_raises(self) -> None:
        client = self.client()
        with self.assertRaises(ZeroDivisionError), client.pool.take("scratch", timeout_ms=30_000) as env:
            _ = 1 / 0
        self.assertIsNotNone(env.released)
        self.assertEqual(client.pool.leases("scratch"), [])

    def test_pool_requests(self) -> None:
        client = self.client()
        names = [p["name"] for p in client.pool.status()["pools"]]
        self.assertIn("venv", names)
        self.assertIn("scratch", names)
        with self.assertRaises(hearth_client.UnknownPool):
            client.pool.take("nope")
        with self.assertRaises(hearth_client.TakeTimeout):
            client.pool.take("scratch", timeout_ms=0)
        with self.assertRaises(hearth_client.BuildFailed):
            client.pool.take("broken", timeout_ms=30_000)
        definition = {"name": "py-defined", "create": ["true"]}
        self.assertEqual(client.pool.define(definition), ("runtime", True))
        self.assertEqual(client.pool.define(definition), ("runtime", False))
        self.assertEqual(client.pool.warm("py-defined", 1), (1, 0))
        self.assertGreaterEqual(client.pool.drain("py-defined"), 0)
        self.assertIsNone(client.pool.undefine("py-defined"))
        with self.assertRaises(hearth_client.NotRuntimeDefined):
            client.pool.undefine("scratch")
        with self.assertRaises(hearth_client.InvalidDefinition):
            client.pool.define({"name": "bad", "kind": "command"})

    def test_release_with_reuse(self) -> None:
        client = self.client()
        lease = client.pool.take("scratch", timeout_ms=30_000)
        released = lease.release(reuse=True)
        self.assertIn(released.outcome, ("removed", "resetting"))
        self.assertIs(lease.release(), released, "a second release changes nothing")

    # -- queue -------------------------------------------------------------------

    def test_submit_wait_logs(self) -> None:
        client = self.client()
        submitted = client.queue.submit(["sh", "-c", "echo hello; echo oops >&2"], env={"A": "1"})
        self.assertFalse(submitted.deduplicated)
        self.assertEqual(submitted.job["cwd"], os.getcwd(), "a job without cwd runs where its submitter is")
        job_id = submitted.job["id"]
        states = [job["state"] for job in client.queue.wait(job_id, timeout=30)]
        self.assertEqual(states[-1], "succeeded")
        self.assertTrue(set(states) <= {"queued", "running", "succeeded"}, states)
        stream = client.queue.logs(job_id)
        self.assertEqual(b"".join(chunk.data for chunk in stream), b"hello\n")
        self.assertEqual((stream.offset, stream.state), (6, "succeeded"))
        err = client.queue.logs(job_id, stream="stderr", offset=1)
        self.assertEqual([c.data for c in err], [b"ops\n"])
        details = client.queue.get(job_id)
        self.assertEqual(details.job["exit_code"], 0)
        self.assertEqual([a["outcome"] for a in details.attempts], ["succeeded"])
        self.assertIn(job_id, [job["id"] for job in client.queue.list(states=["succeeded"]).jobs])

    def test_follow_logs_of_a_running_job(self) -> None:
        client = self.client()
        job_id = client.queue.submit(["sh", "-c", "echo one; sleep 0.2; echo two"]).job["id"]
        data = b"".join(c.data for c in client.queue.logs(job_id, follow=True, timeout=30))
        self.assertEqual(data, b"one\ntwo\n")

    def test_idempotency_cancel_retry_purge(self) -> None:
        client = self.client()
        first = client.queue.submit(["true"], key="py-key", run_at_ms=FAR_FUTURE_MS)
        again = client.queue.submit(["true"], key="py-key", run_at_ms=FAR_FUTURE_MS)
        self.assertTrue(again.deduplicated)
        self.assertEqual(again.job["id"], first.job["id"])
        with self.assertRaises(hearth_client.IdempotencyConflict):
            client.queue.submit(["false"], key="py-key")
        self.assertEqual(client.queue.cancel(first.job["id"])["state"], "canceled")
        with self.assertRaises(hearth_client.JobFinished):
            client.queue.cancel(first.job["id"])

        dead = client.queue.submit(["false"], max_attempts=1, queue="py-dead").job["id"]
        self.assertEqual(client.queue.wait_done(dead, timeout=30)["state"], "dead")
        self.assertEqual(client.queue.retry([dead]), [dead])
        self.assertEqual(client.queue.wait_done(dead, timeout=30)["state"], "dead")
        self.assertEqual(client.queue.stats()["queues"]["py-dead"]["dead"], 1)
        self.assertEqual(client.queue.purge(all=True, queue="py-dead"), [dead])
        with self.assertRaises(hearth_client.JobNotFound):
            client.queue.get(dead)
        with self.assertRaises(ValueError):
            client.queue.retry()
        with self.assertRaises(hearth_client.InvalidRequest):
            client.queue.submit([])

    def test_leaving_a_wait_early_closes_only_its_connection(self) -> None:
        client = self.client()
        job_id = client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS).job["id"]
        stream = client.queue.wait(job_id)
        first = next(stream)
        self.assertEqual(first["state"], "queued")
        conn = client.queue.connection()
        stream.close()
        self.assertTrue(conn.closed, "a stream left early closes its connection")
        self.assertEqual(client.queue.cancel(job_id)["state"], "canceled", "the next call reconnects")

    def test_a_deadline_closes_the_connection_and_the_next_call_reconnects(self) -> None:
        client = self.client()
        job_id = client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS).job["id"]
        conn = client.queue.connection()
        started = time.monotonic()
        with self.assertRaises(hearth_client.Timeout) as caught:
            client.queue.wait_done(job_id, timeout=0.3)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(caught.exception.code, "timeout")
        self.assertTrue(conn.closed)
        self.assertEqual(client.queue.get(job_id).job["state"], "queued")
        client.queue.cancel(job_id)

    # -- blob ----------------------------------------------------------------------

    def test_blob_roundtrip(self) -> None:
        client = self.client()
        data = os.urandom(3 * 1024 * 1024 + 17)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        stored = client.blob.put(io.BytesIO(data), media_type="application/octet-stream", name="random.bin")
        self.assertEqual(stored, (digest, len(data), False))
        self.assertEqual(client.blob.put(data).existed, True)
        self.assertEqual(
            client.blob.put(io.BytesIO(b""), sha256=digest), (digest, len(data), True), "no data sent when known"
        )
        out = io.BytesIO()
        content = client.blob.get(digest, out)
        self.assertEqual((content["size"], content["length"]), (len(data), len(data)))
        self.assertEqual(out.getvalue(), data)
        part = io.BytesIO()
        client.blob.get(digest, part, offset=10, length=100)
        self.assertEqual(part.getvalue(), data[10:110])
        info = client.blob.stat(digest)
        self.assertEqual((info["name"], info["pinned"]), ("random.bin", False))
        self.assertTrue(client.blob.has(digest))
        client.blob.pin(digest)
        with self.assertRaises(hearth_client.BlobPinned):
            client.blob.delete(digest)
        client.blob.unpin(digest)
        page = client.blob.list(limit=1000)
        self.assertIn(digest, [b["hash"] for b in page.blobs])
        self.assertIsNone(page.next_cursor)
        self.assertEqual(client.blob.delete(digest), len(data))
        with self.assertRaises(hearth_client.BlobNotFound):
            client.blob.get_bytes(digest)
        abc = client.blob.put(b"abc").hash
        with self.assertRaises(hearth_client.RangeNotSatisfiable):
            client.blob.get(abc, io.BytesIO(), offset=4)
        self.assertIsInstance(client.blob.usage()["count"], int)
        self.assertIsInstance(client.blob.gc()["removed"], int)

    def test_put_errors_part_way_keep_the_connection(self) -> None:
        client = self.client()
        conn = client.blob.connection()
        with self.assertRaises(hearth_client.SizeMismatch):
            client.blob.put(io.BytesIO(b"x" * (3 * 1024 * 1024)), size=10)
        with self.assertRaises(hearth_client.HashMismatch):
            client.blob.put(b"abc", sha256="sha256:" + "0" * 64)
        with self.assertRaises(hearth_client.InvalidRequest):
            client.blob.stat("sha256:XYZ")
        self.assertIs(client.blob.connection(), conn)
        self.assertEqual(client.blob.get_bytes(client.blob.put(b"still fine").hash), b"still fine")

    def test_put_file_and_a_failing_source(self) -> None:
        client = self.client()
        path = os.path.join(self.fixture.state.root, "upload.txt")
        with open(path, "wb") as f:
            f.write(b"from a file\n")
        stored = client.blob.put_file(path, media_type="text/plain")
        self.assertEqual(client.blob.get_bytes(stored.hash), b"from a file\n")

        class Broken(io.RawIOBase):
            def readinto(self, buf: "bytearray | memoryview") -> int:  # type: ignore[override]
                raise OSError("the disk went away")

        with self.assertRaises(hearth_client.LocalIOError):
            client.blob.put(Broken())
        self.assertTrue(client.blob.usage()["count"] >= 1, "the next call reconnects")

    def test_threads_each_with_a_client(self) -> None:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with Client(self.fixture.socket) as client:
                    for _ in range(20):
                        client.ping()
                        client.queue.stats()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])


if __name__ == "__main__":
    unittest.main()
