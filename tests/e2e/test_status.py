"""`intercept status [--json] [--state-dir D]`: instances, calls in the last hour, pending approvals,
top deny rules and last denials, the event log's size and gaps, heartbeat counters, pruning of old
event files (`summarise` on synthetic events: tests/test_summary.py).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from intercept.audit.events import read_events
from intercept.store.timestamps import brief, rfc3339
from tests.e2e.support import RAW_SERVER, RAW_UPSTREAM, Harness, ProxyProcess, call_tool, ok, run_cli
from tests.support import ago

SERVER = "status-test"
DAY_S = 86400.0

POLICY = """
version: "1"
hide: [secret]
tools:
  drop_table:
    rules:
      - name: never drop
        action: deny
  write_file:
    rules:
      - name: writes need a human
        action: require_approval
  exit:
    rules:
      - name: deploys need a human
        action: require_approval
        approval_timeout: 1ms
  echo:
    rules: []
"""


# -- helpers ---------------------------------------------------------------------------------


def status(state_dir: Path, *, as_json: bool = True) -> Any:
    """`intercept status [--json]` on `state_dir`: the parsed JSON, or the text."""
    out = ok(run_cli("status", "--state-dir", str(state_dir), *(("--json",) if as_json else ())))
    return json.loads(out) if as_json else out


def write_events(path: Path, events: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(event) + "\n" for event in events))


@pytest.fixture
def proxy(harness: Harness) -> ProxyProcess:
    """One proxy named SERVER around raw_server with POLICY (the harness stops it)."""
    harness.write_policy(POLICY)
    return harness.start(RAW_UPSTREAM, name=SERVER, handshake_first=False)


def make_calls(proxy: ProxyProcess) -> str:
    """3 allowed, 3 denied (2 by "never drop", 1 hidden), 3 held for approval; returns the
    id of the one approval that is still pending (the other expires at once)."""
    for i in range(3):
        assert call_tool(proxy, f"echo-{i}", "echo", {"i": i})["result"]["isError"] is False
    assert call_tool(proxy, "drop-1", "drop_table", {"table": "a"})["result"]["isError"] is True
    assert call_tool(proxy, "secret", "secret")["result"]["isError"] is True
    assert call_tool(proxy, "drop-2", "drop_table", {"table": "b"})["result"]["isError"] is True
    first = call_tool(proxy, "write-1", "write_file", {"path": "/tmp/x"})
    retry = call_tool(proxy, "write-2", "write_file", {"path": "/tmp/x"})
    assert first["error"]["code"] == retry["error"]["code"] == -32003
    approval_id = first["error"]["data"]["approval_id"]
    assert retry["error"]["data"]["approval_id"] == approval_id  # the retry reuses the pending request
    assert call_tool(proxy, "deploy", "exit", {"code": 0})["error"]["code"] == -32003
    return approval_id


# -- against a real proxy --------------------------------------------------------------------


def test_status_of_a_running_then_stopped_proxy(harness: Harness, proxy: ProxyProcess) -> None:
    proxy.sync()  # the startup event is written before the proxy serves anything
    running = status(harness.state_dir)
    assert [(i["server"], i["pid"], i["state"]) for i in running["instances"]] == [
        (SERVER, proxy.proc.pid, "alive")
    ]
    instance = running["instances"][0]
    assert instance["upstream"] == [sys.executable, str(RAW_SERVER)]
    assert instance["stopped"] is False

    approval_id = make_calls(proxy)
    proxy.close_stdin()
    assert proxy.wait() == 0
    data = status(harness.state_dir)

    [instance] = data["instances"]
    assert (instance["server"], instance["pid"], instance["state"], instance["stopped"]) == (
        SERVER,
        proxy.proc.pid,
        "stopped",
        True,
    )
    assert instance["last_seen"] >= instance["started"]
    assert data["calls_last_hour"] == {"allowed": 3, "denied": 3, "approval_required": 3}
    assert data["top_deny_rules"] == [["never drop", 2], ["(hidden)", 1]]
    assert [(d["server"], d["tool"], d["rule"]) for d in data["last_denied"]] == [
        (SERVER, "drop_table", "never drop"),
        (SERVER, "secret", "(hidden)"),
        (SERVER, "drop_table", "never drop"),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", d["ts"]) for d in data["last_denied"])
    assert data["store_error"] is None

    # The 1 ms approval has expired by now; only the write_file request is waiting.
    [pending] = data["pending_approvals"]
    assert (pending["id"], pending["server"], pending["tool"], pending["rule"]) == (
        approval_id,
        SERVER,
        "write_file",
        "writes need a human",
    )
    assert isinstance(pending["age_s"], int) and 0 <= pending["age_s"] < 60
    assert pending["expires_at"] > rfc3339(time.time() + 3000)

    text = status(harness.state_dir, as_json=False)
    assert f"State dir: {harness.state_dir}" in text
    assert re.search(rf"^  {SERVER}\s+pid {proxy.proc.pid}\s+stopped\s+started ", text, re.M)
    assert "Calls in the last hour: 3 allowed, 3 denied, 3 held for approval" in text
    assert re.search(rf"^  {approval_id}  {SERVER}/write_file  rule 'writes need a human'  waiting \d+s$", text, re.M)
    assert "Top deny rules:\n       2  never drop\n       1  (hidden)\n" in text
    denials = text.split("Last denied calls:\n", 1)[1].splitlines()
    # Newest first in the human form.
    assert [line.split("  ", 2)[2] for line in denials] == [
        f"{SERVER}/drop_table  rule 'never drop'",
        f"{SERVER}/secret  rule '(hidden)'",
        f"{SERVER}/drop_table  rule 'never drop'",
    ]


def test_a_killed_proxy_is_dead(harness: Harness, proxy: ProxyProcess) -> None:
    proxy.sync()
    proxy.stop()  # SIGKILL: no shutdown event
    [instance] = status(harness.state_dir)["instances"]
    assert (instance["pid"], instance["stopped"], instance["state"]) == (proxy.proc.pid, False, "dead")
    assert f"pid {proxy.proc.pid} dead" in re.sub(r"\s+", " ", status(harness.state_dir, as_json=False))


def test_status_of_an_empty_state_dir(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()  # a missing one is an error (tests/e2e/test_events_cli.py)
    data = status(tmp_path / "nothing")
    assert isinstance(data.pop("database")["bytes"], int)
    assert data == {
        "instances": [],
        "calls_last_hour": {"allowed": 0, "denied": 0, "approval_required": 0},
        "top_deny_rules": [],
        "last_denied": [],
        "policy_mismatches": [],
        "pending_approvals": [],
        "store_error": None,
        "event_files": {"count": 0, "bytes": 0},
        "event_gaps": [],
    }
    text = status(tmp_path / "nothing", as_json=False)
    assert "Instances:\n  none recorded" in text
    assert "Calls in the last hour: 0 allowed, 0 denied, 0 held for approval" in text
    assert "Pending approvals: none" in text
    assert "Event log: 0 files, 0 bytes" in text
    assert "Gaps in the event log" not in text


def test_status_reports_an_unusable_approval_store(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "intercept.sqlite").write_bytes(b"garbage" * 500)
    data = status(state_dir)
    assert data["pending_approvals"] == []
    assert data["store_error"]
    assert "approval store unavailable" in status(state_dir, as_json=False)


# -- pruning ---------------------------------------------------------------------------------


def test_prune_deletes_event_files_older_than_ninety_days_and_status_does_not(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    events = state_dir / "events"
    now = time.time()
    old, recent = events / "old.jsonl", events / "recent.jsonl"
    write_events(old, [{"ts": ago(91 * DAY_S), "type": "startup", "instance": "ghost", "server": "ghost", "pid": 1}])
    write_events(
        recent, [{"ts": ago(89 * DAY_S), "type": "startup", "instance": "kept", "server": "kept", "pid": "n/a"}]
    )
    os.utime(old, (now - 91 * DAY_S, now - 91 * DAY_S))
    os.utime(recent, (now - 89 * DAY_S, now - 89 * DAY_S))

    status(state_dir)
    assert old.exists()  # status only reads
    result = run_cli("prune", "--state-dir", str(state_dir))
    assert result.returncode == 0 and "1 event files" in result.stdout, result
    assert not old.exists()
    assert recent.exists()
    data = status(state_dir)
    assert [(i["server"], i["pid"], i["state"]) for i in data["instances"]] == [("kept", None, "unknown")]
    pruned = [e for e in read_events(state_dir) if e["type"] == "events_pruned"]
    assert [(e["files"], e["retention_s"]) for e in pruned] == [(1, 90 * DAY_S)]


# -- the event log itself ----------------------------------------------------------------------


def test_status_shows_the_latest_gaps_in_the_event_log_and_its_size(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    gaps = [
        {
            "ts": ago(600 - n),
            "type": "events_gap",
            "instance": f"srv-{n}-abc",
            "lost": n * 10,
            "since": ago(900 - n),
            "until": ago(600 - n),
            "error": "No space left on device",
        }
        for n in range(7)
    ]
    gaps[6]["lost"] = "many"  # written by something else: not a count
    write_events(state_dir / "events" / "srv-1-abc.jsonl", gaps[:4])
    write_events(state_dir / "events" / "srv-1-abc.2.jsonl", [*gaps[4:], {"ts": ago(1), "type": "heartbeat"}])
    size = sum(path.stat().st_size for path in (state_dir / "events").iterdir())

    data = status(state_dir)
    assert data["event_files"] == {"count": 2, "bytes": size}
    assert [(g["instance"], g["lost"]) for g in data["event_gaps"]] == [
        ("srv-2-abc", 20),
        ("srv-3-abc", 30),
        ("srv-4-abc", 40),
        ("srv-5-abc", 50),
        ("srv-6-abc", None),
    ]
    assert data["event_gaps"][0] == {key: gaps[2][key] for key in ("ts", "instance", "lost", "since", "until", "error")}

    text = status(state_dir, as_json=False)
    assert size > 1024 and f"\nEvent log: 2 files, {size / 1024:.1f} KiB; state database: " in text
    shown = text.split("Gaps in the event log (latest first):\n", 1)[1].splitlines()
    assert shown == [
        f"  {brief(gap['ts'])}  {gap['instance']}  {count} events lost since {brief(gap['since'])} (No space left on device)"
        for gap, count in zip(reversed(gaps[2:]), ["an unknown number of", 50, 40, 30, 20], strict=True)
    ]


# -- heartbeat counters and the summary ------------------------------------------------------


def test_heartbeat_counters_are_shown_for_their_instance(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    write_events(
        state_dir / "events" / "mine.jsonl",
        [
            {
                "ts": ago(120),
                "type": "startup",
                "instance": "i1",
                "server": "gh",
                "pid": os.getpid(),
                "upstream": ["x"],
            },
            {"ts": ago(60), "type": "heartbeat", "instance": "i1", "server": "gh", "counters": {"echo._rate_hour": 2}},
            {
                "ts": ago(1),
                "type": "heartbeat",
                "instance": "i1",
                "server": "gh",
                "counters": {"echo._rate_hour": 3, "_global.spend": 40},
            },
        ],
    )
    data = status(state_dir)
    [instance] = data["instances"]
    assert instance["counters"] == {"echo._rate_hour": 3, "_global.spend": 40}
    assert instance["state"] == "alive"  # this test process's pid
    text = status(state_dir, as_json=False)
    assert "counters: _global.spend=40, echo._rate_hour=3" in text
    assert "upstream: x" in text
