"""The approval store's queries against the indexes of migration 4, read from their query plans.

Each store method runs on a real SQLite file while a trace callback collects the statements it
sends; each is then put to `EXPLAIN QUERY PLAN`. A gate check must search the records of its own
call (`approvals_by_fingerprint_status_expiry`), never scan a status: the plan says so, and the
number of SQLite VM steps a check takes does not grow with the records of other calls (steps, not
time, so the assertion is exact).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from intercept.store.approvals import ApprovalRecord, ApprovalStore
from intercept.store.database import DATABASE_FILE, MIGRATIONS, connect
from intercept.store.instances import InstanceStore
from intercept.store.timestamps import rfc3339
from tests.store_support import approval_record

NOW_S = 1_800_000_000.0
TIMEOUT_S = 3600.0
FINGERPRINT = "f" * 64
CALL_INDEX = "approvals_by_fingerprint_status_expiry"
STATUS_INDEX = "approvals_by_status"


def record(approval_id: str, status: str, fingerprint: str = FINGERPRINT, created_s: float = NOW_S) -> ApprovalRecord:
    return approval_record(approval_id, fingerprint=fingerprint, status=status, created_s=created_s, timeout_s=TIMEOUT_S)


def add_other_calls(connection: sqlite3.Connection, count: int) -> None:
    """`count` pending records, each of another call, all unexpired (the crowd a check must not read)."""
    rows = [
        (f"apr_other_{i}", f"{i:064x}", "files", "write_file", "h", "{}", "r", "d", "p", "pending", TIMEOUT_S,
         rfc3339(NOW_S), rfc3339(NOW_S + TIMEOUT_S))
        for i in range(count)
    ]  # fmt: skip
    with ApprovalStore(connection).transaction():
        connection.executemany(
            "INSERT INTO approvals (id, fingerprint, server, tool, args_hash, args_redacted, rule, rule_digest, "
            "policy_revision, status, timeout_s, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


@pytest.fixture
def store(tmp_path: Path) -> ApprovalStore:
    """A store holding records of this call in every status (stale ones too, so that every path of
    `expire_stale` and `consume` runs), and a few of other calls."""
    store = ApprovalStore(connect(tmp_path))
    with store.transaction():
        for status in ("pending", "approved", "denied", "consumed", "expired"):
            store.insert(record(f"apr_{status}", status))
        store.insert(record("apr_stale", "pending", created_s=NOW_S - 2 * TIMEOUT_S))
    add_other_calls(store.connection, 50)
    return store


def statements(connection: sqlite3.Connection, action: Callable[[], object]) -> list[str]:
    """The statements `action` sends (with their values inlined), transaction control left out."""
    sent: list[str] = []
    connection.set_trace_callback(sent.append)
    try:
        action()
    finally:
        connection.set_trace_callback(None)
    return [sql for sql in sent if sql.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK")]


def plan(connection: sqlite3.Connection, sql: str) -> str:
    return "\n".join(row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql))


def vm_steps(connection: sqlite3.Connection, action: Callable[[], object]) -> int:
    """How many SQLite virtual machine instructions `action` runs: grows with the rows it reads."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    connection.set_progress_handler(count, 1)
    try:
        action()
    finally:
        connection.set_progress_handler(None, 1)
    return steps


def check(store: ApprovalStore, fingerprint: str = FINGERPRINT) -> None:
    """The gate's lookups for one call, in its order, in one transaction."""
    with store.transaction():
        store.expire_stale(NOW_S, fingerprint)
        store.consume(fingerprint, NOW_S)
        store.find_denied(fingerprint, NOW_S)
        store.find_pending(fingerprint, NOW_S, NOW_S - 60)


# -- the gate's lookups search one call's records ------------------------------------------------

HOT_LOOKUPS = [
    pytest.param(lambda store: store.expire_stale(NOW_S, FINGERPRINT), id="expire_stale-of-a-call"),
    pytest.param(lambda store: store.consume(FINGERPRINT, NOW_S), id="consume"),
    pytest.param(lambda store: store.find_denied(FINGERPRINT, NOW_S), id="find_denied"),
    pytest.param(lambda store: store.find_pending(FINGERPRINT, NOW_S, NOW_S - 60), id="find_pending"),
]


@pytest.mark.parametrize("lookup", HOT_LOOKUPS)
def test_a_gate_lookup_searches_the_call_index(store: ApprovalStore, lookup: Callable[[ApprovalStore], object]) -> None:
    with store.transaction():
        sent = statements(store.connection, lambda: lookup(store))
    selects = [sql for sql in sent if sql.startswith("SELECT")]
    assert len(selects) == 1, sent
    assert f"SEARCH approvals USING INDEX {CALL_INDEX} (fingerprint=? AND status=? AND expires_at" in plan(
        store.connection, selects[0]
    )
    for sql in sent:  # the updates and history rows that follow go by id
        assert "SCAN approvals" not in plan(store.connection, sql), sql


def test_every_statement_of_a_check_searches_an_index(store: ApprovalStore) -> None:
    sent = statements(store.connection, lambda: check(store))
    assert any(CALL_INDEX in plan(store.connection, sql) for sql in sent)
    for sql in sent:
        assert "SCAN" not in plan(store.connection, sql), sql


# -- whole-table work goes by status and expiry ---------------------------------------------------

STATUS_QUERIES = [
    pytest.param(lambda store: store.expire_stale(NOW_S), id="expire_stale-of-all"),
    pytest.param(lambda store: store.list(("pending",)), id="list-by-status"),
]


