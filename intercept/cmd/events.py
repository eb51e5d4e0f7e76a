"""`intercept events tail`: print the event log readably, optionally following it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from intercept.audit.events import follow_events, read_events
from intercept.cmd.options import default_state_dir, state_dir_option
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


def format_event(event: dict[str, Any]) -> str:
    details = " ".join(f"{key}={event[key]}" for key in _DETAIL_KEYS if event.get(key) not in (None, ""))
    return f"{brief(str(event.get('ts', '')))}  {event.get('type', '?'):<22} {details}"


@click.group("events")
def events_group() -> None:
    """Read the event log."""


@events_group.command("tail")
@state_dir_option
@click.option(
    "-n", "--lines", "count", type=click.IntRange(min=0), default=20, show_default=True, help="How many recent events."
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they arrive (Ctrl-C to stop).")
@click.option("--json", "as_json", is_flag=True, help="Raw JSON lines.")
def tail_command(state_dir: Path | None, count: int, follow: bool, as_json: bool) -> None:
    """Print the most recent events from every proxy sharing the state dir."""
    directory = (state_dir or default_state_dir()).expanduser()
    render = (lambda e: json.dumps(e, ensure_ascii=False)) if as_json else format_event
    for event in read_events(directory)[-count:] if count else []:
        click.echo(render(event))
    if follow:
        for event in follow_events(directory):
            click.echo(render(event))
