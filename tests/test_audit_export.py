"""The export's pure layer on real event files: times read as documented, the window's bounds,
JSON lines and CSV that parse back to the events, agent-chosen cells that cannot become formulas,
and the policy each event happened under."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from intercept.audit.events import EventLog, events_dir, read_events
from intercept.audit.export import (
    CSV_COLUMNS,
    FORMULA_STARTS,
    Window,
    csv_cell,
    jsonl_lines,
    parse_moment,
    select_events,
    write_csv,
)
from intercept.safe_text import UNSAFE_CHARS, escape_unsafe

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)

# (what is written, the moment it means)
MOMENTS = [
    ("24h", NOW - timedelta(hours=24)),
    ("7d", NOW - timedelta(days=7)),
    ("1h30m", NOW - timedelta(minutes=90)),
    ("2026-11-30T10:00:00Z", datetime(2026, 11, 30, 10, tzinfo=UTC)),
    ("2026-11-30t10:00:00z", datetime(2026, 11, 30, 10, tzinfo=UTC)),
    ("2026-11-30T12:00:00+02:00", datetime(2026, 11, 30, 10, tzinfo=UTC)),
    ("2026-11-30T10:00:00.250000Z", datetime(2026, 11, 30, 10, 0, 0, 250000, tzinfo=UTC)),
    ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),
]


@pytest.mark.parametrize(("text", "moment"), MOMENTS, ids=[m[0] for m in MOMENTS])
def test_times_and_durations(text: str, moment: datetime) -> None:
    assert parse_moment(text, NOW) == moment


# (what is written, part of the error)
BAD_MOMENTS = [
    ("yesterday", "is not a time"),
    ("", "is not a time"),
    ("0s", "is not a time"),
    ("-1h", "is not a time"),
    ("2026-13-01", "is not a time"),
    ("2026-11-30T10:00:00", "has no offset (add Z for UTC)"),
    ("1700000000", "is not a time"),
]


@pytest.mark.parametrize(("text", "error"), BAD_MOMENTS, ids=[m[0] or "empty" for m in BAD_MOMENTS])
def test_what_is_not_a_time_is_an_error_saying_what_is(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)) as caught:
        parse_moment(text, NOW)
    assert "RFC 3339" in str(caught.value) and "\n" not in str(caught.value)


# (a value as an event holds it, its cell)
CELLS = [
    ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
    ("+1+1", "'+1+1"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\\x09=1"),  # neutralised, and the control character shown as an escape
    ("\r=1", "'\\x0d=1"),
    ("rm\u202efdp.txt", "rm\\u202efdp.txt"),  # a right-to-left override cannot reorder the cell
    ("a=b", "a=b"),
    ("'quoted", "'quoted"),
    ("", ""),
    (None, ""),
    (True, "true"),
    (3, "3"),
    (-3, "'-3"),
    (["=x", 1], '["=x",1]'),
    ({"a": "é"}, '{"a":"é"}'),
]


@pytest.mark.parametrize(("value", "cell"), CELLS, ids=[repr(c[0]) for c in CELLS])
def test_cells_a_spreadsheet_would_run_start_with_an_apostrophe(value: Any, cell: str) -> None:
    assert csv_cell(value) == cell


def write_events(state_dir: Path, name: str, events: list[dict[str, Any]]) -> None:
    directory = events_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.jsonl", "a") as file:
        for event in events:
            file.write(json.dumps(event) + "\n")


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_window_includes_since_and_excludes_until(tmp_path: Path) -> None:
    since, until = NOW - timedelta(hours=1), NOW
    tick = timedelta(microseconds=1)
    moments = {
        "before": since - tick,
        "at since": since,
        "inside": since + tick,
        "last": until - tick,
        "at until": until,
    }
    write_events(tmp_path, "p", [{"ts": stamp(m), "type": label, "instance": "p"} for label, m in moments.items()])
    chosen = select_events(read_events(tmp_path), Window(since, until))
    assert [event["type"] for event, _ in chosen.events] == ["at since", "inside", "last"]
    # Consecutive windows share no event and miss none.
    earlier = select_events(read_events(tmp_path), Window(since - timedelta(hours=1), since))
    assert [event["type"] for event, _ in earlier.events] == ["before"]


def test_events_without_a_readable_time_are_counted_and_left_out(tmp_path: Path) -> None:
    write_events(
        tmp_path,
        "p",
        [
            {"ts": stamp(NOW - timedelta(minutes=1)), "type": "kept"},
            {"ts": "yesterday", "type": "garbled"},
            {"ts": 1700000000, "type": "number"},
            {"ts": "2026-11-30T11:59:00", "type": "no offset"},
            {"type": "no ts"},
        ],
    )
    chosen = select_events(read_events(tmp_path), Window(NOW - timedelta(days=1), NOW))
    assert [event["type"] for event, _ in chosen.events] == ["kept"]
    assert chosen.unreadable == 4


HOSTILE_TOOL = "=cmd|' /C calc'!A0\u202e\n@x"


def logged_session(state_dir: Path) -> None:
    """What a proxy and an approver write, through the real EventLog, with fields it does not know."""
    log = EventLog(state_dir, "proxy-1")
    log.emit(
        "startup",
        server="srv",
        pid=1,
        upstream=["x"],
        config="p.yaml",
        policy_digest="d1",
        severity="info",
    )
    log.tool_call("srv", HOSTILE_TOOL, "allowed", {"a": 1}, agent="=agent", client="-client")
    log.tool_call("srv", "write", "approval_required", {"b": 2}, "needs a human", approval_id="apr_1")
    log.emit(
        "approval_requested", approval_id="apr_1", tool="write", server="srv", rule="needs a human", args_hash="h1"
    )
    log.emit("config_reload", status="failure", errors=["bad"])
    log.emit("config_reload", status="success", policy_digest="d2", future={"nested": ["kept", 1]})
    log.tool_call("srv", "write", "allowed", {"b": 2})
    log.close()
    approver = EventLog(state_dir, "approvals-cli")
    approver.emit(
        "approval_decided", approval_id="apr_1", tool="write", server="srv", decision="approved", actor="+alice",
        channel="cli", reason="@ok", votes=[{"actor": "bob"}],
    )  # fmt: skip
    approver.emit("approval_consumed", approval_id="apr_1", policy_revision="d9")
    approver.close()


def everything(state_dir: Path) -> Window:
    return Window(datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC) + timedelta(minutes=5))


def test_jsonl_parses_back_to_the_events_of_the_window_in_order(tmp_path: Path) -> None:
    logged_session(tmp_path)
    events = [e for e in read_events(tmp_path) if e["type"] != "chain_checkpoint"]  # not exported
    lines = list(jsonl_lines(select_events(events, everything(tmp_path))))
    assert [json.loads(line) for line in lines] == events  # every field, unknown ones included
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    assert not any(UNSAFE_CHARS.search(line.rstrip("\n")) for line in lines)  # \u202e and \n written escaped
    assert {"future": {"nested": ["kept", 1]}}.items() <= json.loads(lines[5]).items()


def test_csv_parses_back_to_its_columns_and_no_cell_is_a_formula(tmp_path: Path) -> None:
    logged_session(tmp_path)
    events = [e for e in read_events(tmp_path) if e["type"] != "chain_checkpoint"]  # not exported
    out = io.StringIO(newline="")
    write_csv(select_events(events, everything(tmp_path)), out)
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) == len(events) + 1
    for row, event in zip(rows[1:], events, strict=True):
        for column, cell in zip(CSV_COLUMNS, row, strict=True):
            if column == "policy_digest":
                continue
            value = event.get(column)
            assert cell == csv_cell(value), column  # the csv module gives back each cell as written
            assert not cell.startswith(FORMULA_STARTS), column
            if isinstance(value, str):
                assert cell == escape_unsafe("'" + value if value.startswith(FORMULA_STARTS) else value), column
            elif value is not None:
                assert json.loads(cell.removeprefix("'")) == value, column
            else:
                assert cell == "", column
    hostile = rows[2]
    assert hostile[CSV_COLUMNS.index("tool")] == escape_unsafe("'" + HOSTILE_TOOL)
    assert hostile[CSV_COLUMNS.index("agent")] == "'=agent" and hostile[CSV_COLUMNS.index("client")] == "'-client"
    decided = rows[8]
    assert decided[CSV_COLUMNS.index("actor")] == "'+alice" and decided[CSV_COLUMNS.index("reason")] == "'@ok"
    assert json.loads(decided[CSV_COLUMNS.index("votes")]) == [{"actor": "bob"}]


def test_each_event_is_given_the_policy_it_happened_under(tmp_path: Path) -> None:
    logged_session(tmp_path)
    write_events(tmp_path, "proxy-2", [{"ts": stamp(datetime.now(UTC)), "type": "tool_call", "instance": "proxy-2"}])
    chosen = select_events(read_events(tmp_path), everything(tmp_path))
    policies = [(event["type"], event.get("status"), policy) for event, policy in chosen.events]
    assert policies == [
        ("startup", None, "d1"),
        ("tool_call", None, "d1"),
        ("tool_call", None, "d1"),
        ("approval_requested", None, "d1"),
        ("config_reload", "failure", "d1"),  # a rejected reload leaves the policy in force
        ("config_reload", "success", "d2"),
        ("tool_call", None, "d2"),
        ("approval_decided", None, "d1"),  # the CLI's decision: the policy the request was made under
        ("approval_consumed", None, "d9"),  # an event's own digest wins
        ("tool_call", None, ""),  # an instance whose startup is not in the log: unknown, not guessed
    ]


def test_the_policy_in_force_is_read_from_before_the_window(tmp_path: Path) -> None:
    old, recent = NOW - timedelta(days=3), NOW - timedelta(minutes=1)
    write_events(
        tmp_path,
        "p",
        [
            {"ts": stamp(old), "type": "startup", "instance": "p", "policy_digest": "d-old"},
            {"ts": stamp(recent), "type": "tool_call", "instance": "p", "tool": "t"},
        ],
    )
    chosen = select_events(read_events(tmp_path), Window(NOW - timedelta(hours=1), NOW))
    assert [(event["type"], policy) for event, policy in chosen.events] == [("tool_call", "d-old")]
