"""`intercept approvers`: the people who may decide, and their signing keys.

`keygen` makes an approver's Ed25519 key and prints the line the policy's `approvers:` block
needs; `public-key` prints that key's public line again. `key_file_option`,
`passphrase_file_option` and `load_signing_key` are shared with the commands that sign decisions
(`intercept approvals approve|deny --as NAME`). The signing module (and with it `cryptography`)
is imported only when a command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from intercept.cmd.options import existing_state_dir, fail, state_dir_option

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def key_file_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--key",
        "key_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The private key file (default: $XDG_CONFIG_HOME/intercept/approvers/NAME.key).",
    )(command)


def passphrase_file_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Read the key's passphrase from the first line of FILE (yours, mode 0600) instead of "
        "asking on the terminal or reading stdin.",
    )(command)


def passphrase_source(name: str, passphrase_file: Path | None, *, confirm: bool) -> Callable[[], bytes]:
    from intercept.approvals.approver_keys import passphrase_from_file, passphrase_prompt

    if passphrase_file is not None:
        return passphrase_from_file(passphrase_file.expanduser())
    return passphrase_prompt(name, confirm=confirm)


def _key_path(name: str, key_file: Path | None) -> Path:
    from intercept.approvals.approver_keys import default_key_path

    return key_file.expanduser() if key_file is not None else default_key_path(name)


def load_signing_key(name: str, key_file: Path | None, passphrase_file: Path | None) -> Ed25519PrivateKey:
    """`name`'s private key (from `key_file` or the default path), asking for its passphrase if it
    is encrypted; fails with one line."""
    from intercept.approvals.approver_keys import ApproverKeyError, check_name, load_private_key

    try:
        check_name(name)
        return load_private_key(_key_path(name, key_file), passphrase_source(name, passphrase_file, confirm=False))
    except ApproverKeyError as exc:
        fail(str(exc))
        raise AssertionError("unreachable") from None


def _yaml_key(name: str) -> str:
    """`name` as a key of the policy's YAML mapping: bare when YAML reads it back as that string,
    quoted otherwise (`null`, `yes`, `123`, `2026-01-01`)."""
    import yaml

    try:
        bare = yaml.safe_load(f"{name}: 0")
    except yaml.YAMLError:
        bare = None
    return name if isinstance(bare, dict) and list(bare) == [name] else f'"{name}"'


def _newest_archived_policy(directory: Path) -> tuple[Any, str] | None:
    """The newest policy archived in `directory` (the one a proxy loaded last) and when it was
    first archived, or None; raises PolicyArchiveError when the archive cannot be read."""
    from intercept.audit.policy_archive import archived_policy, list_archived_policies

    usable = [info for info in list_archived_policies(directory) if not info.problem]
    return (archived_policy(directory, usable[-1].digest), usable[-1].first_archived) if usable else None


def _chosen_state_dir(state_dir: Path | None) -> Path | None:
    """The state dir to compare a key against: --state-dir or $INTERCEPT_STATE_DIR (which must
    exist), else the default one if it exists, else None (nothing to compare with)."""
    import os

    from intercept.cmd.state_dir import STATE_DIR_ENV, default_state_dir

    if state_dir is not None or os.environ.get(STATE_DIR_ENV):
        return existing_state_dir(state_dir)
    directory = default_state_dir()
    return directory if directory.is_dir() else None


def _say_how_the_policy_names(name: str, public: str, directory: Path | None) -> None:
    """One line on stderr: whether the newest policy archived in `directory` names this key for
    `name` (nothing when there is no state dir or no archived policy to compare with)."""
    from intercept.audit.policy_archive import PolicyArchiveError
    from intercept.safe_text import escape_unsafe

    if directory is None:
        return
    try:
        newest = _newest_archived_policy(directory)
    except PolicyArchiveError as exc:  # the key is made and printed: say why it was not compared
        click.echo(
            f"intercept: not compared with the policies archived in {escape_unsafe(str(directory))}: {escape_unsafe(str(exc))}",
            err=True,
        )
        return
    if newest is None:
        return
    policy = newest[0]
    where = f"the newest policy in {escape_unsafe(str(directory))} ({policy.digest[:12]})"
    approver = policy.approvers.get(name)
    if approver is None:
        said = f"{where} does not name {name} as an approver yet: add the line above to its approvers: block"
    elif approver.key == public:
        said = f"{where} names this key for {name}"
    elif approver.key:
        said = f"{where} names another key for {name}: votes signed with this one are refused until the policy has the line above"
    else:
        said = f"{where} names {name} without a key: add the key above, or {name}'s votes are not signed"
    click.echo(f"intercept: {escape_unsafe(said)}", err=True)


@click.group("approvers")
def approvers_group() -> None:
    """Approvers: `keygen` makes a signing key (Ed25519) and prints its policy line; `list` shows who may
    decide under the state dir's newest policy."""


