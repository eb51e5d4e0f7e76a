"""Who may decide an approval request under a policy, and what a decision signs: pure functions
of the policy, the request and the votes (no I/O, no keys).

Without an `approvers` block anyone who reaches the CLI or the console decides, and one vote
decides. With one, a vote counts only from a listed approver holding one of the rule's roles
(`approvers.roles`; any listed approver when the rule names none), and also from the
`escalate_to` roles once the request has waited `escalate_after`. A decision's signature covers
`decision_fields`: the request (id, fingerprint, scope, rule digest), the call as the approver
saw it (`CallFacts`: server, tool, a hash of the exact arguments, agent), the vote (decision,
actor, decided_at), the request's expiry when the vote was cast and the approvers block's digest
(not the whole policy's: an unrelated edit does not void signed approvals, a change of who
decides does).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from intercept.policy.model import Policy, Rule, WhoDecides
from intercept.store.approvals import ApprovalRecord, DecisionRefused
from intercept.store.timestamps import parse_rfc3339
from intercept.store.votes import Vote


class NotEligible(DecisionRefused):
    """The actor may not decide this request (not an approver, or without the role it needs)."""


def escalates_at_s(record: ApprovalRecord, who: WhoDecides) -> float | None:
    """When the request's escalation roles may decide too (None: the rule does not escalate).
    Raises ValueError for a `created_at` that is not a time (an edited record)."""
    if who.escalate_after_s is None or not who.escalate_to:
        return None
    return parse_rfc3339(record.created_at) + who.escalate_after_s


def why_not_eligible(policy: Policy, rule: Rule, record: ApprovalRecord, actor: str, at_s: float) -> str | None:
    """Why `actor` may not decide `record` at `at_s` under `policy`; None when they may."""
    if not policy.approvers:
        return None
    approver = policy.approvers.get(actor)
    if approver is None:
        names = ", ".join(sorted(policy.approvers))
        return f"{actor} is not an approver in the policy of approval {record.id} (approvers: {names})"
    who = rule.who_decides
    if who.roles is None or approver.roles & who.roles:
        return None
    escalates = escalates_at_s(record, who)
    if approver.roles & who.escalate_to:
        if escalates is not None and at_s >= escalates:
            return None
        return (
            f"{actor} may decide approval {record.id} only once it escalates (role "
            f"{' or '.join(sorted(who.escalate_to))}, after {who.escalate_after_s:g}s undecided)"
        )
    held = ", ".join(sorted(approver.roles)) or "no role"
    return f"{actor} may not decide approval {record.id}: it needs role {' or '.join(sorted(who.roles))} ({actor} has {held})"


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What a signed vote says about the call itself, beyond its fingerprint: the server's name,
    the tool, the SHA-256 of the exact arguments' RFC 8785 canonical JSON (None where the scope
    is `match: tool`: any arguments) and the agent that asked. A deciding channel takes them from
    the record it shows the approver; the proxy from the call it is about to run. So a record
    whose shown arguments (or tool, server, agent) were edited in the database is signed for a
    call that is not the one that would run, and the proxy's check fails."""

    server: str
    tool: str
    arguments_sha256: str | None
    agent: str | None

    @classmethod
    def of_record(cls, record: ApprovalRecord) -> CallFacts:
        """What the approver is shown (refused when the exact arguments are gone or unreadable)."""
        any_arguments = record.approval_scope().any_arguments
        if any_arguments:
            return cls(record.server, record.tool, None, record.agent)
        if record.args_exact is None:
            raise DecisionRefused(f"approval {record.id} no longer holds its exact arguments, so no vote can be signed")
        try:
            arguments = json.loads(record.args_exact)
        except (ValueError, RecursionError):
            raise DecisionRefused(f"approval {record.id}'s stored arguments are unreadable") from None
        return cls(record.server, record.tool, arguments_sha256(arguments), record.agent)


def arguments_sha256(arguments: Any) -> str:
    """The SHA-256 (hex) of the arguments' RFC 8785 canonical JSON."""
    import rfc8785

    try:
        return hashlib.sha256(rfc8785.dumps(arguments)).hexdigest()
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise DecisionRefused(f"the arguments cannot be canonicalized: {exc}") from None


def why_times_edited(policy: Policy, rule: Rule, record: ApprovalRecord) -> str | None:
    """Why a pending request's times cannot be the ones it was made with (its expiry is its
    creation plus its rule's timeout, which a backdated `created_at` breaks); None when they can."""
    timeout_s = rule.approval_timeout_s or policy.approvals.timeout_s
    try:
        apart_s = parse_rfc3339(record.expires_at) - parse_rfc3339(record.created_at)
    except ValueError:
        return f"approval {record.id} holds a time that cannot be read; it was edited"
    if abs(apart_s - timeout_s) > 1.0:
        return f"approval {record.id} was created and expires {apart_s:g}s apart, not its rule's {timeout_s:g}s; it was edited"
    return None


def decision_fields(record: ApprovalRecord, vote: Vote, call: CallFacts) -> dict[str, Any]:
    """What a signed decision says, as the RFC 8785 canonical JSON that is signed."""
    return {
        "approval_id": record.id,
        "fingerprint": record.fingerprint,
        "server": call.server,
        "tool": call.tool,
        "arguments_sha256": call.arguments_sha256,
        "agent": call.agent,
        "decision": vote.decision,
        "actor": vote.actor,
        "scope": record.scope,  # as stored: the proxy requires it to be its rule's, exactly
        "created_at": record.created_at,
        "expires_at": vote.request_expires_at,
        "rule_digest": record.rule_digest,
        "approvers_digest": vote.approvers_digest,
        "decided_at": vote.decided_at,
    }


def decision_payload(record: ApprovalRecord, vote: Vote, call: CallFacts) -> bytes:
    from intercept.approvals.approver_keys import canonical

    return canonical(decision_fields(record, vote, call))
