"""A lean stdlib-only MCP upstream for benchmarks: newline-delimited JSON-RPC on stdio.

It reads stdin in chunks and answers every complete line of a chunk with one write (a big result
is a cached body sent with writev, no copy), so the upstream's own cost stays small and steady.
Tools: `echo` (returns its arguments as JSON text), `big` (`size` bytes of text), `secret`.
"""

from __future__ import annotations

import json
import os
from typing import Any

READ_SIZE = 1 << 16
_PARAMETERS = {"echo": {"text": {"type": "string"}}, "big": {"size": {"type": "integer"}}, "secret": {}}
TOOLS = [
    {
        "name": name,
        "description": f"bench tool {name}",
        "inputSchema": {"type": "object", "properties": properties},
    }
    for name, properties in _PARAMETERS.items()
]
_BIG_TAIL = b'"}],"isError":false}}\n'
_big_bodies: dict[int, bytes] = {}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _result(request_id: Any, result: dict[str, Any]) -> bytes:
    return _dumps({"jsonrpc": "2.0", "id": request_id, "result": result}) + b"\n"


def _big(request_id: Any, size: int) -> list[bytes]:
    """A text result of `size` bytes as parts to writev; the body is built once per size."""
    body = _big_bodies.get(size)
    if body is None:
        _big_bodies.clear()
        body = _big_bodies[size] = b"x" * size
    head = b'{"jsonrpc":"2.0","id":' + _dumps(request_id) + b',"result":{"content":[{"type":"text","text":"'
    return [head, body, _BIG_TAIL]


Reply = bytes | list[bytes]


def answer(message: Any) -> Reply:
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


def _answer_line(line: bytes) -> Reply:
    try:
        message = json.loads(line)
    except ValueError:
        return b""
    if isinstance(message, list):  # a batch: one line holding the array of replies
        replies = [answer(item) for item in message]
        flat = [(r if isinstance(r, bytes) else b"".join(r)).rstrip(b"\n") for r in replies]
        body = b",".join(r for r in flat if r)
        return b"[" + body + b"]\n" if body else b""
    return answer(message)


def _write_all(fd: int, parts: list[bytes]) -> None:
    """writev all of `parts`, resuming after partial writes."""
    views = [memoryview(p) for p in parts if p]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views:
            views[0] = views[0][written:]


def _answer_chunk(lines: list[bytes], stdout: int) -> None:
    """Answer every line; small replies go out together in one write."""
    small: list[bytes] = []
    for line in lines:
        if not line.strip():
            continue
        reply = _answer_line(line)
        if isinstance(reply, bytes):
            small.append(reply)
        else:
            _write_all(stdout, [b"".join(small), *reply])
            small.clear()
    if small:
        _write_all(stdout, [b"".join(small)])


def main() -> None:
    stdin, stdout = 0, 1
    pending = b""
    while chunk := os.read(stdin, READ_SIZE):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        _answer_chunk(lines, stdout)
    _answer_chunk([pending], stdout)


if __name__ == "__main__":
    main()
