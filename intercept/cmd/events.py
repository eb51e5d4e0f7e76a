"""`intercept events tail`: print the event log readably, optionally following it.

Event fields such as tool names and reasons were chosen by agents and people. The readable form
escapes control and bidirectional characters (`escape_unsafe`) and quotes a value (as a JSON
string) when it holds whitespace, `=` or `"`, so one field cannot pass for several; `--json` prints
each event as one JSON line with those characters written as `\\uNNNN` (`safe_json`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from intercept.approvals.highlight import safe_json
from intercept.audit.events import follow_events, read_events
from intercept.cmd.options import default_state_dir, state_dir_option
from intercept.safe_text import escape_unsafe
from intercept.store.timestamps import brief

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


def _value(value: Any) -> str:
    """One field's value on one line: escaped, and quoted when it could read as several fields."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return safe_json(text) if _NEEDS_QUOTES.search(text) else escape_unsafe(text)


def format_event(event: dict[str, Any]) -> str:
    """One readable line: time, type, then `key=value` for the fields people look for."""
    details = " ".join(f"{key}={_value(event[key])}" for key in _DETAIL_KEYS if event.get(key) not in (None, ""))
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
def tail_command(state_dir: Path | None, count: int, follow: bool, as_json: bool) -> None:
    """Print the most recent events from every proxy sharing the state dir."""
    directory = (state_dir or default_state_dir()).expanduser()
    render: Callable[[dict[str, Any]], str] = safe_json if as_json else format_event
    for event in read_events(directory)[-count:] if count else []:
        click.echo(render(event))
    if follow:
        for event in follow_events(directory):
            click.echo(render(event))
