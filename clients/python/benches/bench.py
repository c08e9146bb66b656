"""The Python client beside a minimal raw-socket loop doing the same framing, in the same run.

- ping round trip p50 on one connection: ``Client.ping()`` against a loop that
  sends a prebuilt frame, reads the answer with ``recv_into`` and parses it with
  ``json.loads`` (and, for scale, the same loop without the parse);
- durable queue submits per second over 16 connections (one thread each):
  ``client.queue.submit()`` against the same loop encoding each submit with
  ``json.dumps``;
- blob put throughput of one file: ``client.blob.put_file()`` against the Rust
  CLI ``hearth blob put`` on the same file;
- events read per second: ``client.events(since=0)`` (typed events) against the
  same loop subscribing and parsing each frame with ``json.loads``, both
  replaying the events the runs above published (the daemon keeps them all).

Run from a checkout after ``cargo build --bins`` (or with ``HEARTH_DAEMON_BIN``):
``python benches/bench.py [--quick]``. The target is the client within 1.3x of
the minimal loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))

import hearth_client  # noqa: E402

from support import DaemonFixture, clean_env, hearth_bin  # noqa: E402

FAR_FUTURE_MS = 4102444800000


def frame(value: object) -> bytes:
    payload = json.dumps(value, separators=(",", ":")).encode()
    return struct.pack(">I", len(payload)) + payload


class RawConn:
    """The baseline: a blocking socket, prebuilt request frames, one ``recv_into`` buffer, ``json.loads``.

    It does what any client must (frame, send, read a frame, parse its JSON)
    and nothing else: no deadlines, no error mapping, no typed answers.
    """

    def __init__(self, path: str, channel: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = bytearray(65536)
        self.sock.sendall(frame({"channel": channel, "protocol": 1}))
        reply = json.loads(self.read())
        assert reply["ok"], reply

    def request(self, frame: bytes) -> dict:  # type: ignore[type-arg]
        """Sends a prebuilt request frame and parses the answer, as any client must."""
        self.sock.sendall(frame)
        answer: dict = json.loads(self.read().decode())  # type: ignore[type-arg]
        return answer

    def read(self) -> bytes:
        view = memoryview(self.buf)
        have = 0
        while True:
            if have >= 4:
                (length,) = struct.unpack_from(">I", self.buf, 0)
                if have >= 4 + length:
                    return bytes(view[4 : 4 + length])
            n = self.sock.recv_into(view[have:])
            if n == 0:
                raise ConnectionError("closed")
            have += n

    def close(self) -> None:
        self.sock.close()


def p50_us(samples: List[int]) -> float:
    return statistics.median(samples) / 1000.0


def bench_ping(socket_path: str, rounds: int, per_round: int) -> None:
    client = hearth_client.Client(socket_path)
    raw = RawConn(socket_path, "status")
    ping = frame({"type": "ping"})
    for _ in range(200):  # warm both up
        client.ping()
        raw.request(ping)
    ours: List[int] = []
    base: List[int] = []
    bare: List[int] = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for _ in range(per_round):
            t = clock()
            client.ping()
            ours.append(clock() - t)
        for _ in range(per_round):
            t = clock()
            if raw.request(ping)["type"] != "pong":
                raise AssertionError("not a pong")
            base.append(clock() - t)
        for _ in range(per_round):
            t = clock()
            raw.sock.sendall(ping)
            raw.read()
            bare.append(clock() - t)
    client.close()
    raw.close()
    a, b, c = p50_us(ours), p50_us(base), p50_us(bare)
    print(
        f"ping round trip p50 (1 connection, {len(ours)} each): client {a:.1f} us, "
        f"minimal loop {b:.1f} us (ratio {a / b:.2f}x); "
        f"the loop without parsing the answer {c:.1f} us (ratio {a / c:.2f}x)"
    )


def run_threads(n: int, work: Callable[[int], int]) -> float:
    done: List[int] = []
    errors: List[BaseException] = []
    barrier = threading.Barrier(n + 1)

    def body(i: int) -> None:
        try:
            barrier.wait()
            done.append(work(i))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return sum(done) / elapsed


def bench_submits(socket_path: str, connections: int, per_connection: int, rounds: int) -> None:
    def ours(i: int) -> int:
        with hearth_client.Client(socket_path) as client:
            for _ in range(per_connection):
                client.queue.submit(["true"], run_at_ms=FAR_FUTURE_MS, queue="bench")
        return per_connection

    def baseline(i: int) -> int:
        raw = RawConn(socket_path, "queue")
        for _ in range(per_connection):
            # Jobs differ from one submit to the next: the loop encodes each one.
            request = frame({"type": "submit", "argv": ["true"], "run_at_ms": FAR_FUTURE_MS, "queue": "bench"})
            answer = raw.request(request)
            assert answer["type"] == "submitted", answer
        raw.close()
        return per_connection

    a_rates, b_rates = [], []
    for r in range(rounds):
        # Alternate which goes first, so that drift (the store growing, other
        # load on the machine) does not favour one side.
        if r % 2:
            b_rates.append(run_threads(connections, baseline))
            a_rates.append(run_threads(connections, ours))
        else:
            a_rates.append(run_threads(connections, ours))
            b_rates.append(run_threads(connections, baseline))
    a, b = statistics.median(a_rates), statistics.median(b_rates)
    print(
        f"durable queue submits ({connections} connections, {connections * per_connection} per run, "
        f"median of {rounds}): client {a:.0f}/s, minimal loop {b:.0f}/s, ratio {b / a:.2f}x"
    )


def bench_blob(fixture: DaemonFixture, size_mib: int, rounds: int) -> None:
    path = os.path.join(fixture.state.root, "blob.bin")
    whole = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size_mib):
            block = hashlib.sha256(i.to_bytes(8, "big")).digest() * (1024 * 1024 // 32)
            whole.update(block)
            f.write(block)
    digest = "sha256:" + whole.hexdigest()
    env = clean_env(HEARTH_STATE_DIR=fixture.state.state_dir)
    ours: List[float] = []
    cli: List[float] = []

    def with_client() -> None:
        with hearth_client.Client(fixture.socket) as client:
            t = time.perf_counter()
            stored = client.blob.put_file(path)
            ours.append(time.perf_counter() - t)
            assert stored.hash == digest and not stored.existed, stored
            client.blob.delete(digest, force=True)

    def with_cli() -> None:
        argv = [hearth_bin(), "blob", "put", "--no-spawn", path]
        t = time.perf_counter()
        out = subprocess.run(argv, env=env, capture_output=True, check=False)
        cli.append(time.perf_counter() - t)
        assert out.returncode == 0, out.stderr.decode()
        with hearth_client.Client(fixture.socket) as client:
            client.blob.delete(digest, force=True)

    # A warm-up of each, then rounds that alternate which goes first (each put
    # stores the content anew: it is deleted after every put).
    with_client()
    with_cli()
    ours.clear()
    cli.clear()
    for r in range(rounds):
        first, second = (with_cli, with_client) if r % 2 else (with_client, with_cli)
        first()
        second()
    a = size_mib / statistics.median(ours)
    b = size_mib / statistics.median(cli)
    print(
        f"blob put of a {size_mib} MiB file (median of {rounds}): client {a:.0f} MiB/s, "
        f"`hearth blob put` {b:.0f} MiB/s, ratio {b / a:.2f}x"
    )


class RawStream(RawConn):
    """The baseline of a stream: :class:`RawConn` keeping what a read brings beyond one frame."""

    def __init__(self, path: str, channel: str) -> None:
        super().__init__(path, channel)
        self.pending = bytearray()

    def next_frame(self) -> bytes:
        while True:
            if len(self.pending) >= 4:
                (length,) = struct.unpack_from(">I", self.pending, 0)
                if len(self.pending) >= 4 + length:
                    payload = bytes(self.pending[4 : 4 + length])
                    del self.pending[: 4 + length]
                    return payload
            n = self.sock.recv_into(self.buf)
            if n == 0:
                raise ConnectionError("closed")
            self.pending += self.buf[:n]


def bench_events(socket_path: str, rounds: int) -> None:
    def ours() -> float:
        with hearth_client.Client(socket_path) as client:
            t = time.perf_counter()
            events = client.events(since=0)
            last, n = events.seq, 0
            for notice in events:
                assert isinstance(notice, hearth_client.Event), notice
                n += 1
                if notice.seq == last:
                    break
            elapsed = time.perf_counter() - t
            events.close()
        return n / elapsed

    def baseline() -> float:
        raw = RawStream(socket_path, "status")
        t = time.perf_counter()
        raw.sock.sendall(frame({"type": "subscribe", "since": 0}))
        last, n = json.loads(raw.next_frame())["seq"], 0
        while True:
            event = json.loads(raw.next_frame())
            assert event["type"] == "event", event
            n += 1
            if event["seq"] == last:
                break
        elapsed = time.perf_counter() - t
        raw.close()
        return n / elapsed

    a_rates: List[float] = []
    b_rates: List[float] = []
    for r in range(rounds):
        first, second = (baseline, ours) if r % 2 else (ours, baseline)
        (a_rates if first is ours else b_rates).append(first())
        (a_rates if second is ours else b_rates).append(second())
    with hearth_client.Client(socket_path) as client:
        count = client.events().seq
    a, b = statistics.median(a_rates), statistics.median(b_rates)
    print(
        f"events replayed ({count} per run, median of {rounds}): client {a:.0f}/s, "
        f"minimal loop {b:.0f}/s, ratio {b / a:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    # The daemon keeps every event the runs publish, for the events run to replay.
    fixture = DaemonFixture("[daemon]\nevent_buffer = 100000\n\n[blob]\nhttp = false\n\n[queue]\nworkers = 1\n")
    try:
        print(f"hearthd {fixture.daemon.pid}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        if args.quick:
            bench_ping(fixture.socket, 2, 200)
            bench_submits(fixture.socket, 16, 10, 1)
            bench_blob(fixture, 16, 1)
            bench_events(fixture.socket, 1)
        else:
            bench_ping(fixture.socket, 10, 1000)
            bench_submits(fixture.socket, 16, 100, 9)
            bench_blob(fixture, 256, 4)
            bench_events(fixture.socket, 9)
    finally:
        fixture.close()


if __name__ == "__main__":
    main()
