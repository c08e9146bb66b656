"""The Python runner of the language-neutral conformance suite (``tests/conformance/``).

It goes through the client's own code: :class:`hearth_client._transport.Connection`
for framing and the handshake, :mod:`hearth_client.protocol` to build the
handshake and to read refusals, and the client's exception classes. The
format is fixed by ``tests/conformance/README.md``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from hearth_client import ConnectionClosed, HearthError, Refused
from hearth_client._transport import Connection
from hearth_client.protocol import parse_handshake_reply, parse_json

from support import CONFORMANCE, Daemon, StateDir

_TYPES: Dict[str, Callable[[Any], bool]] = {
    "$string": lambda v: isinstance(v, str),
    "$int": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "$number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "$bool": lambda v: isinstance(v, bool),
    "$array": lambda v: isinstance(v, list),
    "$object": lambda v: isinstance(v, dict),
    "$null": lambda v: v is None,
    "$any": lambda v: True,
}
_MATCHERS = ("$capture", "$one_of", "$contains")
_WHOLE = re.compile(r"^\$\{([A-Za-z0-9_]+)\}$")
_INNER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class CaseFailure(AssertionError):
    pass


def load(name: str) -> Dict[str, Any]:
    with open(CONFORMANCE / name) as f:
        doc: Dict[str, Any] = json.load(f)
    return doc


def files() -> List[str]:
    return sorted(p.name for p in CONFORMANCE.glob("*.json"))


def substitute(value: Any, captures: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return _captured(captures, whole.group(1))

        def text(m: "re.Match[str]") -> str:
            v = _captured(captures, m.group(1))
            return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))

        return _INNER.sub(text, value)
    if isinstance(value, list):
        return [substitute(v, captures) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, captures) for k, v in value.items()}
    return value


def _captured(captures: Mapping[str, Any], name: str) -> Any:
    if name not in captures:
        raise CaseFailure(f"${{{name}}} was never captured")
    return captures[name]


def match(pattern: Any, value: Any, captures: Dict[str, Any], path: str = "$") -> None:
    """Raises :class:`CaseFailure` naming the first place where ``value`` does not match ``pattern``."""
    if isinstance(pattern, str) and pattern.startswith("$"):
        if pattern.startswith("$$"):
            pattern = pattern[1:]
        elif pattern in _TYPES:
            if not _TYPES[pattern](value):
                raise CaseFailure(f"{path}: expected {pattern}, got {value!r:.200}")
            return
        elif pattern == "$absent":
            raise CaseFailure(f"{path}: $absent is allowed only as an object value")
        else:
            raise CaseFailure(f"{path}: unknown matcher {pattern!r} in the case file")
    key = next((k for k in _MATCHERS if isinstance(pattern, dict) and k in pattern), None)
    if key is not None:
        if key == "$capture":
            if "match" in pattern:
                match(pattern["match"], value, captures, path)
            captures[pattern["$capture"]] = value
            return
        if key == "$one_of":
            for option in pattern["$one_of"]:
                try:
                    match(option, value, dict(captures), path)
                except CaseFailure:
                    continue
                match(option, value, captures, path)
                return
            raise CaseFailure(f"{path}: {value!r:.200} matches none of {pattern['$one_of']!r}")
        if not isinstance(value, list):
            raise CaseFailure(f"{path}: expected an array, got {value!r:.200}")
        for i, wanted in enumerate(pattern["$contains"]):
            for element in value:
                try:
                    match(wanted, element, dict(captures), path)
                except CaseFailure:
                    continue
                match(wanted, element, captures, path)
                break
            else:
                raise CaseFailure(f"{path}: no element matches $contains[{i}] {wanted!r:.200} in {value!r:.300}")
        return
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            raise CaseFailure(f"{path}: expected an object, got {value!r:.200}")
        for key, wanted in pattern.items():
            if wanted == "$absent":
                if key in value:
                    raise CaseFailure(f"{path}.{key}: expected absent, got {value[key]!r:.200}")
                continue
            if key not in value:
                raise CaseFailure(f"{path}.{key}: missing in {value!r:.300}")
            match(wanted, value[key], captures, f"{path}.{key}")
        return
    if isinstance(pattern, list):
        if not isinstance(value, list) or len(value) != len(pattern):
            raise CaseFailure(f"{path}: expected an array of {len(pattern)}, got {value!r:.300}")
        for i, (p, v) in enumerate(zip(pattern, value)):
            match(p, v, captures, f"{path}[{i}]")
        return
    if isinstance(pattern, bool) or isinstance(value, bool) or pattern is None or value is None:
        equal = type(pattern) is type(value) and pattern == value
    elif isinstance(pattern, (int, float)):
        equal = isinstance(value, (int, float)) and pattern == value
    else:
        equal = pattern == value
    if not equal:
        raise CaseFailure(f"{path}: expected {pattern!r:.200}, got {value!r:.200}")


def run_case(case: Mapping[str, Any], socket_path: str) -> None:
    timeout = case.get("timeout_ms", 10000) / 1000.0
    handshake = case.get("handshake")
    steps: List[Dict[str, Any]] = case["steps"]
    captures: Dict[str, Any] = {}
    conn: Optional[Connection] = None
    start = 0
    if handshake == "none":
        conn = Connection(Connection.open_unchecked(socket_path, timeout), None, socket_path)
    else:
        refused_code: Optional[str] = steps[0].get("expect_refused") if steps else None
        try:
            conn = Connection.open(
                socket_path,
                case["channel"],
                client_name="hearth-conformance/1",
                handshake=handshake,
                timeout=timeout,
            )
        except Refused as e:
            if refused_code is None:
                raise CaseFailure(f"the handshake was refused: {e}") from None
            if e.code != refused_code:
                raise CaseFailure(f"step 0: expected refusal {refused_code}, got {e.code} ({e.message})") from None
            if len(steps) > 1:
                raise CaseFailure("steps after a refused client handshake cannot run") from None
            return
        if refused_code is not None:
            raise CaseFailure(f"step 0: expected refusal {refused_code}, the handshake was accepted")
        if steps and "expect_accepted" in steps[0]:
            assert conn.accepted is not None
            match(steps[0]["expect_accepted"], conn.accepted.reply, captures, "accepted")
            start = 1
    try:
        for index in range(start, len(steps)):
            try:
                run_step(conn, steps[index], captures, timeout)
            except CaseFailure as e:
                raise CaseFailure(f"step {index} {json.dumps(steps[index])[:200]}: {e}") from None
            except HearthError as e:
                raise CaseFailure(f"step {index} {json.dumps(steps[index])[:200]}: {type(e).__name__}: {e}") from None
    finally:
        conn.close()


def _read_json(conn: Connection, timeout: float, what: str) -> Any:
    frame = conn.read_frame(timeout, what)
    return json.loads(frame)


def run_step(conn: Connection, step: Mapping[str, Any], captures: Dict[str, Any], timeout: float) -> None:
    kinds = [k for k in step if k != "allow"]
    if len(kinds) != 1:
        raise CaseFailure(f"a step has exactly one action, not {kinds}")
    kind = kinds[0]
    arg = substitute(step[kind], captures)
    if kind == "send":
        conn.send_json(arg, timeout)
    elif kind == "send_text":
        conn.send_raw(arg.encode("utf-8"), timeout)
    elif kind == "send_raw":
        conn.send_raw(base64.b64decode(arg, validate=True), timeout)
    elif kind == "send_bytes":
        conn.send_bytes(base64.b64decode(arg, validate=True), timeout)
    elif kind == "expect":
        match(arg, _read_json(conn, timeout, f"a frame matching {json.dumps(arg)[:120]}"), captures)
    elif kind == "expect_until":
        allow = substitute(step.get("allow", []), captures)
        for _ in range(1000):
            value = _read_json(conn, timeout, f"a frame matching {json.dumps(arg)[:120]}")
            try:
                match(arg, value, captures)
                return
            except CaseFailure as last:
                failure = last
            for option in allow:
                try:
                    match(option, value, dict(captures))
                    break
                except CaseFailure:
                    continue
            else:
                raise CaseFailure(f"a frame matches neither the end nor `allow`: {failure}")
        raise CaseFailure("1000 frames without the end of the stream")
    elif kind == "expect_data":
        data = bytearray()
        digest = hashlib.sha256()
        length = 0
        while True:
            frame = conn.read_frame(timeout, "a data frame or the end marker")
            if not frame:
                break
            length += len(frame)
            digest.update(frame)
            if isinstance(arg, str):
                data += frame
        if isinstance(arg, str):
            wanted = base64.b64decode(arg, validate=True)
            if bytes(data) != wanted:
                raise CaseFailure(f"data {bytes(data)[:64]!r} is not {wanted[:64]!r}")
        elif length != arg["length"] or digest.hexdigest() != arg["sha256"]:
            raise CaseFailure(f"data of {length} bytes, sha256 {digest.hexdigest()}; expected {arg}")
    elif kind == "expect_refused":
        frame = conn.read_frame(timeout, f"a refusal {arg}")
        try:
            parse_handshake_reply(frame)
        except Refused as e:
            if e.code != arg:
                raise CaseFailure(f"refused with {e.code}, expected {arg}") from None
            match(
                {"ok": False, "protocol": 1, "error": {"code": arg, "message": "$string"}}, parse_json(frame), captures
            )
            return
        raise CaseFailure(f"expected a refusal {arg}, the handshake was accepted")
    elif kind == "expect_closed":
        try:
            frame = conn.read_frame(timeout, "the daemon to close the connection")
        except ConnectionClosed:
            return
        raise CaseFailure(f"expected the connection to close, got a frame {frame[:200]!r}")
    elif kind == "expect_accepted":
        raise CaseFailure("expect_accepted is allowed only as the first step")
    else:
        raise CaseFailure(f"unknown step {kind!r}")


def run_file(name: str) -> Tuple[int, List[str]]:
    """Runs every case of one file against its own daemon; returns (cases run, failures)."""
    doc = load(name)
    state = StateDir()
    failures: List[str] = []
    ran = 0
    try:
        if doc.get("config") is not None:
            state.write_config(doc["config"])
        daemon = Daemon(state, doc.get("daemon_args", []))
        try:
            for case in doc["cases"]:
                ran += 1
                try:
                    run_case(case, state.socket)
                except (CaseFailure, HearthError) as e:
                    failures.append(f"{case['name']}: {e}")
                    break
        finally:
            daemon.stop()
            if failures:
                failures.append("daemon log (tail):\n" + "\n".join(daemon.log().splitlines()[-30:]))
    finally:
        state.cleanup()
    return ran, failures
