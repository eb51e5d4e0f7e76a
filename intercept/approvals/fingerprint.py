"""Identify a call: SHA-256 of the RFC 8785 canonical JSON of what an approval is bound to."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
import rfc8785


class UnfingerprintableCall(ValueError):
    """Arguments RFC 8785 cannot canonicalize (e.g. integers beyond 2**53)."""


def call_fingerprint(server: str, tool: str, arguments: dict[str, Any], rule_digest: str) -> str:
    """Stable across key order, number spelling (1.0 == 1) and string escapes of the same call."""
    try:
        canonical = rfc8785.dumps({"server": server, "tool": tool, "arguments": arguments, "rule": rule_digest})
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise UnfingerprintableCall(f"arguments cannot be canonicalized: {exc}") from None
    return hashlib.sha256(canonical).hexdigest()


# Built once: json.dumps with options builds a new encoder per call, which shows on the hot path.
_SORTED_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def arguments_hash(arguments: Any) -> str:
    """SHA-256 of the arguments as compact sorted-key UTF-8 JSON: correlates events and approvals
    without revealing values. orjson writes it; the stdlib writes what orjson cannot (integers
    beyond 64 bits), so a given value always hashes the same way."""
    try:
        encoded = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        encoded = _SORTED_JSON.encode(arguments).encode("utf-8", "surrogatepass")
    return hashlib.sha256(encoded).hexdigest()
