"""Votes on approval requests in SQLite: one per approver and request, never changed once cast.

A request is decided by its votes: `cast` stores a vote and, in the same transaction, turns the
request `denied` at the first deny (a veto) or `approved` once `quorum` distinct approvers voted
yes (`ApprovalStore.decide`, the same conditional update as before votes existed). The same vote
again changes nothing (`AlreadyVoted`); the other vote from the same person is refused: a vote
stands. Who may vote, and with which signature, is decided before (`approvals.decisions`); what
counts at consume time is the proxy's own check (`approvals.vote_check`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from intercept.store.approvals import (
    AlreadyDecided,
    ApprovalRecord,
    ApprovalStore,
    DecisionConflict,
    DecisionRefused,
    UnknownApproval,
)

VoteChoice = Literal["approve", "deny"]


@dataclass(frozen=True, slots=True)
class Vote:
    approval_id: str
    actor: str
    decision: VoteChoice
    decided_at: str  # RFC 3339, as signed
    channel: str
    reason: str | None
    request_expires_at: str  # the request's expiry when the vote was cast, as signed
    approvers_digest: str  # of the approvers block the voter decided under ("" without one)
    signature: str | None = None  # "ed25519:<base64>" over the decision's canonical JSON
    payload: str | None = None  # that canonical JSON, as signed (for offline checks; never trusted)


_COLUMNS = ", ".join(f.name for f in fields(Vote))
_SELECT = f"SELECT {_COLUMNS} FROM approval_votes WHERE approval_id = ? ORDER BY decided_at, rowid"  # noqa: S608
_INSERT = f"INSERT INTO approval_votes ({_COLUMNS}) VALUES ({', '.join('?' for _ in fields(Vote))})"  # noqa: S608


class AlreadyVoted(DecisionRefused):
    """This person already cast this same vote: nothing changed (not an error for scripts)."""

    def __init__(self, record: ApprovalRecord, vote: Vote) -> None:
        super().__init__(f"{vote.actor} already voted {vote.decision} on approval {record.id}; nothing changed")
        self.record = record


def votes_of(store: ApprovalStore, approval_id: str) -> list[Vote]:
    return [Vote(*row) for row in store.connection.execute(_SELECT, (approval_id,))]


def votes_of_many(store: ApprovalStore, approval_ids: list[str]) -> dict[str, list[Vote]]:
    """The votes of several requests (a listing), by request id."""
    found: dict[str, list[Vote]] = {}
    for start in range(0, len(approval_ids), 500):  # SQLite's limit on parameters
        chunk = approval_ids[start : start + 500]
        rows = store.connection.execute(
            f"SELECT {_COLUMNS} FROM approval_votes WHERE approval_id IN ({', '.join('?' for _ in chunk)}) "  # noqa: S608
            "ORDER BY decided_at, rowid",
            chunk,
        )
        for row in rows:
            vote = Vote(*row)
            found.setdefault(vote.approval_id, []).append(vote)
    return found


def cast(store: ApprovalStore, vote: Vote, quorum: int, now_s: float) -> ApprovalRecord:
    """Store `vote` and decide the request if it now is (inside the caller's transaction).
    Returns the record after; a pending record past its expiry is returned expired (the caller
    commits that and refuses). Raises UnknownApproval, AlreadyVoted, AlreadyDecided (decided so
    already, by others' votes) or DecisionConflict."""
    record = store.get(vote.approval_id)
    if record is None:
        raise UnknownApproval(vote.approval_id)
    approve = vote.decision == "approve"
    if record.status == "pending":
        decided = store.expire_if_past(record, now_s)
        if decided is not None:
            return decided
    earlier = [v for v in votes_of(store, record.id) if v.actor == vote.actor]
    if earlier:
        if earlier[0].decision == vote.decision:
            raise AlreadyVoted(record, vote)
        raise DecisionConflict(
            f"{vote.actor} already voted {earlier[0].decision} on approval {record.id}; a vote cannot be changed",
            record,
        )
    if record.status != "pending":
        if record.status == ("approved" if approve else "denied"):
            raise AlreadyDecided(record)
        by = f" by {record.decided_by}" if record.decided_by else ""
        raise DecisionConflict(f"approval {record.id} is already {record.status}{by}; nothing changed", record)
    store.connection.execute(_INSERT, tuple(getattr(vote, f.name) for f in fields(Vote)))
    if not approve:  # one deny vetoes
        return store.decide(record.id, False, vote.actor, vote.reason, now_s)
    yes = [v.actor for v in votes_of(store, record.id) if v.decision == "approve"]
    if len(yes) >= quorum:
        return store.decide(record.id, True, ", ".join(yes), vote.reason, now_s)
    # A vote that does not decide yet is history of its own (one that decides is the decision's).
    store.history_entry(record.id, vote.decided_at, "voted", vote.actor, f"{len(yes)} of {quorum} approvals")
    return store.get(record.id) or record
