"""A daemon killed mid-call, and a 256 MiB blob streamed with flat memory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import unittest

import hearth_client
from hearth_client import Client, aio

from support import REPO, DaemonFixture, clean_env

FAR_FUTURE_MS = 4102444800000

# Runs in a child process so that its peak RSS measures this transfer alone.
STREAM_256_MIB = r"""
import hashlib, io, json, resource, sys, time
import hearth_client

SIZE = 256 * 1024 * 1024
BLOCK = 1024 * 1024


class Generated(io.RawIOBase):
    # 256 MiB made on the fly: each MiB is a fresh pattern, so nothing repeats.
    def __init__(self):
        self.sent = 0
        self.digest = hashlib.sha256()

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), SIZE - self.sent)
        if n <= 0:
            return 0
        block = hashlib.sha256(self.sent.to_bytes(8, "big")).digest() * (n // 32 + 1)
        buf[:n] = block[:n]
        self.digest.update(buf[:n])
        self.sent += n
        return n


class Hashing:
    def __init__(self):
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def peak_mib():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / (1024 * 1024)


before = peak_mib()
with hearth_client.Client(sys.argv[1], timeout=60) as client:
    source = Generated()
    started = time.monotonic()
    stored = client.blob.put(source, size=SIZE)
    put_s = time.monotonic() - started
    sink = Hashing()
    started = time.monotonic()
    client.blob.get(stored.hash, sink)
    get_s = time.monotonic() - started
print(json.dumps({
    "before_mib": before,
    "peak_mib": peak_mib(),
    "hash": stored.hash,
    "expected": "sha256:" + source.digest.hexdigest(),
    "got": "sha256:" + sink.digest.hexdigest(),
    "size": sink.size,
    "put_s": put_s,
    "get_s": get_s,
}))
"""


class FlatMemory(unittest.TestCase):
    def test_a_256_mib_blob_streams_both_ways_with_flat_memory(self) -> None:
        fixture = DaemonFixture("[blob]\nhttp = false\n")
        self.addCleanup(fixture.close)
        env = clean_env(PYTHONPATH=str(REPO / "clients" / "python" / "src"))
        done = subprocess.run(
            [sys.executable, "-c", STREAM_256_MIB, fixture.socket],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        report = json.loads(done.stdout)
        self.assertEqual(report["hash"], report["expected"])
        self.assertEqual(report["got"], report["expected"])
        self.assertEqual(report["size"], 256 * 1024 * 1024)
        # The blob is 256 MiB; the client holds a few MiB of it at most.
        self.assertLess(report["peak_mib"] - report["before_mib"], 32, report)
        self.assertLess(report["peak_mib"], 96, report)


class DaemonKilledMidCall(unittest.TestCase):
    def setUp(self) -> None:
        self.fixture = DaemonFixture("[blob]\nhttp = false\n")
        self.addCleanup(self.fixture.close)

    def test_a_wait_gets_connection_closed(self) -> None:
        with Client(self.fixture.socket) as client:
            job_id = client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS).job["id"]
            stream = client.queue.wait(job_id, timeout=30)
            self.assertEqual(next(stream)["state"], "queued")
            self.fixture.daemon.kill()
            started = time.monotonic()
            with self.assertRaises(hearth_client.ConnectionClosed):
                next(stream)
            self.assertLess(time.monotonic() - started, 10)
            with self.assertRaises(hearth_client.NotRunning):
                client.ping()

    def test_a_get_gets_connection_closed(self) -> None:
        with Client(self.fixture.socket) as client:
            stored = client.blob.put(os.urandom(32 * 1024 * 1024))
            daemon = self.fixture.daemon

            class KillOnFirstChunk:
                def write(self, data: bytes) -> int:
                    daemon.kill()
                    return len(data)

            with self.assertRaises(hearth_client.ConnectionClosed):
                client.blob.get(stored.hash, KillOnFirstChunk(), timeout=30)

    def test_an_async_wait_gets_connection_closed(self) -> None:
        async def main() -> None:
            async with aio.Client(self.fixture.socket) as client:
                job_id = (await client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS)).job["id"]
                stream = client.queue.wait(job_id, timeout=30)
                self.assertEqual((await stream.__anext__())["state"], "queued")
                self.fixture.daemon.kill()
                with self.assertRaises(hearth_client.ConnectionClosed):
                    await stream.__anext__()

        asyncio.run(asyncio.wait_for(main(), 60))


if __name__ == "__main__":
    unittest.main()
