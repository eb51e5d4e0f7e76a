"""The proxy's own check, before it runs an approved call, that the request's votes make it
approved under the policy the proxy enforces: signatures against the public keys in that
policy, each voter eligible when they voted, no veto, the quorum reached, and the record's own
terms (expiry, runs left) within what the votes and the rule allow.

The record and its votes come from a database that anyone with write access to the state dir
can edit; the policy file and the approvers' private keys are what such a person should not be
able to change or read (SECURITY.md). So nothing in the database is taken on its word: a record
flipped to `approved` by hand, a vote signed by a key not in the policy, a vote copied from
another request, or an expiry pushed out all fail here. Without an `approvers` block there is
nothing to check against (anyone decides) and every approved record counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from intercept.approvals.who_may_decide import CallFacts, decision_payload, why_not_eligible
from intercept.policy.model import ONCE, Policy, Rule
from intercept.store.approvals import ApprovalRecord
from intercept.store.timestamps import parse_rfc3339
from intercept.store.votes import Vote

CLOCK_SKEW_S = 60.0  # between the approver's machine and the proxy's


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an approved record does not count. `tampered`: the database says something no
    approver signed or could have decided (recorded as `approval_tampered`); otherwise a genuine
    approval that the policy no longer accepts (the approvers block changed since)."""

    reason: str
    tampered: bool = True


def check_approval(
    policy: Policy, rule: Rule, record: ApprovalRecord, votes: list[Vote], now_s: float, call: CallFacts
) -> Refusal | None:
    """None when the votes make `record` approved under `policy` for `call` (the one about to
    run: its server, tool, arguments and agent, as the proxy knows them); else why not."""
    if not policy.approvers:
        return None
    try:
        return _check(policy, rule, record, votes, now_s, call)
    except ValueError:  # a time or number the database holds that cannot be read: edited
        return Refusal("it holds a time that cannot be read")


def _check(
    policy: Policy, rule: Rule, record: ApprovalRecord, votes: list[Vote], now_s: float, call: CallFacts
) -> Refusal | None:
    expected_scope = rule_scope_text(rule)
    if record.scope != expected_scope:
        return Refusal(f"its scope {record.scope or 'once'} is not its rule's ({expected_scope or 'once'})")
    timeout_s = rule.approval_timeout_s or policy.approvals.timeout_s
    yes: dict[str, float] = {}
    for vote in votes:
        refusal = _check_vote(policy, rule, record, vote, now_s, call)
        if refusal is not None:
            return refusal
        if vote.decision == "deny":
            return Refusal(f"approved although {vote.actor} denied it")
        if abs(parse_rfc3339(vote.request_expires_at) - parse_rfc3339(record.created_at) - timeout_s) > 1.0:
            return Refusal("its request's times were edited (created and expiring further apart than its rule says)")
        yes[vote.actor] = parse_rfc3339(vote.decided_at)
    quorum = rule.who_decides.quorum
    if len(yes) < quorum:
        return Refusal(f"approved with {len(yes)} of the {quorum} approvals its rule needs")
    window_s = rule.scope.for_s or timeout_s
    if parse_rfc3339(record.expires_at) > max(yes.values()) + window_s + CLOCK_SKEW_S:
        return Refusal(f"usable until {record.expires_at}, later than its approval allows")
    uses = rule.scope.uses
    if (
        expected_scope is not None
        and uses is not None
        and (type(record.uses_left) is not int or not 0 < record.uses_left <= uses)
    ):
        return Refusal(f"{record.uses_left} runs left, not what its rule allows (1 to {uses})")
    return None


def rule_scope_text(rule: Rule) -> str | None:
    """The `scope` column a request of `rule` is made with (None: once)."""
    return None if rule.scope == ONCE else json.dumps(rule.scope.as_json())


def _check_vote(
    policy: Policy, rule: Rule, record: ApprovalRecord, vote: Vote, now_s: float, call: CallFacts
) -> Refusal | None:
    approver = policy.approvers.get(vote.actor)
    if approver is None:
        return Refusal(f"a vote by {vote.actor}, who is not an approver in the policy")
    if approver.key is not None:
        if not vote.signature:
            return Refusal(f"an unsigned vote by {vote.actor}, whose decisions must be signed")
        if not signed_by(policy, approver.name, approver.key, decision_payload(record, vote, call), vote.signature):
            return Refusal(f"{vote.actor}'s vote is not signed by {vote.actor}'s key in the policy")
    if vote.approvers_digest != policy.approvers_digest:
        return Refusal(f"{vote.actor} voted under another approvers block than the policy's now", tampered=False)
    try:
        decided_s = parse_rfc3339(vote.decided_at)
        request_expiry_s = parse_rfc3339(vote.request_expires_at)
    except ValueError:
        return Refusal(f"{vote.actor}'s vote has an unreadable time")
    if decided_s > now_s + CLOCK_SKEW_S:
        return Refusal(f"{vote.actor}'s vote is dated {vote.decided_at}, in the future")
    if decided_s > request_expiry_s:
        return Refusal(f"{vote.actor} voted after the request expired")
    why = why_not_eligible(policy, rule, record, vote.actor, decided_s)
    if why is not None:
        return Refusal(f"a vote that does not count: {why}")
    return None


def signed_by(policy: Policy, name: str, key_line: str, payload: bytes, signature: str) -> bool:
    from intercept.approvals.approver_keys import parse_public_line, verify

    key: Any = policy.public_keys.get(name)
    if key is None:
        try:
            key = policy.public_keys[name] = parse_public_line(key_line)
        except ValueError:
            return False
    return bool(verify(key, payload, signature))
