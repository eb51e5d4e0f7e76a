"""`intercept events tail` and `intercept status` as a user runs them: filters, a missing state
dir, a reader that stops early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intercept.store.timestamps import rfc3339
from tests.e2e.support import ROOT, run_cli


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state dir whose event log holds known events: old and new, two servers, two tools."""
    events = tmp_path / "events"
    events.mkdir(parents=True)
    now = time.time()
    rows = [
        {"ts": rfc3339(now - 7200), "type": "tool_call", "server": "files", "tool": "read_file", "result": "allowed"},
        {"ts": rfc3339(now - 60), "type": "tool_call", "server": "files", "tool": "write_file", "result": "denied"},
        {"ts": rfc3339(now - 30), "type": "approval_requested", "server": "git", "tool": "push", "approval_id": "apr_1"},
        {"ts": rfc3339(now - 10), "type": "tool_call", "server": "git", "tool": "push", "result": "allowed"},
    ]
    (events / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def tail(state_dir: Path, *args: str) -> list[dict[str, object]]:
    result = run_cli("events", "tail", "--json", "-n", "100", "--state-dir", str(state_dir), *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_filters(state_dir: Path) -> None:
    assert [e["tool"] for e in tail(state_dir)] == ["read_file", "write_file", "push", "push"]
    assert [e["tool"] for e in tail(state_dir, "--since", "1h")] == ["write_file", "push", "push"]
    assert [e["type"] for e in tail(state_dir, "--type", "approval_requested")] == ["approval_requested"]
    assert [e["tool"] for e in tail(state_dir, "--tool", "push", "--type", "tool_call")] == ["push"]
    assert [e["server"] for e in tail(state_dir, "--server", "files", "--since", "2m")] == ["files"]
    since = rfc3339(time.time() - 45).replace(".000000Z", "Z")
    assert [e["type"] for e in tail(state_dir, "--since", since)] == ["approval_requested", "tool_call"]


def test_a_bad_since_is_one_line(state_dir: Path) -> None:
    result = run_cli("events", "tail", "--since", "yesterday", "--state-dir", str(state_dir))
    assert result.returncode == 1
    assert result.stderr.startswith("intercept: --since 'yesterday' is neither a duration")


@pytest.mark.parametrize("args", [("events", "tail"), ("status",), ("status", "--json")])
def test_a_missing_state_dir_is_named(tmp_path: Path, args: tuple[str, ...]) -> None:
    missing = tmp_path / "nope"
    result = run_cli(*args, "--state-dir", str(missing))
    assert result.returncode == 1
    assert result.stderr == f"intercept: no state dir at {missing} (wrong --state-dir or $INTERCEPT_STATE_DIR?)\n"
    assert not missing.exists()


def test_a_reader_that_stops_early_is_not_an_error(state_dir: Path) -> None:
    """`intercept events tail | head -1` must exit 0 without a traceback."""
    now = time.time()
    many = "".join(
        json.dumps({"ts": rfc3339(now - 5 + i / 10_000), "type": "tool_call", "tool": f"t{i}"}) + "\n"
        for i in range(20_000)
    )
    (state_dir / "events" / "y.jsonl").write_text(many)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tail_proc = subprocess.Popen(
        [sys.executable, "-m", "intercept", "events", "tail", "-n", "20000", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert tail_proc.stdout is not None and tail_proc.stderr is not None
    tail_proc.stdout.readline()
    tail_proc.stdout.close()  # as `head -1` does
    assert tail_proc.wait(timeout=30) == 0
    assert tail_proc.stderr.read() == b""
