"""The admin API's listening options, shared by the proxy (`--enable-admin-api`) and `serve`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

ADMIN_API_GROUP = "Admin API"


class GroupedOption(click.Option):
    """An option shown under its own heading in --help (`help_group`)."""

    def __init__(self, *args: Any, help_group: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_group = help_group


def listen_options(addr_flag: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`addr_flag` (`--admin-addr` or `--addr`), `--allow-remote`, `--tls-cert`, `--tls-key`."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(
            [
                click.option(
                    addr_flag,
                    "addr",
                    cls=GroupedOption,
                    help_group=ADMIN_API_GROUP,
                    default="127.0.0.1:9111",
                    show_default=True,
                    metavar="HOST:PORT",
                    help="Where the admin API listens (port 0: any free port).",
                ),
                click.option(
                    "--allow-remote",
                    is_flag=True,
                    cls=GroupedOption,
                    help_group=ADMIN_API_GROUP,
                    help="Allow a non-loopback address (needs --tls-cert and --tls-key).",
                ),
                click.option(
                    "--tls-cert",
                    cls=GroupedOption,
                    help_group=ADMIN_API_GROUP,
                    type=click.Path(dir_okay=False, exists=True, path_type=Path),
                    help="TLS certificate (PEM) for the admin API.",
                ),
                click.option(
                    "--tls-key",
                    cls=GroupedOption,
                    help_group=ADMIN_API_GROUP,
                    type=click.Path(dir_okay=False, exists=True, path_type=Path),
                    help="TLS private key (PEM) for the admin API.",
                ),
            ]
        ):
            command = option(command)
        return command

    return decorate


class GroupedHelpCommand(click.Command):
    """A command whose --help lists grouped options (`GroupedOption`) under their own headings."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        format_grouped_options(ctx, formatter, self.get_params(ctx), "Options")


def format_grouped_options(
    ctx: click.Context, formatter: click.HelpFormatter, params: list[click.Parameter], title: str
) -> None:
    """`params` under `title`, and grouped ones under their own heading after it."""
    groups: dict[str, list[tuple[str, str]]] = {title: []}
    for param in params:
        record = param.get_help_record(ctx)
        if record is not None:
            groups.setdefault(getattr(param, "help_group", None) or title, []).append(record)
    for heading, rows in groups.items():
        if rows:
            with formatter.section(heading):
                formatter.write_dl(rows)
