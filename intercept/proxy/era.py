"""Which MCP era a request belongs to, and our own replies shaped for that era."""

from __future__ import annotations

from typing import Any

PROTOCOL_VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
DENIED_PREFIX = "[INTERCEPT POLICY DENIED] "


def is_stateless_request(params: Any) -> bool:
    """Stateless-era (2026-07-28 and later) requests carry their protocol version in `_meta`."""
    if not isinstance(params, dict):
        return False
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return False
    version = meta.get(PROTOCOL_VERSION_META_KEY)
    return isinstance(version, str) and version not in HANDSHAKE_VERSIONS


def denied_result(message: str, stateless: bool) -> dict[str, Any]:
    """A tool result the model reads as a refusal; stateless-era results need `resultType`."""
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": DENIED_PREFIX + message}],
        "isError": True,
    }
    if stateless:
        result["resultType"] = "complete"
    return result
