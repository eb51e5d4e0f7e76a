"""A human decision on an approval request, whatever the channel: the CLI, the admin API, the web
console, an elicitation answered in the client. All of them end here, in the same stale-rule check,
the same eligibility check, the same vote (`store.votes.cast`, which decides the request through
the conditional UPDATE `ApprovalStore.decide` when the vote completes a quorum or vetoes) and the
same events: `approval_voted` for a vote that does not decide yet, `approval_decided`, naming the
channel, for one that does.

The caller opens the store (and the event log): the CLI and the console each hold one connection
per request. A request whose rule a reload changed can never be consumed; approving it is refused
(`StaleRule`), denying it is allowed (it changes nothing the agent can use). Where the request's
policy names approvers, the actor must be one who may decide it (`who_may_decide`) and, when the
policy holds their public key, the vote is signed (`Signer`); the proxy checks all of it again
before the call runs (`vote_check`).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from intercept.approvals.staleness import STALE, RuleCheck
from intercept.approvals.vote_check import signed_by
from intercept.approvals.who_may_decide import (
    CallFacts,
    NotEligible,
    decision_payload,
    why_not_eligible,
    why_times_edited,
)
from intercept.audit.receipts import NO_RECEIPT, Receipts
from intercept.policy.model import Policy, Rule
from intercept.store.approvals import (
    AlreadyDecided,
    ApprovalRecord,
    ApprovalStore,
    DecisionConflict,
    DecisionRefused,
    UnknownApproval,
)
from intercept.store.database import StoreUnavailable
from intercept.store.instances import InstanceStore
from intercept.store.timestamps import rfc3339
from intercept.store.votes import AlreadyVoted, Vote, cast, votes_of

Channel = Literal["cli", "api", "console", "elicitation"]

__all__ = [
    "Channel",
    "Decision",
    "DecisionConflict",
    "NotEligible",
    "PolicyOf",
    "Signer",
    "StaleRule",
    "UnknownApproval",
    "decide",
    "default_actor",
    "rule_check",
]


class EventSink(Protocol):
    """Where the decision is recorded (an `EventLog`, or one shared by threads under a lock)."""

    def emit(self, event_type: str, **fields: Any) -> None: ...


PolicyOf = Callable[[ApprovalRecord], "Policy | None"]  # the policy a request was made under
Signer = Callable[[str, bytes], str]  # (actor, canonical decision) -> "ed25519:<signature>"


@dataclass(frozen=True, slots=True)
class Decision:
    """The record after the vote; `changed` is False when the same vote (or decision) had already
    been taken (then nothing changed: scripts and retried requests rely on that being a
    success). `votes` are the request's votes so far, `quorum` the approvals it needs."""

    record: ApprovalRecord
    changed: bool
    votes: list[Vote] = field(default_factory=list)
    quorum: int = 1
    checked: bool = True  # False: the request's policy was unknown, who may decide was not checked
    note: str = ""  # what was taken already, when nothing changed


class StaleRule(DecisionConflict):
    """Approving a request whose rule a reload changed or removed: the call can never use it."""

    def __init__(self, record: ApprovalRecord) -> None:
        super().__init__(
            f"approval {record.id} is {STALE}: rule {record.rule!r} was changed or removed by a reload since the "
            "call was held, so the call can never use this approval; let the agent retry the call for a new request",
            record,
        )


