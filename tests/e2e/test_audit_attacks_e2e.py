"""Second attacker-style review of `intercept audit verify` as a process: what is planted in the
state dir must give findings or one line and a non-zero exit, never a hang or a traceback. Each
test failed on the reviewed commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from intercept.audit.events import events_dir
from intercept.audit.proxy_key import load_or_create
from tests.e2e.support import run_cli
from tests.test_event_chain import lines_of, make_state_dir, write_lines


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    make_state_dir(directory)
    return directory


@pytest.fixture
def public_key_file(state_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "proxy.pub"
    path.write_text(load_or_create(state_dir).public_line() + "\n")
    return path


def verify(state_dir: Path, public_key_file: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("audit", "verify", "--state-dir", str(state_dir), "--public-key", str(public_key_file), timeout_s=20)


def test_a_fifo_named_like_an_event_file_does_not_hang_verify(state_dir: Path, public_key_file: Path) -> None:
    """load_files reads every `*.jsonl` with Path.read_bytes(): a FIFO blocks it forever (a
    symlink to /dev/zero would fill memory). It must skip or report what is not a regular file
    (O_NOFOLLOW | O_NONBLOCK and S_ISREG, as the writers do)."""
    os.mkfifo(events_dir(state_dir) / "zz-planted.jsonl")
    try:
        result = verify(state_dir, public_key_file)
    except subprocess.TimeoutExpired:
        pytest.fail("audit verify hung on a FIFO in the events dir")
    assert result.returncode == 1 and "zz-planted.jsonl" in result.stdout + result.stderr


def test_a_directory_named_like_an_event_file_does_not_hide_the_real_breaks(
    state_dir: Path, public_key_file: Path
) -> None:
    """A directory `x.jsonl` in the events dir makes verify print only `cannot read the event
    files: Is a directory` and stop: one planted name hides every finding of every other file."""
    name = "srv-1-abc.jsonl"
    lines = lines_of(state_dir, name)
    lines[2] = lines[2].replace(b'"apr_0"', b'"apr_9"')
    write_lines(state_dir, name, lines)
    (events_dir(state_dir) / "zz-planted.jsonl").mkdir()
    result = verify(state_dir, public_key_file)
    assert result.returncode == 1
    assert f"events/{name}:4:" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("where", ["events", "checkpoint"])
def test_planted_garbage_is_a_finding_not_a_traceback(state_dir: Path, public_key_file: Path, where: str) -> None:
    name = "srv-2-def.jsonl"
    lines = lines_of(state_dir, name)
    if where == "events":
        lines.append(b"[" * 200_000)
    else:
        lines[1] = lines[1].replace(b'"sealed_seq":1,', b'"sealed_seq":1e400,')
    write_lines(state_dir, name, lines)
    result = verify(state_dir, public_key_file)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert f"events/{name}:" in result.stdout


def test_events_tail_and_status_survive_a_planted_deep_line(state_dir: Path) -> None:
    """The same RecursionError reaches `events tail` and `status` (events._read_file catches
    ValueError only); that reader predates the chain, but the chain's new readers copied it."""
    name = "srv-2-def.jsonl"
    write_lines(state_dir, name, [*lines_of(state_dir, name), b"[" * 200_000])
    for command in (("events", "tail"), ("status",), ("audit", "export", "--since", "3650d")):
        result = run_cli(*command, "--state-dir", str(state_dir), timeout_s=20)
        assert "Traceback" not in result.stderr, (command, result.stderr[-400:])
