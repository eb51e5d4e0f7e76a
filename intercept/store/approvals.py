"""Approval records in SQLite. Every status change is a conditional UPDATE on the expected status.

pending -> approved -> consumed; pending -> denied; pending|approved -> expired; consumed -> approved
only by `give_back` (the call provably never started). Nothing else re-arms a consumed, denied or
expired record.

`args_exact` holds the call's exact arguments while a human may still act on them (pending,
approved); every transition out of those states clears it, leaving the redacted copy, so secrets
do not stay on disk once the decision is spent.

The proxy's lookups (`expire_stale` for one fingerprint, `consume`, `find_denied`, `find_pending`)
each search the index on (fingerprint, status, expires_at), so a check reads the records of one
call, not every record of a status. SQL text is built at import, so a transaction runs statements
and little else. `prune` deletes finished records (denied, consumed, expired) and their history
once their last change is older than the retention, with their history and votes.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any

from intercept.policy.model import MAX_SCOPE_USES, ONCE, ApprovalScope
from intercept.store.database import write_transaction
from intercept.store.timestamps import rfc3339

STATUSES = ("pending", "approved", "denied", "consumed", "expired")


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    id: str
    fingerprint: str
    server: str
    tool: str
    args_hash: str
    args_redacted: str
    rule: str
    rule_digest: str
    policy_revision: str
    status: str
    timeout_s: float
    created_at: str
    expires_at: str
    decided_at: str | None = None
    decided_by: str | None = None
    reason: str | None = None
    consumed_at: str | None = None
    request_count: int = 1
    args_exact: str | None = None
    command: str | None = None
    scope: str | None = None  # JSON {"uses", "for_s", "match"}; None: once (one run of the exact call)
    uses_left: int | None = None  # of a scope with `uses`, once approved
    escalated_at: str | None = None  # when its rule's `escalate_after` passed and a proxy noticed
    agent: str | None = None  # the proxy's --agent when it was requested (part of the fingerprint)
    client: str | None = None  # the client's self-given clientInfo.name, escaped and cut (never trusted)

    def scope_json(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.scope) if self.scope else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def approval_scope(self) -> ApprovalScope:
        """The record's scope as the policy states it (a garbled one: once, see `scope_terms`)."""
        if self.scope is None:
            return ONCE
        uses, for_s = self.scope_terms()
        return ApprovalScope(uses, for_s, (self.scope_json() or {}).get("match") == "tool")

    def scope_terms(self) -> tuple[int | None, float | None]:
        """(uses, for_s) of a scoped record as the policy loader writes them: uses a positive
        integer or None, for_s a positive finite number or None, not both None. Anything else (an
        edited or garbled `scope`) is one run within the approval timeout: fail closed."""
        scope = self.scope_json() or {}
        uses, for_s = scope.get("uses"), scope.get("for_s")
        uses_ok = uses is None or (type(uses) is int and 0 < uses <= MAX_SCOPE_USES)
        for_ok = for_s is None or (type(for_s) in (int, float) and 0 < for_s < math.inf)
        if not (uses_ok and for_ok) or (uses is None and for_s is None):
            return 1, None
        return uses, for_s


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: str
    event: str
    actor: str | None
    detail: str | None


_COLUMNS = ", ".join(f.name for f in fields(ApprovalRecord))
_PLACEHOLDERS = ", ".join("?" for _ in fields(ApprovalRecord))
_VALUES = operator.attrgetter(*(f.name for f in fields(ApprovalRecord)))  # a record's values, in column order
_SELECT = f"SELECT {_COLUMNS} FROM approvals"  # noqa: S608
_INSERT = f"INSERT INTO approvals ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"  # noqa: S608
_BY_ID = _SELECT + " WHERE id = ?"
_CONSUMABLE = _SELECT + " WHERE fingerprint = ? AND status = 'approved' AND expires_at > ? ORDER BY decided_at LIMIT 1"
_DENIED = _SELECT + " WHERE fingerprint = ? AND status = 'denied' AND expires_at > ? ORDER BY decided_at DESC LIMIT 1"
_PENDING = (
    _SELECT + " WHERE fingerprint = ? AND status = 'pending' AND expires_at > ? AND created_at > ? "
    "ORDER BY created_at DESC LIMIT 1"
)
_STALE = "status IN ('pending', 'approved') AND expires_at <= ?"
_STALE_IDS = f"SELECT id FROM approvals WHERE {_STALE}"  # noqa: S608
_STALE_IDS_OF_CALL = _STALE_IDS + " AND fingerprint = ?"

