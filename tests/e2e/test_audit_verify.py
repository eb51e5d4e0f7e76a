"""`intercept audit verify` and `audit public-key` as processes, on the events a real proxy and the
approvals CLI wrote (the checks themselves, line by line: tests/test_event_chain.py)."""

from __future__ import annotations

import json
from pathlib import Path

from intercept.audit.events import events_dir
from tests.e2e.support import (
    SCRIPTED_UPSTREAM,
    Harness,
    ask_and_approve,
    call_tool,
    ok,
    one_line_error,
    run_cli,
)

POLICY = """version: "1"
tools:
  reject:
    rules:
      - name: "reject needs a human"
        action: require_approval
"""


def run_a_session(harness: Harness) -> None:
    """Allowed calls, one approved through the CLI, then a clean exit."""
    harness.write_policy(POLICY)
    proxy = harness.start(SCRIPTED_UPSTREAM, name="scripted")
    try:
        for n in range(5):
            assert "result" in call_tool(proxy, f"echo-{n}", "echo", {"text": str(n)})
        ask_and_approve(proxy, harness.state_dir, "ask", "reject", {"why": "x"})
        call_tool(proxy, "run", "reject", {"why": "x"})
        proxy.close_stdin()
        assert proxy.wait() == 0
    finally:
        proxy.stop()


def test_a_real_session_verifies_and_an_edit_is_named_by_file_and_line(harness: Harness, tmp_path: Path) -> None:
    run_a_session(harness)
    state = str(harness.state_dir)
    public = tmp_path / "proxy.pub"
    public.write_text(ok(run_cli("audit", "public-key", "--state-dir", state)))
    assert public.read_text().startswith("ed25519:")

    summary = ok(run_cli("audit", "verify", "--state-dir", state, "--public-key", str(public)))
    assert summary.startswith("ok: 2 files, ") and "tails not sealed by a checkpoint: none" in summary
    names = sorted(path.name for path in events_dir(harness.state_dir).glob("*.jsonl"))
    assert names[0] == "approvals-cli.jsonl"
    types = [json.loads(line)["type"] for line in (events_dir(harness.state_dir) / names[1]).read_text().splitlines()]
    assert types[0] == "startup" and types[-2:] == ["shutdown", "chain_checkpoint"]
    assert {"tool_call", "approval_requested", "approval_consumed"} <= set(types)

    proxy_file = events_dir(harness.state_dir) / names[1]
    lines = proxy_file.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"echo"', '"ECHO"')
    proxy_file.write_text("".join(lines))
    broken = run_cli("audit", "verify", "--state-dir", state, "--public-key", str(public))
    assert broken.returncode == 1, broken
    assert broken.stdout.splitlines()[0].startswith(f"events/{names[1]}:4: prev is not the hash")


def test_a_key_others_can_read_is_refused_in_one_line(harness: Harness) -> None:
    run_a_session(harness)
    (harness.state_dir / "proxy.key").chmod(0o644)
    line = one_line_error(run_cli("audit", "verify", "--state-dir", str(harness.state_dir)))
    assert "readable by group or others" in line
    line = one_line_error(run_cli("audit", "public-key", "--state-dir", str(harness.state_dir)))
    assert "readable by group or others" in line


def test_a_bad_public_key_file_is_refused_in_one_line(harness: Harness, tmp_path: Path) -> None:
    harness.state_dir.mkdir()
    public = tmp_path / "proxy.pub"
    public.write_text("ssh-ed25519 AAAA")
    line = one_line_error(
        run_cli("audit", "verify", "--state-dir", str(harness.state_dir), "--public-key", str(public))
    )
    assert line == f"intercept: {public}: the proxy's public key must start with 'ed25519:'"
