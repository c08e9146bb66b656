"""The ``sync`` channel in view mode: live documents as JSON (proto-docs/sync.md).

A document (``settings``, ``notebook/3f2a``) is an Automerge document the
daemon keeps; every window that opens it joins its room. View mode reads it
as JSON, writes it with path operations and follows its changes as patches,
with no Automerge library::

    with SyncDoc.open("notebook/3f2a") as doc:
        doc.put(["title"], "Notes")
        doc.insert(["tags", 0], ["draft"])
        with doc.watch(["cells"]) as cells:      # cells.value: the JSON, kept current
            for event in cells:                  # Changed, Snapshot or Presence
                print(cells.revision, cells.value)

and in asyncio, :class:`AsyncSyncDoc` (``async with await AsyncSyncDoc.open(...)``,
``async for event in watch``).

A **path** is a list of steps from the document's root: a string is a map
key, an integer a list (or text) index. A **revision** is the document's
heads, a sorted list of hex change hashes. A write is answered once it is on
disk; a write that names the revision it was read at (``base``) and finds
the document moved on is merged as Automerge merges concurrent edits, and
says so (``Written.stale``).

This module holds the requests, the answers' readers and :func:`apply_patch`
(no I/O), and the blocking and asyncio documents that drive them.
"""

from __future__ import annotations

import time
from collections import deque
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Deque,
    Iterator,
    List,
    Literal,
    NamedTuple,
    Optional,
    Sequence,
    Type,
    TypedDict,
    Union,
)

from ._channel import DEFAULT, TimeoutArg, _Default
from ._transport import DEFAULT_TIMEOUT, AsyncConnection, Connection
from .errors import ProtocolError, Timeout, error_for_code
from .paths import PathLike, Paths
from .protocol import DEFAULT_CLIENT_NAME, Json, as_list, drop_none, expect_type, parse_json

__all__ = [
    "SETTINGS",
    "Step",
    "Path",
    "Revision",
    "PeerInfo",
    "DocSummary",
    "RoomReport",
    "Written",
    "Changed",
    "Snapshot",
    "Presence",
    "SyncEvent",
    "PatchError",
    "apply_patch",
    "put_op",
    "delete_op",
    "insert_op",
    "splice_op",
    "increment_op",
    "SyncDoc",
    "Watch",
    "AsyncSyncDoc",
    "AsyncWatch",
]

#: The built-in settings document.
SETTINGS = "settings"

#: One step of a path: a map key or a list (or text) index.
Step = Union[str, int]
#: A path from the document's root.
Path = Sequence[Step]
#: A document's revision: its heads, sorted hex change hashes (``[]``: the empty document).
Revision = List[str]


class PeerInfo(TypedDict, total=False):
    """Someone in a room."""

    id: int
    client: str
    pid: int
    mode: Literal["view", "replica"]
    since: str
    #: True for this connection.
    you: bool


class DocSummary(TypedDict, total=False):
    """One document of ``list``."""

    doc: str
    loaded: bool
    peers: int
    stored_bytes: int


class RoomReport(TypedDict, total=False):
    """One document's room (``inspect``): ``revision`` and ``changes`` only when it is loaded."""

    type: str
    doc: str
    loaded: bool
    revision: Revision
    peers: List[PeerInfo]
    stored_bytes: int
    appended_bytes: int
    changes: int
    idle_ms: int


class Written(NamedTuple):
    """A write on disk: the revision right after it, and whether its ``base`` was stale (it was merged)."""

    revision: Revision
    stale: bool


class Changed(NamedTuple):
    """The document changed: ``patches`` take the watched value from ``from_revision`` to ``revision``."""

    from_revision: Revision
    revision: Revision
    patches: List[Json]


class Snapshot(NamedTuple):
    """The watcher fell behind the room's patch log: ``value`` replaces its value."""

    revision: Revision
    value: Any


class Presence(NamedTuple):
    """Peers came or went: everyone in the room now."""

    peers: List[PeerInfo]


#: What a watch yields.
SyncEvent = Union[Changed, Snapshot, Presence]


# -- sans-IO ------------------------------------------------------------------


def put_op(path: Path, value: Any, as_: Optional[Literal["text", "counter", "timestamp"]] = None) -> Json:
    """Sets a map key (created if missing) or an existing list element; ``as_`` makes a string a
    collaborative text, an integer a counter or a timestamp."""
    return drop_none({"op": "put", "path": list(path), "value": value, "as": as_})


