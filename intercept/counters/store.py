"""Counter rows in SQLite, `(key, window_start) -> value`, and the atomic check-and-take.

`CounterStore.transaction()` opens one IMMEDIATE write transaction (the same helper as the
approval store's) and yields a `CounterTransaction`: `reserve` checks every limit of one call
and takes all of its increments or none (Intercept's `StateStore.Reserve`). Several calls may be
reserved in one transaction (group commit): each sees what the earlier ones took, reads are
cached, and the sums are written once per row when the transaction commits. So two proxies
sharing the database can never both take the last unit of a budget.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from intercept.counters.rules import WINDOW_S, Counted, window_start
from intercept.store.database import StoreUnavailable, write_statement, write_transaction

STORE = "state store"
# One counter row takes `amount` if it stays within `limit`, in one statement: a row not there yet
# is made with `amount` (if that is within the limit), an existing one is added to (if it holds an
# integer, as only we write, and the sum is within the limit).
TAKE_WITHIN_LIMIT = (
    "INSERT INTO counters (key, window_start, value) SELECT ?, ?, ? WHERE ? <= ? "
    "ON CONFLICT (key, window_start) DO UPDATE SET value = value + excluded.value "
    "WHERE typeof(value) = 'integer' AND value + excluded.value <= ?"
)  # (plain `?`: numbered ones bound from a sequence are deprecated since Python 3.13)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what SQLite's INTEGER holds


@dataclass(frozen=True, slots=True)
class Reservation:
    """An increment taken for one call, to give back if the call provably never started."""

    key: str
    window_start: int
    amount: int


class CounterTransaction:
    """The counters as one open write transaction sees them (see `CounterStore.transaction`)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._values: dict[tuple[str, int], int] = {}  # read once, then kept up to date
        self._taken: dict[tuple[str, int], int] = {}  # written at commit

    def value(self, key: str, start: int) -> int:
        """The counter's value now, including what this transaction has taken."""
        slot = (key, start)
        found = self._values.get(slot)
        if found is None:
            found = self._values[slot] = read_value(self._connection, key, start)
        return found

    def reserve(self, counted: Sequence[Counted]) -> Counted | None:
        """Take every increment of one call if each counter stays within its limit, else take
        nothing and return the first counter that would pass it. (Held under the write lock:
        the usual call, with one counter, takes the short way.)"""
        if len(counted) == 1:
            item = counted[0]
            slot = (item.key, item.window_start)
            after = self.value(*slot) + item.amount
            if item.limit is not None and after > item.limit:
                return item
            self._values[slot] = after
            self._taken[slot] = self._taken.get(slot, 0) + item.amount
            return None
        mine: dict[tuple[str, int], int] = {}
        for item in counted:
            slot = (item.key, item.window_start)
            after = self.value(*slot) + mine.get(slot, 0) + item.amount
            if item.limit is not None and after > item.limit:
                return item
            mine[slot] = mine.get(slot, 0) + item.amount
        for slot, amount in mine.items():
            self._values[slot] += amount
            self._taken[slot] = self._taken.get(slot, 0) + amount
        return None

    def _write(self) -> None:
        try:
            self._connection.executemany(
                "INSERT INTO counters (key, window_start, value) VALUES (?, ?, ?) "
                "ON CONFLICT (key, window_start) DO UPDATE SET value = value + excluded.value",
                [(key, start, amount) for (key, start), amount in self._taken.items()],
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{STORE} unavailable: {exc}") from None


def fits_sqlite(amount: int, limit: int | None) -> bool:
    """Whether `take_within_limit` can be given these: both within SQLite's 64-bit integers
    (a limit or sum beyond them is compared in Python by `transaction`)."""
    return amount <= INT64_MAX and (limit is None or INT64_MIN <= limit <= INT64_MAX)


def read_value(connection: sqlite3.Connection, key: str, start: int) -> int:
    """One counter's value (0 if it has no row); raises StoreUnavailable."""
    try:
        row = connection.execute("SELECT value FROM counters WHERE key = ? AND window_start = ?", (key, start)).fetchone()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{STORE} unavailable: {exc}") from None
    return int(row[0]) if row else 0


class CounterStore:
    """Counter rows over one autocommit connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def value(self, key: str, start: int) -> int:
        """One counter's value, read outside any transaction (for status and tests)."""
        return read_value(self.connection, key, start)

    @contextmanager
    def transaction(self) -> Iterator[CounterTransaction]:
        """One write transaction; what `reserve` took is written when the block ends without an
        error. Any SQLite failure becomes StoreUnavailable (callers fail closed)."""
        with write_transaction(self.connection, STORE):
            counters = CounterTransaction(self.connection)
            yield counters
            counters._write()

    def take_within_limit(self, key: str, start: int, amount: int, limit: int | None) -> bool:
        """Add `amount` to one counter if it stays within `limit` (None: no limit), in one
        statement that is its own write transaction (`write_statement`); False when it would
        pass the limit or the row holds no integer; then nothing was taken (callers fall back to
        `transaction`, which reads the row as it is). `amount` and `limit` must be SQLite
        integers (`fits_sqlite`)."""
        bound = INT64_MAX if limit is None else limit
        parameters = (key, start, amount, amount, bound, bound)
        return write_statement(self.connection, STORE, TAKE_WITHIN_LIMIT, parameters) == 1

    def give_back(self, reservations: Sequence[Reservation]) -> None:
        """Undo increments (a window that has since ended keeps its history unchanged otherwise)."""
        with write_transaction(self.connection, STORE):
            self.connection.executemany(
                "UPDATE counters SET value = MAX(0, value - ?) WHERE key = ? AND window_start = ?",
                [(r.amount, r.key, r.window_start) for r in reservations],
            )

    def current(self, now_s: float, prefix: str = "") -> dict[str, int]:
        """Every counter's value in its current window (for heartbeats and status)."""
        found: dict[str, int] = {}
        try:
            rows = self.connection.execute(
                "SELECT key, window_start, value FROM counters WHERE key LIKE ? ESCAPE '\\'",
                (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{STORE} unavailable: {exc}") from None
        for key, start, value in rows:
            window = key.rsplit("@", 1)[-1]
            if window in WINDOW_S and start == window_start(window, now_s):
                found[key.rsplit("@", 1)[0]] = int(value)
        return found
