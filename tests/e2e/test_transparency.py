"""What the proxy does not act on passes byte for byte, in order, both ways."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.e2e.support import RAW_UPSTREAM, ProxyProcess, call, fixture_env, proxy_command

ODD_BUT_VALID_LINES = [
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"elicitation":{}},"clientInfo":{"name":"t","version":"1"},"x-extra":[1,2.50,-0.0,1E+2]}}',
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
    b'{"method":"notifications/progress","jsonrpc":"2.0","params":{"progressToken":"t","progress":0.5}}',
    b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":77,"reason":"user"}}',
    b'{"jsonrpc":"2.0","id":"srv-1","result":{"action":"accept","content":{"ok":true}}}',
    b'{"jsonrpc":"2.0","id":"srv-2","error":{"code":-1,"message":"no"}}',
    b'   {"jsonrpc":"2.0","id":2,"method":"vendor/unknown","params":{"\\u00e9":"\\ud83d\\ude00 caf\xc3\xa9"}}   ',
    b'{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///a b"}}',
    json.dumps(call(4, "echo", {"text": "allowed \u2603", "n": 12345678901234567890})).encode(),
    b'{"jsonrpc":"2.0","id":5,"method":"prompts/list","params":{"cursor":"abc"}}',
]


def test_unacted_messages_reach_upstream_unchanged_and_in_order(raw_proxy: ProxyProcess, raw_log: Path) -> None:
    for line in ODD_BUT_VALID_LINES:
        raw_proxy.send_raw(line + b"\n")
    raw_proxy.sync()
    received = raw_log.read_bytes().splitlines()
    assert received[: len(ODD_BUT_VALID_LINES)] == ODD_BUT_VALID_LINES


def test_upstream_replies_pass_unchanged(raw_proxy: ProxyProcess) -> None:
    raw_proxy.send(call(7, "echo", {"text": "z"}))
    assert (
        raw_proxy.read_raw()
        == b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"{\\"text\\": \\"z\\"}"}],"isError":false}}\n'
    )


def test_hide_filters_tools_list_and_keeps_other_fields(raw_proxy: ProxyProcess) -> None:
    reply = raw_proxy.request({"jsonrpc": "2.0", "id": "L", "method": "tools/list"})
    names = [tool["name"] for tool in reply["result"]["tools"]]
    assert "secret" not in names
    assert names == ["echo", "big", "exit", "write_file"]
    assert reply["result"]["extra"] == {"kept": True}
    assert "nextCursor" in reply["result"]


def test_tools_list_goes_upstream_under_a_proxy_id_and_returns_under_the_clients(
    raw_proxy: ProxyProcess, raw_log: Path
) -> None:
    """A reply the proxy must filter is matched by an id only it uses, so a client reusing an id
    (`ping` with id 7, then `tools/list` with id 7) cannot route an unfiltered list to itself."""
    raw_proxy.send({"jsonrpc": "2.0", "id": 7, "method": "ping"})
    raw_proxy.send({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"cursor": "abc"}})
    first, second = raw_proxy.read(), raw_proxy.read()
    assert first == {"jsonrpc": "2.0", "id": 7, "result": {"method": "ping"}}
    assert second["id"] == 7
    assert "secret" not in [tool["name"] for tool in second["result"]["tools"]]
    forwarded = json.loads(raw_log.read_bytes().splitlines()[1])
    assert forwarded["id"] != 7 and forwarded["params"] == {"cursor": "abc"}


def test_hidden_tool_call_is_denied(raw_proxy: ProxyProcess) -> None:
    reply = raw_proxy.request(call(8, "secret"))
    assert reply["result"]["content"][0]["text"] == '[INTERCEPT POLICY DENIED] Tool "secret" is hidden by policy'


def test_stateless_era_denial_carries_result_type(raw_proxy: ProxyProcess) -> None:
    meta = {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
    reply = raw_proxy.request(call(9, "drop_table", **meta))
    assert reply["result"]["resultType"] == "complete"
    handshake = raw_proxy.request(call(10, "drop_table"))
    assert "resultType" not in handshake["result"]


def test_large_upstream_result_passes_intact(raw_proxy: ProxyProcess) -> None:
    size = 8 * 1024 * 1024
    reply = raw_proxy.request(call(11, "big", {"size": size}))
    assert len(reply["result"]["content"][0]["text"]) == size


def test_tools_list_goes_upstream_unchanged_but_for_a_proxy_id(
    tmp_path: Path, write_policy: Callable[[str], Path], raw_log: Path
) -> None:
    """The proxy reads every tools/list reply (tool schemas), so the request travels under its own
    id (a client reusing ids cannot pass a forged listing off as the server's); nothing else changes."""
    policy = write_policy('version: "1"\ntools:\n  echo:\n    rules: []\n', "plain.yaml")
    proxy = ProxyProcess(
        proxy_command(policy, tmp_path / "state2", RAW_UPSTREAM),
        env=fixture_env(raw_log=raw_log),
    )
    try:
        request = {"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"cursor": "abc"}}
        proxy.send(request)
        assert json.loads(proxy.read_raw())["id"] == 5
        forwarded = json.loads(raw_log.read_bytes().splitlines()[0])
        assert forwarded["id"].startswith("intercept-")
        assert {**forwarded, "id": 5} == request
    finally:
        proxy.stop()