def delete_op(path: Path, count: Optional[int] = None) -> Json:
    """Removes a map key, or ``count`` list elements or text characters from the index."""
    return drop_none({"op": "delete", "path": list(path), "count": count})


def insert_op(path: Path, values: Sequence[Any]) -> Json:
    """Inserts ``values`` into a list before the path's last index (the length appends)."""
    return {"op": "insert", "path": list(path), "values": list(values)}


def splice_op(path: Path, index: int, delete: int = 0, insert: str = "") -> Json:
    """Edits the text at ``path``: removes ``delete`` characters at ``index``, inserts ``insert``."""
    return {"op": "splice", "path": list(path), "index": index, "delete": delete, "insert": insert}


def increment_op(path: Path, by: int = 1) -> Json:
    """Adds ``by`` to the counter at ``path``."""
    return {"op": "increment", "path": list(path), "by": by}


def write_request(ops: Sequence[Json], base: Optional[Revision]) -> Json:
    return drop_none({"type": "write", "ops": list(ops), "base": base})


def watch_request(path: Path, since: Optional[Revision]) -> Json:
    return drop_none({"type": "watch", "path": list(path) or None, "since": since})


def _revision(value: Any) -> Revision:
    return [str(h) for h in as_list(value)]


def read_written(response: Json) -> Written:
    expect_type(response, "written")
    return Written(_revision(response["revision"]), bool(response.get("stale", False)))


def read_value(response: Json) -> "tuple[Revision, Any]":
    expect_type(response, "value")
    return _revision(response["revision"]), response.get("value")


def read_event(response: Json) -> Optional[SyncEvent]:
    """The event a frame holds, or ``None`` for an answer."""
    kind = response.get("type")
    if kind == "changed":
        return Changed(_revision(response["from"]), _revision(response["revision"]), as_list(response["patches"]))
    if kind == "snapshot":
        return Snapshot(_revision(response["revision"]), response.get("value"))
    if kind == "presence":
        return Presence(as_list(response["peers"]))
    return None


def parse_frame(frame: bytes) -> Json:
    """A sync frame as JSON; an ``error`` is raised as its code's exception."""
    response = parse_json(frame)
    if response.get("type") == "error":
        raise error_for_code(str(response.get("code", "")), str(response.get("message", "")), handshake=False)
    if not isinstance(response.get("type"), str):
        raise ProtocolError("protocol_error", f"a response without a `type`: {response!r:.200}")
    return response


def read_joined(frame: bytes) -> int:
    """The peer id of ``joined`` (a refusal after the handshake is raised as a :class:`Refused`)."""
    response = parse_json(frame)
    if response.get("type") == "error":
        raise error_for_code(str(response.get("code", "")), str(response.get("message", "")), handshake=True)
    return int(expect_type(response, "joined")["peer"])


class PatchError(ProtocolError):
    """A patch does not apply to the value it was sent for (the copy drifted from the daemon's)."""

    def __init__(self, patch: Json, why: str) -> None:
        super().__init__("patch_error", f"cannot apply {patch.get('op')} at {patch.get('path')}: {why}")


def _walk(root: Any, path: Sequence[Any], patch: Json) -> Any:
    at = root
    for step in path:
        if not _has(at, step):
            raise PatchError(patch, f"{step!r} does not exist")
        at = at[step]
    return at


def _is_index(step: Any) -> bool:
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def _has(container: Any, step: Any) -> bool:
    """Whether ``container[step]`` names a map key or list element that exists."""
    if isinstance(container, dict):
        return isinstance(step, str) and step in container
    return isinstance(container, list) and _is_index(step) and step < len(container)


