"""`intercept audit export --since T [--until T] [--format jsonl|csv] [--output FILE]`: the events of
a window for a compliance review or a SIEM (`audit/export.py` says what each format holds).

`--output FILE` is written under a temporary name in its directory (0600: the log names what
agents did) and renamed over FILE when complete, so a reader never sees half an export.
"""

from __future__ import annotations

import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import click

from intercept.audit.events import read_events
from intercept.audit.export import Selection, Window, jsonl_lines, parse_moment, select_events, write_csv
from intercept.cmd.options import existing_state_dir, fail, state_dir_option


@click.command("export")
@click.option(
    "--since",
    required=True,
    help="Start of the window, included: an RFC 3339 time (2026-11-30T12:00:00Z), a date, or a duration ago (7d).",
)
@click.option("--until", help="End of the window, excluded: as --since (default: now).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="jsonl: the events as logged; csv: fixed columns.",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE (default: stdout)."
)
@state_dir_option
def export_command(
    since: str, until: str | None, output_format: str, output: Path | None, state_dir: Path | None
) -> None:
    """Export the events from --since up to --until, oldest first: who asked (server, tool, agent,
    client), who decided (actor, channel, votes), what ran (result) and under which policy."""
    now = datetime.now(UTC)
    window = Window(_moment("--since", since, now), _moment("--until", until, now) if until else now)
    if window.until <= window.since:
        fail("--until must be after --since")
    directory = existing_state_dir(state_dir)
    selection = select_events(read_events(directory), window)
    if output is None:
        try:
            _write(selection, output_format, sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:  # `... | head`: the reader is gone, which is not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(0) from None
    else:
        _write_file(output, selection, output_format)
    if selection.unreadable:
        click.echo(
            f"intercept: {selection.unreadable} event{'' if selection.unreadable == 1 else 's'} without a readable time left out",
            err=True,
        )


def _moment(option: str, text: str, now: datetime) -> datetime:
    try:
        return parse_moment(text, now)
    except ValueError as exc:
        fail(f"{option} {exc}")
        raise


def _write(selection: Selection, output_format: str, stream: IO[str]) -> None:
    if output_format == "csv":
        write_csv(selection, stream)
    else:
        stream.writelines(jsonl_lines(selection))


def _write_file(path: Path, selection: Selection, output_format: str) -> None:
    """`path` replaced in one step by the complete export (0600)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            with open(fd, "w", encoding="utf-8", newline="") as stream:
                _write(selection, output_format, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
