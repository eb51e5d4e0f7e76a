"""Identify a call: a keyed hash of the RFC 8785 canonical JSON of what an approval is bound to.

An approval binds the server's identity (its `--name`, or its command line with relative paths
made absolute), the tool, the exact arguments and the deciding rule's digest.
"""

from __future__ import annotations

from typing import Any

import rfc8785

from intercept.audit.hashing import ArgumentHasher


class UnfingerprintableCall(ValueError):
    """Arguments RFC 8785 cannot canonicalize (e.g. integers beyond 2**53)."""


def call_fingerprint(
    hasher: ArgumentHasher, server_identity: str, tool: str, arguments: dict[str, Any], rule_digest: str
) -> str:
    """Stable across key order, number spelling (1.0 == 1) and string escapes of the same call."""
    try:
        canonical = rfc8785.dumps(
            {"server": server_identity, "tool": tool, "arguments": arguments, "rule": rule_digest}
        )
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise UnfingerprintableCall(f"arguments cannot be canonicalized: {exc}") from None
    return hasher.digest(canonical)
