"""The ``blob`` channel: a content-addressed store, streamed both ways (proto-docs/blob.md).

``put`` reads its source in frames of at most 1 MiB (less when the
connection's ``max_frame`` is smaller) and ``get`` writes each frame to its
destination as it arrives: neither ever holds a whole blob in memory.

A source is ``bytes`` (or ``bytearray``/``memoryview``) or a binary file
object (anything with ``readinto`` or ``read``); a destination anything with
``write``. In :mod:`hearth_client.aio` they may also be asynchronous (``read``
and ``write`` returning awaitables, like ``asyncio.StreamReader`` and
``StreamWriter``'s ``write`` + ``drain`` wrapped in a coroutine).

The ``timeout`` of ``put`` and ``get`` bounds each step (one frame sent or
received), not the whole transfer, so a large blob is never cut short while
it makes progress.
"""

from __future__ import annotations

import inspect
import os
import stat
from typing import (
    Any,
    Awaitable,
    BinaryIO,
    List,
    NamedTuple,
    Optional,
    Protocol,
    TypedDict,
    Union,
    cast,
)

from ._channel import DEFAULT, AsyncChannel, SyncChannel, TimeoutArg
from ._transport import AsyncConnection, Connection
from .errors import LocalIOError, ProtocolError, RequestError
from .protocol import Json, as_list, drop_none, expect_type, parse_response

__all__ = [
    "PUT_CHUNK",
    "EMPTY_BLOB",
    "Stored",
    "Content",
    "BlobInfo",
    "Usage",
    "GcReport",
    "ListPage",
    "BlobClient",
    "AsyncBlobClient",
]

#: The largest data frame this client sends: full speed, a few MiB held at most.
PUT_CHUNK = 1024 * 1024
#: The address of the empty blob.
EMPTY_BLOB = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class Stored(NamedTuple):
    """A blob is stored (durably): its address, size, and whether it was there already."""

    hash: str
    size: int
    existed: bool


class Content(TypedDict, total=False):
    """The header of a ``get``: the blob's size, the range sent, its media type."""

    type: str
    hash: str
    size: int
    offset: int
    length: int
    media_type: str


class BlobInfo(TypedDict, total=False):
    """A blob's metadata."""

    hash: str
    size: int
    media_type: str
    name: str
    pinned: bool
    created_at_ms: int
    last_access_at_ms: int


class Usage(TypedDict, total=False):
    """The store's totals, budget and HTTP URL."""

    type: str
    count: int
    bytes: int
    pinned_count: int
    pinned_bytes: int
    budget_bytes: int
    http_url: str


class GcReport(TypedDict, total=False):
    """What a collection removed, and the usage after it."""

    type: str
    removed: int
    freed_bytes: int
    target_bytes: int
    usage: Usage


class ListPage(NamedTuple):
    """Blobs in ascending hash order; ``next_cursor`` is ``None`` on the last page."""

    blobs: List[BlobInfo]
    next_cursor: Optional[str]


class Readable(Protocol):
    def read(self, size: int, /) -> Any: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> Any: ...


Source = Union[bytes, bytearray, memoryview, BinaryIO, Readable]

# -- sans-IO ------------------------------------------------------------------


def put_request(
    sha256: Optional[str], size: Optional[int], media_type: Optional[str], name: Optional[str], pin: bool
) -> Json:
    return drop_none(
        {
            "type": "put",
            "sha256": sha256,
            "size": size,
            "media_type": media_type,
            "name": name,
            "pin": True if pin else None,
        }
    )


def get_request(blob: str, offset: Optional[int], length: Optional[int]) -> Json:
    return drop_none({"type": "get", "hash": blob, "offset": offset, "length": length})


def put_chunk(max_frame: int) -> int:
    return max(1, min(PUT_CHUNK, max_frame))


def read_stored(response: Json) -> Stored:
    expect_type(response, "stored")
    return Stored(str(response["hash"]), int(response["size"]), bool(response["existed"]))


def read_put_start(response: Json) -> Optional[Stored]:
    """``None`` for ``ready`` (send the data), a :class:`Stored` when the named content is already there."""
    if response.get("type") == "ready":
        return None
    return read_stored(response)


def early_answer(frame: bytes) -> RequestError:
    """A frame that arrived while a put was still sending: the daemon gave up on the put.

    Returns its error (the caller sends the end marker, then raises it); any
    other answer is a :class:`ProtocolError`.
    """
    try:
        response = parse_response(frame)
    except RequestError as e:
        return e
    raise ProtocolError("protocol_error", f"expected nothing before the end of a put, got {response!r:.200}")


