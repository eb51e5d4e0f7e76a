"""An approval record as JSON, the same for `approvals list/show --json` and the admin API.

Lists carry only the redacted arguments; one record shown alone carries the exact arguments while
they exist (pending, approved), with `arguments_exact` saying which, and its votes. `stale` says a reload changed
the record's rule (`approvals.staleness`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from intercept.policy.model import ONCE
from intercept.store.approvals import ApprovalRecord, HistoryEntry
from intercept.store.votes import Vote


def command_words(record: ApprovalRecord) -> list[str] | None:
    """The upstream command line the request came from (secrets already redacted); None for records
    made before it was kept, or if the stored text is not a JSON list of strings."""
    if record.command is None:
        return None
    try:
        words = json.loads(record.command)
    except ValueError:
        return None
    return words if isinstance(words, list) and all(isinstance(w, str) for w in words) else None


def exact_arguments(record: ApprovalRecord) -> Any | None:
    """The exact arguments (parsed), or None once they are erased (or unreadable)."""
    if record.args_exact is None:
        return None
    try:
        return json.loads(record.args_exact)
    except (ValueError, RecursionError):
        return None


def record_json(record: ApprovalRecord, stale: bool, exact: Any | None = None) -> dict[str, Any]:
    """The record: `arguments` is `exact` when given, else the redacted copy."""
    data = asdict(record)
    data["stale"] = stale
    data["scope"] = record.scope_json() or ONCE.as_json()
    del data["args_exact"], data["args_redacted"]
    data["command"] = command_words(record)
    data["arguments"] = json.loads(record.args_redacted) if exact is None else exact
    data["arguments_exact"] = exact is not None
    return data


def vote_json(vote: Vote) -> dict[str, Any]:
    """One vote: who, what, when, through which channel, whether it is signed (not the signature)."""
    return {
        "actor": vote.actor,
        "decision": vote.decision,
        "decided_at": vote.decided_at,
        "channel": vote.channel,
        "reason": vote.reason,
        "signed": vote.signature is not None,
    }


def full_record_json(
    record: ApprovalRecord, stale: bool, history: list[HistoryEntry], votes: list[Vote], redact: bool = False
) -> dict[str, Any]:
    """One record shown alone: exact arguments while they exist (unless `redact`), the redacted
    copy always (`arguments_redacted`), its history and its votes."""
    data = record_json(record, stale, None if redact else exact_arguments(record))
    data["arguments_redacted"] = json.loads(record.args_redacted)
    data["history"] = [asdict(h) for h in history]
    data["votes"] = [vote_json(v) for v in votes]
    return data
