"""UTC timestamps as fixed-width RFC 3339 text, so that SQLite compares them as strings."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(epoch_s: float) -> str:
    """`2026-11-21T20:35:18.123456Z` for an epoch time."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> float:
    """Epoch seconds of a timestamp written by `rfc3339`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def brief(text: str | None) -> str:
    """Second precision for tables: `2026-11-21 20:35:18Z`."""
    return "" if not text else text[:10] + " " + text[11:19] + "Z"
