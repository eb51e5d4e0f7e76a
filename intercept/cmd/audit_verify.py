"""`intercept audit verify` and `intercept audit public-key`: check the hash-chained, signed event
files offline, and print the public key that checks them."""

from __future__ import annotations

from pathlib import Path

import click

from intercept.cmd.options import existing_state_dir, fail, state_dir_option


@click.command("verify")
@state_dir_option
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file holding the `ed25519:...` line of `intercept audit public-key`, kept where the agent cannot write.",
)
def verify_command(state_dir: Path | None, public_key_file: Path | None) -> None:
    """Check every event file: each record linked to the one before, every checkpoint signed and
    sealing the records before it, rotated segments linked, pruned files named by a sealed prune
    record; and the database's receipts (a chain signed by the proxy key) and signed votes (each
    by its approver's key in the request's archived policy). Prints each break as
    `events/<file>:<line>: <what>` or `intercept.sqlite/receipts:<seq>: <what>` and exits 1;
    otherwise a summary. Records after a file's last checkpoint are listed as not sealed (not a
    break)."""
    from intercept.audit.chain_verify import verify_state_dir
    from intercept.audit.proxy_key import ProxyKeyError, load_existing, parse_public_line
    from intercept.audit.receipt_checks import check_database
    from intercept.safe_text import escape_unsafe

    directory = existing_state_dir(state_dir)
    public = None
    if public_key_file is not None:
        try:
            public = parse_public_line(public_key_file.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            fail(f"cannot read {public_key_file}: {exc.strerror or exc}")
        except ValueError as exc:
            fail(f"{public_key_file}: {exc}")
    else:
        try:
            key = load_existing(directory)
        except ProxyKeyError as exc:
            fail(str(exc))
            return
        if key is not None:
            public = key.public()
            click.echo(
                "note: checking signatures with the state dir's own proxy.key; whoever can write the state dir "
                "can re-sign (pass --public-key with a copy kept elsewhere)",
                err=True,
            )
    try:
        report = verify_state_dir(directory, public)
    except OSError as exc:
        fail(f"cannot read the event files: {exc.strerror or exc}")
        return
    database = check_database(directory, public)
    for finding in report.notes:
        click.echo(f"note: {escape_unsafe(str(finding))}", err=True)
    breaks = report.breaks + [finding for finding in database.findings if finding.broken]
    breaks.sort(key=lambda finding: (finding.area, finding.file, finding.line))  # the first printed: the earliest
    if breaks:
        for finding in breaks:
            click.echo(escape_unsafe(str(finding)))
        raise SystemExit(1)
    unsealed = ", ".join(report.unsealed) if report.unsealed else "none"
    click.echo(
        f"ok: {report.files} files, {report.records} records, {report.checkpoints} checkpoints, "
        f"{database.receipts} receipts, {database.signed_votes} signed votes; "
        f"tails not sealed by a checkpoint: {unsealed}"
    )


@click.command("public-key")
@state_dir_option
def public_key_command(state_dir: Path | None) -> None:
    """Print the public key that checks this state dir's event checkpoints (`ed25519:<base64>`),
    making the key pair if there is none yet. Keep a copy away from the agent's account and pass it
    to `audit verify --public-key`."""
    from intercept.audit.proxy_key import ProxyKeyError, load_or_create

    directory = existing_state_dir(state_dir)
    try:
        click.echo(load_or_create(directory).public_line())
    except ProxyKeyError as exc:
        fail(str(exc))
