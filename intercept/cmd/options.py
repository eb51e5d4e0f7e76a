"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from intercept.cmd.state_dir import STATE_DIR_ENV, default_state_dir

__all__ = [
    "AGENT_NAME",
    "DURATION",
    "STATE_DIR_ENV",
    "default_state_dir",
    "existing_state_dir",
    "fail",
    "state_dir_option",
]


class _Duration(click.ParamType):
    """A duration such as `90d`, `12h`, `1h30m`, in seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        from intercept.durations import parse_duration_s

        try:
            return parse_duration_s(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


class _AgentName(click.ParamType):
    """An agent name (`--agent`): see `policy.agents.name_problem`."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from intercept.policy.agents import name_problem

        problem = name_problem(value)
        if problem is not None:
            from intercept.safe_text import escape_unsafe

            self.fail(escape_unsafe(f"{problem}, got {value!r}"), param, ctx)
        return str(value)


AGENT_NAME = _AgentName()


def state_dir_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Directory for the database and events (default: ${STATE_DIR_ENV} or ~/.intercept/state).",
    )(command)


def fail(message: str) -> None:
    """One line on stderr, exit 1; control and bidirectional characters escaped (messages can carry
    names and errors from files others wrote)."""
    from intercept.safe_text import escape_unsafe

    click.echo(f"intercept: {escape_unsafe(message)}", err=True)
    raise SystemExit(1)


def existing_state_dir(state_dir: Path | None) -> Path:
    """The state dir a reading command uses; fails naming it when it does not exist (a typo in
    --state-dir or $INTERCEPT_STATE_DIR must not read as "nothing happened")."""
    directory = (state_dir or default_state_dir()).expanduser()
    if not directory.is_dir():
        fail(f"no state dir at {directory} (wrong --state-dir or ${STATE_DIR_ENV}?)")
    return directory
