"""`intercept validate`: check a policy file without starting the proxy."""

from __future__ import annotations

from pathlib import Path

import click

from intercept.policy import PolicyError, load_policy, policy_notices


@click.command("validate")
@click.option("-c", "--config", "config", required=True, type=click.Path(path_type=Path), help="Policy YAML file.")
def validate_command(config: Path) -> None:
    """Check a policy file: print `Policy file is valid.` or every error with its location.

    Either way, a `notice:` line on stdout names each tool whose argument types are not checked
    (`loose_types: true`).
    """
    try:
        policy = load_policy(config)
    except PolicyError as exc:
        click.echo(f"Policy file {exc.source} has {len(exc.errors)} error(s):", err=True)
        for error in exc.errors:
            click.echo(f"  {error}", err=True)
        for notice in exc.notices:
            click.echo(notice)
        raise SystemExit(1) from None
    click.echo("Policy file is valid.")
    for notice in policy_notices(policy):
        click.echo(notice)
