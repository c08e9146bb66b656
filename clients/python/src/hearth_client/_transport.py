"""The socket under one connection, blocking and asyncio, both driving :mod:`.protocol`.

A connection that fails in the middle of an exchange (a timeout, a
cancellation, a frame it cannot read, the peer going away) is closed at once,
never reused: a half-read answer left on the socket would be taken for the
answer to the next request. Request errors (``{"type": "error"}``) leave it
usable, as the protocol says.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import struct
import sys
import time
from types import TracebackType
from typing import Mapping, Optional, Type, Union

from .errors import (
    ConnectError,
    ConnectionClosed,
    ForeignDaemon,
    HearthError,
    NotRunning,
    ProtocolError,
    RequestError,
    Timeout,
)
from .paths import check_socket_path
from .protocol import (
    DEFAULT_CLIENT_NAME,
    DEFAULT_MAX_FRAME,
    HEADER_LEN,
    Accepted,
    FrameDecoder,
    Json,
    encode_json,
    frame_header,
    handshake_frame,
    parse_handshake_reply,
    parse_response,
)

__all__ = ["Connection", "AsyncConnection", "DEFAULT_TIMEOUT"]

#: The default deadline of a connect plus handshake, and of one request.
DEFAULT_TIMEOUT = 30.0

_READ_SIZE = 256 * 1024
_U32 = struct.Struct(">I")
# How far past a call's deadline the kernel timeout in force may lie before it
# is moved: a few milliseconds late is not worth a system call per request.
_DEADLINE_SLACK = 0.01
# Payloads at least this large are written straight from their buffer,
# after their own header, instead of being copied into one frame first.
_DIRECT_WRITE_MIN = 64 * 1024

Bytes = Union[bytes, bytearray, memoryview]


def connect_error(path: str, error: OSError) -> HearthError:
    """What a failed ``connect`` means to a caller."""
    if error.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return NotRunning("not_running", f"no daemon is running at {path} ({error.strerror})")
    return ConnectError("connect_failed", f"cannot connect to {path}: {error.strerror or error}")


def check_peer_uid(sock: socket.socket, path: str) -> None:
    """Refuses a daemon of another user before anything is sent to it.

    The daemon serves only the user it runs as, so a socket served by someone
    else (in a directory others can write) may be a trap: the kernel's record
    of the peer is checked first.
    """
    me = os.geteuid()
    uid: Optional[int] = None
    if hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", raw)
    elif sys.platform == "darwin":
        # LOCAL_PEERCRED (SOL_LOCAL = 0, LOCAL_PEERCRED = 1): struct xucred
        # { u_int cr_version; uid_t cr_uid; ... }.
        raw = sock.getsockopt(0, 1, 76)
        _version, uid = struct.unpack_from("2I", raw)
    if uid is not None and uid != me:
        raise ForeignDaemon(
            "foreign_daemon",
            f"refusing to talk to the daemon at {path}: it runs as uid {uid}, not as you (uid {me})",
        )


def _closed(error: Optional[OSError] = None) -> ConnectionClosed:
    why = f" ({error.strerror})" if error is not None and error.strerror else ""
    return ConnectionClosed("connection_closed", f"the daemon closed the connection{why}")


def _timeout(what: str, after: Optional[float]) -> Timeout:
    return Timeout("timeout", f"timed out after {after}s waiting for {what}")


class Connection:
    """A blocking, handshaked connection to one channel.

    Deadlines are the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking
    socket), changed only when a call's deadline is nearer than the one in
    force: a round trip costs two system calls, as it would without any
    deadline. Not thread-safe: give each thread its own (connections are cheap).
    """

    def __init__(
        self,
        sock: socket.socket,
        accepted: Optional[Accepted],
        path: str,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        received: bytes = b"",
    ) -> None:
        max_frame = accepted.max_frame if accepted is not None else DEFAULT_MAX_FRAME
        self._sock: Optional[socket.socket] = sock
        self._decoder = FrameDecoder(max_frame)
        # Frames that came right behind the handshake reply (sync's `joined`).
        self._decoder.feed(received)
        self._rbuf = bytearray(_READ_SIZE)
        self._rview = memoryview(self._rbuf)
        #: The daemon's accepted handshake (``None`` on a connection that sent none).
        self.accepted = accepted
        self.path = path
        #: The largest frame the daemon accepts (and sends) on this connection.
        self.max_frame = max_frame
        sock.settimeout(None)
        # The kernel timeouts in force (0: none).
        self._rcvtimeo = 0.0
        self._sndtimeo = 0.0
        if timeout is not None:
            self._set_kernel_timeout(socket.SO_RCVTIMEO, timeout)
            self._set_kernel_timeout(socket.SO_SNDTIMEO, timeout)

    @classmethod
    def open(
        cls,
        path: str,
        channel: str,
        *,
        client_name: Optional[str] = DEFAULT_CLIENT_NAME,
        handshake: Optional[Mapping[str, object]] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> "Connection":
        """Connects to ``path`` and completes the handshake for ``channel`` within ``timeout`` seconds.

        Raises :class:`NotRunning` when nothing listens, :class:`Refused` (its
        code's class) when the daemon refuses, :class:`Timeout` after the deadline.
        """
        sock = cls.open_unchecked(path, timeout)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            sock.sendall(handshake_frame(channel, client_name, handshake))
            decoder = FrameDecoder(DEFAULT_MAX_FRAME)
            frame = _read_frame_blocking(
                sock, decoder, bytearray(4096), deadline=deadline, after=timeout, what="the handshake reply"
            )
            accepted = parse_handshake_reply(frame)
            received = decoder.rest()
        except socket.timeout:
            sock.close()
            raise _timeout("the handshake reply", timeout) from None
        except OSError as e:
            sock.close()
            raise _closed(e) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock, accepted, path, timeout, received)

    @staticmethod
    def open_unchecked(path: str, timeout: Optional[float] = DEFAULT_TIMEOUT) -> socket.socket:
        """A connected socket (peer checked) with nothing sent.

        ``Connection(sock, None, path)`` frames it without a handshake: for
        tests of the handshake itself.
        """
        check_socket_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            check_peer_uid(sock, path)
        except socket.timeout:
            sock.close()
            raise _timeout("connect", timeout) from None
        except OSError as e:
            sock.close()
            raise connect_error(path, e) from None
        except BaseException:
            sock.close()
            raise
        return sock

    # -- state ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection was closed (by a failure, or :meth:`close`)."""
        return self._sock is None

    def close(self) -> None:
        """Closes the socket; the daemon then drops whatever this connection was doing."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise _closed()
        return self._sock

    # -- deadlines -----------------------------------------------------------

    def _set_kernel_timeout(self, option: int, seconds: float) -> None:
        # A zero timeval means "wait forever": never round a deadline down to it.
        micros = max(int(seconds * 1_000_000), 1)
        self._socket().setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", micros // 1_000_000, micros % 1_000_000))
        if option == socket.SO_RCVTIMEO:
            self._rcvtimeo = micros / 1_000_000
        else:
            self._sndtimeo = micros / 1_000_000

    def _arm(self, option: int, in_force: float, deadline: Optional[float], what: str, after: Optional[float]) -> None:
        """Makes the kernel give up no later than ``deadline`` (within a few ms)."""
        if deadline is None:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(what, after)
        if in_force == 0.0 or in_force > remaining + _DEADLINE_SLACK:
            self._set_kernel_timeout(option, remaining)

    def _fail(self, error: BaseException, what: str, after: Optional[float]) -> BaseException:
        """Closes the connection and says why, for an exception raised part-way through an exchange."""
        self.close()
        if isinstance(error, (BlockingIOError, socket.timeout)):
            return _timeout(what, after)
        if isinstance(error, OSError):
            return _closed(error)
        return error

    # -- frames --------------------------------------------------------------

    def _send_all(self, data: Bytes, deadline: Optional[float], after: Optional[float]) -> None:
        sock = self._socket()
        view = memoryview(data).cast("B")
        sent = 0
        what = "the daemon to take a frame"
        while sent < len(view):
            self._arm(socket.SO_SNDTIMEO, self._sndtimeo, deadline, what, after)
            try:
                sent += sock.send(view[sent:])
            except BlockingIOError:
                # SO_SNDTIMEO elapsed with nothing sent: past the deadline, or
                # only past an earlier, shorter kernel timeout.
                if deadline is None:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                self._set_kernel_timeout(socket.SO_SNDTIMEO, remaining)

    def send_bytes(self, data: Bytes, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        """Writes bytes as they are (a whole frame, or anything else on purpose)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._send_all(data, deadline, timeout)
        except BaseException as e:
            raise self._fail(e, "the daemon to take a frame", timeout) from None

    def send_json(self, value: object, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        """Sends one JSON frame (refused before sending if it exceeds ``max_frame``)."""
        self.send_bytes(encode_json(value, self.max_frame), timeout)

    def send_raw(self, payload: Bytes, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        """Sends one raw data frame (an empty one is a blob stream's end marker)."""
        if len(payload) > self.max_frame:
            raise ProtocolError("frame_too_large", f"a data frame of {len(payload)} bytes exceeds {self.max_frame}")
        if len(payload) < _DIRECT_WRITE_MIN:
            self.send_bytes(frame_header(len(payload)) + bytes(payload), timeout)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._send_all(frame_header(len(payload)), deadline, timeout)
            self._send_all(payload, deadline, timeout)
        except BaseException as e:
            raise self._fail(e, "the daemon to take a frame", timeout) from None

    def _read(self, deadline: Optional[float], after: Optional[float], what: str) -> bytes:
        decoder = self._decoder
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        sock = self._socket()
        rbuf = self._rbuf
        while True:
            self._arm(socket.SO_RCVTIMEO, self._rcvtimeo, deadline, what, after)
            try:
                n = sock.recv_into(rbuf)
            except BlockingIOError:
                # SO_RCVTIMEO elapsed: past the deadline, or only past an
                # earlier, shorter kernel timeout (or none is wanted).
                if deadline is None:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                self._set_kernel_timeout(socket.SO_RCVTIMEO, remaining)
                continue
            if n == 0:
                raise _closed()
            if n >= HEADER_LEN and not decoder.buffered():
                # The usual case: exactly one whole frame arrived.
                (length,) = _U32.unpack_from(rbuf)
                if n == HEADER_LEN + length and length <= decoder.max_frame:
                    return bytes(self._rview[HEADER_LEN:n])
            decoder.feed(self._rview[:n])
            frame = decoder.next_frame()
            if frame is not None:
                return frame

    def read_frame(self, timeout: Optional[float] = DEFAULT_TIMEOUT, what: str = "an answer") -> bytes:
        """The next frame's payload, within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._read(deadline, timeout, what)
        except BaseException as e:
            raise self._fail(e, what, timeout) from None

    def frame_waiting(self) -> bool:
        """True when the daemon has sent something not read yet (checked without blocking)."""
        sock = self._socket()
        if self._decoder.buffered():
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    def recv(self, timeout: Optional[float] = DEFAULT_TIMEOUT, what: str = "an answer") -> Json:
        """The next response; an error response is raised as its code's exception."""
        frame = self.read_frame(timeout, what)
        try:
            return parse_response(frame)
        except RequestError:
            raise
        except BaseException:
            self.close()
            raise

    def request(self, value: object, timeout: Optional[float] = DEFAULT_TIMEOUT) -> Json:
        """Sends one request and reads its one response, both within ``timeout`` seconds."""
        return self.request_frame(encode_json(value, self.max_frame), timeout)

    def request_frame(self, frame: bytes, timeout: Optional[float] = DEFAULT_TIMEOUT) -> Json:
        """:meth:`request` for a request already encoded (a constant one, say)."""
        sock = self._socket()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if (
                timeout is not None
                and 0.0 < self._sndtimeo <= timeout + _DEADLINE_SLACK
                and 0.0 < self._rcvtimeo <= timeout + _DEADLINE_SLACK
                and sock.send(frame) == len(frame)
            ):
                # The usual case: the kernel timeouts in force already end by the
                # deadline and the request went out in one piece.
                pass
            else:
                self._send_all(frame, deadline, timeout)
            answer = self._read(deadline, timeout, "an answer")
        except BaseException as e:
            raise self._fail(e, "an answer", timeout) from None
        try:
            return parse_response(answer)
        except RequestError:
            raise
        except BaseException:
            self.close()
            raise


def _read_frame_blocking(
    sock: socket.socket,
    decoder: FrameDecoder,
    buf: bytearray,
    *,
    deadline: Optional[float],
    after: Optional[float],
    what: str,
) -> bytes:
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timeout(what, after)
            sock.settimeout(remaining)
        n = sock.recv_into(buf)
        if n == 0:
            raise _closed()
        decoder.feed(memoryview(buf)[:n])


class _Deadline:
    """Cancels the current task after ``timeout`` seconds and turns that into :class:`Timeout`.

    (``asyncio.timeout`` does this from Python 3.11; this library supports 3.9.)
    """

    __slots__ = ("_timeout", "_what", "_handle", "_task", "_fired")

    def __init__(self, timeout: Optional[float], what: str) -> None:
        self._timeout = timeout
        self._what = what
        self._handle: Optional[asyncio.TimerHandle] = None
        self._task: Optional["asyncio.Task[object]"] = None
        self._fired = False

    async def __aenter__(self) -> None:
        if self._timeout is not None:
            self._task = asyncio.current_task()
            self._handle = asyncio.get_running_loop().call_later(self._timeout, self._fire)

    def _fire(self) -> None:
        self._fired = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._fired and et is asyncio.CancelledError:
            raise _timeout(self._what, self._timeout) from None


class AsyncConnection:
    """An asyncio, handshaked connection to one channel.

    A call that is cancelled (or times out) part-way closes the connection,
    so no half-read frame is ever taken for the next answer. One task at a
    time: give concurrent tasks their own connections.
    """

    def __init__(self, sock: socket.socket, accepted: Optional[Accepted], path: str, received: bytes = b"") -> None:
        max_frame = accepted.max_frame if accepted is not None else DEFAULT_MAX_FRAME
        self._sock: Optional[socket.socket] = sock
        self._decoder = FrameDecoder(max_frame)
        # Frames that came right behind the handshake reply (sync's `joined`).
        self._decoder.feed(received)
        self._rbuf = bytearray(_READ_SIZE)
        #: The daemon's accepted handshake (``None`` on a connection that sent none).
        self.accepted = accepted
        self.path = path
        self.max_frame = max_frame

    @classmethod
    async def open(
        cls,
        path: str,
        channel: str,
        *,
        client_name: Optional[str] = DEFAULT_CLIENT_NAME,
        handshake: Optional[Mapping[str, object]] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> "AsyncConnection":
        """Connects and completes the handshake within ``timeout`` seconds (see :meth:`Connection.open`)."""
        sock = await cls.open_unchecked(path, timeout)
        try:
            async with _Deadline(timeout, "the handshake reply"):
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(sock, handshake_frame(channel, client_name, handshake))
                decoder = FrameDecoder(DEFAULT_MAX_FRAME)
                buf = bytearray(4096)
                while True:
                    frame = decoder.next_frame()
                    if frame is not None:
                        break
                    n = await loop.sock_recv_into(sock, buf)
                    if n == 0:
                        raise _closed()
                    decoder.feed(memoryview(buf)[:n])
            accepted = parse_handshake_reply(frame)
            received = decoder.rest()
        except OSError as e:
            sock.close()
            raise _closed(e) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock, accepted, path, received)

    @staticmethod
    async def open_unchecked(path: str, timeout: Optional[float] = DEFAULT_TIMEOUT) -> socket.socket:
        """A connected non-blocking socket (peer checked) with nothing sent."""
        check_socket_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with _Deadline(timeout, "connect"):
                await asyncio.get_running_loop().sock_connect(sock, path)
            check_peer_uid(sock, path)
        except OSError as e:
            sock.close()
            raise connect_error(path, e) from None
        except BaseException:
            sock.close()
            raise
        return sock

    @property
    def closed(self) -> bool:
        """True once the connection was closed."""
        return self._sock is None

    def close(self) -> None:
        """Closes the socket."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    async def __aenter__(self) -> "AsyncConnection":
        return self

    async def __aexit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise _closed()
        return self._sock

    async def send_bytes(self, data: Bytes, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        """Writes bytes as they are."""
        sock = self._socket()
        try:
            async with _Deadline(timeout, "the daemon to take a frame"):
                await asyncio.get_running_loop().sock_sendall(sock, data)
        except OSError as e:
            self.close()
            raise _closed(e) from None
        except BaseException:
            self.close()
            raise

    async def send_json(self, value: object, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        """Sends one JSON frame."""
        await self.send_bytes(encode_json(value, self.max_frame), timeout)

    async def send_raw(self, payload: Bytes, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        """Sends one raw data frame."""
        if len(payload) > self.max_frame:
            raise ProtocolError("frame_too_large", f"a data frame of {len(payload)} bytes exceeds {self.max_frame}")
        if len(payload) < _DIRECT_WRITE_MIN:
            await self.send_bytes(frame_header(len(payload)) + bytes(payload), timeout)
            return
        sock = self._socket()
        try:
            async with _Deadline(timeout, "the daemon to take a frame"):
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(sock, frame_header(len(payload)))
                await loop.sock_sendall(sock, payload)
        except OSError as e:
            self.close()
            raise _closed(e) from None
        except BaseException:
            self.close()
            raise

    async def read_frame(self, timeout: Optional[float] = DEFAULT_TIMEOUT, what: str = "an answer") -> bytes:
        """The next frame's payload, within ``timeout`` seconds."""
        sock = self._socket()
        frame = self._decoder.next_frame()
        if frame is not None:
            return frame
        try:
            async with _Deadline(timeout, what):
                loop = asyncio.get_running_loop()
                while True:
                    n = await loop.sock_recv_into(sock, self._rbuf)
                    if n == 0:
                        raise _closed()
                    self._decoder.feed(memoryview(self._rbuf)[:n])
                    frame = self._decoder.next_frame()
                    if frame is not None:
                        return frame
        except OSError as e:
            self.close()
            raise _closed(e) from None
        except BaseException:
            self.close()
            raise

    def frame_waiting(self) -> bool:
        """True when the daemon has sent something not read yet (checked without blocking)."""
        sock = self._socket()
        if self._decoder.buffered():
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    async def recv(self, timeout: Optional[float] = DEFAULT_TIMEOUT, what: str = "an answer") -> Json:
        """The next response; an error response is raised as its code's exception."""
        frame = await self.read_frame(timeout, what)
        try:
            return parse_response(frame)
        except RequestError:
            raise
        except BaseException:
            self.close()
            raise

    async def request(self, value: object, timeout: Optional[float] = DEFAULT_TIMEOUT) -> Json:
        """Sends one request and reads its one response, both within ``timeout`` seconds."""
        return await self.request_frame(encode_json(value, self.max_frame), timeout)

    async def request_frame(self, payload: bytes, timeout: Optional[float] = DEFAULT_TIMEOUT) -> Json:
        """:meth:`request` for a request already encoded (a constant one, say)."""
        sock = self._socket()
        frame: Optional[bytes] = None
        try:
            async with _Deadline(timeout, "an answer"):
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(sock, payload)
                frame = self._decoder.next_frame()
                while frame is None:
                    n = await loop.sock_recv_into(sock, self._rbuf)
                    if n == 0:
                        raise _closed()
                    self._decoder.feed(memoryview(self._rbuf)[:n])
                    frame = self._decoder.next_frame()
        except OSError as e:
            self.close()
            raise _closed(e) from None
        except BaseException:
            self.close()
            raise
        try:
            return parse_response(frame)
        except RequestError:
            raise
        except BaseException:
            self.close()
            raise