# A finished record's last change is the latest timestamp it carries (created_at, expires_at,
# decided_at, consumed_at): every one of them must be older than the cutoff. In practice that is
# expires_at (a decision or a consume happens before it; a revoke moves it to the revoke's time),
# whose range on (status, expires_at) finds the candidates. History times are not counted: an
# `expired` entry says when expiry was noticed (lazily), not when the record stopped mattering.
_PRUNABLE = (
    "status IN ('denied', 'consumed', 'expired') AND expires_at < :cutoff AND created_at < :cutoff "
    "AND (decided_at IS NULL OR decided_at < :cutoff) AND (consumed_at IS NULL OR consumed_at < :cutoff)"
)
_PRUNE_BATCH = 500  # records per transaction: other proxies' checks wait at most one batch for the lock
_PRUNE_SELECT = f"SELECT id FROM approvals WHERE {_PRUNABLE} LIMIT {_PRUNE_BATCH}"  # noqa: S608
_PRUNE_HISTORY = f"DELETE FROM approval_history WHERE approval_id IN ({_PRUNE_SELECT})"  # noqa: S608
_PRUNE_VOTES = f"DELETE FROM approval_votes WHERE approval_id IN ({_PRUNE_SELECT})"  # noqa: S608
_PRUNE_APPROVALS = f"DELETE FROM approvals WHERE id IN ({_PRUNE_SELECT})"  # noqa: S608

# One check formats the same `now_s` for several statements (about 4 µs each): once is enough.
_stamp = functools.lru_cache(maxsize=64)(rfc3339)


class DecisionRefused(Exception):
    """A human decision that cannot be applied (unknown id, already decided, expired)."""


class UnknownApproval(DecisionRefused):
    """No record has this id."""

    def __init__(self, approval_id: str) -> None:
        super().__init__(f"no approval with id {approval_id}")


class DecisionConflict(DecisionRefused):
    """The record is in a state this decision cannot change (decided otherwise, consumed, expired);
    `record` is its current state."""

    def __init__(self, message: str, record: ApprovalRecord) -> None:
        super().__init__(message)
        self.record = record


class AlreadyDecided(DecisionRefused):
    """The same decision was already taken: nothing to do (not an error for scripts)."""

    def __init__(self, record: ApprovalRecord) -> None:
        by = f" by {record.decided_by}" if record.decided_by else ""
        super().__init__(f"approval {record.id} is already {record.status}{by} at {record.decided_at}; nothing changed")
        self.record = record


