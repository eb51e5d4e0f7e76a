"""UTC timestamps: fixed-width RFC 3339 text for storage (SQLite compares them as strings), and one
format for people: UTC to the second, with a relative "3m ago" / "in 59m" where it helps. Full
precision appears only in `--json` output."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime


def rfc3339(epoch_s: float) -> str:
    """`2026-11-21T20:35:18.123456Z` for an epoch time."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@functools.lru_cache(maxsize=1024)
def parse_rfc3339(text: str) -> float:
    """Epoch seconds of a timestamp written by `rfc3339` (raises ValueError for other text). The
    exact form `rfc3339` writes is read by the C parser, anything else as before by strptime (ten
    times slower); cached, since one check reads the same few stamps several times."""
    if _RFC3339.fullmatch(text):
        return datetime.fromisoformat(text[:-1] + "+00:00").timestamp()
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def brief(text: str | None) -> str:
    """Second precision for tables: `2026-11-21 20:35:18Z`."""
    return "" if not text else text[:10] + " " + text[11:19] + "Z"


def relative(text: str | None, now_s: float) -> str:
    """`3m ago`, `in 59m`, `just now` for a stored timestamp ("" if none)."""
    try:
        delta = parse_rfc3339(text) - now_s if text else None
    except ValueError:  # not written by `rfc3339` (an event file edited by hand)
        delta = None
    if delta is None:
        return ""
    seconds = int(abs(delta))
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            amount = f"{seconds // size}{unit}"
            break
    return f"in {amount}" if delta > 0 else f"{amount} ago"


def when(text: str | None, now_s: float) -> str:
    """`2026-11-21 20:35:18Z (3m ago)`: the format for people ("-" if none)."""
    if not text:
        return "-"
    ago = relative(text, now_s)
    return f"{brief(text)} ({ago})" if ago else text  # not ours (an edited file): shown as it is
