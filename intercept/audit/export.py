"""The events of a time window for a compliance review or a SIEM: as JSON lines, or as CSV.

A window is `[since, until)`: an event at exactly `since` is in it, one at exactly `until` is not,
so consecutive windows (`--since 7d --until 1d`, then `--since 1d`) share no event. Times are
RFC 3339 with an offset (`2026-11-30T12:00:00Z`), a date (`2026-11-30`, midnight UTC) or a
duration back from now (`24h`, `7d`). An event whose `ts` cannot be read is in no window (the
command counts them on stderr).

JSON lines are the events as the log holds them (every field, unknown ones included), one object
per line, oldest first, with control and bidirectional characters written as `\\uNNNN` (the same
JSON values). CSV has a fixed set of columns (CSV_COLUMNS); fields that are lists or objects are
compact JSON, and a cell an agent could have chosen that starts with `=`, `+`, `-`, `@`, TAB or CR
gets a leading apostrophe, so a spreadsheet shows it as text instead of running it as a formula.

The CSV's `policy_digest` is the event's own `policy_digest` (or `policy_revision`) when it has
one, else the policy its proxy instance had last loaded by then (its `startup` and successful
`config_reload` events, read from the whole log, not only the window), else, for an event about an
approval (a decision made with the CLI, say), the policy the request was made under.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any, NamedTuple

from intercept.approvals.highlight import safe_json
from intercept.audit.chain import CHECKPOINT
from intercept.durations import parse_duration_s
from intercept.safe_text import escape_unsafe

CSV_COLUMNS = (
    "ts",
    "type",
    "severity",
    "seq",
    "instance",
    "server",
    "tool",
    "agent",
    "client",
    "approval_id",
    "result",
    "rule",
    "decision",
    "actor",
    "channel",
    "votes",
    "reason",
    "status",
    "on_timeout",
    "args_hash",
    "policy_digest",
)
# What a spreadsheet may read as the start of a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_POLICY_FIELDS = ("policy_digest", "policy_revision")
_REQUEST_EVENTS = frozenset({"approval_requested", "approval_reused"})


class Window(NamedTuple):
    """`[since, until)`, as aware UTC datetimes."""

    since: datetime
    until: datetime

    def holds(self, moment: datetime) -> bool:
        return self.since <= moment < self.until


def parse_moment(text: str, now: datetime) -> datetime:
    """A point in time: a duration back from `now`, an RFC 3339 time with an offset, or a date
    (midnight UTC). Raises ValueError saying what is accepted."""
    try:
        return now - timedelta(seconds=parse_duration_s(text))
    except ValueError:
        pass
    spec = text.strip()
    if _DATE.fullmatch(spec):
        spec += "T00:00:00+00:00"
    try:
        moment = datetime.fromisoformat(spec.upper())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        why = "has no offset (add Z for UTC)" if moment is not None else "is not a time"
        raise ValueError(
            f"{text!r} {why}: use an RFC 3339 time (2026-11-30T12:00:00Z), a date (2026-11-30) "
            "or a duration back from now (24h, 7d)"
        )
    return moment.astimezone(UTC)


def event_time(event: dict[str, Any]) -> datetime | None:
    """The event's `ts` as an aware datetime, or None if it is missing or unreadable."""
    stamp = event.get("ts")
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp.upper())
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else None


CHAIN_RECORDS = frozenset({CHECKPOINT})


class Selection(NamedTuple):
    """The events of a window, oldest first, each with the policy digest it happened under ("" if
    none is known), and how many events had no readable time."""

    events: list[tuple[dict[str, Any], str]]
    unreadable: int


def select_events(events: Iterable[dict[str, Any]], window: Window) -> Selection:
    """The events in `window` (from all `events`, oldest first, as `read_events` gives them),
    without the log's checkpoints (`audit verify` checks those)."""
    loaded: dict[str, str] = {}  # instance -> the digest of the policy it last loaded
    requested_under: dict[str, str] = {}  # approval id -> the policy its request was made under
    chosen: list[tuple[dict[str, Any], str]] = []
    unreadable = 0
    for event in events:
        if event.get("type") in CHAIN_RECORDS:  # the log's own seals, not something that happened
            continue
        instance = str(event.get("instance", ""))
        own = next((str(event[key]) for key in _POLICY_FIELDS if isinstance(event.get(key), str)), "")
        if own and (event.get("type") == "startup" or _reloaded(event)):
            loaded[instance] = own
        approval_id = event.get("approval_id")
        policy = own or loaded.get(instance, "")
        if isinstance(approval_id, str):
            if event.get("type") in _REQUEST_EVENTS and policy:
                requested_under.setdefault(approval_id, policy)
            policy = policy or requested_under.get(approval_id, "")
        moment = event_time(event)
        if moment is None:
            unreadable += 1
        elif window.holds(moment):
            chosen.append((event, policy))
    return Selection(chosen, unreadable)


def _reloaded(event: dict[str, Any]) -> bool:
    return event.get("type") == "config_reload" and event.get("status") == "success"


def jsonl_lines(selection: Selection) -> Iterator[str]:
    """Each event as one line of JSON (its fields as logged), with its newline."""
    for event, _ in selection.events:
        yield safe_json(event) + "\n"


def csv_cell(value: Any) -> str:
    """One CSV cell: text as it is, other values as JSON, nothing for a missing field; text that a
    spreadsheet could take for a formula starts with an apostrophe; control and bidirectional
    characters (an agent-chosen name could reorder what a reviewer reads) written as escapes."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if text.startswith(FORMULA_STARTS):  # (a negative number too: harmless, but one rule)
        text = "'" + text
    return escape_unsafe(text)  # control and bidirectional characters shown as escapes, as JSONL writes them


def csv_row(event: dict[str, Any], policy_digest: str) -> list[str]:
    return [csv_cell(policy_digest or None) if column == "policy_digest" else csv_cell(event.get(column))
            for column in CSV_COLUMNS]  # fmt: skip


def write_csv(selection: Selection, stream: IO[str]) -> None:
    """The header row, then one row per event (RFC 4180: CRLF line ends, quotes where needed)."""
    writer = csv.writer(stream, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for event, policy in selection.events:
        writer.writerow(csv_row(event, policy))
