"""`intercept approvers`: the people who may decide, and their signing keys."""

from __future__ import annotations

import click


@click.group("approvers")
def approvers_group() -> None:
    """Approver signing keys (Ed25519): `keygen` makes one and prints the policy's public key line."""
