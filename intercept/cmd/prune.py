"""`intercept prune`: apply the retention now (the proxies also do it at start and hourly)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from intercept.cmd.options import DURATION, existing_state_dir, fail, state_dir_option

CLI_INSTANCE = "prune-cli"


@click.command("prune")
@state_dir_option
@click.option(
    "--retention",
    type=DURATION,
    default=None,
    metavar="DURATION",
    help="Keep what is younger than this (default 90d); a running proxy's longer retention wins.",
)
def prune_command(state_dir: Path | None, retention: float | None) -> None:
    """Delete denied, consumed and expired approvals, stopped instances and event files older than
    the retention. Pending and approved approvals are never deleted. What went is recorded as an
    event."""
    from intercept.audit.events import EventLog
    from intercept.retention import DEFAULT_RETENTION_S, prune_state_dir, record_pruning
    from intercept.store.database import StoreUnavailable

    directory = existing_state_dir(state_dir)
    try:
        pruned = prune_state_dir(directory, retention or DEFAULT_RETENTION_S, time.time())
    except StoreUnavailable as exc:
        fail(f"nothing pruned: {exc}")
        return
    events = EventLog(directory, CLI_INSTANCE)
    record_pruning(events, pruned)
    events.close()
    days = pruned.retention_s / 86400
    click.echo(
        f"Pruned {pruned.approvals} approvals, {pruned.instances} stopped instances and {pruned.event_files} event "
        f"files ({pruned.event_bytes} bytes) older than {days:g} days."
    )
