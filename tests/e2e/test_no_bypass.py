"""Nothing a client can send gets a tools/call upstream without a decision (recorded at the upstream)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.support import DENIED_PREFIX, ProxyProcess, call


def upstream_lines(raw_log: Path) -> list[bytes]:
    return raw_log.read_bytes().splitlines(keepends=True) if raw_log.exists() else []


def upstream_saw_tool(raw_log: Path, tool: str) -> bool:
    for line in upstream_lines(raw_log):
        message = json.loads(line)
        items = message if isinstance(message, list) else [message]
        if any(isinstance(m, dict) and (m.get("params") or {}).get("name") == tool for m in items):
            return True
    return False


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"name":"drop_table","arguments":{}}}',
            id="escaped-slash-in-method",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"\\u0074ools/call","params":{"name":"drop_table","arguments":{}}}',
            id="unicode-escape-in-method",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"drop\\u005ftable","arguments":{}}}',
            id="unicode-escape-in-tool-name",
        ),
        pytest.param(
            b'{"params":{"arguments":{},"name":"drop_table"},"method":"tools/call","id":1,"jsonrpc":"2.0"}',
            id="reordered-keys",
        ),
        pytest.param(
            b'  {"jsonrpc" : "2.0" , "id" : 1 , "method" : "tools/call" , "params" : {"name" : "drop_table"}}  ',
            id="whitespace-no-arguments",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"drop_table","arguments":null}}',
            id="null-arguments",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"drop_table","arguments":{}}}\r', id="crlf"
        ),
    ],
)
def test_disguised_denied_call_is_denied_and_never_forwarded(
    raw_proxy: ProxyProcess, raw_log: Path, line: bytes
) -> None:
    raw_proxy.send_raw(line + b"\n")
    reply = raw_proxy.read()
    assert reply["id"] == 1
    assert reply["result"]["isError"] is True
    assert reply["result"]["content"][0]["text"] == DENIED_PREFIX + 'Denied by rule "never drop"'
    raw_proxy.sync()
    assert not upstream_saw_tool(raw_log, "drop_table")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping","params":{"name":"drop_table"}}',
            "duplicate key",
            id="duplicate-method-key",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"drop_table"}}',
            "duplicate key",
            id="duplicate-name-key",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":1,"a":2}}}',
            "duplicate key",
            id="duplicate-argument-key",
        ),
        pytest.param(
            b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}',
            "byte order mark",
            id="bom",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,\r"method":"tools/call","params":{"name":"drop_table"}}',
            "carriage return",
            id="lone-cr",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"t":"\xff"}}}',
            "UTF-8",
            id="invalid-utf8",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"n":NaN}}}',
            "NaN",
            id="nan",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"n":1e400}}}',
            "out of range",
            id="overflowing-number",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1,"method":"ping"} {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"drop_table"}}',
            "Extra data",
            id="two-values",
        ),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"tools/call"', "Parse error", id="truncated"),
    ],
)
def test_ambiguous_line_gets_parse_error_and_is_never_forwarded(
    raw_proxy: ProxyProcess, raw_log: Path, line: bytes, fragment: str
) -> None:
    raw_proxy.send_raw(line + b"\n")
    reply = raw_proxy.read()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700
    assert fragment in reply["error"]["message"]
    raw_proxy.sync()
    assert upstream_lines(raw_log)[-1:] == [b'{"jsonrpc": "2.0", "id": "__sync", "method": "ping"}\n']
    assert len(upstream_lines(raw_log)) == 1


@pytest.mark.parametrize(
    "params",
    [
        pytest.param([], id="params-list"),
        pytest.param({"arguments": {}}, id="no-name"),
        pytest.param({"name": 7}, id="name-number"),
        pytest.param({"name": "echo", "arguments": "rm -rf /"}, id="arguments-string"),
        pytest.param({"name": "echo", "arguments": [1, 2]}, id="arguments-list"),
    ],
)
def test_malformed_call_is_refused_not_forwarded(raw_proxy: ProxyProcess, raw_log: Path, params: object) -> None:
    reply = raw_proxy.request({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params})
    assert reply["id"] == 5
    assert reply["error"]["code"] == -32602
    raw_proxy.sync()
    assert len(upstream_lines(raw_log)) == 1


@pytest.mark.parametrize("request_id", [1.0, "req-1", None, 0, -3], ids=["float", "string", "null", "zero", "negative"])
def test_denial_echoes_any_id_form(raw_proxy: ProxyProcess, raw_log: Path, request_id: object) -> None:
    reply = raw_proxy.request(call(request_id, "drop_table"))
    assert reply["id"] == request_id and type(reply["id"]) is type(request_id)
    assert reply["result"]["isError"] is True
    raw_proxy.sync()
    assert not upstream_saw_tool(raw_log, "drop_table")


def test_invalid_id_type_is_refused(raw_proxy: ProxyProcess, raw_log: Path) -> None:
    reply = raw_proxy.request(call({"x": 1}, "echo"))
    assert reply["error"]["code"] == -32600
    raw_proxy.sync()
    assert len(upstream_lines(raw_log)) == 1


def test_tools_call_notification_is_dropped(raw_proxy: ProxyProcess, raw_log: Path) -> None:
    raw_proxy.send({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo", "arguments": {}}})
    raw_proxy.sync()
    assert len(upstream_lines(raw_log)) == 1


def test_batch_with_denied_call_is_answered_and_not_forwarded(raw_proxy: ProxyProcess, raw_log: Path) -> None:
    batch = [call(1, "echo", {"text": "a"}), call(2, "drop_table"), {"jsonrpc": "2.0", "method": "notifications/x"}]
    reply = raw_proxy.request(batch)  # type: ignore[arg-type]
    assert isinstance(reply, list)
    by_id = {item["id"]: item for item in reply}
    assert by_id[2]["result"]["isError"] is True
    assert by_id[1]["error"]["code"] == -32600
    raw_proxy.sync()
    assert len(upstream_lines(raw_log)) == 1


def test_batch_of_allowed_calls_is_forwarded_byte_for_byte(raw_proxy: ProxyProcess, raw_log: Path) -> None:
    line = json.dumps([call(1, "echo", {"text": "a"}), call(2, "echo", {"text": "b"})]).encode() + b"\n"
    raw_proxy.send_raw(line)
    reply = raw_proxy.read()
    assert sorted(item["id"] for item in reply) == [1, 2]
    assert upstream_lines(raw_log)[0] == line


def test_hidden_tool_in_batched_tools_list_is_filtered(raw_proxy: ProxyProcess) -> None:
    reply = raw_proxy.request([{"jsonrpc": "2.0", "id": 9, "method": "tools/list"}])  # type: ignore[arg-type]
    names = [tool["name"] for tool in reply[0]["result"]["tools"]]
    assert "secret" not in names and "echo" in names


def test_first_failing_rule_denies_with_its_message(raw_proxy: ProxyProcess, raw_log: Path) -> None:
    reply = raw_proxy.request(call(3, "write_file", {"path": "/tmp/x"}))
    assert reply["result"]["content"][0]["text"] == DENIED_PREFIX + "writes to /etc are blocked"


def test_very_long_allowed_line_is_forwarded_intact(raw_proxy: ProxyProcess, raw_log: Path) -> None:
    line = json.dumps(call(4, "echo", {"text": "y" * (3 * 1024 * 1024)})).encode() + b"\n"
    raw_proxy.send_raw(line)
    reply = raw_proxy.read()
    assert reply["id"] == 4
    assert upstream_lines(raw_log)[0] == line