def default_actor() -> str:
    """Who runs this process: the actor of decisions that name nobody. A uid with no passwd entry
    and no USER/LOGNAME (a container's, often) is named by its number, where getuser() raises."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def rule_check(store: ApprovalStore, now_s: float) -> RuleCheck:
    """Staleness judged against the proxies running on this state dir now (none if unreadable)."""
    try:
        return RuleCheck(InstanceStore(store.connection).running(now_s))
    except StoreUnavailable:
        return RuleCheck([])


def decide(
    store: ApprovalStore,
    events: EventSink,
    approval_id: str,
    *,
    approve: bool,
    actor: str,
    reason: str | None,
    channel: Channel,
    now_s: float,
    policy_of: PolicyOf | None = None,
    sign: Signer | None = None,
    as_approver: bool = False,
    receipts: Receipts | None = None,
) -> Decision:
    """A vote by `actor`, and the request decided if that vote decides it: recorded as
    `approval_voted` and, when the request changed, `approval_decided` and a receipt (when
    `receipts` is given; one that cannot be signed is recorded as `receipt_failed`).

    `policy_of` gives the policy a request was made under (the archived one, or the one given
    with -c); with an `approvers` block in it, `actor` must be eligible and, when the policy has
    their key, the vote is signed with `sign(actor, payload)`; `as_approver` (the CLI's `--as`)
    refuses to decide when that policy is unknown. Without `policy_of` (a decision
    the proxy takes itself) anyone decides. Raises UnknownApproval, NotEligible, DecisionConflict
    (decided otherwise, consumed, expired; StaleRule for a changed rule) or StoreUnavailable;
    nothing changes then."""
    record = store.get(approval_id)
    if record is None:
        raise UnknownApproval(approval_id)
    if approve and record.status == "pending" and rule_check(store, now_s).stale(record):
        raise StaleRule(record)
    policy, rule = _policy_and_rule(record, policy_of, as_approver)
    vote = Vote(
        approval_id=record.id,
        actor=actor,
        decision="approve" if approve else "deny",
        decided_at=rfc3339(now_s),
        channel=channel,
        reason=reason,
        request_expires_at=record.expires_at,
        approvers_digest=policy.approvers_digest if policy is not None else "",
    )
    quorum = 1
    if policy is not None and rule is not None:
        quorum = rule.who_decides.quorum if policy.approvers else 1
        if policy.approvers and record.status == "pending":
            edited = why_times_edited(policy, rule, record)
            if edited is not None:
                raise DecisionRefused(edited)
        why = why_not_eligible(policy, rule, record, actor, now_s)
        if why is not None:
            raise NotEligible(why)
        approver = policy.approvers.get(actor)
        if approver is not None and approver.key is not None and record.status == "pending":
            if sign is None:
                raise DecisionRefused(f"{actor}'s decisions must be signed with {actor}'s key, and this channel cannot")
            payload = decision_payload(record, vote, CallFacts.of_record(record))
            vote = replace(vote, signature=sign(actor, payload), payload=payload.decode())
            if not signed_by(policy, actor, approver.key, payload, vote.signature or ""):
                raise DecisionRefused(f"the key used is not {actor}'s key in the policy (its public key differs)")
    receipt = NO_RECEIPT
    if receipts is not None:
        receipts.warm_up()  # the key is loaded before the write lock is taken, not while holding it
    try:
        with store.transaction():
            decided = cast(store, vote, quorum, now_s)
            votes = votes_of(store, record.id)
            if receipts is not None and decided.status in ("approved", "denied"):
                receipt = receipts.append(store, "decided", decided, votes, now_s)
    except (AlreadyDecided, AlreadyVoted) as same:
        return Decision(same.record, changed=False, votes=votes_of(store, record.id), quorum=quorum, note=str(same))
    if decided.status == "expired":  # it was past its expiry: now marked so, and nothing decided
        events.emit("approval_expired", approval_id=decided.id, tool=decided.tool, server=decided.server)
        raise DecisionConflict(f"approval {approval_id} expired at {decided.expires_at}; nothing changed", decided)
    common = {"approval_id": decided.id, "tool": decided.tool, "server": decided.server, "channel": channel}
    if receipt.problem is not None:
        events.emit("receipt_failed", reason=receipt.problem, severity="critical", **common)
    if decided.status == "pending":  # a vote towards a quorum
        events.emit(
            "approval_voted",
            actor=actor,
            vote=vote.decision,
            signed=vote.signature is not None,
            reason=reason,
            **common,
        )
    else:
        events.emit(
            "approval_decided", decision=decided.status, actor=actor, reason=reason, **common, **receipt.fields()
        )
    return Decision(decided, changed=True, votes=votes, quorum=quorum, checked=policy is not None or policy_of is None)


def _policy_and_rule(
    record: ApprovalRecord, policy_of: PolicyOf | None, signer_named: bool
) -> tuple[Policy | None, Rule | None]:
    """The policy `record` was made under and its rule; (None, None) for the proxy's own decisions
    and for a request whose policy is not archived (the channel says so: `Decision.checked`)."""
    if policy_of is None:
        return None, None
    policy = policy_of(record)
    if policy is None:  # not archived (made by an older proxy): decided unchecked, the proxy checks at run time
        if signer_named:
            raise DecisionRefused(
                f"the policy approval {record.id} was made under ({record.policy_revision[:12]}) is not archived in "
                "the state dir, so the vote cannot be signed for it; pass -c with the policy file the proxy runs"
            )
        return None, None
    rule = policy.rule_by_digest(record.tool, record.rule_digest)
    if rule is None and policy.approvers:
        raise DecisionRefused(
            f"approval {record.id}'s rule {record.rule!r} is not in the policy given, so who may decide is unknown; "
            "pass -c with the policy file the proxy ran when the call was made"
        )
    return policy, rule
