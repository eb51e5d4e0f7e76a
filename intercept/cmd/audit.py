"""`intercept audit`: prove afterwards what happened. Each subcommand lives in its own module and is
imported only when asked for (verify, public-key, policy, export)."""

from __future__ import annotations

import importlib

import click

AUDIT_SUBCOMMANDS = {
    "verify": ("intercept.cmd.audit_verify", "verify_command"),
    "public-key": ("intercept.cmd.audit_verify", "public_key_command"),
    "policy": ("intercept.cmd.audit_policy", "policy_command"),
    "export": ("intercept.cmd.audit_export", "export_command"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(AUDIT_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in AUDIT_SUBCOMMANDS:
            return None
        module, attribute = AUDIT_SUBCOMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group("audit", cls=_LazyGroup)
def audit_group() -> None:
    """Verify and export the audit trail: hash-chained events, signed receipts, archived policies."""
