"""Every case of ``tests/conformance/`` against a real ``hearthd``, through this client's own framing and handshake."""

from __future__ import annotations

import unittest

import conformance


class Conformance(unittest.TestCase):
    def test_every_file_is_run(self) -> None:
        self.assertGreaterEqual(len(conformance.files()), 7, conformance.files())

    def test_cases(self) -> None:
        for name in conformance.files():
            with self.subTest(file=name):
                ran, failures = conformance.run_file(name)
                self.assertFalse(failures, "\n".join(failures))
                self.assertEqual(ran, len(conformance.load(name)["cases"]))


if __name__ == "__main__":
    unittest.main()
