"""Where a daemon's files live, resolved exactly as ``hearth``'s ``src/paths.rs`` does.

- the state directory: an explicit one, else ``HEARTH_STATE_DIR``, else the
  platform default (Linux and other Unix: ``$XDG_STATE_HOME/hearth`` when
  ``XDG_STATE_HOME`` is absolute, else ``~/.local/state/hearth``; macOS:
  ``~/Library/Application Support/hearth``);
- the socket: an explicit one, else ``HEARTH_SOCKET``, else ``hearth.sock``
  in the state directory.

Relative paths are made absolute; empty environment variables count as unset.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Union

from .errors import ConnectError, HearthError

__all__ = [
    "ENV_STATE_DIR",
    "ENV_SOCKET",
    "SOCKET_FILE",
    "Paths",
    "default_state_dir",
    "max_socket_path_len",
    "check_socket_path",
]

ENV_STATE_DIR = "HEARTH_STATE_DIR"
ENV_SOCKET = "HEARTH_SOCKET"
SOCKET_FILE = "hearth.sock"

PathLike = Union[str, "os.PathLike[str]"]


class Paths:
    """The state directory and socket of one daemon."""

    __slots__ = ("state_dir", "socket")

    def __init__(self, state_dir: PathLike, socket: Optional[PathLike] = None) -> None:
        self.state_dir: str = os.path.abspath(os.fspath(state_dir))
        self.socket: str = (
            os.path.abspath(os.fspath(socket)) if socket is not None else os.path.join(self.state_dir, SOCKET_FILE)
        )

    @classmethod
    def resolve(cls, state_dir: Optional[PathLike] = None, socket: Optional[PathLike] = None) -> "Paths":
        """Explicit values, else ``HEARTH_STATE_DIR`` / ``HEARTH_SOCKET``, else the platform default."""
        chosen = state_dir if state_dir is not None else (_env(ENV_STATE_DIR) or default_state_dir())
        sock = socket if socket is not None else _env(ENV_SOCKET)
        return cls(chosen, sock)

    def __repr__(self) -> str:
        return f"Paths(state_dir={self.state_dir!r}, socket={self.socket!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Paths) and (self.state_dir, self.socket) == (other.state_dir, other.socket)

    def __hash__(self) -> int:
        return hash((self.state_dir, self.socket))


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value else None


def default_state_dir() -> str:
    """The platform's default state directory."""
    home = _env("HOME")
    if sys.platform == "darwin":
        if home is None:
            raise _no_home()
        return os.path.join(home, "Library", "Application Support", "hearth")
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "hearth")
    if home is None:
        raise _no_home()
    return os.path.join(home, ".local", "state", "hearth")


def _no_home() -> HearthError:
    return ConnectError(
        "no_home", f"cannot choose a state directory: HOME is not set; pass state_dir or set {ENV_STATE_DIR}"
    )


def max_socket_path_len() -> int:
    """The longest socket path ``connect`` accepts here, in bytes: 107 on Linux, 103 on macOS and the BSDs."""
    return 107 if sys.platform.startswith("linux") else 103


def check_socket_path(path: str) -> None:
    """Raises :class:`~hearth_client.ConnectError` (``socket_path_too_long``) when ``path`` does not fit."""
    length = len(os.fsencode(path))
    limit = max_socket_path_len()
    if length > limit:
        raise ConnectError(
            "socket_path_too_long",
            f"socket path {path!r} is {length} bytes, longer than the platform limit of {limit} bytes; "
            f"use a shorter state directory or set {ENV_SOCKET} to a shorter path",
        )