def apply_patch(value: Any, patch: Json, base: Path = ()) -> Any:
    """Applies one patch of ``changed`` to ``value``, the JSON at the watched path ``base``, as the
    daemon applied it to the document; returns the new value (changed in place when it is a
    container, replaced when the patch puts the watched path itself).

    Text indices count Unicode code points, as Python's ``str`` does.
    """
    path = as_list(patch.get("path"))
    base = list(base)
    if path[: len(base)] != base:
        raise PatchError(patch, f"outside the watched path {base}")
    rel = path[len(base) :]
    op = patch.get("op")
    if op == "splice":
        parent = _walk(value, rel[:-1], patch)
        last = rel[-1] if rel else None
        text = _walk(value, rel, patch)
        if not isinstance(text, str):
            raise PatchError(patch, "not a text")
        index, delete = int(patch.get("index", 0)), int(patch.get("delete", 0))
        if index + delete > len(text):
            raise PatchError(patch, f"range {index}..{index + delete} beyond the text's {len(text)} characters")
        edited = text[:index] + str(patch.get("insert", "")) + text[index + delete :]
        if last is None:
            return edited
        parent[last] = edited
        return value
    if not rel:
        if op == "put":
            return patch.get("value")
        raise PatchError(patch, "the path is empty")
    parent = _walk(value, rel[:-1], patch)
    last = rel[-1]
    if op == "put":
        if not (isinstance(parent, dict) and isinstance(last, str)) and not _has(parent, last):
            raise PatchError(patch, "no such slot")
        parent[last] = patch.get("value")
    elif op == "delete":
        count = int(patch.get("count", 1))
        if isinstance(parent, dict) and isinstance(last, str) and last in parent:
            del parent[last]
        elif isinstance(parent, list) and _is_index(last) and last + count <= len(parent):
            del parent[last : last + count]
        elif isinstance(parent, str) and _is_index(last) and last + count <= len(parent):
            grand = _walk(value, rel[:-2], patch)
            edited = parent[:last] + parent[last + count :]
            if len(rel) == 1:
                return edited
            grand[rel[-2]] = edited
        else:
            raise PatchError(patch, "nothing to delete there")
    elif op == "insert":
        if not (isinstance(parent, list) and _is_index(last) and last <= len(parent)):
            raise PatchError(patch, "not a list position")
        parent[last:last] = as_list(patch.get("values"))
    elif op == "increment":
        if not (_has(parent, last) and isinstance(parent[last], int)):
            raise PatchError(patch, "no such counter")
        parent[last] += int(patch.get("by", 1))
    else:
        raise PatchError(patch, f"unknown op {op!r}")
    return value


class _WatchState:
    """A watched path's value and revision, kept current by each event (shared by both transports)."""

    def __init__(self, path: Path, revision: Revision, value: Any) -> None:
        #: The watched path.
        self.path: List[Step] = list(path)
        #: The revision :attr:`value` is at.
        self.revision = revision
        #: The JSON at the watched path, as of :attr:`revision`.
        self.value = value
        #: Who is in the room, as of the last ``presence`` event (``None`` before one came).
        self.peers: Optional[List[PeerInfo]] = None

    def _apply(self, event: SyncEvent) -> None:
        if isinstance(event, Changed):
            for patch in event.patches:
                self.value = apply_patch(self.value, patch, self.path)
            self.revision = event.revision
        elif isinstance(event, Snapshot):
            self.value = event.value
            self.revision = event.revision
        else:
            self.peers = event.peers


def _watching(response: Json, since: Optional[Revision], path: Path, keep: Any) -> "tuple[Revision, Any]":
    """The revision and value a ``watching`` answer starts from (with ``since``: ``keep`` patched)."""
    expect_type(response, "watching")
    revision = _revision(response["revision"])
    if "value" in response:
        return revision, response["value"]
    value = keep
    for patch in as_list(response.get("patches", [])):
        value = apply_patch(value, patch, path)
    return revision, value


# -- blocking -------------------------------------------------------------------


