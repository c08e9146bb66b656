"""The sans-IO framing and handshake, against the checked-in golden frames."""

from __future__ import annotations

import json
import unittest

import hearth_client
from hearth_client.protocol import (
    FrameDecoder,
    encode_frame,
    encode_json,
    handshake_frame,
    parse_handshake_reply,
)

from support import REPO


class Framing(unittest.TestCase):
    def test_ping_is_the_documented_bytes(self) -> None:
        # proto-docs/framing.md
        self.assertEqual(
            encode_json({"type": "ping"}).hex(" "), "00 00 00 0f 7b 22 74 79 70 65 22 3a 22 70 69 6e 67 22 7d"
        )

    def test_golden_frames_decode(self) -> None:
        frames = sorted((REPO / "tests" / "data").glob("v1-*.frame"))
        self.assertGreaterEqual(len(frames), 37)
        for path in frames:
            with self.subTest(frame=path.name):
                raw = path.read_bytes()
                decoder = FrameDecoder()
                # Byte by byte: a frame is whole only once its last byte arrives.
                for i, byte in enumerate(raw):
                    self.assertIsNone(decoder.next_frame(), f"a frame after {i} bytes")
                    decoder.feed(bytes([byte]))
                payload = decoder.next_frame()
                assert payload is not None
                self.assertIsNone(decoder.next_frame())
                self.assertEqual(decoder.buffered(), 0)
                value = json.loads(payload)
                self.assertIsInstance(value, dict)
                self.assertEqual(encode_frame(payload), raw)

    def test_several_frames_in_one_read(self) -> None:
        decoder = FrameDecoder()
        decoder.feed(encode_frame(b"a") + encode_frame(b"") + encode_frame(b"bc")[:3])
        self.assertEqual(decoder.next_frame(), b"a")
        self.assertEqual(decoder.next_frame(), b"")
        self.assertIsNone(decoder.next_frame())
        self.assertEqual(decoder.wanted(), 1, "the rest of the length prefix")
        decoder.feed(encode_frame(b"bc")[3:4])
        self.assertEqual(decoder.wanted(), 2, "the payload")
        decoder.feed(encode_frame(b"bc")[4:])
        self.assertEqual(decoder.next_frame(), b"bc")

    def test_an_oversize_length_is_refused_before_its_payload(self) -> None:
        decoder = FrameDecoder(max_frame=16)
        decoder.feed((17).to_bytes(4, "big"))
        with self.assertRaises(hearth_client.ProtocolError) as caught:
            decoder.next_frame()
        self.assertEqual(caught.exception.code, "frame_too_large")

    def test_an_announced_length_reserves_nothing(self) -> None:
        decoder = FrameDecoder()
        decoder.feed((16 * 1024 * 1024).to_bytes(4, "big") + b"abc")
        self.assertIsNone(decoder.next_frame())
        self.assertEqual(decoder.buffered(), 7)

    def test_a_request_over_max_frame_is_refused_before_sending(self) -> None:
        with self.assertRaises(hearth_client.FrameTooLarge):
            encode_json({"type": "submit", "input": "x" * 100}, max_frame=64)


class Handshake(unittest.TestCase):
    def test_fields_and_extras(self) -> None:
        frame = handshake_frame("status", "my-app/1.2.0")
        self.assertEqual(frame[4:], b'{"channel":"status","protocol":1,"client":"my-app/1.2.0"}')
        extra = json.loads(handshake_frame("sync", None, {"doc": "settings", "protocol": 2})[4:])
        self.assertEqual(extra, {"channel": "sync", "protocol": 2, "doc": "settings"})
        removed = json.loads(handshake_frame("status", "x", {"client": None})[4:])
        self.assertEqual(removed, {"channel": "status", "protocol": 1})

    def test_golden_replies(self) -> None:
        accepted = (REPO / "tests" / "data" / "v1-handshake_reply-accepted.frame").read_bytes()[4:]
        reply = parse_handshake_reply(accepted)
        self.assertEqual((reply.channel, reply.daemon_pid, reply.max_frame), ("status", 77, 16777216))
        refused = (REPO / "tests" / "data" / "v1-handshake_reply-refused.frame").read_bytes()[4:]
        with self.assertRaises(hearth_client.TooManyConnections) as caught:
            parse_handshake_reply(refused)
        self.assertIsInstance(caught.exception, hearth_client.Refused)


if __name__ == "__main__":
    unittest.main()
