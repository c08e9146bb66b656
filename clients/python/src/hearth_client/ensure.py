"""``ensure_daemon_running``: connect to the daemon, starting it when none runs.

The same contract as the Rust client's (proto-docs/lifecycle.md):

1. Connect and handshake. If a daemon answers, done.
2. Otherwise find ``hearthd`` (the ``daemon_bin`` argument, else
   ``HEARTH_DAEMON_BIN``, else next to the running interpreter, else on
   ``PATH``) and run ``hearthd --detach --state-dir ... --socket ...``.
3. ``ready``: connect. ``failed``: raise :class:`StartFailed` with the
   daemon's own code and message, not a timeout. ``already_running``:
   another caller won the race (or an old daemon is still stopping); poll the
   socket with backoff, and go back to step 2 if it does not answer in time.

The daemon's singleton lock decides every race, so any number of callers in
any number of processes end with exactly one daemon, and all succeed. The
whole call has a deadline (10 s by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from ._transport import Connection
from ._version import __version__
from .errors import DaemonBinaryNotFound, HearthError, NotRunning, StartFailed, Timeout
from .paths import PathLike, Paths
from .protocol import DEFAULT_CLIENT_NAME
from .status import read_shutdown, shutdown_request

__all__ = [
    "ENV_DAEMON_BIN",
    "DaemonIdent",
    "Ensured",
    "ensure_daemon_running",
    "find_daemon_binary",
    "async_ensure_daemon_running",
]

#: Environment variable naming the ``hearthd`` binary to spawn.
ENV_DAEMON_BIN = "HEARTH_DAEMON_BIN"


class DaemonIdent(NamedTuple):
    """Who answered."""

    version: str
    pid: int


class Ensured(NamedTuple):
    """The daemon that answers; ``spawned`` when this call started it; ``replaced``: the older one it stopped."""

    daemon: DaemonIdent
    spawned: bool
    replaced: Optional[DaemonIdent]


def find_daemon_binary(explicit: Optional[PathLike] = None) -> str:
    """``explicit``, else ``HEARTH_DAEMON_BIN``, else next to the running interpreter, else on ``PATH``."""
    if explicit is not None:
        return os.fspath(explicit)
    env = os.environ.get(ENV_DAEMON_BIN)
    if env:
        return env
    searched = []
    # A virtual environment's bin/ holds both the interpreter and what was
    # installed into it: the counterpart of "next to the executable".
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "hearthd")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    searched.append(beside)
    on_path = shutil.which("hearthd")
    if on_path:
        return on_path
    searched.append("$PATH")
    raise DaemonBinaryNotFound(
        "daemon_binary_not_found",
        f"cannot find the hearthd binary (looked at: {', '.join(searched)}); set {ENV_DAEMON_BIN}",
    )


def _version_less(a: str, b: str) -> bool:
    """``a < b`` for ``major.minor.patch[-pre]``; a pre-release sorts before its release; unparseable never older."""

    def parse(v: str) -> Optional[Tuple[Tuple[int, ...], bool]]:
        core, pre = v, False
        for i, ch in enumerate(v):
            if ch in "-+":
                core, pre = v[:i], ch == "-" and len(v) > i + 1
                break
        parts = core.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return None
        return (tuple(int(p) for p in parts), pre)

    pa, pb = parse(a), parse(b)
    if pa is None or pb is None:
        return False
    return bool(pa[0] < pb[0] or (pa[0] == pb[0] and pa[1] and not pb[1]))


def _launch(
    paths: Paths, daemon_bin: Optional[PathLike], daemon_args: Sequence[str], deadline: float, timeout: float
) -> Dict[str, Any]:
    bin_path = find_daemon_binary(daemon_bin)
    remaining = max(deadline - time.monotonic(), 0.001)
    argv = [
        bin_path,
        "--detach",
        "--ready-timeout",
        f"{max(int(remaining * 1000), 1)}ms",
        "--state-dir",
        paths.state_dir,
        "--socket",
        paths.socket,
        *daemon_args,
    ]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=remaining, check=False)
    except subprocess.TimeoutExpired:
        raise Timeout("timeout", f"timed out after {timeout}s waiting for hearthd to start") from None
    except OSError as e:
        raise StartFailed("spawn_failed", f"cannot run {bin_path}: {e}") from None
    for line in reversed(done.stdout.decode("utf-8", "replace").splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and isinstance(report.get("event"), str):
            return report
    stderr = done.stderr.decode("utf-8", "replace").strip()
    return {
        "event": "failed",
        "code": "launch_failed",
        "message": f"{bin_path} --detach exited with status {done.returncode} without a launch report: {stderr}",
    }


def _poll_until(paths: Paths, client_name: Optional[str], until: float) -> Optional[DaemonIdent]:
    delay = 0.0005
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        try:
            conn = Connection.open(paths.socket, "status", client_name=client_name, timeout=remaining)
        except HearthError:
            pass
        else:
            conn.close()
            assert conn.accepted is not None
            return DaemonIdent(conn.accepted.daemon_version, conn.accepted.daemon_pid)
        time.sleep(min(delay, max(until - time.monotonic(), 0)))
        delay = min(delay * 2, 0.05)


def ensure_daemon_running(
    state_dir: Optional[PathLike] = None,
    socket: Optional[PathLike] = None,
    *,
    daemon_bin: Optional[PathLike] = None,
    timeout: float = 10.0,
    replace_older: bool = False,
    client_name: Optional[str] = DEFAULT_CLIENT_NAME,
    daemon_args: Sequence[str] = (),
) -> Ensured:
    """Returns once a daemon answers on the socket, starting one when none runs.

    ``state_dir`` and ``socket`` resolve as :meth:`Paths.resolve` does. With
    ``replace_older``, a daemon older than this library is asked to drain
    and stop, and this library's starts in its place (never a newer one).
    ``daemon_args`` are passed to a spawned ``hearthd``
    (e.g. ``["--idle-timeout", "30m"]``). When ``hearthd`` cannot start, the
    error is its own (:class:`StartFailed` with its ``code`` and ``message``).
    """
    paths = Paths.resolve(state_dir, socket)
    deadline = time.monotonic() + timeout
    spawned = False
    replaced: Optional[DaemonIdent] = None
    wait_window = 0.25
    draining_delay = 0.005
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            what = "the older daemon to drain and stop" if replaced else "the daemon to answer"
            raise Timeout("timeout", f"timed out after {timeout}s waiting for {what}")
        try:
            conn = Connection.open(paths.socket, "status", client_name=client_name, timeout=remaining)
        except NotRunning:
            pass
        else:
            with conn:
                assert conn.accepted is not None
                daemon = DaemonIdent(conn.accepted.daemon_version, conn.accepted.daemon_pid)
                if replaced is not None and replaced.pid == daemon.pid:
                    # The old daemon still serves while it drains; wait for it to go.
                    conn.close()
                    time.sleep(min(draining_delay, remaining))
                    draining_delay = min(draining_delay * 2, 0.2)
                    continue
                if not (replace_older and replaced is None and _version_less(daemon.version, __version__)):
                    return Ensured(daemon, spawned, replaced)
                reason = f"replaced by a newer client ({client_name})"
                read_shutdown(conn.request(shutdown_request(reason, True), remaining))
                replaced = daemon
                continue
        report = _launch(paths, daemon_bin, daemon_args, deadline, timeout)
        event = report.get("event")
        if event == "ready":
            spawned = True
        elif event == "already_running":
            until = min(time.monotonic() + wait_window, deadline)
            wait_window = min(wait_window * 2, 2.0)
            found = _poll_until(paths, client_name, until)
            if found is not None and (replaced is None or replaced.pid != found.pid):
                return Ensured(found, spawned, replaced)
        else:
            raise StartFailed(str(report.get("code", "startup_failed")), str(report.get("message", report)))


async def async_ensure_daemon_running(
    state_dir: Optional[PathLike] = None,
    socket: Optional[PathLike] = None,
    *,
    daemon_bin: Optional[PathLike] = None,
    timeout: float = 10.0,
    replace_older: bool = False,
    client_name: Optional[str] = DEFAULT_CLIENT_NAME,
    daemon_args: Sequence[str] = (),
) -> Ensured:
    """:func:`ensure_daemon_running` without blocking the event loop.

    It runs in a worker thread. Cancelling the awaiting task returns at once;
    the start under way finishes on its own within ``timeout`` (a started
    daemon keeps running, as it would for any other caller).
    """
    loop = asyncio.get_running_loop()

    def call() -> Ensured:
        return ensure_daemon_running(
            state_dir,
            socket,
            daemon_bin=daemon_bin,
            timeout=timeout,
            replace_older=replace_older,
            client_name=client_name,
            daemon_args=daemon_args,
        )

    return await loop.run_in_executor(None, call)
