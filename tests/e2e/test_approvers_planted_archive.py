"""`approvers keygen` / `public-key` compare the new key with the newest policy archived in the
state dir, a directory the agent can write: a planted archive must cost one line on stderr at
most, never a traceback or a hang after the key is made (found in review).

- A header whose `source:` is deeply nested JSON (RecursionError while reading it).
- A ~1 KB archive of nested YAML aliases, each list ten references to the one before ("billion
  laughs"): refused before anything is expanded (`policy.strict_yaml.refuse_expansion`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from intercept.audit.policy_archive import _HEADER_KEYS, _TITLE
from tests.e2e.support import base_env, ok, run_cli


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return base_env(XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(home))


def plant(state: Path, body: str, source: str = '"policy.yaml"') -> Path:
    """An archive file an agent wrote into the state dir, newest by its header."""
    directory = state / "policies"
    directory.mkdir(parents=True)
    values = {
        "digest": "a" * 64,
        "first-archived": "9999-12-31T00:00:00Z",
        "source": source,
        "redacted": "none",
        "kept": "source text (comments kept)",
        "redacted-digest": "b" * 64,
    }
    header = _TITLE + "\n" + "".join(f"# {key}: {values[key]}\n" for key in _HEADER_KEYS)
    (directory / f"{'a' * 64}.yaml").write_text(header + body)
    return state


def alias_bomb(levels: int) -> str:
    lines = [
        'version: "1"', "tools:", "  t:", "    rules:", "      - name: r", "        conditions:",
        "          - {path: args.x, op: in, value: &a0 [" + ",".join(["1"] * 10) + "]}",
    ]  # fmt: skip
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 10)
        lines.append(f"          - {{path: args.x, op: in, value: &a{i} [{refs}]}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("command", ["keygen", "public-key"])
def test_a_deeply_nested_archive_header_gives_no_traceback(
    env: dict[str, str], tmp_path: Path, command: str
) -> None:
    state = plant(tmp_path / "state", 'version: "1"\n', source="[" * 100_000)
    key = tmp_path / "alice.key"
    if command == "public-key":
        ok(run_cli("approvers", "keygen", "alice", "--no-passphrase", "--out", str(key), env=env))
        args = ["public-key", "alice", "--key", str(key)]
    else:
        args = ["keygen", "alice", "--no-passphrase", "--out", str(key)]
    result = run_cli("approvers", *args, "--state-dir", str(state), env=env)
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 0, result.stderr[-600:]


def test_a_small_archive_of_yaml_aliases_does_not_hang_keygen(env: dict[str, str], tmp_path: Path) -> None:
    body = alias_bomb(8)
    assert len(body) < 1000
    state = plant(tmp_path / "state", body)
    try:
        result = run_cli(
            "approvers", "keygen", "alice", "--no-passphrase", "--out", str(tmp_path / "alice.key"),
            "--state-dir", str(state), env=env, timeout_s=10,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("keygen still comparing the key with a 1 KB planted archive after 10 s")
    ok(result)

