"""`intercept approvals`: list, show, approve, deny and expire approval requests.

Tool names, arguments and reasons are chosen by agents or other people: every human-facing line
escapes control and bidirectional characters (`safe_text.escape_unsafe`), and JSON output writes
them as `\\uNNNN` (`highlight.safe_json`), so nothing shown can redraw or reorder the screen. `list`
shows redacted previews only; `show` prints the exact arguments while they exist (see its help).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from intercept.approvals.deciders import key_signer, policy_source
from intercept.approvals.decisions import decide, default_actor, rule_check
from intercept.approvals.highlight import BRACKETS, REVERSE_VIDEO, render_arguments, safe_json
from intercept.approvals.record_json import command_words, exact_arguments, full_record_json, record_json
from intercept.approvals.redact import preview
from intercept.approvals.staleness import STALE
from intercept.audit.events import EventLog
from intercept.audit.receipts import Receipts
from intercept.cmd.approvers import key_file_option, passphrase_file_option, passphrase_source
from intercept.cmd.options import default_state_dir, fail, state_dir_option
from intercept.policy.model import Policy
from intercept.safe_text import escape_unsafe
from intercept.store.approvals import STATUSES, ApprovalRecord, ApprovalStore, DecisionRefused
from intercept.store.database import StoreUnavailable, connect, database_path
from intercept.store.timestamps import parse_rfc3339, relative, when
from intercept.store.votes import votes_of

CLI_EVENTS_INSTANCE = "approvals-cli"
_VOTED = {"approve": "approved", "deny": "denied"}


def _resolve_id(store: ApprovalStore, directory: Path, given: str) -> str:
    """The full id for `given` (an id, or a unique start of one); fails naming the state dir, or
    listing the candidates when the start is ambiguous."""
    if store.get(given) is not None:
        return given
    candidates = store.ids_starting_with(given) if len(given) >= 4 else []
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        fail(escape_unsafe(f"{given} is the start of several approvals: {', '.join(candidates)}"))
    fail(escape_unsafe(f"no approval with id {given} in {directory}"))
    raise AssertionError  # fail exits


@contextmanager
def _open_store(state_dir: Path | None) -> Iterator[tuple[ApprovalStore, Path, list[str]]]:
    """The store, its directory, and the ids of the stale records expired while opening it (expiry
    is applied lazily, on access)."""
    directory = (state_dir or default_state_dir()).expanduser()
    if not database_path(directory).exists():
        fail(escape_unsafe(f"no approval database at {database_path(directory)} (wrong --state-dir?)"))
    try:
        connection = connect(directory)
        store = ApprovalStore(connection)
        with store.transaction():
            expired = store.expire_stale(time.time())
    except StoreUnavailable as exc:
        fail(escape_unsafe(str(exc)))
        raise
    if expired:
        events = EventLog(directory, CLI_EVENTS_INSTANCE)
        for approval_id in expired:
            events.emit("approval_expired", approval_id=approval_id)
        events.close()  # a short-lived writer: says on stderr what it could not write
    try:
        yield store, directory, expired
    finally:
        connection.close()


def _age(created_at: str, now_s: float) -> str:
    seconds = max(0, int(now_s - parse_rfc3339(created_at)))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _scope_text(record: ApprovalRecord) -> str:
    """What one approval allows, in words (`scope:` of its rule), with the runs left."""
    left = f" ({record.uses_left} left)" if record.scope is not None and record.uses_left is not None else ""
    return record.approval_scope().describe() + left


@click.group("approvals")
def approvals_group() -> None:
    """Review and decide calls that policy holds for a human."""


@approvals_group.command("list")
@state_dir_option
@click.option("--all", "show_all", is_flag=True, help="Every record, not only pending ones.")
@click.option("--status", type=click.Choice(STATUSES), multiple=True, help="Only these statuses (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_command(state_dir: Path | None, show_all: bool, status: tuple[str, ...], as_json: bool) -> None:
    """List approval requests (pending ones unless --all or --status).

    Arguments appear as a redacted, shortened preview only; `show ID` prints the exact ones.
    """
    statuses = status or (None if show_all else ("pending",))
    now_s = time.time()
    with _open_store(state_dir) as (store, _, _):
        records = store.list(statuses)
        check = rule_check(store, now_s)
    stale = {r.id for r in records if check.stale(r)}
    if as_json:
        click.echo(safe_json([record_json(r, r.id in stale) for r in records], indent=2))
        return
    if not records:
        click.echo("No approval requests." if show_all or status else "No pending approval requests.")
        return
    # Who asked, in columns of their own only when some record says (most setups have no --agent).
    who = [("AGENT", "agent"), ("CLIENT", "client")]
    who = [(title, name) for title, name in who if any(getattr(r, name) for r in records)]
    header = ("ID", "AGE", "SERVER", "TOOL", "RULE", *(title for title, _ in who), "STATUS", "EXPIRES", "ARGUMENTS")
    rows = [
        tuple(
            escape_unsafe(cell)
            for cell in (
                r.id,
                _age(r.created_at, now_s),
                r.server,
                r.tool,
                r.rule,
                *(getattr(r, name) or "-" for _, name in who),
                STALE if r.id in stale else r.status,
                relative(r.expires_at, now_s) if r.status in ("pending", "approved") else "-",
                preview(json.loads(r.args_redacted)),
            )
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


_INDENT = "   "


def _arguments_heading(record: ApprovalRecord, exact: Any | None, redact: bool) -> str:
    if exact is not None:
        return "arguments (exact; secret-looking parts marked):"
    if redact and record.args_exact is not None:
        return "arguments (redacted, as asked with --redact):"
    if record.status in ("pending", "approved"):
        return "arguments (redacted: no exact copy was stored for this request):"
    return "arguments (redacted: the exact arguments are erased once a request is denied, consumed or expired):"


def _arguments_text(record: ApprovalRecord, exact: Any | None) -> str:
    """The arguments as indented JSON: the exact ones with secret-looking parts marked (reverse
    video on a terminal, ⟦ ⟧ otherwise), else the redacted copy; no unsafe character left raw."""
    if exact is None:
        return render_arguments(json.loads(record.args_redacted), None)
    try:
        return render_arguments(exact, REVERSE_VIDEO if sys.stdout.isatty() else BRACKETS)
    except RecursionError:  # nested deeper than the stack allows: the stored text as it is
        return escape_unsafe(record.args_exact or "")


@approvals_group.command("show")
@click.argument("approval_id")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="The record and its history as JSON.")
@click.option(
    "--redact", is_flag=True, help="Print the redacted arguments even while exact ones exist (for screen sharing)."
)
def show_command(approval_id: str, state_dir: Path | None, as_json: bool, redact: bool) -> None:
    """Show one approval request: its arguments, the upstream command and its history.

    While a request is pending or approved, its arguments are printed exactly as the call would
    send them: every value in full, as indented JSON. Secret-looking parts (values of keys such as
    password or token, API keys and tokens inside text, user:password in URLs, private keys) are
    marked, not removed: in reverse video on a terminal, between ⟦ and ⟧ otherwise (a literal ⟦ or
    ⟧ in a value is written as \\u27e6 or \\u27e7). Control and bidirectional characters in any
    field are shown as escapes (\\u202e, \\x1b). Once a request is denied, consumed or expired only
    the redacted copy remains; --redact prints that copy anyway.

    With --json, "arguments" holds the exact arguments when they exist (and not --redact), else
    the redacted ones; "arguments_exact" says which, and "arguments_redacted" is always the
    redacted copy.
    """
    with _open_store(state_dir) as (store, directory, _):
        approval_id = _resolve_id(store, directory, approval_id)
        record = store.get(approval_id)
        assert record is not None
        history = store.history(approval_id)
        votes = votes_of(store, approval_id)
        stale = rule_check(store, time.time()).stale(record)
    exact = None if redact else exact_arguments(record)
    if as_json:
        click.echo(safe_json(full_record_json(record, stale, history, votes, redact), indent=2))
        return
    command = command_words(record)
    now_s = time.time()
    fields: list[tuple[str, object]] = [
        ("id", record.id),
        ("status", f"{record.status}, {STALE}: the call no longer reaches this rule" if stale else record.status),
        ("server", record.server),
        ("tool", record.tool),
        ("rule", record.rule),
        ("agent", record.agent or "-"),
        ("client", f"{record.client} (as the client names itself)" if record.client else "-"),
        ("created", when(record.created_at, now_s)),
        ("expires", when(record.expires_at, now_s)),
        ("decided", f"{when(record.decided_at, now_s)} by {record.decided_by}" if record.decided_at else "-"),
        ("reason", record.reason or "-"),
        ("consumed", when(record.consumed_at, now_s)),
        ("requests", record.request_count),
        ("scope", _scope_text(record)),
        ("args hash", record.args_hash),
    ]
    if command is not None:
        fields.append(("command", shlex.join(command)))
    elif record.command is not None:
        fields.append(("command", record.command))
    for label, value in fields:
        click.echo(f"{label:>10}: {escape_unsafe(str(value))}")
    click.echo(" " + _arguments_heading(record, exact, redact))
    click.echo(_INDENT + _arguments_text(record, exact).replace("\n", "\n" + _INDENT))
    click.echo(_INDENT + "history:")
    for entry in history:
        who = f" by {entry.actor}" if entry.actor else ""
        detail = f": {entry.detail}" if entry.detail else ""
        click.echo(_INDENT + escape_unsafe(f"{when(entry.at, now_s)}  {entry.event}{who}{detail}"))
    if votes:
        click.echo(_INDENT + "votes:")
        for vote in votes:
            signed = "signed" if vote.signature else "unsigned"
            why = f": {vote.reason}" if vote.reason else ""
            click.echo(
                _INDENT
                + escape_unsafe(
                    f"  {vote.actor} {_VOTED[vote.decision]}, {when(vote.decided_at, now_s)} ({signed}, {vote.channel}){why}"
                )
            )


def _decide(approval_id: str, approve: bool, options: DecideOptions) -> None:
    who = options.actor or default_actor()
    given = _given_policy(options.config)
    with _open_store(options.state_dir) as (store, directory, _):
        approval_id = _resolve_id(store, directory, approval_id)
        policy_of = policy_source(directory, given)
        events = EventLog(directory, CLI_EVENTS_INSTANCE)
        try:
            if options.legacy_actor:
                record = store.get(approval_id)
                policy = policy_of(record) if record is not None else None
                if policy is not None and policy.approvers:
                    fail("this policy names its approvers: decide with --as NAME (your approver name), not --actor")
            decision = decide(
                store,
                events,
                approval_id,
                approve=approve,
                actor=who,
                reason=options.reason,
                channel="cli",
                now_s=time.time(),
                policy_of=policy_of,
                receipts=Receipts(directory),
                as_approver=not options.legacy_actor and options.actor is not None,
                sign=key_signer(
                    options.key, lambda actor: passphrase_source(actor, options.passphrase_file, confirm=False)
                ),
            )
        except (DecisionRefused, StoreUnavailable) as exc:
            fail(escape_unsafe(str(exc)))
            return
        finally:
            events.close()
    record = decision.record
    if not decision.checked:
        click.echo(
            "intercept: note: the policy this request was made under is not archived in the state dir, so who may "
            "decide was not checked here (the proxy checks before the call runs); pass -c POLICY to check it",
            err=True,
        )
    if not decision.changed:  # the same decision again: done (scripts and retries rely on it)
        click.echo(escape_unsafe(f"Already {record.status}: {decision.note}."))
    elif record.status == "pending":
        yes = sum(1 for vote in decision.votes if vote.decision == "approve")
        click.echo(
            escape_unsafe(
                f"Voted approve on {record.id} ({record.tool} on {record.server}): {yes} of {decision.quorum} "
                "approvals; it runs once the others have approved."
            )
        )
    elif approve:
        click.echo(
            escape_unsafe(
                f"Approved {record.id} ({record.tool} on {record.server}): {_allows(record)} "
                f"until {when(record.expires_at, time.time())}."
            )
        )
    else:
        click.echo(escape_unsafe(f"Denied {record.id} ({record.tool} on {record.server})."))


def _allows(record: ApprovalRecord) -> str:
    if record.scope is None:
        return "the identical call may run at most once"
    return f"it allows {_scope_text(record)}"


@dataclass(frozen=True)
class DecideOptions:
    state_dir: Path | None
    actor: str | None
    legacy_actor: bool
    reason: str | None
    key: Path | None
    config: Path | None
    passphrase_file: Path | None


def _given_policy(config: Path | None) -> Policy | None:
    if config is None:
        return None
    from intercept.policy.load import PolicyError, load_policy

    try:
        return load_policy(config)
    except PolicyError as exc:
        fail(str(exc))
        raise


def _decide_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option("--as", "as_name", metavar="NAME", help="Decide as this approver (signs with their key)."),
            click.option("--actor", help="Who decides, where the policy names no approvers (default: the OS user)."),
            key_file_option,
            passphrase_file_option,
            click.option(
                "-c",
                "--config",
                type=click.Path(dir_okay=False, path_type=Path),
                help="The policy the request was made under (default: the one archived in the state dir).",
            ),
        )
    ):
        command = option(command)
    return command


def _options(
    state_dir: Path | None, as_name: str | None, actor: str | None, reason: str | None, **more: Any
) -> DecideOptions:
    if as_name is not None and actor is not None and as_name != actor:
        fail("give --as or --actor, not both")
    return DecideOptions(
        state_dir=state_dir,
        actor=as_name or actor,
        legacy_actor=as_name is None and actor is not None,
        reason=reason,
        key=more["key_file"],
        config=more["config"],
        passphrase_file=more["passphrase_file"],
    )


@approvals_group.command("approve")
@click.argument("approval_id")
@state_dir_option
@_decide_options
@click.option("--reason", help="Why; kept in the record and the events.")
def approve_command(approval_id: str, **options: Any) -> None:
    """Approve a pending request: the identical call may then run at most once (or as its rule's
    `scope` says), within the request's timeout counted from now. Where the policy names
    approvers, this is your vote (signed with your key); the request is approved once its
    rule's quorum has voted yes."""
    _decide(approval_id, True, _options(**options))


