"""Open the state database: busy timeout, WAL, and migrations up to the current schema version.

`busy_timeout` is set before switching to WAL because several processes opening a fresh database
at once race for the lock that the switch needs. The schema version is first read without a write
lock, so opening an up-to-date database never waits for another process's write transaction; the
write lock is taken only when migrations are due (and the version read again under it). Every
failure surfaces as `StoreUnavailable`, so callers can fail closed with one clear reason.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

DATABASE_FILE = "intercept.sqlite"
BUSY_TIMEOUT_MS = 2000

MIGRATIONS: tuple[str, ...] = (
    # 1: approvals and their history
    """
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        server TEXT NOT NULL,
        tool TEXT NOT NULL,
        args_hash TEXT NOT NULL,
        args_redacted TEXT NOT NULL,
        rule TEXT NOT NULL,
        rule_digest TEXT NOT NULL,
        policy_revision TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed', 'expired')),
        timeout_s REAL NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        decided_at TEXT,
        decided_by TEXT,
        reason TEXT,
        consumed_at TEXT,
        request_count INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX approvals_by_fingerprint ON approvals (fingerprint, status);
    CREATE INDEX approvals_by_status ON approvals (status, expires_at);
    CREATE TABLE approval_history (
        approval_id TEXT NOT NULL REFERENCES approvals (id),
        at TEXT NOT NULL,
        event TEXT NOT NULL,
        actor TEXT,
        detail TEXT
    );
    CREATE INDEX approval_history_by_id ON approval_history (approval_id);
    """,
    # 2: stateful counters, one row per key and calendar window
    """
    CREATE TABLE counters (
        key TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (key, window_start)
    );
    """,
    # 3: the exact arguments an approver must see (kept only while pending or approved), the
    # upstream command (secrets redacted) each approval was requested by, and live instances
    """
    ALTER TABLE approvals ADD COLUMN args_exact TEXT;
    ALTER TABLE approvals ADD COLUMN command TEXT;
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        server TEXT NOT NULL,
        named INTEGER NOT NULL,
        identity TEXT NOT NULL,
        command TEXT NOT NULL,
        pid INTEGER NOT NULL,
        config TEXT NOT NULL,
        policy_digest TEXT NOT NULL,
        started_at TEXT NOT NULL,
        seen_at TEXT NOT NULL,
        stopped_at TEXT
    );
    CREATE INDEX instances_by_server ON instances (server, stopped_at);
    """,
    # 4: the gate's lookups search one call's records instead of every record of a status (each
    # of them is `fingerprint = ? AND status = ? AND expires_at <range>`), which makes the old
    # (fingerprint, status) index a redundant prefix; (status, expires_at) stays for the CLI's
    # expiry of all stale records, `list --status` and pruning. Each instance's approval retention
    # (the longest among live ones applies).
    """
    CREATE INDEX approvals_by_fingerprint_status_expiry ON approvals (fingerprint, status, expires_at);
    DROP INDEX approvals_by_fingerprint;
    ALTER TABLE instances ADD COLUMN retention_s REAL;
    """,
    # 5: approval scopes (a rule's `scope`): what one approval allows, as JSON (NULL: once), and
    # the runs it has left (NULL: unlimited within its window, or once)
    """
    ALTER TABLE approvals ADD COLUMN scope TEXT;
    ALTER TABLE approvals ADD COLUMN uses_left INTEGER;
    """,
    # 6: the fatigue guard's count (`approvals.max_pending`), in the gate's write transaction at
    # every new request: one server's unexpired pending records (the tool read from the index),
    # not every server's
    """
    CREATE INDEX approvals_by_server_status_expiry ON approvals (server, status, expires_at, tool);
    """,
    # 7: who asked (the proxy's --agent, NULL without one, and the client's self-given name) and
    # who decided: one vote per approver and request (a quorum needs several; one deny vetoes),
    # each with what its signature covers beyond the request (the request's expiry when it was
    # cast, the approvers block's digest) and the signature; and when a request escalated (the
    # webhook fires again once, from whichever proxy sets it first)
    """
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL REFERENCES approvals (id),
        actor TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
        decided_at TEXT NOT NULL,
        channel TEXT NOT NULL,
        reason TEXT,
        request_expires_at TEXT NOT NULL,
        approvers_digest TEXT NOT NULL,
        signature TEXT,
        PRIMARY KEY (approval_id, actor)
    );
    ALTER TABLE approvals ADD COLUMN escalated_at TEXT;
    ALTER TABLE approvals ADD COLUMN agent TEXT;
    ALTER TABLE approvals ADD COLUMN client TEXT;
    """,
    # 8: receipts, one per decision and per run of an approval-gated call, each the canonical JSON
    # of what happened with the hash of the one before, signed by the proxy key (a chain a writer
    # of the database cannot extend or edit unseen); and each signed vote's exact signed bytes,
    # so a vote can be checked offline once the request's arguments are erased
    """
    CREATE TABLE receipts (
        seq INTEGER PRIMARY KEY,
        approval_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        hash TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE INDEX receipts_by_approval ON receipts (approval_id);
    ALTER TABLE approval_votes ADD COLUMN payload TEXT;
    """,
)


class StoreUnavailable(Exception):
    """The database cannot be used (unreadable, corrupt, locked past the busy timeout, too new)."""


class StoreBusy(StoreUnavailable):
    """The store is busy, not broken: a call's deadline passed before its job could start, or
    while it waited for another process's write lock."""


def database_path(state_dir: Path) -> Path:
    return Path(state_dir) / DATABASE_FILE


def connect(state_dir: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection in autocommit mode with the schema migrated; raises StoreUnavailable."""
    path = database_path(state_dir)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # approvals name what agents did
        if path.is_symlink():  # a planted link would have us chmod and write whatever it names
            raise StoreUnavailable(f"cannot open {path}: it is a symbolic link; the database must be a regular file")
        connection = sqlite3.connect(
            path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        _owner_only(path)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open {path}: {exc}") from None
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        if _schema_version(connection) < len(MIGRATIONS):  # a plain read: no write lock when current
            _migrate(connection)
    except sqlite3.Error as exc:
        connection.close()
        if is_busy(exc):  # another process holds the lock: busy, not broken
            raise StoreBusy(f"cannot use {path}: {exc}") from None
        raise StoreUnavailable(f"cannot use {path}: {exc}") from None
    return connection


# While a thread's job has a deadline (`bound_lock_waits`), BEGIN IMMEDIATE retries on its own in
# short pauses instead of SQLite's busy handler, whose sleeps grow to 100 ms and miss most moments
# the lock is free when many processes want it: waits are shorter and fairer, and end at the deadline.
_LOCK_WAIT = threading.local()
FIRST_LOCK_PAUSE_S = 0.0005
MAX_LOCK_PAUSE_S = 0.005
PAST_DEADLINE = "database is locked (the state store stayed busy until this call's deadline)"
STATEMENT_BUSY_TIMEOUT_MS = 1  # for statements other than BEGIN while a deadline applies
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes included (BUSY_SNAPSHOT, LOCKED_SHAREDCACHE, ...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES


def bound_lock_waits(deadline: float | None) -> None:
    """This thread's next write transactions wait for the lock until `deadline` (monotonic), or
    with SQLite's own busy timeout when None."""
    _LOCK_WAIT.deadline = deadline


def begin_immediate(connection: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock until this thread's deadline if it has one."""
    _execute_when_free(connection, "BEGIN IMMEDIATE", ())


def _execute_when_free(connection: sqlite3.Connection, sql: str, parameters: tuple[object, ...]) -> sqlite3.Cursor:
    """Execute `sql`, retrying in short pauses while the database is locked, until this thread's
    deadline if it has one (without one, SQLite's busy timeout is the only wait). No try starts
    at or after the deadline, the first included (the thread may have waited for the GIL or a
    CPU since the deadline was last checked): StoreBusy then."""
    deadline: float | None = getattr(_LOCK_WAIT, "deadline", None)
    pause = FIRST_LOCK_PAUSE_S
    while True:
        if deadline is not None and deadline <= time.monotonic():
            raise StoreBusy(PAST_DEADLINE)
        try:
            return connection.execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            left = 0.0 if deadline is None else deadline - time.monotonic()
            if not is_busy(exc) or left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(pause * 2, MAX_LOCK_PAUSE_S)


def write_statement(connection: sqlite3.Connection, store: str, sql: str, parameters: tuple[object, ...]) -> int:
    """One write statement as a transaction of its own (autocommit): SQLite takes the write lock,
    writes and commits within the statement, so the lock is never held while this thread waits
    for Python's GIL or the CPU between statements. Waits for the lock as `write_transaction`
    does; returns the number of rows changed. Failures become StoreBusy / StoreUnavailable."""
    if connection.in_transaction:  # the statement would not commit (a bug elsewhere): the store is unusable
        raise StoreUnavailable(f"{store} unavailable: a transaction was left open on this connection")
    try:
        return _execute_when_free(connection, sql, parameters).rowcount
    except sqlite3.Error as exc:
        if is_busy(exc):
            raise StoreBusy(f"{store} busy: {exc}") from None
        raise StoreUnavailable(f"{store} unavailable: {exc}") from None


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection, store: str) -> Iterator[None]:
    """One IMMEDIATE write transaction over an autocommit connection; any SQLite failure becomes
    StoreUnavailable naming `store` (callers fail closed), anything else rolls back and propagates."""
    try:
        begin_immediate(connection)
    except sqlite3.Error as exc:
        if is_busy(exc):
            raise StoreBusy(f"{store} busy: {exc}") from None
        raise StoreUnavailable(f"{store} unavailable: {exc}") from None
    try:
        yield
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(connection)
        raise StoreUnavailable(f"{store} unavailable: {exc}") from None
    except BaseException:
        _rollback(connection)
        raise


def _rollback(connection: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        connection.execute("ROLLBACK")


class LazyConnection:
    """A connection opened on first use, dropped after a failure so the next use reconnects (a
    corrupt or locked database is retried on each call instead of breaking the proxy), and reopened
    when the database file at the path is no longer the one it opened.

    An open connection keeps using its file after the state dir is deleted or the file replaced:
    what the proxy then writes, no CLI or other proxy ever sees. So each `get` compares the path's
    (st_dev, st_ino) with the file's at open (one stat; a missing file counts as changed). The
    inode number cannot have been reused by a new file meanwhile: our open connection still holds
    the old one.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._path = os.fspath(database_path(state_dir))
        self._connection: sqlite3.Connection | None = None
        self._opened: tuple[int, int] | None = None

    def get(self) -> sqlite3.Connection:
        """The open connection, reopened if the database file was deleted or replaced (the dir is
        then recreated and migrated); raises StoreUnavailable."""
        if self._connection is not None:
            identity = _file_identity(self._path)
            if identity is not None and identity == self._opened:
                return self._connection
            self.drop()
        before = _file_identity(self._path)
        connection = connect(self.state_dir)
        after = _file_identity(self._path)
        self._connection = connection
        # Replaced while connecting: which file we opened is unknown, so reopen at the next use.
        self._opened = after if before is None or before == after else None
        return connection

    def drop(self, after: StoreUnavailable | None = None) -> None:
        """Close the connection so the next use reconnects; kept when `after` is StoreBusy (a
        deadline that passed says nothing about the connection)."""
        if isinstance(after, StoreBusy):
            return
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
        self._connection = None
        self._opened = None


def _file_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at `path`, or None if there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _owner_only(path: Path) -> None:
    """Make a file we may have just created readable by its owner only (best effort)."""
    try:
        if path.exists() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError:
        pass


def _schema_version(connection: sqlite3.Connection) -> int:
    """The schema version (0 for a new database), read without taking a write lock; raises
    sqlite3.DatabaseError for a version newer than this intercept understands."""
    has_table = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not has_table:
        return 0
    current = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
    if current > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"schema version {current} is newer than this intercept understands ({len(MIGRATIONS)}); upgrade intercept"
        )
    return current


def _migrate(connection: sqlite3.Connection) -> None:
    """Apply the migrations due, under the write lock; the version is read again under it, since
    another process may have migrated since the plain read."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        for version in range(_schema_version(connection) + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
