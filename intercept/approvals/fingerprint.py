"""Identify a call: a keyed hash of the RFC 8785 canonical JSON of what an approval is bound to.

An approval binds the server's identity (its `--name`, or its command line with relative paths
made absolute), the tool, the exact arguments, the deciding rule's digest and, when the proxy was
given one, its agent (`--agent`): an approval is for the agent that asked, so another agent's
identical call on a shared state dir needs its own. Without an agent the bound value has no
`agent` key, so fingerprints made before agents existed stay as they were.
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
    agent: str | None = None,
) -> str:
    """Stable across key order, number spelling (1.0 == 1) and string escapes of the same call.
    With `any_arguments` (a rule's `scope: {match: tool}`) the arguments are left out: every call
    of the tool under that rule is one call to approve."""
    bound: dict[str, Any] = {"server": server_identity, "tool": tool, "rule": rule_digest}
    if any_arguments:
        bound["match"] = "tool"
    else:
        bound["arguments"] = arguments
    if agent is not None:
        bound["agent"] = agent
    try:
        canonical = rfc8785.dumps(bound)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise UnfingerprintableCall(f"arguments cannot be canonicalized: {exc}") from None
    return hasher.digest(canonical)
