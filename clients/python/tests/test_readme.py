"""The README examples run as they are, against a daemon they start themselves."""

from __future__ import annotations

import re
import subprocess
import sys
import unittest
from pathlib import Path

from support import REPO, StateDir, clean_env, hearthd_bin, stop_detached


def python_block(path: Path, after: str) -> str:
    """The first ```python block of ``path`` after the line ``after``."""
    text = path.read_text()
    start = text.index(after)
    found = re.search(r"^```python\n(.*?)^```$", text[start:], re.M | re.S)
    assert found is not None, f"{path}: no python block after {after!r}"
    return found.group(1)


class ReadmeExamples(unittest.TestCase):
    def run_example(self, code: str) -> str:
        self.assertLessEqual(len(code.strip().splitlines()), 12, "the example stays short")
        state = StateDir()
        self.addCleanup(state.cleanup)
        self.addCleanup(stop_detached, state.state_dir)
        env = clean_env(
            HEARTH_STATE_DIR=state.state_dir,
            HEARTH_DAEMON_BIN=hearthd_bin(),
            PYTHONPATH=str(REPO / "clients" / "python" / "src"),
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=300, cwd=state.root, check=False
        )
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        return done.stdout.decode()

    def test_the_client_readme(self) -> None:
        out = self.run_example(python_block(REPO / "clients" / "python" / "README.md", "## Ten lines"))
        self.assertIn("succeeded", out)
        self.assertIn("hello from a job\n", out)
        self.assertIn("hello from a pooled venv\n", out)
        self.assertRegex(out, r"sha256:[0-9a-f]{64}")

    def test_the_events_example(self) -> None:
        out = self.run_example(python_block(REPO / "clients" / "python" / "README.md", "## Events"))
        self.assertRegex(
            out, r"#\d+ job (\d+): None -> queued\n#\d+ job \1: queued -> running\n#\d+ job \1: running -> succeeded\n"
        )

    def test_the_top_readme(self) -> None:
        out = self.run_example(python_block(REPO / "README.md", "## From Python"))
        self.assertRegex(out, r"job \d+ succeeded exit 0")
        self.assertIn("a venv at ", out)


if __name__ == "__main__":
    unittest.main()