@pytest.mark.parametrize("query", STATUS_QUERIES)
def test_status_queries_search_the_status_index(store: ApprovalStore, query: Callable[[ApprovalStore], object]) -> None:
    with store.transaction():
        sent = statements(store.connection, lambda: query(store))
    first = plan(store.connection, sent[0])
    assert f"SEARCH approvals USING INDEX {STATUS_INDEX} (status=?" in first
    assert "SCAN approvals" not in first


def test_prune_searches_by_status_and_expiry_and_history_and_votes_by_id(store: ApprovalStore) -> None:
    sent = statements(store.connection, lambda: store.prune(NOW_S + 10 * TIMEOUT_S, TIMEOUT_S))
    assert [sql.split()[0] for sql in sent] == ["DELETE", "DELETE", "DELETE"]
    history, votes, approvals = (plan(store.connection, sql) for sql in sent)
    assert "SEARCH approval_history USING INDEX approval_history_by_id (approval_id=?)" in history
    assert "SEARCH approval_votes USING INDEX sqlite_autoindex_approval_votes_1 (approval_id=?)" in votes
    for text in (history, votes, approvals):
        assert f"SEARCH approvals USING INDEX {STATUS_INDEX} (status=? AND expires_at<?)" in text
        assert "SCAN" not in text


# -- a check reads as much among 20k other calls' records as alone -------------------------------


def test_a_check_among_20k_pending_records_of_other_calls_reads_no_more_than_alone(tmp_path: Path) -> None:
    def steps_of_a_check(directory: Path, others: int) -> int:
        store = ApprovalStore(connect(directory))
        add_other_calls(store.connection, others)
        with store.transaction():
            store.insert(record("apr_mine", "pending"))
        steps = vm_steps(store.connection, lambda: check(store))
        with store.transaction():  # the lookups found the call's own record, so they did their work
            assert store.find_pending(FINGERPRINT, NOW_S, NOW_S - 60) == store.get("apr_mine")
        for sql in statements(store.connection, lambda: check(store)):
            assert "SCAN approvals" not in plan(store.connection, sql), sql
        store.connection.close()
        return steps

    alone = steps_of_a_check(tmp_path / "alone", 0)
    crowded = steps_of_a_check(tmp_path / "crowded", 20_000)
    assert crowded <= alone + 20, (alone, crowded)  # scanning the pending records took ~5 steps each


# -- the fatigue guard's count reads one server's pending records ----------------------------------

SERVER_INDEX = "approvals_by_server_status_expiry"


@pytest.mark.parametrize("tool", ["write_file", None], ids=["per-tool", "per-server"])
def test_counting_pending_requests_among_20k_of_another_server_reads_no_more_than_alone(
    tmp_path: Path, tool: str | None
) -> None:
    """`count_pending` runs in the gate's write transaction at every new request under
    `approvals.max_pending`: it scanned every pending record of every server (15 ms each count at
    50k records of another server, twice per request, with the lock held)."""

    def steps_of_a_count(directory: Path, others: int) -> int:
        store = ApprovalStore(connect(directory))
        add_other_calls(store.connection, others)
        with store.transaction():
            store.connection.execute("UPDATE approvals SET server = 'other'")
            for n in range(3):
                store.insert(record(f"apr_mine_{n}", "pending", fingerprint=f"{n:064x}"))
        assert store.count_pending("files", tool, NOW_S) == 3
        [sql] = statements(store.connection, lambda: store.count_pending("files", tool, NOW_S))
        assert f"USING COVERING INDEX {SERVER_INDEX} (server=? AND status=? AND expires_at>?)" in plan(
            store.connection, sql
        )
        steps = vm_steps(store.connection, lambda: store.count_pending("files", tool, NOW_S))
        store.connection.close()
        return steps

    alone = steps_of_a_count(tmp_path / "alone", 0)
    crowded = steps_of_a_count(tmp_path / "crowded", 20_000)
    assert crowded <= alone + 20, (alone, crowded)


# -- migration 4 -----------------------------------------------------------------------------------


def indexes(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA index_list({table})")}


def test_approval_indexes_after_migration(tmp_path: Path) -> None:
    connection = connect(tmp_path)
    assert indexes(connection, "approvals") == {
        "sqlite_autoindex_approvals_1",
        STATUS_INDEX,
        CALL_INDEX,
        SERVER_INDEX,
    }


def test_a_version_3_database_migrates_to_4_keeping_its_rows(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / DATABASE_FILE, isolation_level=None)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, migration in enumerate(MIGRATIONS[:3], start=1):
        old.executescript(migration)
        old.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    old.execute(
        "INSERT INTO instances (id, server, named, identity, command, pid, config, policy_digest, started_at, seen_at) "
        "VALUES ('i1', 'files', 0, 'x', '[]', 1, 'c', 'p', ?, ?)",
        (rfc3339(NOW_S), rfc3339(NOW_S)),
    )
    old.close()

    connection = connect(tmp_path)
    assert connection.execute("SELECT MAX(version) FROM schema_version").fetchone() == (len(MIGRATIONS),)
    assert "approvals_by_fingerprint" not in indexes(connection, "approvals")
    assert CALL_INDEX in indexes(connection, "approvals")
    assert connection.execute("SELECT id, retention_s FROM instances").fetchall() == [("i1", None)]
    assert InstanceStore(connection).longest_retention_s(60.0, 90.0) == 90.0  # a row from before: the default
