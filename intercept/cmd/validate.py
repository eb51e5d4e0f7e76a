"""`intercept validate`: check a policy file without starting the proxy."""

from __future__ import annotations

import json
from pathlib import Path

import click

from intercept.policy.load import PolicyIssue, check_policy_file


@click.command("validate")
@click.option("-c", "--config", "config", required=True, type=click.Path(path_type=Path), help="Policy YAML file.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print every problem as a JSON list of {file, line, column, location, message, severity}.",
)
def validate_command(config: Path, as_json: bool) -> None:
    """Check a policy file: print `Policy file is valid.` or every error as
    `FILE:LINE:COLUMN: location: message` (exit 1).

    Warnings (on stderr) point at values that may not mean what they seem, such as an unquoted
    `yes`, which is a string in a policy. A `notice:` line on stdout names each tool whose argument
    types are not checked (`loose_types: true`). With --json, all of them are one JSON list on
    stdout, `severity` being error, warning or notice; the exit status is 1 only if there is an
    error.
    """
    source = str(config)
    _, issues = check_policy_file(config)
    errors = [issue for issue in issues if issue.severity == "error"]
    if as_json:
        click.echo(json.dumps([_as_json(source, issue) for issue in issues], indent=2, ensure_ascii=False))
    else:
        if errors:
            click.echo(f"Policy file {source} has {len(errors)} error(s):", err=True)
            for issue in errors:
                click.echo(issue.located(source), err=True)
        else:
            click.echo("Policy file is valid.")
        for issue in issues:
            if issue.severity == "warning":
                click.echo(issue.located(source), err=True)
        for issue in issues:
            if issue.severity == "notice":
                click.echo(issue.text)
    if errors:
        raise SystemExit(1)


def _as_json(source: str, issue: PolicyIssue) -> dict[str, object]:
    return {
        "file": source,
        "line": issue.line,
        "column": issue.column,
        "location": issue.location,
        "message": issue.message,
        "severity": issue.severity,
    }
