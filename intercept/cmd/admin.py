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
@click.option(
    "--signing-keys",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="For a console started with `serve --signing-keys DIR`: the token derives from DIR/console.key.",
)
def token_command(state_dir: Path | None, person: str | None, signing_keys: Path | None) -> None:
    """Print the admin API token (made on first use), for scripts:

    \b
        curl -H "Authorization: Bearer $(intercept admin token)" http://127.0.0.1:9111/api/pending

    With --as NAME, a token bound to that person: every decision made with it is recorded as
    theirs, whatever actor the request names. Deleting admin.key in the state dir revokes every
    token and console session.
    """
    from intercept.console.auth import admin_secret, admin_token, person_token, private_dir_problem
    from intercept.store.secret_file import SecretUnavailable

    directory = (state_dir or default_state_dir()).expanduser()
    if signing_keys is not None:
        signing_keys = signing_keys.expanduser()
        problem = private_dir_problem(signing_keys, directory)
        if problem is not None:
            fail(problem)
    try:
        secret = admin_secret(directory, signing_keys)
    except SecretUnavailable as exc:
        fail(str(exc))
        return
    try:
        click.echo(person_token(secret, person) if person is not None else admin_token(secret))
    except ValueError as exc:
        fail(str(exc))
