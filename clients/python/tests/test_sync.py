"""The ``sync`` channel in view mode against a real hearthd: writes, watches, errors, control requests."""

from __future__ import annotations

import asyncio
import unittest
from typing import Any, ClassVar, List

import hearth_client
from hearth_client import AsyncSyncDoc, Changed, Client, Presence, Snapshot, SyncDoc, apply_patch
from hearth_client.sync import delete_op, increment_op, insert_op, put_op, splice_op

from support import DaemonFixture

CONFIG = """
[blob]
http = false

[sync]
max_value_size = "2000"
"""


class PatchTests(unittest.TestCase):
    """apply_patch without a daemon: the same cases as the Rust library's."""

    def test_patches_apply_to_json(self) -> None:
        doc: Any = {"a": {"n": 1, "list": [1, 2, 3]}, "t": "héllo"}
        for patch in [
            increment_op(["a", "n"], 4),
            delete_op(["a", "list", 0], 2),
            insert_op(["a", "list", 1], [9, 10]),
            put_op(["a", "list", 0], "x"),
            splice_op(["t"], 1, 1, "e"),
            delete_op(["t", 0]),
            put_op(["new"], {"k": []}),
        ]:
            doc = apply_patch(doc, patch)
        self.assertEqual(doc, {"a": {"n": 5, "list": ["x", 9, 10]}, "t": "ello", "new": {"k": []}})
        with self.assertRaises(hearth_client.sync.PatchError):
            apply_patch(doc, put_op(["zz", "q"], 1))
        # Relative to a watched path, and a put of the watched path itself.
        self.assertEqual(apply_patch([1], insert_op(["a", "list", 0], [0]), ["a", "list"]), [0, 1])
        self.assertEqual(apply_patch("old", put_op(["a"], "new"), ["a"]), "new")
        self.assertEqual(apply_patch("abc", splice_op(["t"], 3, 0, "d"), ["t"]), "abcd")
        with self.assertRaises(hearth_client.sync.PatchError):
            apply_patch({}, put_op(["b"], 1), ["a"])


