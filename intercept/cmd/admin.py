"""`intercept admin token`: the credentials scripts send to the admin API."""

from __future__ import annotations

from pathlib import Path

import click

from intercept.cmd.options import default_state_dir, fail, state_dir_option


@click.group("admin")
def admin_group() -> None:
    """Credentials for the admin API and the web console."""


@admin_group.command("token")
@state_dir_option
@click.option("--as", "person", metavar="NAME", help="A token bound to this person: decisions made with it name them.")
def token_command(state_dir: Path | None, person: str | None) -> None:
    """Print the admin API token (made on first use), for scripts:

    \b
        curl -H "Authorization: Bearer $(intercept admin token)" http://127.0.0.1:9111/api/pending

    With --as NAME, a token bound to that person: every decision made with it is recorded as
    theirs, whatever actor the request names. Deleting admin.key in the state dir revokes every
    token and console session.
    """
    from intercept.console.auth import admin_secret, admin_token, person_token
    from intercept.store.secret_file import SecretUnavailable

    directory = (state_dir or default_state_dir()).expanduser()
    try:
        secret = admin_secret(directory)
    except SecretUnavailable as exc:
        fail(str(exc))
        return
    try:
        click.echo(person_token(secret, person) if person is not None else admin_token(secret))
    except ValueError as exc:
        fail(str(exc))
