"""The wire protocol, version 1, without any I/O (sans-IO).

Both the blocking client and the asyncio client feed the bytes they read into
these functions and send the bytes these functions produce, so the framing,
the handshake and the parsing of answers exist once.

A frame is a 4-byte big-endian payload length ``N``, then ``N`` bytes::

    0        1        2        3        4                      4+N
    +--------+--------+--------+--------+---------- ... ---------+
    |        length N (u32, big-endian) |  payload: N bytes      |
    +--------+--------+--------+--------+---------- ... ---------+

>>> encode_json({"type": "ping"})
b'\\x00\\x00\\x00\\x0f{"type":"ping"}'

Every payload is one UTF-8 JSON object, except the raw data frames of a blob
transfer; the empty frame ends a blob stream. The first frame names a channel
(:func:`handshake_frame`); the daemon accepts or refuses it
(:func:`parse_handshake_reply`). Then each request gets one response, or a
stream of them, in order; ``{"type": "error", ...}`` becomes an exception
(:func:`parse_response`). The long form is ``proto-docs/`` in the repository.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, Mapping, Optional, Union

from ._version import __version__
from .errors import FrameTooLarge, ProtocolError, error_for_code

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME",
    "HEADER_LEN",
    "CHANNELS",
    "DEFAULT_CLIENT_NAME",
    "encode_frame",
    "encode_json",
    "FrameDecoder",
    "handshake_frame",
    "Accepted",
    "parse_handshake_reply",
    "parse_json",
    "parse_response",
    "expect_type",
    "Json",
]

#: The protocol version this library speaks.
PROTOCOL_VERSION = 1
#: The daemon's default maximum frame (16 MiB); the handshake reply says the one in force.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: Bytes in the length prefix.
HEADER_LEN = 4
#: The channels of protocol 1 this library knows.
CHANNELS = ("status", "pool", "queue", "blob")
#: The ``client`` string this library sends in handshakes.
DEFAULT_CLIENT_NAME = f"hearth-client-python/{__version__}"

#: A decoded JSON object.
Json = Dict[str, Any]

_HEADER = struct.Struct(">I")
_MAX_U32 = 0xFFFFFFFF
# Compact separators: the daemon reads any JSON, and smaller frames cost less.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.JSONDecoder().decode


def encode_frame(payload: Union[bytes, bytearray, memoryview]) -> bytes:
    """One frame: the length prefix, then the payload."""
    if len(payload) > _MAX_U32:
        raise FrameTooLarge("frame_too_large", f"a frame of {len(payload)} bytes cannot be framed at all")
    return _HEADER.pack(len(payload)) + bytes(payload)


def frame_header(length: int) -> bytes:
    """The length prefix of a frame of ``length`` bytes (for writing a large payload without a copy)."""
    return _HEADER.pack(length)


def encode_json(value: object, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """``value`` as one JSON frame; refuses (before sending anything) a frame above ``max_frame``."""
    payload = _dumps(value).encode("utf-8")
    if len(payload) > max_frame:
        raise FrameTooLarge(
            "frame_too_large",
            f"the request is {len(payload)} bytes, more than the daemon's maximum frame of {max_frame} bytes",
        )
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frames.

    Feed it whatever the socket gave (:meth:`feed`), then take whole frames
    (:meth:`next_frame`) until it returns ``None``. A length above
    ``max_frame`` raises :class:`ProtocolError` as soon as the four length bytes
    are in: nothing of such a frame is buffered. Memory grows only with the
    bytes that actually arrived, never with an announced length.
    """

    __slots__ = ("_buf", "_pos", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Appends bytes read from the socket."""
        if self._pos:
            # Drop consumed bytes before growing, so that the buffer holds
            # at most one partial frame plus one read.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Optional[bytes]:
        """The next whole frame's payload, or ``None`` until more bytes arrive."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_LEN:
            return None
        (length,) = _HEADER.unpack_from(buf, pos)
        if length > self.max_frame:
            raise ProtocolError(
                "frame_too_large",
                f"the daemon announced a frame of {length} bytes, more than the maximum of {self.max_frame}",
            )
        end = pos + HEADER_LEN + length
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + HEADER_LEN : end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return payload

    def rest(self) -> bytes:
        """The bytes received and not yet taken as frames (to hand to another decoder)."""
        return bytes(self._buf[self._pos :])

    def buffered(self) -> int:
        """Bytes received and not yet taken as frames (a partial frame)."""
        return len(self._buf) - self._pos

    def wanted(self) -> int:
        """How many more bytes the frame in progress needs (at least 1 when a read is due)."""
        have = len(self._buf) - self._pos
        if have < HEADER_LEN:
            return HEADER_LEN - have
        (length,) = _HEADER.unpack_from(self._buf, self._pos)
        return max(1, HEADER_LEN + int(length) - have)


def handshake_frame(
    channel: str,
    client: Optional[str] = DEFAULT_CLIENT_NAME,
    extra: Optional[Mapping[str, object]] = None,
) -> bytes:
    """The first frame of a connection: ``{"channel", "protocol": 1, "client"}``.

    ``extra`` adds fields (a channel may take more, e.g. ``sync``'s ``doc``) or
    replaces them; a field set to ``None`` in ``extra`` is left out.
    """
    fields: Dict[str, object] = {"channel": channel, "protocol": PROTOCOL_VERSION}
    if client is not None:
        fields["client"] = client
    if extra:
        for key, value in extra.items():
            if value is None:
                fields.pop(key, None)
            else:
                fields[key] = value
    # The pre-handshake cap is small (4 KiB by default); the daemon refuses more.
    return encode_json(fields)


class Accepted:
    """An accepted handshake: who answered and the largest frame it takes."""

    __slots__ = ("reply", "channel", "daemon_version", "daemon_pid", "max_frame")

    def __init__(self, reply: Json) -> None:
        #: The whole reply, as sent (unknown fields included).
        self.reply = reply
        self.channel: str = str(reply.get("channel", ""))
        daemon = reply.get("daemon")
        if not isinstance(daemon, dict):
            raise ProtocolError("protocol_error", f"accepted handshake without `daemon`: {reply!r}")
        self.daemon_version: str = str(daemon.get("version", ""))
        pid = daemon.get("pid")
        self.daemon_pid: int = pid if isinstance(pid, int) else 0
        max_frame = reply.get("max_frame")
        if not isinstance(max_frame, int) or isinstance(max_frame, bool) or max_frame < 1:
            raise ProtocolError("protocol_error", f"accepted handshake without a valid `max_frame`: {reply!r}")
        self.max_frame: int = max_frame

    def __repr__(self) -> str:
        return f"Accepted(channel={self.channel!r}, daemon={self.daemon_version}/{self.daemon_pid})"


def parse_json(frame: bytes) -> Json:
    """A frame's payload as a JSON object, or :class:`ProtocolError`."""
    try:
        # Decoding first skips json.loads's guessing of the encoding: a frame is UTF-8.
        value = _loads(frame.decode("utf-8"))
    except ValueError as e:
        raise ProtocolError("protocol_error", f"the daemon sent a frame that is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ProtocolError("protocol_error", f"the daemon sent JSON that is not an object: {value!r:.200}")
    return value


def parse_handshake_reply(frame: bytes) -> Accepted:
    """An accepted handshake, or the daemon's refusal raised as :class:`~hearth_client.Refused`."""
    reply = parse_json(frame)
    ok = reply.get("ok")
    if ok is True:
        return Accepted(reply)
    if ok is False:
        error = reply.get("error")
        if not isinstance(error, dict):
            raise ProtocolError("protocol_error", f"refused handshake without `error`: {reply!r}")
        daemon = reply.get("daemon")
        raise error_for_code(
            str(error.get("code", "")),
            str(error.get("message", "")),
            handshake=True,
            daemon=daemon if isinstance(daemon, dict) else None,
        )
    raise ProtocolError("protocol_error", f"not a handshake reply: {reply!r:.200}")


def parse_response(frame: bytes) -> Json:
    """A response object; ``{"type": "error"}`` is raised as its code's exception."""
    response = parse_json(frame)
    kind = response.get("type")
    if kind == "error":
        raise error_for_code(str(response.get("code", "")), str(response.get("message", "")), handshake=False)
    if not isinstance(kind, str):
        raise ProtocolError("protocol_error", f"a response without a `type`: {response!r:.200}")
    return response


def expect_type(response: Json, *kinds: str) -> Json:
    """``response`` when its ``type`` is one of ``kinds``, else :class:`ProtocolError`."""
    if response.get("type") not in kinds:
        wanted = " or ".join(kinds)
        raise ProtocolError("protocol_error", f"expected {wanted}, got {response!r:.300}")
    return response


def drop_none(fields: Mapping[str, object]) -> Json:
    """A request object without the optional fields left at ``None``."""
    return {k: v for k, v in fields.items() if v is not None}


def as_list(value: Any) -> List[Any]:
    """A JSON array from a response field, or :class:`ProtocolError`."""
    if not isinstance(value, list):
        raise ProtocolError("protocol_error", f"expected an array, got {value!r:.200}")
    return value
