"""Helpers for the store tests: approval records made to measure."""

from __future__ import annotations

from intercept.store.approvals import ApprovalRecord
from intercept.store.timestamps import rfc3339


def approval_record(
    approval_id: str,
    *,
    fingerprint: str = "f" * 64,
    status: str = "pending",
    created_s: float,
    timeout_s: float = 3600.0,
    args_exact: str | None = None,
) -> ApprovalRecord:
    """A record as the gate would insert it, `created_s` epoch seconds, expiring `timeout_s` later."""
    return ApprovalRecord(
        id=approval_id,
        fingerprint=fingerprint,
        server="files",
        tool="write_file",
        args_hash="h" * 64,
        args_redacted="{}",
        rule="writes need a human",
        rule_digest="d" * 64,
        policy_revision="p" * 64,
        status=status,
        timeout_s=timeout_s,
        created_at=rfc3339(created_s),
        expires_at=rfc3339(created_s + timeout_s),
        args_exact=args_exact,
    )
