"""Stateful counters in SQLite: calendar-aligned UTC windows, reserve / give back.

Reservations re-check each limit inside one IMMEDIATE transaction, so two proxies sharing the
database can never both take the last unit of a budget (the values the engine's conditions see
are read just before, outside it).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from intercept.store.database import StoreUnavailable, begin_immediate

WINDOW_S = {"minute": 60, "hour": 3600, "day": 86400}


def window_start(window: str, now_s: float) -> int:
    """Start of the UTC minute/hour/day containing `now_s` (epoch seconds are UTC-aligned)."""
    size = WINDOW_S[window]
    return int(now_s // size) * size


def counter_key(prefix: str, scope: str, counter: str, window: str) -> str:
    """`<prefix><scope>.<counter>@<window>`: the window is part of the key so a reload that changes
    a rule's window starts a separate series instead of misreading the old one."""
    return f"{prefix}{scope}.{counter}@{window}"


@dataclass(frozen=True, slots=True)
class Reservation:
    """An increment taken for one call, to give back if the call provably never started."""

    key: str
    window_start: int
    amount: int


class CounterStore:
    """Counter rows `(key, window_start) -> value` over one autocommit connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def begin(self) -> None:
        try:
            begin_immediate(self.connection)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state store unavailable: {exc}") from None

    def commit(self) -> None:
        try:
            self.connection.execute("COMMIT")
        except sqlite3.Error as exc:
            self.abort()
            raise StoreUnavailable(f"state store unavailable: {exc}") from None

    def abort(self) -> None:
        try:
            self.connection.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def value(self, key: str, start: int) -> int:
        try:
            row = self.connection.execute(
                "SELECT value FROM counters WHERE key = ? AND window_start = ?", (key, start)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state store unavailable: {exc}") from None
        return int(row[0]) if row else 0

    def add(self, key: str, start: int, amount: int) -> None:
        try:
            self.connection.execute(
                "INSERT INTO counters (key, window_start, value) VALUES (?, ?, ?) "
                "ON CONFLICT (key, window_start) DO UPDATE SET value = value + excluded.value",
                (key, start, amount),
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state store unavailable: {exc}") from None

    def give_back(self, reservations: list[Reservation]) -> None:
        """Undo increments (a window that has since ended keeps its history unchanged otherwise)."""
        self.begin()
        try:
            for r in reservations:
                self.connection.execute(
                    "UPDATE counters SET value = MAX(0, value - ?) WHERE key = ? AND window_start = ?",
                    (r.amount, r.key, r.window_start),
                )
        except sqlite3.Error as exc:
            self.abort()
            raise StoreUnavailable(f"state store unavailable: {exc}") from None
        self.commit()

    def current(self, now_s: float, prefix: str = "") -> dict[str, int]:
        """Every counter's value in its current window (for heartbeats and status)."""
        found: dict[str, int] = {}
        try:
            rows = self.connection.execute(
                "SELECT key, window_start, value FROM counters WHERE key LIKE ? ESCAPE '\\'",
                (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state store unavailable: {exc}") from None
        for key, start, value in rows:
            window = key.rsplit("@", 1)[-1]
            if window in WINDOW_S and start == window_start(window, now_s):
                found[key.rsplit("@", 1)[0]] = int(value)
        return found
