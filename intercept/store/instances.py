"""Live proxy instances in the state database: who each is, which policy it runs, whether it lives.

A proxy registers at start, refreshes `seen_at` and its policy digest while it runs (heartbeat,
reload) and marks itself stopped at exit. A server name given with `--name` must be unique in the
state dir: a second live instance with that name but another command is refused, since approvals
bind the name alone. Each instance records its approval retention: where proxies sharing a dir
disagree, the longest among those not stopped applies (`longest_retention_s`).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import astuple, dataclass, fields

from intercept.store.database import StoreUnavailable, write_transaction
from intercept.store.timestamps import parse_rfc3339, rfc3339

LIVE_WITHIN_S = 300.0  # a registered instance not seen for this long counts as gone (heartbeat: 60 s)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    id: str
    server: str
    named: bool
    identity: str  # keyed hash of the absolute command: compared, never shown
    command: str  # the command as JSON, secrets redacted
    pid: int
    config: str
    policy_digest: str
    started_at: str
    seen_at: str
    stopped_at: str | None = None
    retention_s: float | None = None  # how long its finished approvals are kept; None: the default


class NameInUse(Exception):
    """Another live instance runs a different command under the same `--name`."""


_COLUMNS = ", ".join(f.name for f in fields(InstanceRecord))  # the table's columns have the fields' names
_REGISTER = f"INSERT OR REPLACE INTO instances ({_COLUMNS}) VALUES ({', '.join('?' for _ in fields(InstanceRecord))})"  # noqa: S608


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_live(record: InstanceRecord, now_s: float) -> bool:
    """Not stopped, seen recently, and its process still exists."""
    return (
        record.stopped_at is None
        and now_s - parse_rfc3339(record.seen_at) < LIVE_WITHIN_S
        and _pid_alive(record.pid)
    )


class InstanceStore:
    """SQL for instance records over one autocommit connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            return self.connection.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state store unavailable: {exc}") from None

    def register(self, record: InstanceRecord, now_s: float) -> None:
        """Add `record`; raises NameInUse when a live instance holds its `--name` with another command."""
        values = astuple(record)
        with write_transaction(self.connection, "state store"):
            if record.named:
                for other in self._rows("WHERE server = ? AND named = 1 AND stopped_at IS NULL", (record.server,)):
                    if other.identity != record.identity and other.id != record.id and is_live(other, now_s):
                        raise NameInUse(
                            f"server name {record.server!r} is already used by a running proxy (pid {other.pid}) "
                            f"with another command: {other.command}; choose another --name"
                        )
            self._execute(_REGISTER, values)

    def seen(self, instance_id: str, now_s: float, policy_digest: str | None = None) -> None:
        """The instance is alive (and runs `policy_digest`, when given)."""
        if policy_digest is None:
            self._execute("UPDATE instances SET seen_at = ? WHERE id = ?", (rfc3339(now_s), instance_id))
        else:
            self._execute(
                "UPDATE instances SET seen_at = ?, policy_digest = ? WHERE id = ?",
                (rfc3339(now_s), policy_digest, instance_id),
            )

    def stopped(self, instance_id: str, now_s: float) -> None:
        self._execute("UPDATE instances SET stopped_at = ? WHERE id = ?", (rfc3339(now_s), instance_id))

    def running(self, now_s: float) -> list[InstanceRecord]:
        """The instances that are live now (see `is_live`)."""
        return [r for r in self._rows("WHERE stopped_at IS NULL", ()) if is_live(r, now_s)]

    def prune_stopped(self, before: str) -> int:
        """Forget instances that stopped before `before` (RFC 3339); returns how many."""
        with write_transaction(self.connection, "state store"):
            return self._execute("DELETE FROM instances WHERE stopped_at IS NOT NULL AND stopped_at < ?", (before,)).rowcount

    def longest_retention_s(self, default_s: float, unrecorded_s: float) -> float:
        """The longest retention among instances not stopped, and `default_s`; an instance that
        recorded none (started before retention existed) counts as `unrecorded_s`."""
        row = self._execute(
            "SELECT MAX(COALESCE(retention_s, ?)) FROM instances WHERE stopped_at IS NULL", (unrecorded_s,)
        ).fetchone()
        return default_s if row[0] is None else max(float(row[0]), default_s)

    def _rows(self, where: str, params: tuple[object, ...]) -> list[InstanceRecord]:
        rows = self._execute(f"SELECT {_COLUMNS} FROM instances {where}", params).fetchall()  # noqa: S608
        return [InstanceRecord(r[0], r[1], bool(r[2]), *r[3:]) for r in rows]
