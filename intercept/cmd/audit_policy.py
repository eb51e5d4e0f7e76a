"""`intercept audit policy DIGEST`: print a policy version a proxy archived (`audit/policy_archive.py`),
or `--list` them all.

The text is printed as archived (header comments, source text with literal secrets redacted), so
`intercept audit policy 1a2b3c4d > old.yaml` gives a file `intercept validate` reads. On a
terminal, control and bidirectional characters are shown escaped (an archive file is only as
trustworthy as the state dir: one edited there must not redraw the reviewer's screen).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from intercept.approvals.highlight import safe_json
from intercept.audit.policy_archive import PolicyArchiveError, archived_policy_text, list_archived_policies
from intercept.cmd.options import existing_state_dir, fail, state_dir_option
from intercept.safe_text import escape_unsafe
from intercept.store.timestamps import brief


@click.command("policy")
@click.argument("digest", required=False)
@click.option("--list", "list_all", is_flag=True, help="List the archived policies instead.")
@click.option("--json", "as_json", is_flag=True, help="With --list: one JSON array.")
@state_dir_option
def policy_command(digest: str | None, list_all: bool, as_json: bool, state_dir: Path | None) -> None:
    """Print the archived policy with DIGEST (or a unique prefix of at least 8 hex characters).

    Every policy version a proxy loads, at start and at each reload, is archived in the state dir
    by its digest (the `policy_revision` of approvals, the `policy_digest` of events), with literal
    secrets redacted.
    """
    if list_all == (digest is not None):
        fail("give a policy DIGEST (or a prefix of it), or --list")
    if as_json and not list_all:
        fail("--json goes with --list")
    directory = existing_state_dir(state_dir)
    try:
        if list_all:
            _print_list(directory, as_json)
            return
        assert digest is not None
        _, text = archived_policy_text(directory, digest)
    except PolicyArchiveError as exc:
        fail(str(exc))
        return
    click.echo(escape_unsafe(text, keep_newlines=True) if sys.stdout.isatty() else text, nl=False)


def _print_list(directory: Path, as_json: bool) -> None:
    found = list_archived_policies(directory)
    if as_json:
        click.echo(safe_json([info._asdict() for info in found], indent=2))
        return
    if not found:
        click.echo(f"no archived policies in {directory}", err=True)
        return
    for info in found:
        about = f"corrupt: {info.problem}" if info.problem else info.source
        click.echo(f"{info.digest}  {brief(info.first_archived) or '-':<20}  {escape_unsafe(about)}")