class SyncTests(unittest.TestCase):
    fixture: ClassVar[DaemonFixture]

    @classmethod
    def setUpClass(cls) -> None:
        cls.fixture = DaemonFixture(CONFIG)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fixture.close()

    def open(self, doc: str) -> SyncDoc:
        opened = SyncDoc.open(doc, self.fixture.socket, client_name="py-sync-tests/1", timeout=10.0)
        self.addCleanup(opened.close)
        return opened

    def test_write_get_and_follow_changes(self) -> None:
        writer = self.open("py/follow")
        reader = self.open("py/follow")
        w = writer.write([put_op(["title"], "hello"), put_op(["cells"], []), put_op(["runs"], 0, "counter")])
        self.assertFalse(w.stale)
        revision, value = reader.get()
        self.assertEqual((revision, value), (w.revision, {"title": "hello", "cells": [], "runs": 0}))
        self.assertEqual(reader.value(["title"]), "hello")

        watch = reader.watch(["cells"])
        self.assertEqual((watch.revision, watch.value), (w.revision, []))
        writer.insert(["cells", 0], [{"source": "print(1)"}])
        writer.put(["cells", 0, "source"], "print(1)", "text")
        writer.splice(["cells", 0, "source"], 8, 0, "  # fixed")
        writer.increment(["runs"], 2)
        last = writer.delete(["title"])
        watch.wait_until(lambda v: v == [{"source": "print(1)  # fixed"}], timeout=20)
        # Patches outside the watched path are not sent: the watch reaches the last revision
        # only through changes within it, so compare with the whole document read now.
        self.assertEqual(reader.value(), {"cells": [{"source": "print(1)  # fixed"}], "runs": 2})
        self.assertEqual(reader.get()[0], last.revision)

    def test_presence_and_peers(self) -> None:
        a = self.open("py/presence")
        watch = a.watch()
        b = self.open("py/presence")
        while True:
            event = watch.next(20)
            if isinstance(event, Presence) and len(event.peers) == 2:
                break
        assert watch.peers is not None
        self.assertEqual({p["id"] for p in watch.peers}, {a.peer, b.peer})
        mine = [p for p in a.peers() if p.get("you")]
        self.assertEqual([p["id"] for p in mine], [a.peer])
        self.assertEqual(mine[0]["client"], "py-sync-tests/1")
        self.assertEqual(mine[0]["mode"], "view")

    def test_a_stale_base_is_merged_and_said(self) -> None:
        doc = self.open("py/stale")
        base = doc.put(["tags"], ["a", "b"]).revision
        doc.insert(["tags", 0], ["first"])
        w = doc.insert(["tags", 2], ["after-b"], base=base)
        self.assertTrue(w.stale)
        self.assertEqual(doc.value(["tags"]), ["first", "a", "b", "after-b"])
        with self.assertRaises(hearth_client.UnknownRevision):
            doc.put(["x"], 1, base=["00" * 32])

    def test_bad_input_is_typed_and_keeps_the_connection(self) -> None:
        doc = self.open("py/errors")
        doc.write([put_op(["title"], "text"), put_op(["obj"], {})])
        cases = [
            (hearth_client.PathNotFound, [put_op(["no", "such"], 1)]),
            (hearth_client.NotAContainer, [put_op(["title", "x"], 1)]),
            (hearth_client.WrongType, [insert_op(["obj", "k"], [1])]),
            (hearth_client.ValueTooLarge, [put_op(["big"], "x" * 3000)]),
            (hearth_client.InvalidRequest, [put_op([], 1)]),
        ]
        for error, ops in cases:
            with self.subTest(error=error.__name__):
                with self.assertRaises(error) as caught:
                    doc.write([put_op(["first"], 1), *ops])
                self.assertIsInstance(caught.exception, hearth_client.RequestError)
        with self.assertRaises(hearth_client.PathNotFound):
            doc.get(["missing"])
        self.assertEqual(
            doc.value(), {"title": "text", "obj": {}}, "nothing of the bad writes applied; the connection serves on"
        )
        with self.assertRaises(hearth_client.InvalidDocName) as refused:
            SyncDoc.open("Bad/Name", self.fixture.socket)
        self.assertIsInstance(refused.exception, hearth_client.Refused)

    def test_reconnecting_with_since_gets_only_the_patches(self) -> None:
        doc = self.open("py/since")
        doc.put(["n"], 1)
        first = doc.watch()
        kept_revision, kept_value = first.revision, first.value
        doc.close()
        other = self.open("py/since")
        other.put(["m"], 2)
        again = self.open("py/since")
        watch = again.watch(since=kept_revision, keep=kept_value)
        self.assertEqual(watch.value, {"n": 1, "m": 2})
        self.assertEqual(watch.revision, again.get()[0])

    def test_control_connection_lists_inspects_and_closes(self) -> None:
        member = self.open("py/ctl/a")
        member.put(["x"], 1)
        control = SyncDoc.control(self.fixture.socket, timeout=10.0)
        self.addCleanup(control.close)
        names = [d["doc"] for d in control.list("py/ctl/")]
        self.assertEqual(names, ["py/ctl/a"])
        report = control.inspect("py/ctl/a")
        self.assertTrue(report["loaded"])
        self.assertEqual([p["id"] for p in report["peers"]], [member.peer])
        with self.assertRaises(hearth_client.DocNotFound):
            control.inspect("py/ctl/none")
        with self.assertRaises(hearth_client.NoDocument):
            control.get()
        self.assertEqual(control.close_room("py/ctl/a"), 1)
        with self.assertRaises(hearth_client.HearthError) as gone:
            member.get()
        self.assertIn(gone.exception.code, ("room_closed", "connection_closed"))
        self.assertEqual(self.open("py/ctl/a").value(), {"x": 1}, "the evicted room reloads from disk")

    def test_the_client_opens_documents(self) -> None:
        with Client(self.fixture.socket, timeout=10.0) as client, client.sync("settings") as settings:
            settings.put(["py"], True)
            self.assertIs(settings.value(["py"]), True)
            self.assertEqual(settings.value(["schema_version"]), 1)


class AsyncSyncTests(unittest.TestCase):
    fixture: ClassVar[DaemonFixture]

    @classmethod
    def setUpClass(cls) -> None:
        cls.fixture = DaemonFixture(CONFIG)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fixture.close()

    def test_write_and_watch(self) -> None:
        async def run() -> List[Any]:
            async with await AsyncSyncDoc.open("py/async", self.fixture.socket, timeout=10.0) as writer:
                reader = await AsyncSyncDoc.open("py/async", self.fixture.socket, timeout=10.0)
                try:
                    watch = await reader.watch()
                    seen: List[Any] = []
                    for i in range(3):
                        await writer.put(["n"], i)
                    async for event in watch:
                        if isinstance(event, (Changed, Snapshot)):
                            seen.append(watch.value.get("n"))
                        if watch.value.get("n") == 2:
                            break
                    with self.assertRaises(hearth_client.WrongType):
                        await writer.increment(["n"])
                    return seen
                finally:
                    reader.close()

        seen = asyncio.run(asyncio.wait_for(run(), 30))
        self.assertEqual(seen[-1], 2)
        self.assertEqual(seen, sorted(seen), "changes arrive in order")


if __name__ == "__main__":
    unittest.main()
