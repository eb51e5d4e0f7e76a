"""The first thing a user types: typos get click's own messages, file problems name the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "intercept", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=30, check=False
    )


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
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    result = run(flag)
    assert result.returncode == 0 and result.stdout.startswith("intercept, version ")


def test_help_lists_h() -> None:
    assert "-h, --help" in run("-h").stdout


def test_policy_file_problems_name_the_file(tmp_path: Path) -> None:
    missing = run("-c", "nope.yaml", "--", sys.executable, "-c", "pass", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"intercept: nothing proxied: nope.yaml: policy file not found: {tmp_path / 'nope.yaml'} "
        f"(working directory: {tmp_path})"
    )
    directory = run("-c", str(tmp_path), "--", sys.executable, "-c", "pass")
    assert "is a directory, not a policy file" in directory.stderr and directory.returncode == 1
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    assert "policy file is empty" in run("-c", str(empty), "--", sys.executable, "-c", "pass").stderr
    for result in (missing, directory):
        assert len(result.stderr.strip().splitlines()) == 1 and "Errno" not in result.stderr
