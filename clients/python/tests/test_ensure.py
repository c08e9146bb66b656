"""``ensure_daemon_running`` against the real hearthd: races, failed starts, lookup of the binary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unittest
from unittest import mock

import hearth_client
from hearth_client import Client, ensure_daemon_running, find_daemon_binary

from support import REPO, DaemonFixture, StateDir, clean_env, hearthd_bin, stop_detached

RACE = """
import json, sys
import hearth_client
ensured = hearth_client.ensure_daemon_running(state_dir=sys.argv[1], timeout=30)
print(json.dumps({"pid": ensured.daemon.pid, "spawned": ensured.spawned}))
"""


def hearthd_processes(state_dir: str) -> list[int]:
    """Live hearthd processes serving ``state_dir`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and argv and argv[0].endswith(b"hearthd") and state_dir.encode() in argv:
            found.append(int(entry))
    return found


class Ensure(unittest.TestCase):
    def setUp(self) -> None:
        self.state = StateDir()
        self.addCleanup(self.state.cleanup)

    @unittest.skipUnless(sys.platform.startswith("linux"), "counts processes through /proc")
    def test_sixteen_racing_processes_end_with_one_daemon(self) -> None:
        self.addCleanup(stop_detached, self.state.state_dir)
        env = clean_env(HEARTH_DAEMON_BIN=hearthd_bin(), PYTHONPATH=str(REPO / "clients" / "python" / "src"))
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, self.state.state_dir],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            for _ in range(16)
        ]
        results = []
        for racer in racers:
            out, err = racer.communicate(timeout=60)
            self.assertEqual(racer.returncode, 0, err.decode())
            results.append(json.loads(out))
        pids = {r["pid"] for r in results}
        self.assertEqual(len(pids), 1, results)
        self.assertEqual(sum(r["spawned"] for r in results), 1, results)
        self.assertEqual(hearthd_processes(self.state.state_dir), list(pids))

    def test_a_running_daemon_is_used_as_it_is(self) -> None:
        fixture = DaemonFixture()
        self.addCleanup(fixture.close)
        ensured = ensure_daemon_running(state_dir=fixture.state.state_dir, daemon_bin="/nonexistent/hearthd")
        self.assertEqual(ensured.daemon, (hearth_client.__version__, fixture.daemon.pid))
        self.assertFalse(ensured.spawned)
        self.assertIsNone(ensured.replaced)

    def test_a_failed_start_raises_the_daemons_own_error(self) -> None:
        self.state.write_config("[server]\nmax_frame = 'huge'\n")
        with self.assertRaises(hearth_client.StartFailed) as caught:
            ensure_daemon_running(state_dir=self.state.state_dir, daemon_bin=hearthd_bin(), timeout=20)
        self.assertEqual(caught.exception.code, "config_invalid")
        self.assertIn("max_frame", caught.exception.message)
        with Client(state_dir=self.state.state_dir) as client, self.assertRaises(hearth_client.NotRunning):
            client.ping()

    def test_an_insecure_state_dir_is_refused_by_the_daemon(self) -> None:
        os.makedirs(self.state.state_dir, mode=0o700)
        os.chmod(self.state.state_dir, 0o777)
        with self.assertRaises(hearth_client.StartFailed) as caught:
            ensure_daemon_running(state_dir=self.state.state_dir, daemon_bin=hearthd_bin(), timeout=20)
        self.assertEqual(caught.exception.code, "state_dir_insecure")

    def test_a_binary_that_cannot_run(self) -> None:
        with self.assertRaises(hearth_client.StartFailed) as caught:
            ensure_daemon_running(state_dir=self.state.state_dir, daemon_bin="/nonexistent/hearthd", timeout=5)
        self.assertEqual(caught.exception.code, "spawn_failed")

    def test_daemon_args_reach_the_spawned_daemon(self) -> None:
        self.addCleanup(stop_detached, self.state.state_dir)
        ensured = ensure_daemon_running(
            state_dir=self.state.state_dir,
            daemon_bin=hearthd_bin(),
            daemon_args=["--max-frame", "64KiB"],
            timeout=20,
        )
        self.assertTrue(ensured.spawned)
        with Client(state_dir=self.state.state_dir) as client:
            self.assertEqual(client.status()["limits"]["max_frame"], 64 * 1024)
            self.assertEqual(client.blob.connection().max_frame, 64 * 1024)


class BinaryLookup(unittest.TestCase):
    def test_order(self) -> None:
        with mock.patch.dict(os.environ, {"HEARTH_DAEMON_BIN": "/from/env/hearthd"}):
            self.assertEqual(find_daemon_binary("/explicit/hearthd"), "/explicit/hearthd")
            self.assertEqual(find_daemon_binary(), "/from/env/hearthd")
        bindir = os.path.dirname(hearthd_bin())
        with mock.patch.dict(os.environ, {"HEARTH_DAEMON_BIN": "", "PATH": bindir}):
            self.assertEqual(find_daemon_binary(), os.path.join(bindir, "hearthd"))
        with mock.patch.dict(os.environ, {"HEARTH_DAEMON_BIN": "", "PATH": ""}):
            with self.assertRaises(hearth_client.DaemonBinaryNotFound) as caught:
                find_daemon_binary()
            self.assertIn("HEARTH_DAEMON_BIN", caught.exception.message)


if __name__ == "__main__":
    unittest.main()
