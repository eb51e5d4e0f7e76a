"""Lines as SDKs write them (compact, so the fast path of `parse_client_line` reads them), decided
end to end by the real proxy (the fast path itself: tests/test_fast_parse.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from intercept.audit.events import read_events
from tests.e2e.support import RAW_UPSTREAM, raw_log_messages, start_proxy

COMPACT_POLICY = """
version: "1"
hide: [secret]
tools:
  big:
    rules:
      - name: "big needs a size"
        conditions: [{path: args.size, op: exists, value: true}]
"""


def test_compact_lines_through_the_proxy(tmp_path: Path, write_policy: Callable[[str], Path]) -> None:
    """Lines as SDKs write them (compact, so the fast path reads them) decided end to end."""
    proxy = start_proxy(tmp_path, write_policy(COMPACT_POLICY), RAW_UPSTREAM)
    deep = b"[" * 300 + b"]" * 300
    try:
        proxy.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"size":1}}}\n')
        assert proxy.read()["result"]["isError"] is False
        proxy.send_raw(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"big","arguments":{}}}\n')
        assert "big needs a size" in json.dumps(proxy.read()["result"])
        proxy.send_raw(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"big","NAME":"secret"}}\n')
        assert proxy.read()["error"]["code"] == -32700
        proxy.send_raw(b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"big","name":"secret"}}\n')
        assert proxy.read()["error"]["code"] == -32700
        proxy.send_raw(
            b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"big","arguments":{"size":1,"d":'
            + deep
            + b"}}}\n"
        )
        assert proxy.read()["result"]["isError"] is False
        proxy.sync()
        seen = raw_log_messages(tmp_path / "raw.log")
        assert [m.get("id") for m in seen if m.get("method") == "tools/call"] == [1, 5]
        proxy.close_stdin()
        assert proxy.wait() == 0
        events = [e for e in read_events(tmp_path / "state") if e["type"] == "tool_call"]
        assert [(e["result"], len(str(e["args_hash"]))) for e in events] == [
            ("allowed", 64),
            ("denied", 64),
            ("allowed", 64),
        ]
    finally:
        proxy.stop()