@approvers_group.command("keygen", short_help="Make NAME's signing key; print its policy line.")
@click.argument("name")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the private key (default: $XDG_CONFIG_HOME/intercept/approvers/NAME.key).",
)
@click.option(
    "--no-passphrase",
    is_flag=True,
    help="Do not encrypt the key: only for a key kept under an account the agent cannot read.",
)
@click.option("--force", is_flag=True, help="Replace an existing key file (its old key stops working).")
@passphrase_file_option
@state_dir_option
def keygen_command(
    name: str, out: Path | None, no_passphrase: bool, force: bool, passphrase_file: Path | None, state_dir: Path | None
) -> None:
    """Make NAME's Ed25519 signing key and print the line for the policy's `approvers:` block.

    The private key goes to a file only you can read (0600, in a 0700 directory), encrypted with a
    passphrase asked twice on the terminal (or one line read from stdin, or --passphrase-file).
    The same passphrase is asked each time you approve or deny with `--as NAME`. The state dir's
    newest policy (the one a proxy loaded last) is then compared with the new key: stderr says
    whether it names NAME, and with which key.

    \b
        intercept approvers keygen alice
          alice: {roles: [], key: "ed25519:..."}
    """
    from intercept.approvals.approver_keys import ApproverKeyError, check_name, generate_key, refuse_existing_key
    from intercept.safe_text import escape_unsafe

    if no_passphrase and passphrase_file is not None:
        fail("--no-passphrase and --passphrase-file contradict each other: choose one")
    directory = _chosen_state_dir(state_dir)  # before the key is made: a wrong --state-dir fails first
    try:
        check_name(name)
        path = _key_path(name, out)
        refuse_existing_key(path, force=force)
        passphrase = None if no_passphrase else passphrase_source(name, passphrase_file, confirm=True)()
        public = generate_key(path, passphrase, force=force)
    except ApproverKeyError as exc:
        fail(str(exc))
        return
    click.echo(f'  {_yaml_key(name)}: {{roles: [], key: "{public}"}}')
    how = (
        "encrypted with your passphrase"
        if passphrase is not None
        else "NOT encrypted: keep it under an account the agent cannot read"
    )
    click.echo(f"intercept: {name}'s private key is in {escape_unsafe(str(path))}, {how}", err=True)
    _say_how_the_policy_names(name, public, directory)


@approvers_group.command("public-key", short_help="Print the public line of NAME's existing key.")
@click.argument("name")
@key_file_option
@passphrase_file_option
@state_dir_option
def public_key_command(name: str, key_file: Path | None, passphrase_file: Path | None, state_dir: Path | None) -> None:
    """Print the public line (`ed25519:...`) of NAME's existing key, for the policy's
    `approvers:` block. Asks for the passphrase if the key is encrypted. Then says on stderr
    whether the state dir's newest policy names this key for NAME."""
    from intercept.approvals.approver_keys import public_line

    directory = _chosen_state_dir(state_dir)
    public = public_line(load_signing_key(name, key_file, passphrase_file).public_key())
    click.echo(public)
    _say_how_the_policy_names(name, public, directory)


@approvers_group.command("list", short_help="Who may decide under the state dir's newest policy.")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def list_command(state_dir: Path | None, as_json: bool) -> None:
    """The approvers named by the newest policy archived in the state dir (the one a proxy loaded
    last): each name, roles and public key line; where no policy names approvers, says that
    anyone who can run `intercept approvals` decides."""
    import json

    from intercept.audit.policy_archive import PolicyArchiveError
    from intercept.safe_text import escape_unsafe

    directory = existing_state_dir(state_dir)
    try:
        newest = _newest_archived_policy(directory)
    except PolicyArchiveError as exc:
        fail(str(exc))
        return
    if newest is None:
        fail(f"no archived policy in {directory} (a proxy archives the policy it loads)")
        return
    policy, first_archived = newest
    approvers = [
        {"name": a.name, "roles": sorted(a.roles), "key": a.key}
        for a in sorted(policy.approvers.values(), key=lambda a: a.name)
    ]
    if as_json:
        click.echo(json.dumps({"policy_digest": policy.digest, "approvers": approvers}, indent=2))
        return
    click.echo(f"policy {policy.digest[:12]} (archived {first_archived})")
    if not approvers:
        click.echo("no approvers block: anyone who can run `intercept approvals` or reach the console decides")
        return
    for approver in approvers:
        roles = ", ".join(approver["roles"]) or "no role"
        key = approver["key"] or "no key: votes in this name are not signed"
        click.echo(escape_unsafe(f"  {approver['name']:<16} {roles:<24} {key}"))
