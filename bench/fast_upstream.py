"""A lean stdlib-only MCP upstream for benchmarks: newline-delimited JSON-RPC on stdio.

It reads stdin in chunks and answers every complete line of a chunk with one write, so under
pipelined load it costs far less per call than a flush-per-line server; tools: `echo`, `big`, `secret`.
"""

from __future__ import annotations

import json
import os
from typing import Any

READ_SIZE = 1 << 16
TOOLS = [
    {"name": name, "description": f"bench tool {name}", "inputSchema": {"type": "object"}}
    for name in ("echo", "big", "secret")
]
_BIG_TAIL = b'"}],"isError":false}}\n'


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _result(request_id: Any, result: dict[str, Any]) -> bytes:
    return _dumps({"jsonrpc": "2.0", "id": request_id, "result": result}) + b"\n"


def _big(request_id: Any, size: int) -> bytes:
    """A text result of `size` bytes, built without serializing the text."""
    head = b'{"jsonrpc":"2.0","id":' + _dumps(request_id) + b',"result":{"content":[{"type":"text","text":"'
    return head + b"x" * size + _BIG_TAIL


def answer(message: Any) -> bytes:
    """The reply line for one decoded message (b"" for notifications and responses)."""
    if not isinstance(message, dict) or "id" not in message or "method" not in message:
        return b""
    request_id = message["id"]
    method = message["method"]
    params = message.get("params") or {}
    if method == "tools/call":
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if name == "big":
            return _big(request_id, int(arguments.get("size", 0)))
        text = json.dumps(arguments, separators=(",", ":"))
        return _result(request_id, {"content": [{"type": "text", "text": text}], "isError": False})
    if method == "initialize":
        return _result(
            request_id,
            {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "bench-fast-upstream", "version": "1"},
            },
        )
    if method == "tools/list":
        return _result(request_id, {"tools": TOOLS})
    error = {"code": -32601, "message": f"Method not found: {method}"}
    return _dumps({"jsonrpc": "2.0", "id": request_id, "error": error}) + b"\n"


def _answer_line(line: bytes) -> bytes:
    try:
        message = json.loads(line)
    except ValueError:
        return b""
    if isinstance(message, list):
        return b"".join(answer(item) for item in message)
    return answer(message)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> None:
    stdin, stdout = 0, 1
    pending = b""
    while chunk := os.read(stdin, READ_SIZE):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        replies = b"".join(_answer_line(line) for line in lines if line.strip())
        if replies:
            _write_all(stdout, replies)
    if pending.strip():
        _write_all(stdout, _answer_line(pending))


if __name__ == "__main__":
    main()
