"""The README's demo (`scripts/demo.sh` runs `fixtures/demo.py`) still shows what it says: allowed,
denied and hidden calls, the approval loop run once, a confirmation in the client, and the audit
trail verified afterwards."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.support import base_env
from tests.support import ROOT


def test_the_demo_runs_and_shows_each_step() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "fixtures" / "demo.py")],
        capture_output=True, text=True, cwd=ROOT, env=base_env(), timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for shown in (
        "allowed: echo('hello')",
        "[INTERCEPT POLICY DENIED] Single charge cannot exceed $500.00",
        'Tool "delete_repository" is hidden by policy',
        "MCP error -32003: Approval required for write_file",
        "retry after approval              -> wrote 7 bytes to notes.txt",
        "client asks its human: Allow write_file on tool_server to run once?",
        "write_file(todo.txt)              -> wrote 10 bytes to todo.txt",
        "4 receipts, 0 signed votes; tails not sealed by a checkpoint: none",
        "demo finished",
    ):
        assert shown in out, f"{shown!r} missing from:\n{out}"
    assert "sk_live_" not in out  # the listing shows the redacted copy
