"""The `intercept` executable: subcommands by name, anything else runs the proxy."""

from __future__ import annotations

import sys

import click

from intercept import __version__
from intercept.cmd.approvals import approvals_group
from intercept.cmd.events import events_group
from intercept.cmd.proxy import proxy_command
from intercept.cmd.status import status_command
from intercept.cmd.validate import validate_command


class _InterceptGroup(click.Group):
    """Shows the proxy's own options in `intercept --help` next to the subcommands."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("intercept", "-c POLICY [OPTIONS] [--] COMMAND [ARGS]...")
        formatter.write_usage("intercept", "SUBCOMMAND [ARGS]...")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with click.Context(proxy_command, info_name="intercept") as proxy_ctx:
            rows = [p.get_help_record(proxy_ctx) for p in proxy_command.get_params(proxy_ctx)]
        with formatter.section("Proxy options"):
            formatter.write_dl([r for r in rows if r is not None])
        self.format_commands(ctx, formatter)


@click.group(cls=_InterceptGroup, invoke_without_command=False)
@click.version_option(__version__, prog_name="intercept")
def cli() -> None:
    """A policy proxy for MCP servers: every tools/call is allowed, denied or held for a human.

    Wrap a server in your MCP client's config:

    \b
        intercept -c policy.yaml -- npx -y @modelcontextprotocol/server-filesystem ~/work
    """


cli.add_command(validate_command)
cli.add_command(approvals_group)
cli.add_command(events_group)
cli.add_command(status_command)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in cli.commands or args[0] in ("--help", "-h", "--version"):
        cli.main(args, prog_name="intercept")
    else:
        proxy_command.main(args, prog_name="intercept")
