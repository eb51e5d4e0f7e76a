"""A human decision on an approval request, whatever the channel: the CLI, the admin API, the web
console, an elicitation answered in the client. All of them end here, in the same stale-rule check,
the same conditional UPDATE (`ApprovalStore.decide`) and the same `approval_decided` event, which
names the channel.

The caller opens the store (and the event log): the CLI and the console each hold one connection
per request. A request whose rule a reload changed can never be consumed; approving it is refused
(`StaleRule`), denying it is allowed (it changes nothing the agent can use).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from intercept.approvals.staleness import STALE, RuleCheck
from intercept.store.approvals import AlreadyDecided, ApprovalRecord, ApprovalStore, DecisionConflict, UnknownApproval
from intercept.store.database import StoreUnavailable
from intercept.store.instances import InstanceStore

Channel = Literal["cli", "api", "console", "elicitation"]

__all__ = [
    "Channel",
    "Decision",
    "DecisionConflict",
    "StaleRule",
    "UnknownApproval",
    "decide",
    "default_actor",
    "rule_check",
]


class EventSink(Protocol):
    """Where the decision is recorded (an `EventLog`, or one shared by threads under a lock)."""

    def emit(self, event_type: str, **fields: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """The record after the decision; `changed` is False when the same decision had already been
    taken (then nothing changed: scripts and retried requests rely on that being a success)."""

    record: ApprovalRecord
    changed: bool


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
) -> Decision:
    """pending -> approved or denied, recorded as `approval_decided`. Raises UnknownApproval,
    DecisionConflict (decided otherwise, consumed, expired; StaleRule for a changed rule) or
    StoreUnavailable; nothing changes then."""
    if approve:
        record = store.get(approval_id)
        if record is None:
            raise UnknownApproval(approval_id)
        if record.status == "pending" and rule_check(store, now_s).stale(record):
            raise StaleRule(record)
    try:
        with store.transaction():
            decided = store.decide(approval_id, approve, actor, reason, now_s)
    except AlreadyDecided as same:
        return Decision(same.record, changed=False)
    if decided.status == "expired":  # it was past its expiry: now marked so, and nothing decided
        events.emit("approval_expired", approval_id=decided.id, tool=decided.tool, server=decided.server)
        raise DecisionConflict(f"approval {approval_id} expired at {decided.expires_at}; nothing changed", decided)
    events.emit(
        "approval_decided",
        approval_id=decided.id,
        tool=decided.tool,
        server=decided.server,
        decision=decided.status,
        actor=actor,
        reason=reason,
        channel=channel,
    )
    return Decision(decided, changed=True)
