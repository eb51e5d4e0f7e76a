"""`intercept serve`: the admin API and the web console for every proxy sharing a state dir."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from intercept.cmd.admin_options import GroupedHelpCommand, listen_options
from intercept.cmd.options import default_state_dir, fail, state_dir_option


@click.command("serve", cls=GroupedHelpCommand)
@state_dir_option
@listen_options("--addr")
@click.option(
    "--signing-keys",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Sign approvers' votes with the unencrypted keys in DIR (NAME.key); tokens then derive from "
    "DIR/console.key, not the state dir's admin.key. DIR must be yours, mode 700, outside the state dir.",
)
def serve_command(
    state_dir: Path | None,
    addr: str,
    allow_remote: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    signing_keys: Path | None,
) -> None:
    """Serve the approval inbox and the admin API for all proxies of the state dir.

    Prints the console's URL and a one-time login URL on stderr. Scripts send
    `Authorization: Bearer $(intercept admin token)`.

    Where the policy's approvers have keys, the console signs a person's vote only with
    --signing-keys DIR (then give tokens with `intercept admin token --signing-keys DIR`);
    without it, those approvers decide with `intercept approvals approve|deny --as NAME`.
    """
    from intercept.console.app import ConsoleConfig, build_app
    from intercept.console.auth import private_dir_problem
    from intercept.console.server import AdminAddressError, ListenOptions, bind, serve_in_foreground
    from intercept.store.secret_file import SecretUnavailable

    directory = (state_dir or default_state_dir()).expanduser()
    options = ListenOptions(addr, allow_remote, tls_cert, tls_key)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if signing_keys is not None:
            signing_keys = signing_keys.expanduser()
            problem = private_dir_problem(signing_keys, directory)
            if problem is not None:
                fail(problem)
        sock, address = bind(options)
        app = build_app(ConsoleConfig(directory, address, signing_keys=signing_keys))
    except (AdminAddressError, SecretUnavailable, OSError) as exc:
        fail(str(exc))
        return
    code = app.state.console.sessions.new_login_code()
    sys.stderr.write(
        f"intercept: console on {address.base_url}/ for state dir {directory}\n"
        f"intercept: one-time login link (valid 10 minutes): {address.base_url}/login?code={code}\n"
    )
    sys.stderr.flush()
    try:
        serve_in_foreground(app, sock, options)
    except KeyboardInterrupt:
        pass