@approvals_group.command("deny")
@click.argument("approval_id")
@state_dir_option
@_decide_options
@click.option("--reason", help="Why; shown to the agent on its retries.")
def deny_command(approval_id: str, **options: Any) -> None:
    """Deny a pending request: identical retries are refused until it expires. Where the policy
    names approvers, one eligible deny vetoes the request."""
    _decide(approval_id, False, _options(**options))


@approvals_group.command("expire")
@click.argument("approval_id", required=False)
@state_dir_option
@click.option("--all-stale", is_flag=True, help="Expire every pending or approved record past its expiry.")
def expire_command(approval_id: str | None, state_dir: Path | None, all_stale: bool) -> None:
    """Expire one pending/approved request now (revoke it), or all stale ones with --all-stale."""
    if not approval_id and not all_stale:
        fail("give an approval id, or --all-stale")
        return
    now_s = time.time()
    with _open_store(state_dir) as (store, directory, stale_on_open):  # already expired while opening
        if approval_id:
            approval_id = _resolve_id(store, directory, approval_id)
        try:
            with store.transaction():
                expired = store.revoke(approval_id, now_s) if approval_id else []
                if all_stale:
                    expired += store.expire_stale(now_s)
        except (DecisionRefused, StoreUnavailable) as exc:
            fail(escape_unsafe(str(exc)))
            return
    events = EventLog(directory, CLI_EVENTS_INSTANCE)
    for expired_id in expired:
        events.emit("approval_expired", approval_id=expired_id)
    events.close()
    if all_stale:
        expired = stale_on_open + expired
    if not expired:
        click.echo("Nothing to expire.")
        return
    click.echo(f"Expired {len(expired)} approval request(s):")
    for expired_id in expired:
        click.echo(f"  {escape_unsafe(expired_id)}")
