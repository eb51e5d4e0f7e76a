"""Store records made to measure, and a state dir seeded with something of everything retention
looks at; through the real stores on real SQLite files. Used by the in-process store and retention
tests and by tests/e2e/test_retention_e2e.py (nothing here starts a process)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from intercept.audit.events import events_dir
from intercept.store.approvals import ApprovalRecord, ApprovalStore
from intercept.store.database import connect
from intercept.store.instances import InstanceRecord, InstanceStore
from intercept.store.timestamps import rfc3339

DAY_S = 86400.0


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


def decide(store: ApprovalStore, approval_id: str, approve: bool, at_s: float) -> None:
    """alice approves or denies `approval_id` at `at_s`, in a transaction of its own."""
    with store.transaction():
        store.decide(approval_id, approve, "alice", None, at_s)


def instance_record(
    instance_id: str, started_s: float, retention_s: float | None, stopped_s: float | None
) -> InstanceRecord:
    """A proxy instance of server "files" (this process's pid), stopped at `stopped_s` unless None."""
    return InstanceRecord(
        id=instance_id,
        server="files",
        named=False,
        identity="i",
        command="[]",
        pid=os.getpid(),
        config="/p.yaml",
        policy_digest="d",
        started_at=rfc3339(started_s),
        seen_at=rfc3339(started_s),
        stopped_at=None if stopped_s is None else rfc3339(stopped_s),
        retention_s=retention_s,
    )


def seed_state_dir(state_dir: Path, at_s: float, live_timeout_s: float = 1000 * DAY_S) -> None:
    """At `at_s`: one denied approval, and one pending and one approved that stay usable for
    `live_timeout_s`; one stopped instance; an event file last written then."""
    connection = connect(state_dir)
    store = ApprovalStore(connection)
    with store.transaction():
        store.insert(
            approval_record("apr_denied", fingerprint="fp-apr_denied", created_s=at_s, timeout_s=100.0, args_exact="{}")
        )
    with store.transaction():
        for approval_id in ("apr_pending", "apr_approved"):
            store.insert(
                approval_record(approval_id, fingerprint=approval_id, created_s=at_s, timeout_s=live_timeout_s, args_exact="{}")
            )
    decide(store, "apr_denied", False, at_s + 1)
    decide(store, "apr_approved", True, at_s + 1)
    InstanceStore(connection).register(instance_record("gone", at_s, None, at_s + 2), at_s)
    connection.close()
    old_file = events_dir(state_dir) / "old.jsonl"
    old_file.parent.mkdir(parents=True, exist_ok=True)
    old_file.write_text('{"type":"startup"}\n')
    os.utime(old_file, (at_s, at_s))


def surviving(state_dir: Path) -> tuple[list[str], int, bool]:
    """What of `seed_state_dir`'s seed is left: approval ids, the number of instances, and whether
    the old event file is."""
    connection = connect(state_dir)
    ids = [r.id for r in ApprovalStore(connection).list()]
    instances = connection.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    connection.close()
    return sorted(ids), instances, (events_dir(state_dir) / "old.jsonl").exists()


def insert_record(state_dir: Path, record: ApprovalRecord) -> ApprovalRecord:
    """Insert `record` into the state dir's database with the real store."""
    connection = connect(state_dir)
    try:
        store = ApprovalStore(connection)
        with store.transaction():
            store.insert(record)
    finally:
        connection.close()
    return record


def approve_all_pending(state_dir: Path) -> None:
    """Approve every pending request in the state dir (as `tester`), as a human would."""
    connection = connect(state_dir)
    store = ApprovalStore(connection)
    with store.transaction():
        for (approval_id,) in connection.execute("SELECT id FROM approvals WHERE status = 'pending'").fetchall():
            store.decide(approval_id, True, "tester", None, time.time())
    connection.close()


def approval_statuses(state_dir: Path) -> list[str]:
    """The status of every approval request in the state dir, oldest first."""
    connection = connect(state_dir)
    try:
        return [row[0] for row in connection.execute("SELECT status FROM approvals ORDER BY created_at")]
    finally:
        connection.close()
