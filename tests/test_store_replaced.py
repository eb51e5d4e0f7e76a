"""A running proxy's connection notices a deleted state dir or a replaced database file, and opening
an up-to-date database takes no write lock.

`LazyConnection` is what the proxy's gate and counters hold; `connect()` is what the CLI and the
instance record open each time. Real SQLite files throughout.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from intercept.store.approvals import ApprovalRecord, ApprovalStore
from intercept.store.database import (
    DATABASE_FILE,
    MIGRATIONS,
    LazyConnection,
    StoreUnavailable,
    connect,
    database_path,
)
from tests.store_support import approval_record

NOW_S = 1_800_000_000.0
SHORT_BUSY_TIMEOUT_MS = 50


def record(approval_id: str) -> ApprovalRecord:
    return approval_record(approval_id, created_s=NOW_S)


def insert(connection: sqlite3.Connection, approval_id: str) -> None:
    store = ApprovalStore(connection)
    with store.transaction():
        store.insert(record(approval_id))


def ids_seen_by_the_cli(state_dir: Path) -> list[str]:
    """The approval ids a fresh `connect()` sees, as `intercept approvals list --all` would."""
    connection = connect(state_dir)
    try:
        return [r.id for r in ApprovalStore(connection).list()]
    finally:
        connection.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


# -- LazyConnection --------------------------------------------------------------------------------


def test_the_same_file_keeps_the_same_connection(state_dir: Path) -> None:
    lazy = LazyConnection(state_dir)
    first = lazy.get()
    insert(first, "apr_one")
    assert lazy.get() is first
    lazy.drop()
    assert lazy.get() is not first


def test_a_deleted_state_dir_is_recreated_and_used(state_dir: Path) -> None:
    lazy = LazyConnection(state_dir)
    before = lazy.get()
    insert(before, "apr_before")
    shutil.rmtree(state_dir)

    after = lazy.get()
    assert after is not before
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    insert(after, "apr_after")
    assert ids_seen_by_the_cli(state_dir) == ["apr_after"]
    assert lazy.get() is after


def test_a_deleted_database_file_is_recreated_and_used(state_dir: Path) -> None:
    lazy = LazyConnection(state_dir)
    before = lazy.get()
    insert(before, "apr_before")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database_path(state_dir)}{suffix}").unlink()

    insert(lazy.get(), "apr_after")
    assert ids_seen_by_the_cli(state_dir) == ["apr_after"]


def test_a_replaced_database_file_is_reopened(state_dir: Path, tmp_path: Path) -> None:
    lazy = LazyConnection(state_dir)
    before = lazy.get()
    insert(before, "apr_old")
    other = tmp_path / "restored"
    replacement = connect(other)
    insert(replacement, "apr_restored")
    replacement.close()  # the last connection checkpoints and removes its -wal: one complete file
    # Replaced as a restore must do it: the file moved into place, the old file's -wal and -shm
    # removed (SQLite keeps a moved file's log for whoever opens the path next).
    os.replace(database_path(other), database_path(state_dir))
    for suffix in ("-wal", "-shm"):
        Path(f"{database_path(state_dir)}{suffix}").unlink()

    after = lazy.get()
    assert after is not before
    assert [r.id for r in ApprovalStore(after).list()] == ["apr_restored"]
    insert(after, "apr_new")
    assert ids_seen_by_the_cli(state_dir) == ["apr_restored", "apr_new"]
    assert after.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_an_unusable_replacement_is_reported_and_retried(state_dir: Path) -> None:
    lazy = LazyConnection(state_dir)
    lazy.get()
    garbage = state_dir / "garbage"
    garbage.write_bytes(b"this is not an SQLite database\x00\xff" * 200)
    os.replace(garbage, database_path(state_dir))
    for suffix in ("-wal", "-shm"):
        Path(f"{database_path(state_dir)}{suffix}").unlink()

    with pytest.raises(StoreUnavailable, match="not a database"):
        lazy.get()
    lazy.drop()  # as the gate does after a failure
    database_path(state_dir).unlink()
    insert(lazy.get(), "apr_after")
    assert ids_seen_by_the_cli(state_dir) == ["apr_after"]


# -- connect() and migrations ------------------------------------------------------------------


def test_opening_a_current_database_does_not_wait_for_another_writer(state_dir: Path) -> None:
    writer = connect(state_dir)
    writer.execute("BEGIN IMMEDIATE")
    insert_sql = "INSERT INTO counters (key, window_start, value) VALUES ('held', 0, 1)"
    writer.execute(insert_sql)
    try:
        reader = connect(state_dir, busy_timeout_ms=SHORT_BUSY_TIMEOUT_MS)  # raised "database is locked" before
        assert reader.execute("SELECT COUNT(*) FROM counters").fetchone() == (0,)
        reader.close()
        lazy = LazyConnection(state_dir)
        assert lazy.get().execute("SELECT COUNT(*) FROM approvals").fetchone() == (0,)
    finally:
        writer.execute("ROLLBACK")


def test_a_database_due_for_migration_still_takes_the_write_lock(state_dir: Path) -> None:
    state_dir.mkdir()
    old = sqlite3.connect(state_dir / DATABASE_FILE, isolation_level=None)
    old.execute("PRAGMA journal_mode = WAL")
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.executescript(MIGRATIONS[0])
    old.execute("INSERT INTO schema_version (version) VALUES (1)")
    old.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            connect(state_dir, busy_timeout_ms=SHORT_BUSY_TIMEOUT_MS)
    finally:
        old.execute("ROLLBACK")
    old.close()
    connection = connect(state_dir, busy_timeout_ms=SHORT_BUSY_TIMEOUT_MS)
    assert connection.execute("SELECT MAX(version) FROM schema_version").fetchone() == (len(MIGRATIONS),)


def test_each_migration_runs_once(state_dir: Path) -> None:
    for _ in range(3):
        connect(state_dir).close()
    connection = connect(state_dir)
    versions = [row[0] for row in connection.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_a_newer_schema_is_refused(state_dir: Path) -> None:
    connection = connect(state_dir)
    connection.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS) + 1,))
    connection.close()
    with pytest.raises(StoreUnavailable, match="newer than this intercept understands"):
        connect(state_dir)
