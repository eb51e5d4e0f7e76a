"""`intercept status`: running proxies, recent calls, pending approvals, top deny rules."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import click

from intercept.audit.events import prune_old_event_files, read_events
from intercept.audit.summary import Instance, summarise
from intercept.cmd.options import default_state_dir, state_dir_option
from intercept.store.approvals import ApprovalStore
from intercept.store.database import StoreUnavailable, connect, database_path
from intercept.store.timestamps import brief, parse_rfc3339


def _process_state(instance: Instance) -> str:
    if instance.stopped:
        return "stopped"
    if instance.pid is None:
        return "unknown"
    try:
        os.kill(instance.pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    return "alive"


def _pending_approvals(state_dir: Path, now_s: float) -> tuple[list[dict[str, object]], str | None]:
    if not database_path(state_dir).exists():
        return [], None
    try:
        connection = connect(state_dir)
    except StoreUnavailable as exc:
        return [], str(exc)
    try:
        records = ApprovalStore(connection).list(("pending",))
    finally:
        connection.close()
    pending = [
        {
            "id": r.id,
            "server": r.server,
            "tool": r.tool,
            "rule": r.rule,
            "age_s": int(now_s - parse_rfc3339(r.created_at)),
            "expires_at": r.expires_at,
        }
        for r in records
        if parse_rfc3339(r.expires_at) > now_s
    ]
    return pending, None


@click.command("status")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Everything as one JSON object.")
def status_command(state_dir: Path | None, as_json: bool) -> None:
    """Show proxy instances, calls in the last hour, pending approvals and recent denials."""
    directory = (state_dir or default_state_dir()).expanduser()
    now_s = time.time()
    prune_old_event_files(directory, now_s)
    summary = summarise(read_events(directory), now_s)
    for instance in summary.instances:
        instance.state = _process_state(instance)
    pending, store_error = _pending_approvals(directory, now_s)
    if as_json:
        data = asdict(summary)
        data["pending_approvals"] = pending
        data["store_error"] = store_error
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    click.echo(f"State dir: {directory}")
    click.echo("\nInstances:")
    if not summary.instances:
        click.echo("  none recorded")
    for i in summary.instances:
        click.echo(
            f"  {i.server:<20} pid {i.pid!s:<8} {i.state:<8} started {brief(i.started)}  last seen {brief(i.last_seen)}"
        )
        click.echo(f"  {'':<20} upstream: {' '.join(i.upstream)}")
        if i.counters:
            click.echo(f"  {'':<20} counters: " + ", ".join(f"{k}={v}" for k, v in sorted(i.counters.items())))
    c = summary.calls_last_hour
    click.echo(
        f"\nCalls in the last hour: {c['allowed']} allowed, {c['denied']} denied, {c['approval_required']} held for approval"
    )
    click.echo("\nPending approvals:" + ("" if pending else " none"))
    for p in pending:
        click.echo(f"  {p['id']}  {p['server']}/{p['tool']}  rule {p['rule']!r}  waiting {p['age_s']}s")
    if store_error:
        click.echo(f"  (approval store unavailable: {store_error})")
    if summary.top_deny_rules:
        click.echo("\nTop deny rules:")
        for rule, count in summary.top_deny_rules:
            click.echo(f"  {count:>6}  {rule}")
    if summary.last_denied:
        click.echo("\nLast denied calls:")
        for d in reversed(summary.last_denied):
            click.echo(f"  {brief(str(d['ts']))}  {d['server']}/{d['tool']}  rule {d['rule']!r}")
