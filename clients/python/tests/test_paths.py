"""State directory and socket resolution, as src/paths.rs does it."""

from __future__ import annotations

import os
import sys
import unittest
from typing import Dict, Optional
from unittest import mock

import hearth_client
from hearth_client.paths import Paths, check_socket_path, default_state_dir


def env(**values: Optional[str]) -> Dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HEARTH_STATE_DIR", "HEARTH_SOCKET", "XDG_STATE_HOME")}
    base.update({k: v for k, v in values.items() if v is not None})
    return base


@unittest.skipIf(sys.platform == "darwin", "Linux defaults")
class Resolution(unittest.TestCase):
    def test_explicit_wins_and_is_absolute(self) -> None:
        with mock.patch.dict(os.environ, env(HEARTH_STATE_DIR="/env/state", HEARTH_SOCKET="/env/s.sock"), clear=True):
            p = Paths.resolve("/x/state", "rel.sock")
        self.assertEqual(p.state_dir, "/x/state")
        self.assertEqual(p.socket, os.path.join(os.getcwd(), "rel.sock"))

    def test_environment(self) -> None:
        with mock.patch.dict(os.environ, env(HEARTH_STATE_DIR="/env/state"), clear=True):
            self.assertEqual(Paths.resolve(), Paths("/env/state", "/env/state/hearth.sock"))
        with mock.patch.dict(os.environ, env(HEARTH_STATE_DIR="/env/state", HEARTH_SOCKET="/run/h.sock"), clear=True):
            self.assertEqual(Paths.resolve().socket, "/run/h.sock")
        with mock.patch.dict(os.environ, env(HEARTH_STATE_DIR="", HOME="/home/ada"), clear=True):
            self.assertEqual(Paths.resolve().state_dir, "/home/ada/.local/state/hearth")

    def test_xdg_state_home_only_when_absolute(self) -> None:
        with mock.patch.dict(os.environ, env(XDG_STATE_HOME="/xdg", HOME="/home/ada"), clear=True):
            self.assertEqual(default_state_dir(), "/xdg/hearth")
        with mock.patch.dict(os.environ, env(XDG_STATE_HOME="rel", HOME="/home/ada"), clear=True):
            self.assertEqual(default_state_dir(), "/home/ada/.local/state/hearth")

    def test_no_home(self) -> None:
        values = env()
        values.pop("HOME", None)
        with mock.patch.dict(os.environ, values, clear=True), self.assertRaises(hearth_client.HearthError):
            default_state_dir()


class SocketLength(unittest.TestCase):
    def test_limit(self) -> None:
        check_socket_path("/" + "a" * 102)
        with self.assertRaises(hearth_client.ConnectError) as caught:
            check_socket_path("/" + "a" * 200)
        self.assertEqual(caught.exception.code, "socket_path_too_long")


if __name__ == "__main__":
    unittest.main()
