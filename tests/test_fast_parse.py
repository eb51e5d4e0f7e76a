"""The canonical-line fast path of `parse_client_line` never changes what a line means.

For every line of a hand-written and a generated corpus, the result of `parse_client_line`
(which reads canonical ASCII lines with orjson) must equal the strict Python parse: the same
value with the same types, or the same refusal. The corpus is checked to reach the fast path
often, including lines built to fool it (repeated keys, keys equal up to case, escapes, number
spellings, integers beyond 64 bits).
"""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from intercept.proxy.jsonrpc import RefusedLine, _parse_strictly, parse_client_line
from tests.support import typed_repr

HAND_WRITTEN = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"delete"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"path":"a","Path":"b"}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":{"k":1,"K":2}}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":[{"x":1,"X":1}]}}',
    b'{"Method":"tools/call","method":"ping","id":1,"jsonrpc":"2.0"}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{}}',
    b'{"jsonrpc":"2.0","id":1,"method":"\\u0074ools/call","params":{}}',
    b'{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":9007199254740993,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":-9223372036854775809,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1.0,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1E5,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":-0.0,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\\ud800"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\\ud83d\\ude00"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\\u001f\\n\\t\\"\\\\"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"}\r',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"} ',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"}{"id":2}',
    b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\xc3\xa9"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\xe2\x84\xaa":1,"k":2}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\xff"}}',
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"ping"}]',
    b'[]',
    b'{}',
    b'1',
    b'"tools/call"',
    b"",
    b"   ",
    b"{",
    b'{"a":1,}',
    b'{"A":1}',
    b'{"1":1,"A":[true,false,null]}',
    *(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":' + b"[" * d + b"]" * d + b"}}" for d in (254, 300, 1020, 2000)),
]


def _outcome(parse: Any, line: bytes) -> tuple[str, str]:
    """What a parser makes of a line, with types visible (1 and 1.0 differ): value or refusal."""
    try:
        value = parse(line)
    except RefusedLine as refused:
        return ("refused", str(refused.code))
    return ("value", typed_repr(value))


def _canonical(line: bytes) -> bool:
    """Whether the fast path's first test holds (orjson spells the line back exactly)."""
    try:
        return line.isascii() and orjson.dumps(orjson.loads(line)) == line
    except orjson.JSONDecodeError:
        return False


KEYS = ["name", "Name", "NAME", "arguments", "path", "Path", "id", "a", "A", "b", "x_1", "X_1", "1"]
STRINGS = ["echo", "ECHO", "tools/call", "a\"b", "back\\slash", "line\nfeed", "tab\t", "\x1f", "caf\u00e9", "\U0001f600"]
NUMBERS = [0, 1, -1, 2**53 + 1, 2**63 - 1, 2**64, -(2**63), 1.5, 0.1, 1e-7, 1e21, -0.0, 3.0]


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice(STRINGS)
    if kind == 1:
        return rng.choice(NUMBERS)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.choice(STRINGS) + str(rng.randrange(1000))
    if kind == 4:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return _random_object(rng, depth + 1)


def _random_object(rng: random.Random, depth: int) -> list[tuple[str, Any]]:
    """Members as pairs, so a key may repeat (exactly or up to case) on purpose."""
    return [(rng.choice(KEYS), _random_value(rng, depth)) for _ in range(rng.randrange(4))]


def _spell(value: Any, rng: random.Random) -> str:
    """JSON text for a value, in orjson's own spelling most of the time and in another sometimes."""
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return "{" + ",".join(f"{_spell_string(k, rng)}:{_spell(v, rng)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_spell(item, rng) for item in value) + "]"
    if isinstance(value, str):
        return _spell_string(value, rng)
    if isinstance(value, float) and rng.random() < 0.2:
        return rng.choice([repr(value), f"{value:E}", f"{value:.3e}"])
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # orjson cannot write integers beyond 64 bits
    return orjson.dumps(value).decode()


def _spell_string(text: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.1:
        return json.dumps(text)  # stdlib: \uXXXX for non-ASCII
    if roll < 0.15 and text:
        return '"' + "".join(f"\\u{ord(c):04x}" for c in text) + '"'  # every character escaped
    return orjson.dumps(text).decode()


def _generated(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        message = [("jsonrpc", "2.0"), ("id", rng.choice([1, 7, "s", 1.0, 2**64])), ("method", "tools/call")]
        message.append(("params", [("name", rng.choice(STRINGS)), ("arguments", _random_object(rng, 1) or [])]))
        rng.shuffle(message)
        text = _spell(message, rng)
        if text.endswith("[]}}") and rng.random() < 0.5:
            text = text[:-4] + "{}}}"
        lines.append(text.encode("utf-8", "surrogatepass"))
    return lines


@pytest.mark.parametrize("line", HAND_WRITTEN)
def test_hand_written_lines_mean_the_same_on_both_paths(line: bytes) -> None:
    assert _outcome(parse_client_line, line) == _outcome(_parse_strictly, line)


def test_generated_lines_mean_the_same_on_both_paths() -> None:
    lines = _generated(6000, seed=20261121)
    canonical = [line for line in lines if _canonical(line)]
    refused_canonical = [line for line in canonical if _outcome(_parse_strictly, line)[0] == "refused"]
    # The corpus must exercise the fast path, including canonical lines the strict path refuses
    # (repeated keys and keys equal up to case are spelled canonically by construction).
    assert len(canonical) > 1000
    assert len(refused_canonical) > 50
    for line in lines:
        assert _outcome(parse_client_line, line) == _outcome(_parse_strictly, line), line


def test_case_collision_check_is_what_refuses_canonical_lines() -> None:
    line = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"path":"/tmp","PATH":"/etc"}}}'
    assert _canonical(line)  # orjson alone would accept it
    with pytest.raises(RefusedLine, match="letter case"):
        parse_client_line(line)


def test_integers_beyond_64_bits_keep_their_exact_value() -> None:
    value = parse_client_line(b'{"jsonrpc":"2.0","id":18446744073709551617,"method":"ping"}')
    assert value["id"] == 18446744073709551617 and isinstance(value["id"], int)