class SyncDoc:
    """One document's room in view mode (or, from :meth:`control`, a connection to no room), blocking.

    Answers come in request order; events (``changed``, ``snapshot``,
    ``presence``) that arrive while a request waits for its answer are kept
    for the watch. Not thread-safe: give each thread its own.
    """

    def __init__(self, conn: Connection, doc: Optional[str], peer: int, timeout: Optional[float]) -> None:
        self._conn = conn
        #: The document (``None`` on a control connection).
        self.doc = doc
        #: This connection's peer id in its room.
        self.peer = peer
        self._timeout = timeout
        self._events: Deque[SyncEvent] = deque()

    @classmethod
    def open(
        cls,
        doc: Optional[str],
        socket: Optional[PathLike] = None,
        *,
        state_dir: Optional[PathLike] = None,
        client_name: Optional[str] = DEFAULT_CLIENT_NAME,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> "SyncDoc":
        """Joins ``doc``'s room (created empty when it does not exist); ``None``: a control connection.

        Raises :class:`~hearth_client.InvalidDocName` for a bad name, and the
        room's refusals (``too_many_docs``, ``room_full``) as :class:`~hearth_client.Refused`.
        """
        path = Paths.resolve(state_dir, socket).socket
        conn = Connection.open(path, "sync", client_name=client_name, handshake={"doc": doc}, timeout=timeout)
        try:
            peer = read_joined(conn.read_frame(timeout, "joined"))
        except BaseException:
            conn.close()
            raise
        return cls(conn, doc, peer, timeout)

    @classmethod
    def control(cls, socket: Optional[PathLike] = None, **kwargs: Any) -> "SyncDoc":
        """A connection joined to no room, for :meth:`list`, :meth:`inspect` and :meth:`close_room`."""
        return cls.open(None, socket, **kwargs)

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def close(self) -> None:
        """Leaves the room."""
        self._conn.close()

    def __enter__(self) -> "SyncDoc":
        return self

    def __exit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def _deadline(self, timeout: TimeoutArg) -> Optional[float]:
        return self._timeout if isinstance(timeout, _Default) else timeout

    def request(self, request: Json, timeout: TimeoutArg = DEFAULT) -> Json:
        """Sends one request and returns its answer (events that come first are kept for the watch)."""
        after = self._deadline(timeout)
        deadline = None if after is None else time.monotonic() + after
        self._conn.send_json(request, after)
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            response = parse_frame(self._conn.read_frame(left, "an answer"))
            event = read_event(response)
            if event is None:
                return response
            self._events.append(event)

    def get(self, path: Path = (), timeout: TimeoutArg = DEFAULT) -> "tuple[Revision, Any]":
        """The value at ``path`` (the whole document by default) and the revision it was read at."""
        return read_value(self.request(drop_none({"type": "get", "path": list(path) or None}), timeout))

    def value(self, path: Path = (), timeout: TimeoutArg = DEFAULT) -> Any:
        """The value at ``path`` (see :meth:`get`)."""
        return self.get(path, timeout)[1]

    def write(self, ops: Sequence[Json], base: Optional[Revision] = None, timeout: TimeoutArg = DEFAULT) -> Written:
        """Applies ``ops`` (from :func:`put_op` and its siblings) as one change, all or none;
        returns once it is on disk. ``base``: the revision the paths were read at."""
        return read_written(self.request(write_request(ops, base), timeout))

    def put(
        self,
        path: Path,
        value: Any,
        as_: Optional[Literal["text", "counter", "timestamp"]] = None,
        *,
        base: Optional[Revision] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> Written:
        """Sets a map key or an existing list element (see :func:`put_op`)."""
        return self.write([put_op(path, value, as_)], base, timeout)

    def delete(
        self, path: Path, count: Optional[int] = None, *, base: Optional[Revision] = None, timeout: TimeoutArg = DEFAULT
    ) -> Written:
        """Removes a map key, or ``count`` list elements or characters."""
        return self.write([delete_op(path, count)], base, timeout)

    def insert(
        self, path: Path, values: Sequence[Any], *, base: Optional[Revision] = None, timeout: TimeoutArg = DEFAULT
    ) -> Written:
        """Inserts ``values`` into a list before the path's last index."""
        return self.write([insert_op(path, values)], base, timeout)

    def splice(
        self,
        path: Path,
        index: int,
        delete: int = 0,
        insert: str = "",
        *,
        base: Optional[Revision] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> Written:
        """Edits the text at ``path``."""
        return self.write([splice_op(path, index, delete, insert)], base, timeout)

    def increment(
        self, path: Path, by: int = 1, *, base: Optional[Revision] = None, timeout: TimeoutArg = DEFAULT
    ) -> Written:
        """Adds ``by`` to the counter at ``path``."""
        return self.write([increment_op(path, by)], base, timeout)

    def peers(self, timeout: TimeoutArg = DEFAULT) -> List[PeerInfo]:
        """Who is in this room (this connection marked ``you``)."""
        return as_list(expect_type(self.request({"type": "peers"}, timeout), "peers")["peers"])

    def list(self, prefix: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> List[DocSummary]:
        """Every document (all pages), by name."""
        docs: List[DocSummary] = []
        after: Optional[str] = None
        while True:
            request = drop_none({"type": "list", "prefix": prefix, "after": after})
            page = expect_type(self.request(request, timeout), "docs")
            docs.extend(as_list(page["docs"]))
            after = page.get("next")
            if after is None:
                return docs

    def inspect(self, doc: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> RoomReport:
        """A document's room (this connection's by default); an unloaded one is not loaded for it."""
        response = expect_type(self.request(drop_none({"type": "inspect", "doc": doc}), timeout), "room")
        return response  # type: ignore[return-value]

    def close_room(self, doc: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> int:
        """Evicts a room (this connection's by default); returns how many peers were disconnected."""
        response = expect_type(self.request(drop_none({"type": "close", "doc": doc}), timeout), "closed")
        return int(response["peers"])

    def watch(
        self, path: Path = (), since: Optional[Revision] = None, keep: Any = None, timeout: TimeoutArg = DEFAULT
    ) -> "Watch":
        """Follows the value at ``path``: the returned :class:`Watch` holds it and its revision, and
        each event it yields has been applied to them. A second watch replaces the first.

        ``since`` with ``keep``: a revision and the value kept from an earlier watch (of the same
        path); when the room's log reaches back to it, only the patches from there are sent.
        """
        response = self.request(watch_request(path, since), timeout)
        revision, value = _watching(response, since, path, keep)
        return Watch(self, path, revision, value)

    def next_event(self, timeout: Optional[float] = None) -> SyncEvent:
        """The next event of the watch, waiting at most ``timeout`` seconds (``None``: forever).

        Raises :class:`~hearth_client.Timeout` when none came; the connection is then closed
        (re-watch with ``since`` to resume cheaply).
        """
        if self._events:
            return self._events.popleft()
        while True:
            response = parse_frame(self._conn.read_frame(timeout, "a change"))
            event = read_event(response)
            if event is not None:
                return event

    def event_waiting(self) -> bool:
        """True when an event is buffered or the daemon sent something not read yet (no blocking)."""
        return bool(self._events) or self._conn.frame_waiting()


class Watch(_WatchState):
    """A watched path of a :class:`SyncDoc`: :attr:`value` and :attr:`revision`, kept current as
    its events are read. Iterating yields each event (after applying it) until the connection ends."""

    def __init__(self, doc: SyncDoc, path: Path, revision: Revision, value: Any) -> None:
        super().__init__(path, revision, value)
        self.doc = doc

    def next(self, timeout: Optional[float] = None) -> SyncEvent:
        """Reads and applies the next event (see :meth:`SyncDoc.next_event` for ``timeout``)."""
        event = self.doc.next_event(timeout)
        self._apply(event)
        return event

    def wait_until(self, condition: Any, timeout: float) -> Any:
        """Reads events until ``condition(value)`` holds; returns the value. Raises
        :class:`~hearth_client.Timeout` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition(self.value):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("timeout", f"timed out after {timeout}s waiting for the watched value")
            self.next(left)
        return self.value

    def __iter__(self) -> Iterator[SyncEvent]:
        while True:
            yield self.next()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.doc.close()


# -- asyncio --------------------------------------------------------------------


class AsyncSyncDoc:
    """:class:`SyncDoc` for asyncio: the same calls, as coroutines."""

    def __init__(self, conn: AsyncConnection, doc: Optional[str], peer: int, timeout: Optional[float]) -> None:
        self._conn = conn
        self.doc = doc
        self.peer = peer
        self._timeout = timeout
        self._events: Deque[SyncEvent] = deque()

    @classmethod
    async def open(
        cls,
        doc: Optional[str],
        socket: Optional[PathLike] = None,
        *,
        state_dir: Optional[PathLike] = None,
        client_name: Optional[str] = DEFAULT_CLIENT_NAME,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> "AsyncSyncDoc":
        """Joins ``doc``'s room (``None``: a control connection)."""
        path = Paths.resolve(state_dir, socket).socket
        conn = await AsyncConnection.open(
            path, "sync", client_name=client_name, handshake={"doc": doc}, timeout=timeout
        )
        try:
            peer = read_joined(await conn.read_frame(timeout, "joined"))
        except BaseException:
            conn.close()
            raise
        return cls(conn, doc, peer, timeout)

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def close(self) -> None:
        """Leaves the room."""
        self._conn.close()

    async def __aenter__(self) -> "AsyncSyncDoc":
        return self

    async def __aexit__(
        self, et: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def _deadline(self, timeout: TimeoutArg) -> Optional[float]:
        return self._timeout if isinstance(timeout, _Default) else timeout

    async def request(self, request: Json, timeout: TimeoutArg = DEFAULT) -> Json:
        """Sends one request and returns its answer (events that come first are kept)."""
        after = self._deadline(timeout)
        deadline = None if after is None else time.monotonic() + after
        await self._conn.send_json(request, after)
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            response = parse_frame(await self._conn.read_frame(left, "an answer"))
            event = read_event(response)
            if event is None:
                return response
            self._events.append(event)

    async def get(self, path: Path = (), timeout: TimeoutArg = DEFAULT) -> "tuple[Revision, Any]":
        """The value at ``path`` and its revision."""
        return read_value(await self.request(drop_none({"type": "get", "path": list(path) or None}), timeout))

    async def write(
        self, ops: Sequence[Json], base: Optional[Revision] = None, timeout: TimeoutArg = DEFAULT
    ) -> Written:
        """Applies ``ops`` as one change; returns once it is on disk."""
        return read_written(await self.request(write_request(ops, base), timeout))

    async def put(
        self,
        path: Path,
        value: Any,
        as_: Optional[Literal["text", "counter", "timestamp"]] = None,
        *,
        base: Optional[Revision] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> Written:
        """Sets a map key or an existing list element."""
        return await self.write([put_op(path, value, as_)], base, timeout)

    async def delete(
        self, path: Path, count: Optional[int] = None, *, base: Optional[Revision] = None, timeout: TimeoutArg = DEFAULT
    ) -> Written:
        """Removes a map key, or ``count`` list elements or characters."""
        return await self.write([delete_op(path, count)], base, timeout)

    async def insert(
        self, path: Path, values: Sequence[Any], *, base: Optional[Revision] = None, timeout: TimeoutArg = DEFAULT
    ) -> Written:
        """Inserts ``values`` into a list before the path's last index."""
        return await self.write([insert_op(path, values)], base, timeout)

    async def splice(
        self,
        path: Path,
        index: int,
        delete: int = 0,
        insert: str = "",
        *,
        base: Optional[Revision] = None,
        timeout: TimeoutArg = DEFAULT,
    ) -> Written:
        """Edits the text at ``path``."""
        return await self.write([splice_op(path, index, delete, insert)], base, timeout)

    async def increment(
        self, path: Path, by: int = 1, *, base: Optional[Revision] = None, timeout: TimeoutArg = DEFAULT
    ) -> Written:
        """Adds ``by`` to the counter at ``path``."""
        return await self.write([increment_op(path, by)], base, timeout)

    async def peers(self, timeout: TimeoutArg = DEFAULT) -> List[PeerInfo]:
        """Who is in this room."""
        return as_list(expect_type(await self.request({"type": "peers"}, timeout), "peers")["peers"])

    async def list(self, prefix: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> List[DocSummary]:
        """Every document (all pages)."""
        docs: List[DocSummary] = []
        after: Optional[str] = None
        while True:
            request = drop_none({"type": "list", "prefix": prefix, "after": after})
            page = expect_type(await self.request(request, timeout), "docs")
            docs.extend(as_list(page["docs"]))
            after = page.get("next")
            if after is None:
                return docs

    async def inspect(self, doc: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> RoomReport:
        """A document's room."""
        response = expect_type(await self.request(drop_none({"type": "inspect", "doc": doc}), timeout), "room")
        return response  # type: ignore[return-value]

    async def close_room(self, doc: Optional[str] = None, timeout: TimeoutArg = DEFAULT) -> int:
        """Evicts a room; returns how many peers were disconnected."""
        response = expect_type(await self.request(drop_none({"type": "close", "doc": doc}), timeout), "closed")
        return int(response["peers"])

    async def watch(
        self, path: Path = (), since: Optional[Revision] = None, keep: Any = None, timeout: TimeoutArg = DEFAULT
    ) -> "AsyncWatch":
        """Follows the value at ``path`` (see :meth:`SyncDoc.watch`)."""
        response = await self.request(watch_request(path, since), timeout)
        revision, value = _watching(response, since, path, keep)
        return AsyncWatch(self, path, revision, value)

    async def next_event(self, timeout: Optional[float] = None) -> SyncEvent:
        """The next event of the watch (see :meth:`SyncDoc.next_event`)."""
        if self._events:
            return self._events.popleft()
        while True:
            response = parse_frame(await self._conn.read_frame(timeout, "a change"))
            event = read_event(response)
            if event is not None:
                return event


class AsyncWatch(_WatchState):
    """A watched path of an :class:`AsyncSyncDoc`; ``async for event in watch``."""

    def __init__(self, doc: AsyncSyncDoc, path: Path, revision: Revision, value: Any) -> None:
        super().__init__(path, revision, value)
        self.doc = doc

    async def next(self, timeout: Optional[float] = None) -> SyncEvent:
        """Reads and applies the next event."""
        event = await self.doc.next_event(timeout)
        self._apply(event)
        return event

    def __aiter__(self) -> AsyncIterator[SyncEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[SyncEvent]:
        while True:
            yield await self.next()
