"""Options shared by several commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

STATE_DIR_ENV = "INTERCEPT_STATE_DIR"


def default_state_dir() -> Path:
    """`$INTERCEPT_STATE_DIR`, else `~/.intercept/state`."""
    configured = os.environ.get(STATE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".intercept" / "state"


def state_dir_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Directory for the database and events (default: ${STATE_DIR_ENV} or ~/.intercept/state).",
    )(command)


def fail(message: str) -> None:
    """One line on stderr, exit 1."""
    click.echo(f"intercept: {message}", err=True)
    raise SystemExit(1)
