"""`intercept approvals`: list, show, approve, deny and expire approval requests."""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click

from intercept.approvals.redact import preview
from intercept.audit.events import EventLog
from intercept.cmd.options import default_state_dir, fail, state_dir_option
from intercept.store.approvals import STATUSES, ApprovalRecord, ApprovalStore, DecisionRefused
from intercept.store.database import StoreUnavailable, connect, database_path
from intercept.store.timestamps import brief, parse_rfc3339

CLI_EVENTS_INSTANCE = "approvals-cli"


@contextmanager
def _open_store(state_dir: Path | None) -> Iterator[tuple[ApprovalStore, Path]]:
    """The store, with stale records already expired (expiry is applied lazily, on access)."""
    directory = (state_dir or default_state_dir()).expanduser()
    if not database_path(directory).exists():
        fail(f"no approval database at {database_path(directory)} (wrong --state-dir?)")
    try:
        connection = connect(directory)
        store = ApprovalStore(connection)
        with store.transaction():
            expired = store.expire_stale(time.time())
    except StoreUnavailable as exc:
        fail(str(exc))
        raise
    if expired:
        events = EventLog(directory, CLI_EVENTS_INSTANCE)
        for approval_id in expired:
            events.emit("approval_expired", approval_id=approval_id)
    try:
        yield store, directory
    finally:
        connection.close()


def _age(created_at: str, now_s: float) -> str:
    seconds = max(0, int(now_s - parse_rfc3339(created_at)))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _record_json(record: ApprovalRecord) -> dict[str, object]:
    data = asdict(record)
    data["arguments"] = json.loads(data.pop("args_redacted"))
    return data


@click.group("approvals")
def approvals_group() -> None:
    """Review and decide calls that policy holds for a human."""


@approvals_group.command("list")
@state_dir_option
@click.option("--all", "show_all", is_flag=True, help="Every record, not only pending ones.")
@click.option("--status", type=click.Choice(STATUSES), multiple=True, help="Only these statuses (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_command(state_dir: Path | None, show_all: bool, status: tuple[str, ...], as_json: bool) -> None:
    """List approval requests (pending ones unless --all or --status)."""
    statuses = status or (None if show_all else ("pending",))
    now_s = time.time()
    with _open_store(state_dir) as (store, _):
        records = store.list(statuses)
    if as_json:
        click.echo(json.dumps([_record_json(r) for r in records], indent=2, ensure_ascii=False))
        return
    if not records:
        click.echo("No approval requests." if show_all or status else "No pending approval requests.")
        return
    header = ("ID", "AGE", "SERVER", "TOOL", "RULE", "STATUS", "EXPIRES", "ARGUMENTS")
    rows = [
        (
            r.id,
            _age(r.created_at, now_s),
            r.server,
            r.tool,
            r.rule,
            r.status,
            brief(r.expires_at),
            preview(json.loads(r.args_redacted)),
        )
        for r in records
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@approvals_group.command("show")
@click.argument("approval_id")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="The record and its history as JSON.")
def show_command(approval_id: str, state_dir: Path | None, as_json: bool) -> None:
    """Show one approval request: redacted arguments and its history."""
    with _open_store(state_dir) as (store, _):
        record = store.get(approval_id)
        if record is None:
            fail(f"no approval with id {approval_id}")
            return
        history = store.history(approval_id)
    if as_json:
        click.echo(
            json.dumps({**_record_json(record), "history": [asdict(h) for h in history]}, indent=2, ensure_ascii=False)
        )
        return
    for label, value in (
        ("id", record.id),
        ("status", record.status),
        ("server", record.server),
        ("tool", record.tool),
        ("rule", record.rule),
        ("created", record.created_at),
        ("expires", record.expires_at),
        ("decided", f"{record.decided_at} by {record.decided_by}" if record.decided_at else "-"),
        ("reason", record.reason or "-"),
        ("consumed", record.consumed_at or "-"),
        ("requests", record.request_count),
        ("args hash", record.args_hash),
    ):
        click.echo(f"{label:>10}: {value}")
    click.echo(" arguments (redacted):")
    click.echo(
        "   " + json.dumps(json.loads(record.args_redacted), indent=2, ensure_ascii=False).replace("\n", "\n   ")
    )
    click.echo("   history:")
    for entry in history:
        who = f" by {entry.actor}" if entry.actor else ""
        detail = f": {entry.detail}" if entry.detail else ""
        click.echo(f"   {entry.at}  {entry.event}{who}{detail}")


def _decide(approval_id: str, approve: bool, state_dir: Path | None, actor: str | None, reason: str | None) -> None:
    who = actor or getpass.getuser()
    with _open_store(state_dir) as (store, directory):
        try:
            with store.transaction():
                record = store.decide(approval_id, approve, who, reason, time.time())
        except (DecisionRefused, StoreUnavailable) as exc:
            fail(str(exc))
            return
    EventLog(directory, CLI_EVENTS_INSTANCE).emit(
        "approval_decided",
        approval_id=record.id,
        tool=record.tool,
        server=record.server,
        decision=record.status,
        actor=who,
        reason=reason,
    )
    if approve:
        click.echo(
            f"Approved {record.id} ({record.tool} on {record.server}): the identical call may run once "
            f"until {record.expires_at}."
        )
    else:
        click.echo(f"Denied {record.id} ({record.tool} on {record.server}).")


@approvals_group.command("approve")
@click.argument("approval_id")
@state_dir_option
@click.option("--actor", help="Who approves (default: the OS user).")
@click.option("--reason", help="Why; kept in the record and the events.")
def approve_command(approval_id: str, state_dir: Path | None, actor: str | None, reason: str | None) -> None:
    """Approve a pending request: the identical call may then run exactly once."""
    _decide(approval_id, True, state_dir, actor, reason)


@approvals_group.command("deny")
@click.argument("approval_id")
@state_dir_option
@click.option("--actor", help="Who denies (default: the OS user).")
@click.option("--reason", help="Why; shown to the agent on its retries.")
def deny_command(approval_id: str, state_dir: Path | None, actor: str | None, reason: str | None) -> None:
    """Deny a pending request: identical retries are refused until it expires."""
    _decide(approval_id, False, state_dir, actor, reason)


@approvals_group.command("expire")
@click.argument("approval_id", required=False)
@state_dir_option
@click.option("--all-stale", is_flag=True, help="Expire every pending or approved record past its expiry.")
def expire_command(approval_id: str | None, state_dir: Path | None, all_stale: bool) -> None:
    """Expire one pending/approved request now (revoke it), or all stale ones with --all-stale."""
    if not approval_id and not all_stale:
        fail("give an approval id, or --all-stale")
    now_s = time.time()
    with _open_store(state_dir) as (store, directory):
        try:
            with store.transaction():
                expired = store.revoke(approval_id, now_s) if approval_id else []
                if all_stale:
                    expired += store.expire_stale(now_s)
        except (DecisionRefused, StoreUnavailable) as exc:
            fail(str(exc))
            return
    events = EventLog(directory, CLI_EVENTS_INSTANCE)
    for expired_id in expired:
        events.emit("approval_expired", approval_id=expired_id)
    events.close()
    click.echo(f"Expired {len(expired)} approval request(s)." if expired else "Nothing to expire.")
