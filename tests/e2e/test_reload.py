"""Hot reload in a live session: valid edit, invalid edit, atomic rename, delete + recreate, symlink,
and a file written in pieces (only the finished version is loaded).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from intercept.policy import parse_policy
from intercept.proxy.policy_watcher import STABLE_S
from tests.e2e.support import RAW_SERVER, RAW_UPSTREAM, ProxyProcess, call, initialize_message, proxy_command

ALLOW = 'version: "1"\ntools:\n  echo:\n    rules: []\n'
DENY = 'version: "1"\ntools:\n  echo:\n    rules:\n      - name: "echo off"\n        action: deny\n'
RATE = 'version: "1"\ntools:\n  echo:\n    rules:\n      - name: "two an hour"\n        rate_limit: 2/hour\n'
RATE_EDITED = 'version: "1"\ndescription: edited\ntools:\n  echo:\n    rules:\n      - name: "two an hour"\n        rate_limit: 2/hour\n'
INVALID = 'version: "1"\ntools:\n  echo:\n    rules:\n      - name: "typo"\n        acton: deny\n'
# Written in two pieces: the first is a valid policy on its own, but weaker (echo allowed).
PIECEWISE = (
    'version: "1"\ndescription: v2\ntools:\n  echo:\n    rules:\n      - name: "text only"\n'
    "        conditions: [{path: args.text, op: exists, value: true}]\n",
    '  "*":\n    rules:\n      - name: "nothing else"\n        action: deny\n',
)
WRITER_PAUSE_S = 0.6
RELOADED = "policy reloaded"
REJECTED = "policy reload rejected"


def verdict(proxy: ProxyProcess, request_id: int) -> str:
    reply = proxy.request(call(request_id, "echo", {"text": "x"}))
    return "denied" if reply["result"]["isError"] else "allowed"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[ProxyProcess, Path]]:
    policy = tmp_path / "conf" / "policy.yaml"
    policy.parent.mkdir()
    policy.write_text(ALLOW)
    proxy = ProxyProcess(proxy_command(policy, tmp_path / "state", RAW_UPSTREAM))
    proxy.sync()
    yield proxy, policy
    proxy.stop()


def reload_events(state_dir: Path) -> list[dict[str, object]]:
    events = []
    for path in (state_dir / "events").glob("*.jsonl"):
        events += [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if e["type"] == "config_reload"]


def test_valid_edit_takes_effect_without_restart(live: tuple[ProxyProcess, Path], tmp_path: Path) -> None:
    proxy, policy = live
    assert verdict(proxy, 1) == "allowed"
    policy.write_text(DENY)
    proxy.wait_for_stderr(RELOADED)
    assert verdict(proxy, 2) == "denied"
    assert [e["status"] for e in reload_events(tmp_path / "state")] == ["success"]


def test_invalid_edit_keeps_previous_policy(live: tuple[ProxyProcess, Path], tmp_path: Path) -> None:
    proxy, policy = live
    policy.write_text(INVALID)
    proxy.wait_for_stderr(REJECTED)
    assert 'unknown key "acton"' in proxy.stderr
    assert verdict(proxy, 1) == "allowed"
    events = reload_events(tmp_path / "state")
    assert events[-1]["status"] == "failure"
    assert any("acton" in error for error in events[-1]["errors"])  # type: ignore[union-attr]
    policy.write_text(DENY)
    proxy.wait_for_stderr(RELOADED)
    assert verdict(proxy, 2) == "denied"


def test_atomic_rename_is_picked_up(live: tuple[ProxyProcess, Path]) -> None:
    proxy, policy = live
    temporary = policy.with_name(".policy.yaml.swp")
    temporary.write_text(DENY)
    os.replace(temporary, policy)
    proxy.wait_for_stderr(RELOADED)
    assert verdict(proxy, 1) == "denied"


def test_delete_and_recreate(live: tuple[ProxyProcess, Path]) -> None:
    proxy, policy = live
    policy.unlink()
    proxy.wait_for_stderr("disappeared")
    assert verdict(proxy, 1) == "allowed"
    policy.write_text(DENY)
    proxy.wait_for_stderr(RELOADED)
    assert verdict(proxy, 2) == "denied"


def test_symlinked_config_target_edit(tmp_path: Path) -> None:
    real = tmp_path / "real" / "policy.yaml"
    real.parent.mkdir()
    real.write_text(ALLOW)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    proxy = ProxyProcess(proxy_command(link, tmp_path / "state", RAW_UPSTREAM))
    try:
        assert verdict(proxy, 1) == "allowed"
        real.write_text(DENY)
        proxy.wait_for_stderr(RELOADED)
        assert verdict(proxy, 2) == "denied"
    finally:
        proxy.stop()


def test_reload_never_resets_counters(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(RATE)
    proxy = ProxyProcess(proxy_command(policy, tmp_path / "state", RAW_UPSTREAM))
    try:
        assert [verdict(proxy, i) for i in range(2)] == ["allowed", "allowed"]
        policy.write_text(RATE_EDITED)
        proxy.wait_for_stderr(RELOADED)
        assert verdict(proxy, 3) == "denied"
    finally:
        proxy.stop()


def test_symlink_repointed_to_another_directory_is_followed(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "policy.yaml", tmp_path / "b" / "policy.yaml"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text(ALLOW)
    link = tmp_path / "link.yaml"
    link.symlink_to(first)
    proxy = ProxyProcess(proxy_command(link, tmp_path / "state", RAW_UPSTREAM))
    try:
        proxy.sync()
        second.write_text(ALLOW + "description: b\n")
        swap = tmp_path / "link.tmp"
        swap.symlink_to(second)
        os.replace(swap, link)
        proxy.wait_for_stderr(RELOADED)
        second.write_text(DENY)  # an edit in the new target's directory
        proxy.wait_for_stderr(RELOADED, count=2)
        assert verdict(proxy, 1) == "denied"
    finally:
        proxy.stop()


def test_file_written_in_pieces_is_loaded_only_when_finished(tmp_path: Path) -> None:
    """The reproduced attack: truncate, write a valid but weaker prefix, pause 0.6 s, write the rest."""
    prefix, rest = PIECEWISE
    weak, full = parse_policy(prefix), parse_policy(prefix + rest)
    assert WRITER_PAUSE_S < STABLE_S
    policy = tmp_path / "policy.yaml"
    policy.write_text(DENY)
    proxy = ProxyProcess(proxy_command(policy, tmp_path / "state", RAW_UPSTREAM))
    try:
        proxy.sync()
        with policy.open("w") as writer:  # truncates
            writer.write(prefix)
            writer.flush()
            paused_at = time.monotonic()
            with pytest.raises(TimeoutError):  # before, the prefix was loaded ~0.1 s after this write
                proxy.wait_for_stderr(RELOADED, timeout_s=WRITER_PAUSE_S * 0.75)
            assert verdict(proxy, 1) == "denied"  # still the old policy; the prefix allows echo
            time.sleep(max(0.0, paused_at + WRITER_PAUSE_S - time.monotonic()))  # the rest of the writer's pause
            writer.write(rest)
        proxy.wait_for_stderr(RELOADED)
        assert verdict(proxy, 2) == "denied"
        events = reload_events(tmp_path / "state")
        assert [(e["status"], e.get("policy_digest")) for e in events] == [("success", full.digest)]
        assert weak.digest != full.digest
    finally:
        proxy.stop()


# An upstream that tells when the proxy has forwarded the client's initialize (so the policy is
# loaded: that happens before any client line is read), then waits for "go" before its first
# output (so the proxy has not yet assembled the rest, the reload watcher included).
SLOW_START = """
import json, os, sys, time
first = sys.stdin.readline()
open(sys.argv[1], "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
answer = {"jsonrpc": "2.0", "id": json.loads(first)["id"], "result": {"protocolVersion": "2025-06-18",
          "capabilities": {"tools": {}}, "serverInfo": {"name": "slow", "version": "1"}}}
sys.stdout.write(json.dumps(answer) + "\\n")
sys.stdout.flush()
os.execv(sys.executable, [sys.executable, sys.argv[3]])
"""


def test_an_edit_made_while_the_proxy_starts_is_not_lost(tmp_path: Path) -> None:
    """The policy is loaded while the upstream starts and the watcher begins later: it must compare
    against the bytes that were loaded, not re-read the file (which would swallow the edit)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW)
    forwarded, go = tmp_path / "forwarded", tmp_path / "go"
    upstream = [sys.executable, "-c", SLOW_START, str(forwarded), str(go), str(RAW_SERVER)]
    proxy = ProxyProcess(proxy_command(policy, tmp_path / "state", upstream))
    try:
        proxy.send(initialize_message(0))
        deadline = time.monotonic() + 20
        while not forwarded.exists():  # written by another process, no other signal: poll (bounded)
            assert time.monotonic() < deadline, proxy.stderr
            time.sleep(0.01)
        replacement = tmp_path / "policy.yaml.new"
        replacement.write_text(DENY)
        os.replace(replacement, policy)
        go.touch()
        assert proxy.read()["id"] == 0
        proxy.wait_for_stderr(RELOADED)
        assert verdict(proxy, 1) == "denied"
    finally:
        proxy.stop()
