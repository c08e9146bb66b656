"""Every error code of proto-docs/errors.md has a class, in the right family."""

from __future__ import annotations

import re
import unittest

import hearth_client
from hearth_client import errors
from hearth_client.protocol import parse_handshake_reply, parse_response

from support import REPO


def documented_codes() -> list[str]:
    text = (REPO / "proto-docs" / "errors.md").read_text()
    return re.findall(r"^\| `([a-z_]+)` \|", text, re.M)


class ErrorClasses(unittest.TestCase):
    def test_every_documented_code_has_a_class(self) -> None:
        codes = documented_codes()
        self.assertGreaterEqual(len(codes), 30, codes)
        for code in codes:
            with self.subTest(code=code):
                cls = errors.ERROR_CLASSES.get(code)
                self.assertIsNotNone(cls, f"proto-docs/errors.md lists `{code}` but hearth_client has no class")
                assert cls is not None
                self.assertEqual(cls.wire_code, code)
                self.assertIs(getattr(hearth_client, cls.__name__), cls, "exported from the package")

    def test_no_class_for_an_undocumented_code(self) -> None:
        self.assertEqual(set(errors.ERROR_CLASSES), set(documented_codes()))

    def test_families(self) -> None:
        self.assertTrue(issubclass(hearth_client.UnknownChannel, hearth_client.Refused))
        self.assertTrue(issubclass(hearth_client.BlobNotFound, hearth_client.RequestError))
        self.assertTrue(issubclass(hearth_client.DaemonBinaryNotFound, hearth_client.StartFailed))
        for cls in (
            hearth_client.NotRunning,
            hearth_client.Refused,
            hearth_client.Timeout,
            hearth_client.StartFailed,
            hearth_client.ConnectionClosed,
            hearth_client.RequestError,
        ):
            self.assertTrue(issubclass(cls, hearth_client.HearthError), cls)

    def test_a_code_sent_in_both_places_joins_the_family_of_where_it_came(self) -> None:
        refused = errors.error_for_code("shutting_down", "stopping", handshake=True, daemon={"pid": 1})
        self.assertIsInstance(refused, hearth_client.ShuttingDown)
        self.assertIsInstance(refused, hearth_client.Refused)
        self.assertNotIsInstance(refused, hearth_client.RequestError)
        assert isinstance(refused, hearth_client.Refused)
        self.assertEqual(refused.daemon, {"pid": 1})
        failed = errors.error_for_code("shutting_down", "stopping", handshake=False)
        self.assertIsInstance(failed, hearth_client.ShuttingDown)
        self.assertIsInstance(failed, hearth_client.RequestError)
        self.assertNotIsInstance(failed, hearth_client.Refused)
        self.assertIs(type(failed), type(errors.error_for_code("shutting_down", "again", handshake=False)))

    def test_wire_errors_become_their_classes(self) -> None:
        with self.assertRaises(hearth_client.UnknownPool) as caught:
            parse_response(b'{"type":"error","code":"unknown_pool","message":"no pool \\"x\\""}')
        self.assertEqual(caught.exception.code, "unknown_pool")
        self.assertEqual(caught.exception.message, 'no pool "x"')
        with self.assertRaises(hearth_client.UnknownChannel):
            parse_handshake_reply(b'{"ok":false,"protocol":1,"error":{"code":"unknown_channel","message":"no"}}')

    def test_an_unknown_code_is_a_failure_of_that_request(self) -> None:
        with self.assertRaises(hearth_client.RequestError) as caught:
            parse_response(b'{"type":"error","code":"from_the_future","message":"new"}')
        self.assertIs(type(caught.exception), hearth_client.RequestError)
        self.assertEqual(caught.exception.code, "from_the_future")


if __name__ == "__main__":
    unittest.main()
