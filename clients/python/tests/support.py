"""Shared test helpers: a real ``hearthd`` on a temp state directory, and waits with deadlines."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from hearth_client import Client, HearthError, NotRunning
from hearth_client._transport import Connection

REPO = Path(__file__).resolve().parents[3]
CONFORMANCE = REPO / "tests" / "conformance"


def hearthd_bin() -> str:
    """``HEARTH_DAEMON_BIN``, else the repository's ``target/debug/hearthd`` (``cargo build --bins``)."""
    env = os.environ.get("HEARTH_DAEMON_BIN")
    if env:
        return env
    built = REPO / "target" / "debug" / "hearthd"
    if not built.exists():
        raise RuntimeError(f"{built} is missing: run `cargo build --bins` first, or set HEARTH_DAEMON_BIN")
    return str(built)


def hearth_bin() -> str:
    """The Rust CLI beside ``hearthd``."""
    return str(Path(hearthd_bin()).with_name("hearth"))


def clean_env(**extra: str) -> Dict[str, str]:
    """This process's environment without hearth's own variables (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env.update(extra)
    return env


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Polls ``condition`` with backoff; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class StateDir:
    """A short temp directory (the socket path must fit in 107 bytes) holding a state directory."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="hc-", dir="/tmp")
        self.state_dir = os.path.join(self.root, "s")
        self.socket = os.path.join(self.state_dir, "hearth.sock")

    def write_config(self, text: str) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(self.state_dir, "config.toml"), "w") as f:
            f.write(text)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Daemon:
    """``hearthd`` in the foreground on a :class:`StateDir`; :meth:`stop` ends it."""

    def __init__(self, state: StateDir, args: Sequence[str] = ()) -> None:
        self.state = state
        self.log_path = os.path.join(state.root, "hearthd.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [hearthd_bin(), "--state-dir", state.state_dir, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=clean_env(HEARTH_LOG="debug"),
            )
        wait_for("hearthd to answer a status handshake", self._answers)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"hearthd exited with {self.proc.returncode} during start-up:\n{self.log()}")
        try:
            Connection.open(self.state.socket, "status", timeout=2.0).close()
            return True
        except HearthError:
            return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class DaemonFixture:
    """A state directory and its daemon, for ``setUp``/``tearDown``."""

    def __init__(self, config: Optional[str] = None, args: List[str] = []) -> None:  # noqa: B006
        self.state = StateDir()
        if config is not None:
            self.state.write_config(config)
        self.daemon = Daemon(self.state, args)

    @property
    def socket(self) -> str:
        return self.state.socket

    def close(self) -> None:
        try:
            self.daemon.stop()
        finally:
            self.state.cleanup()


def lock_free(state_dir: str) -> bool:
    """True when no daemon holds ``daemon.lock`` (the singleton lock) of ``state_dir``."""
    path = os.path.join(state_dir, "daemon.lock")
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def stop_detached(state_dir: str) -> None:
    """Stops a daemon started with ``--detach`` on ``state_dir`` and waits until its lock is free."""
    try:
        with Client(state_dir=state_dir, timeout=5.0) as client:
            client.shutdown("test over")
    except NotRunning:
        pass
    wait_for(f"the daemon of {state_dir} to release its lock", lambda: lock_free(state_dir))