class ApprovalStore:
    """SQL for approval records over one connection (autocommit; explicit IMMEDIATE transactions)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction; any SQLite failure becomes StoreUnavailable (callers fail closed)."""
        return write_transaction(self.connection, "approval store")

    def _one(self, sql: str, params: tuple[object, ...]) -> ApprovalRecord | None:
        row = self.connection.execute(sql, params).fetchone()
        return ApprovalRecord(*row) if row else None

    def history_entry(
        self, approval_id: str, at: str, event: str, actor: str | None = None, detail: str | None = None
    ) -> None:
        self.connection.execute(
            "INSERT INTO approval_history (approval_id, at, event, actor, detail) VALUES (?, ?, ?, ?, ?)",
            (approval_id, at, event, actor, detail),
        )

    # -- the proxy's side ------------------------------------------------------------------

    def has_stale(self, now_s: float) -> bool:
        """Whether some pending or approved record is past its expiry (a read: no lock taken)."""
        return self.connection.execute(_STALE_IDS + " LIMIT 1", (_stamp(now_s),)).fetchone() is not None

    def expire_stale(self, now_s: float, fingerprint: str | None = None) -> list[str]:
        """Mark pending/approved records past expires_at as expired; returns their ids."""
        now = _stamp(now_s)
        if fingerprint is None:
            rows = self.connection.execute(_STALE_IDS, (now,))
        else:
            rows = self.connection.execute(_STALE_IDS_OF_CALL, (now, fingerprint))
        ids = [row[0] for row in rows]
        for approval_id in ids:
            updated = self.connection.execute(
                "UPDATE approvals SET status = 'expired', args_exact = NULL "
                "WHERE id = ? AND status IN ('pending', 'approved') AND expires_at <= ?",
                (approval_id, now),
            ).rowcount
            if updated:
                self.history_entry(approval_id, now, "expired")
        return ids

    def consume(self, fingerprint: str, now_s: float) -> ApprovalRecord | None:
        """approved -> consumed for one unexpired approval of this fingerprint; None if there is none."""
        record = self.consumable(fingerprint, now_s)
        return None if record is None else self.take(record, now_s)

    def consumable(self, fingerprint: str, now_s: float) -> ApprovalRecord | None:
        """The approval `consume` would take (to be checked before `take`)."""
        return self._one(_CONSUMABLE, (fingerprint, _stamp(now_s)))

    def take(self, record: ApprovalRecord, now_s: float) -> ApprovalRecord | None:
        """approved -> consumed (or one use of a scoped approval) for `record`; None if it is no
        longer approved."""
        now = _stamp(now_s)
        if record.scope is None:  # once
            updated = self.connection.execute(
                "UPDATE approvals SET status = 'consumed', consumed_at = ?, args_exact = NULL "
                "WHERE id = ? AND status = 'approved'",
                (now, record.id),
            ).rowcount
            if not updated:
                return None
            self.history_entry(record.id, now, "consumed")
            return record
        return self._use(record, now)

    def _use(self, record: ApprovalRecord, now: str) -> ApprovalRecord | None:
        """One run of a scoped approval: a use taken (the last one consumes it), or, without a
        count, a run inside its window; each is a conditional update and a history entry."""
        if record.uses_left is None:
            if record.scope_terms()[0] is not None:  # a count (or a garbled scope: one run) with none left
                return None
            updated = self.connection.execute(
                "UPDATE approvals SET consumed_at = ? WHERE id = ? AND status = 'approved' AND expires_at > ?",
                (now, record.id, now),
            ).rowcount
            if updated:
                self.history_entry(record.id, now, "used")
            return record if updated else None
        updated = self.connection.execute(
            "UPDATE approvals SET uses_left = uses_left - 1, consumed_at = ?, "
            "status = CASE WHEN uses_left <= 1 THEN 'consumed' ELSE 'approved' END, "
            "args_exact = CASE WHEN uses_left <= 1 THEN NULL ELSE args_exact END "
            "WHERE id = ? AND status = 'approved' AND uses_left > 0",
            (now, record.id),
        ).rowcount
        if not updated:
            return None
        left = record.uses_left - 1
        self.history_entry(record.id, now, "consumed" if left <= 0 else "used", detail=f"{left} left")
        return record

    def void(self, approval_id: str, now_s: float, why: str) -> bool:
        """approved -> expired now: an approval the proxy refused to run on (its votes do not make
        it approved under the proxy's policy); False if it is no longer approved."""
        now = _stamp(now_s)
        updated = self.connection.execute(
            "UPDATE approvals SET status = 'expired', expires_at = ?, args_exact = NULL WHERE id = ? AND status = 'approved'",
            (now, approval_id),
        ).rowcount
        if updated:
            self.history_entry(approval_id, now, "voided", "intercept", why)
        return bool(updated)

    def give_back(self, approval_id: str, now_s: float, why: str, args_exact: str) -> bool:
        """consumed -> approved for a call that provably never started (never forwarded, or the
        upstream refused the request itself); `args_exact` restores what the approver may see.
        False if the record is not consumed."""
        now = _stamp(now_s)
        record = self.get(approval_id)
        if record is not None and record.scope is not None:
            uses = record.scope_terms()[0]
            if record.uses_left is None or uses is None:  # a window without a count: nothing was taken
                return False
            updated = self.connection.execute(  # never more than `uses` left (one give-back per run taken)
                "UPDATE approvals SET uses_left = uses_left + 1, status = 'approved', "
                "args_exact = COALESCE(args_exact, ?) WHERE id = ? AND status IN ('approved', 'consumed') "
                "AND expires_at > ? AND uses_left < ?",
                (args_exact, approval_id, now, uses),
            ).rowcount
            if updated:
                self.history_entry(approval_id, now, "given_back", detail=why)
            return bool(updated)
        updated = self.connection.execute(
            "UPDATE approvals SET status = 'approved', consumed_at = NULL, args_exact = ? "
            "WHERE id = ? AND status = 'consumed'",
            (args_exact, approval_id),
        ).rowcount
        if updated:
            self.history_entry(approval_id, now, "given_back", detail=why)
        return bool(updated)

    def find_denied(self, fingerprint: str, now_s: float) -> ApprovalRecord | None:
        return self._one(_DENIED, (fingerprint, _stamp(now_s)))

    def find_pending(self, fingerprint: str, now_s: float, created_since_s: float) -> ApprovalRecord | None:
        return self._one(_PENDING, (fingerprint, _stamp(now_s), _stamp(created_since_s)))

    def count_pending(self, server: str, tool: str | None, now_s: float) -> int:
        """Unexpired pending requests of `server` (and `tool`, when given): the fatigue guard's count."""
        sql = "SELECT COUNT(*) FROM approvals WHERE status = 'pending' AND expires_at > ? AND server = ?"
        params: tuple[object, ...] = (_stamp(now_s), server)
        if tool is not None:
            sql, params = sql + " AND tool = ?", (*params, tool)
        return int(self.connection.execute(sql, params).fetchone()[0])

    def escalation_due(self, server: str, rule_digest: str, created_by_s: float, now_s: float) -> list[ApprovalRecord]:
        """`server`'s unexpired pending requests of one rule, made at or before `created_by_s` and
        not escalated yet (found through the (server, status, expires_at) index)."""
        sql = (
            _SELECT + " WHERE server = ? AND status = 'pending' AND expires_at > ? AND rule_digest = ? "
            "AND escalated_at IS NULL AND created_at <= ?"
        )
        rows = self.connection.execute(sql, (server, _stamp(now_s), rule_digest, rfc3339(created_by_s)))
        return [ApprovalRecord(*row) for row in rows]

    def mark_escalated(self, approval_id: str, now_s: float, roles: str) -> bool:
        """Set when a request escalated; False if it already had (another proxy noticed first) or
        is no longer pending: only one notice goes out."""
        now = _stamp(now_s)
        updated = self.connection.execute(
            "UPDATE approvals SET escalated_at = ? WHERE id = ? AND status = 'pending' AND escalated_at IS NULL",
            (now, approval_id),
        ).rowcount
        if updated:
            self.history_entry(approval_id, now, "escalated", detail=f"role {roles} may decide now")
        return bool(updated)

    def count_request(self, approval_id: str, now_s: float) -> None:
        self.connection.execute("UPDATE approvals SET request_count = request_count + 1 WHERE id = ?", (approval_id,))
        self.history_entry(approval_id, _stamp(now_s), "reused")

    def insert(self, record: ApprovalRecord) -> None:
        self.connection.execute(_INSERT, _VALUES(record))
        self.history_entry(record.id, record.created_at, "requested")

    # -- the approver's side ---------------------------------------------------------------

    def ids_starting_with(self, prefix: str, limit: int = 10) -> list[str]:
        """Ids that start with `prefix` (at most `limit`), for ids given in part."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.connection.execute(
            "SELECT id FROM approvals WHERE id LIKE ? ESCAPE '\\' ORDER BY created_at LIMIT ?", (escaped + "%", limit)
        )
        return [row[0] for row in rows]

    def get(self, approval_id: str) -> ApprovalRecord | None:
        return self._one(_BY_ID, (approval_id,))

    def statuses(self, approval_ids: list[str], now_s: float) -> dict[str, str]:
        """Each known id's status, a pending or approved one past its expiry as `expired`."""
        now = _stamp(now_s)
        found: dict[str, str] = {}
        for start in range(0, len(approval_ids), 500):  # SQLite's limit on parameters
            chunk = approval_ids[start : start + 500]
            rows = self.connection.execute(
                f"SELECT id, status, expires_at FROM approvals WHERE id IN ({', '.join('?' for _ in chunk)})",  # noqa: S608
                chunk,
            )
            for approval_id, status, expires_at in rows:
                found[approval_id] = "expired" if status in ("pending", "approved") and expires_at <= now else status
        return found

    def history(self, approval_id: str) -> list[HistoryEntry]:
        rows = self.connection.execute(
            "SELECT at, event, actor, detail FROM approval_history WHERE approval_id = ? ORDER BY rowid", (approval_id,)
        )
        return [HistoryEntry(*row) for row in rows]

    def list(self, statuses: tuple[str, ...] | None = None) -> list[ApprovalRecord]:
        sql = _SELECT
        params: tuple[object, ...] = ()
        if statuses:
            sql += f" WHERE status IN ({', '.join('?' for _ in statuses)})"
            params = statuses
        return [ApprovalRecord(*row) for row in self.connection.execute(sql + " ORDER BY created_at", params)]

    def expire_if_pending(self, approval_id: str, now_s: float, why: str) -> bool:
        """pending -> expired now (a held call nobody decided in time, `on_timeout`); False if a
        human decided it meanwhile (then that decision stands)."""
        now = _stamp(now_s)
        updated = self.connection.execute(
            "UPDATE approvals SET status = 'expired', expires_at = ?, args_exact = NULL WHERE id = ? AND status = 'pending'",
            (now, approval_id),
        ).rowcount
        if updated:
            self.history_entry(approval_id, now, "expired", detail=why)
        return bool(updated)

    def revoke(self, approval_id: str, now_s: float) -> list[str]:
        """pending|approved -> expired now; returns every id that expired with it (stale ones of the
        same call included)."""
        record = self.get(approval_id)
        if record is None:
            raise UnknownApproval(approval_id)
        if record.status not in ("pending", "approved"):
            raise DecisionConflict(f"approval {approval_id} is already {record.status}; nothing changed", record)
        self.connection.execute(
            "UPDATE approvals SET expires_at = ? WHERE id = ? AND status IN ('pending', 'approved')",
            (_stamp(now_s), approval_id),
        )
        return self.expire_stale(now_s, record.fingerprint)

    def expire_if_past(self, record: ApprovalRecord, now_s: float) -> ApprovalRecord | None:
        """A pending record past its expiry: marked expired here and returned so (not raised, so
        the caller's transaction commits the expiry while it refuses the decision); None if it
        is not past its expiry."""
        if record.expires_at > _stamp(now_s):
            return None
        self.expire_stale(now_s, record.fingerprint)
        return self.get(record.id) or record

    def decide(self, approval_id: str, approve: bool, actor: str, reason: str | None, now_s: float) -> ApprovalRecord:
        """pending -> approved (usable for `timeout_s` from now) or pending -> denied. A pending
        record past its expiry is expired instead and returned so (status `expired`): the caller
        commits that and refuses the decision."""
        now = _stamp(now_s)
        record = self.get(approval_id)
        if record is None:
            raise UnknownApproval(approval_id)
        if record.status == "pending":
            expired = self.expire_if_past(record, now_s)
            if expired is not None:
                return expired
        status = "approved" if approve else "denied"
        if record.status == status:
            raise AlreadyDecided(record)
        if record.status != "pending":
            by = f" by {record.decided_by}" if record.decided_by else ""
            raise DecisionConflict(f"approval {approval_id} is already {record.status}{by}; nothing changed", record)
        uses, for_s = record.scope_terms() if record.scope is not None else (None, None)
        window_s = for_s or record.timeout_s  # a `for` window starts at approval
        expires_at = _stamp(now_s + window_s) if approve else record.expires_at
        uses = uses if approve else None
        updated = self.connection.execute(
            "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, reason = ?, expires_at = ?, "
            "uses_left = ?, args_exact = CASE WHEN ? THEN args_exact END WHERE id = ? AND status = 'pending'",
            (status, now, actor, reason, expires_at, uses, approve, approval_id),
        ).rowcount
        if not updated:
            current = self.get(approval_id) or record
            raise DecisionConflict(f"approval {approval_id} changed while deciding; nothing changed", current)
        self.history_entry(approval_id, now, status, actor, reason)
        decided = self.get(approval_id)
        assert decided is not None
        return decided

    # -- retention -------------------------------------------------------------------------

    def prune(self, now_s: float, retention_s: float) -> int:
        """Delete denied, consumed and expired records whose last change is more than
        `retention_s` before `now_s`, with their history, in transactions of their own of at most
        _PRUNE_BATCH records (so nobody waits long for the lock); returns how many records went. Pending and approved records are never pruned, however old (they
        are expired first, on access)."""
        if math.isnan(retention_s) or retention_s < 0:
            raise ValueError(f"retention must be a number of seconds >= 0, not {retention_s}")
        cutoff_s = now_s - retention_s
        if cutoff_s <= 0:  # nothing was recorded before 1970 (and infinity has no timestamp)
            return 0
        params = {"cutoff": rfc3339(cutoff_s)}
        total = 0
        while True:
            with self.transaction():
                self.connection.execute(_PRUNE_HISTORY, params)
                self.connection.execute(_PRUNE_VOTES, params)
                pruned = self.connection.execute(_PRUNE_APPROVALS, params).rowcount
            total += pruned
            if pruned < _PRUNE_BATCH:
                return total
