"""The `intercept` executable: subcommands by name, anything else runs the proxy.

The proxy path (which an MCP client spawns and waits on) loads nothing it does not use: the
usual `-c POLICY [OPTIONS] -- COMMAND` line is parsed without click (`cmd.run_proxy`); anything
else goes through click, for its help and error messages.
"""

from __future__ import annotations

import sys

SUBCOMMANDS = {
    "validate": ("intercept.cmd.validate", "validate_command"),
    "approvals": ("intercept.cmd.approvals", "approvals_group"),
    "events": ("intercept.cmd.events", "events_group"),
    "status": ("intercept.cmd.status", "status_command"),
    "prune": ("intercept.cmd.prune", "prune_command"),
    "serve": ("intercept.cmd.serve", "serve_command"),
    "admin": ("intercept.cmd.admin", "admin_group"),
    "audit": ("intercept.cmd.audit", "audit_group"),
    "approvers": ("intercept.cmd.approvers", "approvers_group"),
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # A first word that is not an option is a subcommand (possibly mistyped: click then says so and
    # suggests one); the proxy's own command line starts with its options (`-c POLICY ...`).
    if not args or not args[0].startswith("-") or args[0] in ("--help", "-h", "--version", "-V"):
        from intercept.cmd.cli import cli

        cli.main(args, prog_name="intercept")
        return
    from intercept.cmd.run_proxy import fast_proxy_args, run_proxy

    parsed = fast_proxy_args(args)
    if parsed is not None:
        run_proxy(parsed)
    from intercept.cmd.proxy import proxy_command

    proxy_command.main(args, prog_name="intercept")
