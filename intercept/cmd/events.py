"""`intercept events tail`: print the event log readably, optionally following it.

Event fields such as tool names and reasons were chosen by agents and people. The readable form
escapes control and bidirectional characters (`escape_unsafe`) and quotes a value (as a JSON
string) when it holds whitespace, `=` or `"`, so one field cannot pass for several; `--json` prints
each event as one JSON line with those characters written as `\\uNNNN` (`safe_json`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from intercept.approvals.highlight import safe_json
from intercept.audit.chain import CHECKPOINT
from intercept.audit.events import follow_events, read_events
from intercept.cmd.options import existing_state_dir, fail, state_dir_option
from intercept.safe_text import escape_unsafe
from intercept.store.timestamps import brief, rfc3339

_DETAIL_KEYS = (
    "server",
    "tool",
    "result",
    "rule",
    "approval_id",
    "decision",
    "actor",
    "reason",
    "status",
    "exit_status",
)
_NEEDS_QUOTES = re.compile(r'[\s="]')
_UNLESS_ASKED = frozenset({CHECKPOINT})  # signatures for `audit verify`, shown with --type only


def _value(value: Any) -> str:
    """One field's value on one line: escaped, and quoted when it could read as several fields."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return safe_json(text) if _NEEDS_QUOTES.search(text) else escape_unsafe(text)


def format_event(event: dict[str, Any]) -> str:
    """One readable line: time, type, then `key=value` for the fields people look for (`severity`
    first when it is above info)."""
    details = " ".join(f"{key}={_value(event[key])}" for key in _DETAIL_KEYS if event.get(key) not in (None, ""))
    if event.get("severity") not in (None, "", "info"):  # warnings and worse stand out; info is the norm
        details = f"severity={_value(event['severity'])} {details}".rstrip()
    kind = escape_unsafe(str(event.get("type", "?")))
    return f"{escape_unsafe(brief(str(event.get('ts', ''))))}  {kind:<22} {details}"


@click.group("events")
def events_group() -> None:
    """Read the event log."""


@events_group.command("tail")
@state_dir_option
@click.option(
    "-n", "--lines", "count", type=click.IntRange(min=0), default=20, show_default=True, help="How many recent events."
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they arrive (Ctrl-C to stop).")
@click.option("--json", "as_json", is_flag=True, help="Raw JSON lines (control and bidi characters as \\uNNNN).")
@click.option("--since", help="Only events from then on: a duration back from now (10m, 2h, 1d) or a UTC timestamp.")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable), e.g. tool_call.")
@click.option("--tool", "tools", multiple=True, help="Only events about this tool (repeatable).")
@click.option("--server", "servers", multiple=True, help="Only events of this server (repeatable).")
def tail_command(
    state_dir: Path | None,
    count: int,
    follow: bool,
    as_json: bool,
    since: str | None,
    types: tuple[str, ...],
    tools: tuple[str, ...],
    servers: tuple[str, ...],
) -> None:
    """Print the most recent events from every proxy sharing the state dir."""
    directory = existing_state_dir(state_dir)
    render: Callable[[dict[str, Any]], str] = safe_json if as_json else format_event
    wanted = _event_filter(since, types, tools, servers)
    try:
        for event in [e for e in read_events(directory) if wanted(e)][-count:] if count else []:
            click.echo(render(event))
        if follow:
            for event in follow_events(directory):
                if wanted(event):
                    click.echo(render(event))
    except BrokenPipeError:  # `events tail | head -1`: the reader is gone, which is not an error
        _quiet_broken_pipe()


def _event_filter(
    since: str | None, types: tuple[str, ...], tools: tuple[str, ...], servers: tuple[str, ...]
) -> Callable[[dict[str, Any]], bool]:
    """A predicate for the events the options ask for; fails on a --since it cannot read."""
    since_stamp = _since_stamp(since) if since else ""

    def wanted(event: dict[str, Any]) -> bool:
        return (
            (not since_stamp or str(event.get("ts", "")) >= since_stamp)
            and (event.get("type") in types if types else event.get("type") not in _UNLESS_ASKED)
            and (not tools or event.get("tool") in tools)
            and (not servers or event.get("server") in servers)
        )

    return wanted


def _since_stamp(since: str) -> str:
    """The RFC 3339 text to compare event times with, for a duration back from now or a time."""
    from intercept.durations import parse_duration_s

    try:
        return rfc3339(time.time() - parse_duration_s(since))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since {since!r} is neither a duration (10m, 2h, 1d) nor a timestamp (2026-11-30T12:00:00Z)")
        raise
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return rfc3339(moment.timestamp())


def _quiet_broken_pipe() -> None:
    """Exit 0 without Python's "Exception ignored ... BrokenPipeError" when stdout is closed."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(0)
