"""Retention: how long finished approvals, stopped instances and event files are kept.

Denied, consumed and expired approvals (with their history), instances that stopped, and event
files older than the retention are deleted; pending and approved approvals never are. Proxies
sharing a state dir each record their retention in the instance table, and the longest among the
running ones (and the caller's own) applies. Used by the proxy (at start and hourly, off its store
thread) and by `intercept prune`; both record what went as events (`approvals_pruned`,
`events_pruned`), so an audit trail can tell pruning from deletion.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from intercept.audit.events import DEFAULT_RETENTION_S, EventLog, prune_old_event_files
from intercept.store.approvals import ApprovalStore
from intercept.store.database import connect
from intercept.store.instances import InstanceStore
from intercept.store.timestamps import rfc3339

__all__ = ["DEFAULT_RETENTION_S", "PRUNE_INTERVAL_S", "Pruned", "prune_state_dir", "record_pruning"]
PRUNE_INTERVAL_S = 3600.0


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pruning removed, under which retention."""

    retention_s: float
    approvals: int
    instances: int
    event_files: int
    event_bytes: int
    event_heads: tuple[dict[str, object], ...]  # each pruned event file's name, last seq and hash
    expired: list[str]  # approvals expired on the way (their exact arguments erased)


def prune_state_dir(state_dir: Path, retention_s: float, now_s: float) -> Pruned:
    """Apply the retention (the longest of `retention_s` and the running proxies') to `state_dir`.
    Raises StoreUnavailable when the database cannot be used (the event files are then left too)."""
    connection = connect(state_dir)
    try:
        retention_s = InstanceStore(connection).longest_retention_s(retention_s, DEFAULT_RETENTION_S)
        store = ApprovalStore(connection)
        with store.transaction():  # expiry is lazy: requests nobody asked about again end here
            expired = store.expire_stale(now_s)
        approvals = store.prune(now_s, retention_s)
        cutoff_s = now_s - retention_s
        instances = InstanceStore(connection).prune_stopped(rfc3339(cutoff_s)) if cutoff_s > 0 else 0
    finally:
        with contextlib.suppress(sqlite3.Error):
            connection.close()
    files = prune_old_event_files(state_dir, now_s, retention_s)
    return Pruned(retention_s, approvals, instances, files.count, files.bytes, files.heads, expired)


def record_pruning(events: EventLog, pruned: Pruned) -> None:
    """Record what went (nothing is recorded when nothing went)."""
    for approval_id in pruned.expired:
        events.emit("approval_expired", approval_id=approval_id)
    if pruned.approvals or pruned.instances:
        events.emit("approvals_pruned", approvals=pruned.approvals, instances=pruned.instances, retention_s=pruned.retention_s)
    if pruned.event_files:
        events.emit(
            "events_pruned",
            files=pruned.event_files,
            bytes=pruned.event_bytes,
            retention_s=pruned.retention_s,
            pruned_files=list(pruned.event_heads),
        )
        events.checkpoint()  # sealed, so that `audit verify` can trust it to account for the files
