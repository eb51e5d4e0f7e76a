"""Re-encoding what we change: a watched reply goes back under the client's id with every other
value as the upstream wrote it, and the requests we rewrite keep the client's values. orjson is
used only where it is exact; everything else takes the stdlib path (tables, in-process)."""

from __future__ import annotations

import json

import pytest

from intercept.proxy import jsonrpc

LOCAL = "intercept-0a1b2c3d-7"


@pytest.mark.parametrize(
    ("line", "exact"),
    [
        pytest.param(b'{"jsonrpc":"2.0","id":"%s","result":{"n":1.5,"t":"caf\xc3\xa9"}}' % LOCAL.encode(), True,
                     id="canonical-utf8"),
        pytest.param(b'{"jsonrpc": "2.0", "id": "%s", "result": {}}' % LOCAL.encode(), False, id="spaces"),
        pytest.param(b'{"id":"%s","result":{"n":123456789012345678901234567890}}' % LOCAL.encode(), False,
                     id="integer-beyond-64-bits"),
        pytest.param(b'{"id":"%s","result":{"n":NaN}}' % LOCAL.encode(), False, id="nan"),
        pytest.param(b'{"id":"%s","result":{"t":"\\ud800"}}' % LOCAL.encode(), False, id="lone-surrogate"),
        pytest.param(b'{"id":"%s","result":{"a":1,"a":2}}' % LOCAL.encode(), False, id="duplicate-key"),
        pytest.param(b'{"id":"%s","result":{"t":"\\u00e9"}}' % LOCAL.encode(), False, id="escaped-non-ascii"),
    ],
)  # fmt: skip
def test_a_reply_under_the_clients_id_keeps_every_other_value(line: bytes, exact: bool) -> None:
    message, was_exact = jsonrpc.parse_trusted_line(line)
    assert was_exact is exact
    out = jsonrpc.encode_relayed({**message, "id": 42}, was_exact)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    relayed = json.loads(out)
    expected = json.loads(line)
    assert relayed.pop("id") == 42 and expected.pop("id") == LOCAL
    assert repr(relayed) == repr(expected)  # repr: NaN compares unequal to itself, and 1 == 1.0
    if exact:  # the bytes are the upstream's, the id aside
        assert out == line.replace(json.dumps(LOCAL).encode(), b"42") + b"\n"


def test_an_exact_reply_with_a_client_id_beyond_64_bits_is_still_encoded() -> None:
    message, exact = jsonrpc.parse_trusted_line(b'{"id":"%s","result":{}}' % LOCAL.encode())
    assert exact
    assert jsonrpc.encode_relayed({**message, "id": 2**70}, exact) == b'{"id":%d,"result":{}}\n' % 2**70


def test_a_line_that_is_not_json_parses_to_none() -> None:
    assert jsonrpc.parse_trusted_line(b'{"id":') == (None, False)


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": LOCAL, "method": "tools/call", "params": {"name": "t", "arguments": {"x": "é\u2028"}}},
        {"jsonrpc": "2.0", "id": 2**70, "method": "tools/call", "params": {"arguments": {"n": -(2**65), "f": 1e16}}},
        {"jsonrpc": "2.0", "id": 1, "result": {"deep": [[[[["x"]]]]], "t": "\x00\x1f\x7f\"\\"}},
    ],
    ids=["non-ascii", "integers-beyond-64-bits", "control-characters"],
)
def test_encode_writes_the_same_values_as_the_stdlib(message: dict[str, object]) -> None:
    out = jsonrpc.encode(message)
    assert out.endswith(b"\n") and b"\n" not in out[:-1]
    assert json.loads(out) == message


def test_encode_refuses_a_lone_surrogate() -> None:
    with pytest.raises(ValueError):  # UTF-8 cannot carry it (callers refuse the message)
        jsonrpc.encode({"id": 1, "t": "\ud800"})


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"1e400"])
def test_client_numbers_encode_never_sees_are_refused_at_parse(number: bytes) -> None:
    """`encode` relies on this: orjson would write a non-finite number as null."""
    with pytest.raises(jsonrpc.RefusedLine):
        jsonrpc.parse_client_line(b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"n":%s}}' % number)
