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
    hasher: ArgumentHasher,
    server_identity: str,
    tool: str,
    arguments: dict[str, Any],
    rule_digest: str,
    any_arguments: bool = False,
) -> str:
    """Stable across key order, number spelling (1.0 == 1) and string escapes of the same call.
    With `any_arguments` (a rule's `scope: {match: tool}`) the arguments are left out: every call
    of the tool under that rule is one call to approve."""
    bound: dict[str, Any] = {"server": server_identity, "tool": tool, "rule": rule_digest}
    if any_arguments:
        bound["match"] = "tool"
    else:
        bound["arguments"] = arguments
    try:
        canonical = rfc8785.dumps(bound)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise UnfingerprintableCall(f"arguments cannot be canonicalized: {exc}") from None
    return hasher.digest(canonical)
