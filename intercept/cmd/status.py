"""`intercept status`: running proxies, recent calls, pending approvals, top deny rules, and the
event log itself (its size on disk, the latest gaps where records could not be written).

Server and tool names, rules and upstream commands come from event files and the approval store,
where agents chose some of them: every printed value escapes control and bidirectional characters
(`escape_unsafe`), and `--json` writes them as `\\uNNNN` (`safe_json`).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from intercept.approvals.highlight import safe_json
from intercept.audit.events import event_files_size, read_events
from intercept.audit.summary import Instance, Summary, summarise
from intercept.cmd.options import existing_state_dir, state_dir_option
from intercept.safe_text import escape_unsafe
from intercept.store.approvals import ApprovalStore
from intercept.store.database import StoreUnavailable, connect, database_path
from intercept.store.timestamps import brief, parse_rfc3339, when

LAST_GAPS = 5


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
    """Show proxy instances, calls in the last hour, pending approvals, recent denials, and the event
    log's size and latest gaps."""
    directory = existing_state_dir(state_dir)
    now_s = time.time()
    events = read_events(directory)
    summary = summarise(events, now_s)
    gaps = _event_gaps(events)
    files, size = event_files_size(directory)
    database_bytes = _database_bytes(directory)
    for instance in summary.instances:
        instance.state = _process_state(instance)
    pending, store_error = _pending_approvals(directory, now_s)
    if as_json:
        data = asdict(summary)
        data["pending_approvals"] = pending
        data["store_error"] = store_error
        data["event_files"] = {"count": files, "bytes": size}
        data["database"] = {"bytes": database_bytes}
        data["event_gaps"] = gaps
        click.echo(safe_json(data, indent=2))
        return
    for line in _human_lines(directory, summary, pending, store_error, _event_log_lines(files, size, gaps, database_bytes), now_s):
        click.echo(line)


def _event_gaps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest `events_gap` records, oldest first: when a writer could write again, how many
    records it had to drop, since when and why."""
    gaps = [event for event in events if event.get("type") == "events_gap"][-LAST_GAPS:]
    return [
        {
            "ts": str(gap.get("ts", "")),
            "instance": str(gap.get("instance", "")),
            "lost": gap["lost"] if type(gap.get("lost")) is int else None,
            "since": str(gap.get("since", "")),
            "until": str(gap.get("until", "")),
            "error": str(gap.get("error", "")),
        }
        for gap in gaps
    ]


def _e(value: object) -> str:
    """`value` as text with every control and bidirectional character escaped."""
    return escape_unsafe(str(value))


def _human_lines(
    directory: Path,
    summary: Summary,
    pending: list[dict[str, object]],
    store_error: str | None,
    event_log: list[str],
    now_s: float,
) -> list[str]:
    lines = [f"State dir: {_e(directory)}", "", "Instances:"]
    if not summary.instances:
        lines.append("  none recorded")
    for i in summary.instances:
        lines.append(
            f"  {_e(i.server):<20} pid {_e(i.pid):<8} {_e(i.state):<8} started {_e(when(i.started, now_s))}  "
            f"last seen {_e(when(i.last_seen, now_s))}"
        )
        lines.append(f"  {'':<20} upstream: {_e(shlex.join(i.upstream))}")
        if i.counters:
            counters = ", ".join(f"{k}={v}" for k, v in sorted(i.counters.items()))
            lines.append(f"  {'':<20} counters: {_e(counters)}")
    c = summary.calls_last_hour
    lines += [
        "",
        f"Calls in the last hour: {c['allowed']} allowed, {c['denied']} denied, {c['approval_required']} held for approval",
        "",
        "Pending approvals:" + ("" if pending else " none"),
    ]
    for p in pending:
        lines.append(
            f"  {_e(p['id'])}  {_e(p['server'])}/{_e(p['tool'])}  rule '{_e(p['rule'])}'  waiting {p['age_s']}s"
        )
    if store_error:
        lines.append(f"  (approval store unavailable: {_e(store_error)})")
    if summary.top_deny_rules:
        lines += ["", "Top deny rules:"]
        lines += [f"  {count:>6}  {_e(rule)}" for rule, count in summary.top_deny_rules]
    if summary.policy_mismatches:
        lines += ["", "Policy names the server does not offer (latest listing):"]
        for m in summary.policy_mismatches:
            hint = f" (closest: {m['closest']})" if m.get("closest") else ""
            lines.append(escape_unsafe(f"  {brief(str(m['ts']))}  {m['server']}  {m['kind']} {m['name']}{hint}"))
    lines += event_log
    if summary.last_denied:
        lines += ["", "Last denied calls:"]
        for d in reversed(summary.last_denied):
            lines.append(f"  {_e(brief(str(d['ts'])))}  {_e(d['server'])}/{_e(d['tool'])}  rule '{_e(d['rule'])}'")
    return lines


def _database_bytes(directory: Path) -> int:
    """The state database's size on disk, its write-ahead log included."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(f"{database_path(directory)}{suffix}").st_size
        except OSError:
            pass
    return total


def _event_log_lines(files: int, size: int, gaps: list[dict[str, Any]], database_bytes: int) -> list[str]:
    lines = [
        "",
        f"Event log: {files} file{'' if files == 1 else 's'}, {_bytes(size)}; state database: {_bytes(database_bytes)}",
    ]
    if gaps:
        lines.append("Gaps in the event log (latest first):")
    for gap in reversed(gaps):
        lost = "an unknown number of" if gap["lost"] is None else gap["lost"]
        lines.append(
            f"  {_e(brief(gap['ts']))}  {_e(gap['instance'])}  {lost} events lost since {_e(brief(gap['since']))}"
            f" ({_e(gap['error'])})"
        )
    return lines


def _bytes(size: int) -> str:
    """`812 bytes`, `1.5 KiB`, `64.0 MiB`, `2.3 GiB`."""
    if size < 1024:
        return f"{size} bytes"
    amount, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, bigger
    return f"{amount:.1f} {unit}"
