"""The click group of the `intercept` executable: subcommands loaded by name, help and version.

Subcommand modules are imported only when asked for.
"""

from __future__ import annotations

import difflib
import importlib

import click

from intercept import __version__
from intercept.cmd.admin_options import format_grouped_options
from intercept.cmd.main import SUBCOMMANDS


def _load(name: str) -> click.Command:
    module, attribute = SUBCOMMANDS[name]
    command: click.Command = getattr(importlib.import_module(module), attribute)
    return command


class _InterceptGroup(click.Group):
    """Loads subcommands lazily and shows the proxy's own options in `intercept --help`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _load(cmd_name) if cmd_name in SUBCOMMANDS else None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in SUBCOMMANDS and not args[0].startswith("-"):
            close = difflib.get_close_matches(args[0], SUBCOMMANDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else " (the proxy's own line starts with -c POLICY)"
            ctx.fail(f"No such command {args[0]!r}.{hint}")
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("intercept", "-c POLICY [OPTIONS] [--] COMMAND [ARGS]...")
        formatter.write_usage("intercept", "SUBCOMMAND [ARGS]...")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from intercept.cmd.proxy import proxy_command

        with click.Context(proxy_command, info_name="intercept", help_option_names=["-h", "--help"]) as proxy_ctx:
            format_grouped_options(proxy_ctx, formatter, proxy_command.get_params(proxy_ctx), "Proxy options")
        self.format_commands(ctx, formatter)


@click.group(
    cls=_InterceptGroup, invoke_without_command=False, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, "-V", "--version", prog_name="intercept")
def cli() -> None:
    """A policy proxy for MCP servers: every tools/call is allowed, denied or held for a human.

    Wrap a server in your MCP client's config:

    \b
        intercept -c policy.yaml -- npx -y @modelcontextprotocol/server-filesystem ~/work
    """
