"""The first thing a user types: typos get click's own messages, file problems name the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.support import RAW_UPSTREAM, ProxyProcess, call, proxy_command, run_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["valdate", "-c", "x.yaml"], "No such command 'valdate'. Did you mean 'validate'?"),
        (["aprovals", "list"], "Did you mean 'approvals'?"),
        (["-c", "p.yaml", "--log-levl", "debug", "--", "srv"], "No such option '--log-levl'. Did you mean '--log-level'?"),
        (["--bogus"], "No such option '--bogus'"),
        (["-c", "p.yaml", "--state-fail-mode", "maybe", "--", "srv"], "'maybe' is not one of 'closed', 'open'"),
    ],
)
def test_typos_get_clicks_message_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    result = run_cli(flag)
    assert result.returncode == 0 and result.stdout.startswith("intercept, version ")


def test_help_lists_h() -> None:
    assert "-h, --help" in run_cli("-h").stdout


def test_policy_file_problems_name_the_file(tmp_path: Path) -> None:
    missing = run_cli("-c", "nope.yaml", "--", sys.executable, "-c", "pass", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"intercept: nothing proxied: nope.yaml: policy file not found: {tmp_path / 'nope.yaml'} "
        f"(working directory: {tmp_path})"
    )
    directory = run_cli("-c", str(tmp_path), "--", sys.executable, "-c", "pass")
    assert "is a directory, not a policy file" in directory.stderr and directory.returncode == 1
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    assert "policy file is empty" in run_cli("-c", str(empty), "--", sys.executable, "-c", "pass").stderr
    for result in (missing, directory):
        assert len(result.stderr.strip().splitlines()) == 1 and "Errno" not in result.stderr


def test_the_log_says_what_happened(tmp_path: Path) -> None:
    """At the default level: one startup line and every call held for approval (a person reading
    the client's MCP log sees it); with --log-level debug also every allowed call."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        'version: "1"\ntools:\n  write_file:\n    rules:\n      - {name: writes need a human, action: require_approval}\n'
        "  drop:\n    rules:\n      - {name: never, action: deny}\n"
    )
    for level, allowed_logged in (("info", False), ("debug", True)):
        proxy = ProxyProcess(
            proxy_command(policy, tmp_path / "state", RAW_UPSTREAM, "--log-level", level)
        )
        try:
            proxy.request(call(1, "echo", {"text": "hi"}))
            approval_id = proxy.request(call(2, "write_file", {"path": "x"}))["error"]["data"]["approval_id"]
            proxy.request(call(3, "drop", {}))
            proxy.wait_for_stderr("denied tool=drop rule=never")
            assert f"proxying raw_server with policy {policy}" in proxy.stderr
            assert f"held tool=write_file for approval {approval_id} (rule writes need a human)" in proxy.stderr
            assert ("allowed tool=echo" in proxy.stderr) is allowed_logged
        finally:
            proxy.stop()