class GetProgress:
    """Counts the data frames of a ``get`` against the announced length."""

    __slots__ = ("length", "received")

    def __init__(self, content: Content) -> None:
        self.length = int(content["length"])
        self.received = 0

    def on_frame(self, frame: bytes) -> bool:
        """True at the end marker; raises when the daemon sends more than it announced."""
        if not frame:
            return True
        self.received += len(frame)
        if self.received > self.length:
            raise ProtocolError("protocol_error", f"the daemon sent more than the {self.length} bytes it announced")
        return False

    @property
    def short(self) -> bool:
        """An early end marker: one error frame follows."""
        return self.received < self.length


def _local(what: str, error: OSError) -> LocalIOError:
    return LocalIOError("local_io", f"{what}: {error}")


def _bytes_like(source: object) -> Optional[memoryview]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source).cast("B")
    return None


# -- the clients --------------------------------------------------------------


class BlobClient(SyncChannel):
    """The ``blob`` channel, blocking."""

    CHANNEL = "blob"

    def put(
        self,
        source: Source,
        *,
        sha256: Optional[str] = None,
        size: Optional[int] = None,
        media_type: Optional[str] = None,
        name: Optional[str] = None,
        pin: bool = False,
        timeout: TimeoutArg = DEFAULT,
    ) -> Stored:
        """Stores everything ``source`` yields, streamed.

        With ``sha256`` the put fails with ``hash_mismatch`` when the data hashes
        otherwise, and sends nothing at all when that blob is stored already.
        ``size`` (announced for ``bytes`` sources) makes the daemon refuse a
        longer source as soon as it shows. A daemon error part-way stops the
        upload at once and is raised; a failing source closes the connection
        (the daemon discards what it got) and raises :class:`LocalIOError`.
        """
        view = _bytes_like(source)
        if view is not None and size is None:
            size = len(view)
        step = self._settings.resolve(timeout)
        conn = self.connection()
        done = read_put_start(conn.request(put_request(sha256, size, media_type, name, pin), step))
        if done is not None:
            return done
        chunk = put_chunk(conn.max_frame)
        settled = False
        try:
            if view is not None:
                for start in range(0, len(view), chunk):
                    if conn.frame_waiting():
                        self._end_early(conn, step)
                    conn.send_raw(view[start : start + chunk], step)
            else:
                self._send_file(conn, source, chunk, step)
            conn.send_raw(b"", step)
            settled = True
        except RequestError:
            # The daemon refused the put part-way and the end marker went out:
            # the connection is still usable.
            settled = True
            raise
        finally:
            if not settled:
                conn.close()
        return read_stored(conn.recv(step, "the daemon to store the blob"))

    def _send_file(self, conn: Connection, source: Any, chunk: int, step: Optional[float]) -> None:
        buf = bytearray(chunk)
        view = memoryview(buf)
        readinto = getattr(source, "readinto", None)
        while True:
            try:
                if readinto is not None:
                    n = readinto(buf)
                    data = view[: n or 0]
                else:
                    data = memoryview(source.read(chunk) or b"").cast("B")
            except OSError as e:
                raise _local("cannot read the data to put", e) from None
            if not len(data):
                return
            if conn.frame_waiting():
                self._end_early(conn, step)
            conn.send_raw(data, step)

    @staticmethod
    def _end_early(conn: Connection, step: Optional[float]) -> None:
        error = early_answer(conn.read_frame(step, "the daemon's answer"))
        # The daemon discards data up to the end marker: send it, so the
        # connection stays usable, and report the daemon's error.
        conn.send_raw(b"", step)
        raise error

    def put_file(
        self,
        path: str,
        *,
        media_type: Optional[str] = None,
        name: Optional[str] = None,
        pin: bool = False,
        timeout: TimeoutArg = DEFAULT,
    ) -> Stored:
        """Stores a file, announcing its size."""
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors are reported apart)
        except OSError as e:
            raise _local(f"cannot open {path}", e) from None
        with f:
            size = _file_size(f)
            return self.put(f, size=size, media_type=media_type, name=name, pin=pin, timeout=timeout)

    def get(
        self,
        blob: str,
        dest: Writable,
        offset: Optional[int] = None,
        length: Optional[int] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> Content:
        """Streams a blob (or ``length`` bytes from ``offset``) into ``dest``; returns the header.

        A failure part-way is raised as the daemon's error after the bytes that did arrive.
        """
        step = self._settings.resolve(timeout)
        conn = self.connection()
        content = cast(Content, expect_type(conn.request(get_request(blob, offset, length), step), "content"))
        progress = GetProgress(content)
        settled = False
        try:
            while True:
                frame = conn.read_frame(step, "blob data")
                if progress.on_frame(frame):
                    break
                try:
                    dest.write(frame)
                except OSError as e:
                    raise _local("cannot write the blob", e) from None
            settled = True
        finally:
            if not settled:
                conn.close()
        if progress.short:
            conn.recv(step, "the error after a short get")
            raise ProtocolError("protocol_error", "a get ended early without an error")
        flush = getattr(dest, "flush", None)
        if flush is not None:
            flush()
        return content

    def get_bytes(self, blob: str, timeout: TimeoutArg = DEFAULT) -> bytes:
        """A whole blob in memory (for small ones; stream big ones with :meth:`get`)."""
        out = _Collect()
        self.get(blob, out, timeout=timeout)
        return bytes(out.data)

    def stat(self, blob: str, timeout: TimeoutArg = DEFAULT) -> BlobInfo:
        """A blob's metadata."""
        return cast(BlobInfo, expect_type(self._request({"type": "stat", "hash": blob}, timeout), "stat"))

    def has(self, blob: str, timeout: TimeoutArg = DEFAULT) -> bool:
        """Whether a blob is stored."""
        return bool(expect_type(self._request({"type": "has", "hash": blob}, timeout), "has")["present"])

    def delete(self, blob: str, force: bool = False, timeout: TimeoutArg = DEFAULT) -> int:
        """Removes a blob (a pinned one only with ``force``); returns the bytes freed."""
        request = drop_none({"type": "delete", "hash": blob, "force": True if force else None})
        return int(expect_type(self._request(request, timeout), "deleted")["size"])

    def list(
        self, cursor: Optional[str] = None, limit: Optional[int] = None, timeout: TimeoutArg = DEFAULT
    ) -> ListPage:
        """One page of blobs in hash order, after ``cursor``."""
        response = expect_type(
            self._request(drop_none({"type": "list", "cursor": cursor, "limit": limit}), timeout), "list"
        )
        return ListPage(as_list(response["blobs"]), response.get("next_cursor"))

    def pin(self, blob: str, timeout: TimeoutArg = DEFAULT) -> None:
        """Protects a blob from collection."""
        expect_type(self._request({"type": "pin", "hash": blob}, timeout), "pin_state")

    def unpin(self, blob: str, timeout: TimeoutArg = DEFAULT) -> None:
        """Lets collection remove a blob again."""
        expect_type(self._request({"type": "unpin", "hash": blob}, timeout), "pin_state")

    def gc(self, target_bytes: Optional[int] = None, timeout: TimeoutArg = DEFAULT) -> GcReport:
        """Collects least-recently-used unpinned blobs down to ``target_bytes`` (default: the budget)."""
        response = self._request(drop_none({"type": "gc", "target_bytes": target_bytes}), timeout)
        return cast(GcReport, expect_type(response, "gc"))

    def usage(self, timeout: TimeoutArg = DEFAULT) -> Usage:
        """The store's totals, budget and HTTP URL."""
        return cast(Usage, expect_type(self._request({"type": "usage"}, timeout), "usage"))


class _Collect:
    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def _file_size(f: Any) -> Optional[int]:
    try:
        st = os.fstat(f.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return int(st.st_size - f.tell())


class AsyncBlobClient(AsyncChannel):
    """The ``blob`` channel, asyncio."""

    CHANNEL = "blob"

    async def put(
        self,
        source: Source,
        *,
        sha256: Optional[str] = None,
        size: Optional[int] = None,
        media_type: Optional[str] = None,
        name: Optional[str] = None,
        pin: bool = False,
        timeout: TimeoutArg = DEFAULT,
    ) -> Stored:
        """Stores everything ``source`` yields, streamed (see :meth:`BlobClient.put`)."""
        view = _bytes_like(source)
        if view is not None and size is None:
            size = len(view)
        step = self._settings.resolve(timeout)
        conn = await self.connection()
        done = read_put_start(await conn.request(put_request(sha256, size, media_type, name, pin), step))
        if done is not None:
            return done
        chunk = put_chunk(conn.max_frame)
        settled = False
        try:
            if view is not None:
                for start in range(0, len(view), chunk):
                    if conn.frame_waiting():
                        await self._end_early(conn, step)
                    await conn.send_raw(view[start : start + chunk], step)
            else:
                await self._send_file(conn, source, chunk, step)
            await conn.send_raw(b"", step)
            settled = True
        except RequestError:
            settled = True
            raise
        finally:
            if not settled:
                conn.close()
        return read_stored(await conn.recv(step, "the daemon to store the blob"))

    async def _send_file(self, conn: AsyncConnection, source: Any, chunk: int, step: Optional[float]) -> None:
        while True:
            try:
                data = source.read(chunk)
                if inspect.isawaitable(data):
                    data = await data
            except OSError as e:
                raise _local("cannot read the data to put", e) from None
            if not data:
                return
            if conn.frame_waiting():
                await self._end_early(conn, step)
            await conn.send_raw(data, step)

    @staticmethod
    async def _end_early(conn: AsyncConnection, step: Optional[float]) -> None:
        error = early_answer(await conn.read_frame(step, "the daemon's answer"))
        await conn.send_raw(b"", step)
        raise error

    async def get(
        self,
        blob: str,
        dest: Writable,
        offset: Optional[int] = None,
        length: Optional[int] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> Content:
        """Streams a blob into ``dest`` (its ``write`` may return an awaitable); returns the header."""
        step = self._settings.resolve(timeout)
        conn = await self.connection()
        response = await conn.request(get_request(blob, offset, length), step)
        content = cast(Content, expect_type(response, "content"))
        progress = GetProgress(content)
        settled = False
        try:
            while True:
                frame = await conn.read_frame(step, "blob data")
                if progress.on_frame(frame):
                    break
                try:
                    written: Union[Awaitable[Any], Any] = dest.write(frame)
                    if inspect.isawaitable(written):
                        await written
                except OSError as e:
                    raise _local("cannot write the blob", e) from None
            settled = True
        finally:
            if not settled:
                conn.close()
        if progress.short:
            await conn.recv(step, "the error after a short get")
            raise ProtocolError("protocol_error", "a get ended early without an error")
        return content

    async def get_bytes(self, blob: str, timeout: TimeoutArg = DEFAULT) -> bytes:
        """A whole blob in memory (for small ones)."""
        out = _Collect()
        await self.get(blob, out, timeout=timeout)
        return bytes(out.data)

    async def stat(self, blob: str, timeout: TimeoutArg = DEFAULT) -> BlobInfo:
        """A blob's metadata."""
        return cast(BlobInfo, expect_type(await self._request({"type": "stat", "hash": blob}, timeout), "stat"))

    async def has(self, blob: str, timeout: TimeoutArg = DEFAULT) -> bool:
        """Whether a blob is stored."""
        return bool(expect_type(await self._request({"type": "has", "hash": blob}, timeout), "has")["present"])

    async def delete(self, blob: str, force: bool = False, timeout: TimeoutArg = DEFAULT) -> int:
        """Removes a blob; returns the bytes freed."""
        request = drop_none({"type": "delete", "hash": blob, "force": True if force else None})
        return int(expect_type(await self._request(request, timeout), "deleted")["size"])

    async def list(
        self, cursor: Optional[str] = None, limit: Optional[int] = None, timeout: TimeoutArg = DEFAULT
    ) -> ListPage:
        """One page of blobs in hash order."""
        request = drop_none({"type": "list", "cursor": cursor, "limit": limit})
        response = expect_type(await self._request(request, timeout), "list")
        return ListPage(as_list(response["blobs"]), response.get("next_cursor"))

    async def pin(self, blob: str, timeout: TimeoutArg = DEFAULT) -> None:
        """Protects a blob from collection."""
        expect_type(await self._request({"type": "pin", "hash": blob}, timeout), "pin_state")

    async def unpin(self, blob: str, timeout: TimeoutArg = DEFAULT) -> None:
        """Lets collection remove a blob again."""
        expect_type(await self._request({"type": "unpin", "hash": blob}, timeout), "pin_state")

    async def gc(self, target_bytes: Optional[int] = None, timeout: TimeoutArg = DEFAULT) -> GcReport:
        """Collects least-recently-used unpinned blobs."""
        response = await self._request(drop_none({"type": "gc", "target_bytes": target_bytes}), timeout)
        return cast(GcReport, expect_type(response, "gc"))

    async def usage(self, timeout: TimeoutArg = DEFAULT) -> Usage:
        """The store's totals, budget and HTTP URL."""
        return cast(Usage, expect_type(await self._request({"type": "usage"}, timeout), "usage"))
