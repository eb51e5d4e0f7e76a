"""`intercept status [--json] [--state-dir D]`: instances, calls in the last hour, pending approvals,
top deny rules and last denials, the event log's size and gaps, pruning of old event files; and
`summarise` on synthetic events (heartbeat counters, windows, caps), since a real heartbeat comes
only once a minute.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from intercept.audit.events import read_events
from intercept.audit.summary import LAST_DENIED, TOP_RULES, summarise
from intercept.store.timestamps import brief, rfc3339
from tests.approval_support import intercept
from tests.support import RAW_SERVER, ROOT, ProxyProcess, call, proxy_command

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
    command = [sys.executable, "-m", "intercept", "status", "--state-dir", str(state_dir)]
    if as_json:
        command.append("--json")
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if as_json else done.stdout


def write_events(path: Path, events: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(event) + "\n" for event in events))


def ago(seconds: float, now_s: float | None = None) -> str:
    return rfc3339((time.time() if now_s is None else now_s) - seconds)


class Session:
    """One proxy around raw_server with POLICY, and the answers it gave."""

    def __init__(self, tmp_path: Path) -> None:
        policy_dir = tmp_path / "policy"
        policy_dir.mkdir()
        (policy_dir / "policy.yaml").write_text(POLICY)
        self.state_dir = tmp_path / "state"
        self.proxy = ProxyProcess(
            proxy_command(
                policy_dir / "policy.yaml", self.state_dir, [sys.executable, str(RAW_SERVER)], "--name", SERVER
            )
        )

    def call(self, request_id: Any, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        self.proxy.send(call(request_id, tool, arguments))
        while True:
            answer = self.proxy.read()
            if isinstance(answer, dict) and answer.get("id") == request_id:
                return answer


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    s = Session(tmp_path)
    yield s
    s.proxy.stop()


def make_calls(s: Session) -> str:
    """3 allowed, 3 denied (2 by "never drop", 1 hidden), 3 held for approval; returns the
    id of the one approval that is still pending (the other expires at once)."""
    for i in range(3):
        assert s.call(f"echo-{i}", "echo", {"i": i})["result"]["isError"] is False
    assert s.call("drop-1", "drop_table", {"table": "a"})["result"]["isError"] is True
    assert s.call("secret", "secret")["result"]["isError"] is True
    assert s.call("drop-2", "drop_table", {"table": "b"})["result"]["isError"] is True
    first = s.call("write-1", "write_file", {"path": "/tmp/x"})
    retry = s.call("write-2", "write_file", {"path": "/tmp/x"})
    assert first["error"]["code"] == retry["error"]["code"] == -32003
    approval_id = first["error"]["data"]["approval_id"]
    assert retry["error"]["data"]["approval_id"] == approval_id  # the retry reuses the pending request
    assert s.call("deploy", "exit", {"code": 0})["error"]["code"] == -32003
    return approval_id


# -- against a real proxy --------------------------------------------------------------------


def test_status_of_a_running_then_stopped_proxy(session: Session) -> None:
    session.proxy.sync()  # the startup event is written before the proxy serves anything
    running = status(session.state_dir)
    assert [(i["server"], i["pid"], i["state"]) for i in running["instances"]] == [
        (SERVER, session.proxy.proc.pid, "alive")
    ]
    instance = running["instances"][0]
    assert instance["upstream"] == [sys.executable, str(RAW_SERVER)]
    assert instance["stopped"] is False

    approval_id = make_calls(session)
    session.proxy.close_stdin()
    assert session.proxy.wait() == 0
    data = status(session.state_dir)

    [instance] = data["instances"]
    assert (instance["server"], instance["pid"], instance["state"], instance["stopped"]) == (
        SERVER,
        session.proxy.proc.pid,
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

    text = status(session.state_dir, as_json=False)
    assert f"State dir: {session.state_dir}" in text
    assert re.search(rf"^  {SERVER}\s+pid {session.proxy.proc.pid}\s+stopped\s+started ", text, re.M)
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


def test_a_killed_proxy_is_dead(session: Session) -> None:
    session.proxy.sync()
    session.proxy.stop()  # SIGKILL: no shutdown event
    [instance] = status(session.state_dir)["instances"]
    assert (instance["pid"], instance["stopped"], instance["state"]) == (session.proxy.proc.pid, False, "dead")
    assert f"pid {session.proxy.proc.pid} dead" in re.sub(r"\s+", " ", status(session.state_dir, as_json=False))


def test_status_of_an_empty_state_dir(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()  # a missing one is an error (tests/test_events_cli.py)
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
    result = intercept("prune", "--state-dir", str(state_dir))
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


def _event(kind: str, instance: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"ts": ts, "type": kind, "instance": instance, **fields}


def test_summarise_takes_the_last_heartbeat_of_each_instance() -> None:
    now = time.time()
    events = [
        _event("startup", "a", ago(300, now), server="alpha", pid=10, upstream=["npx", "alpha"]),
        _event("startup", "b", ago(200, now), server="beta", pid=20, upstream=[]),
        _event("heartbeat", "a", ago(180, now), counters={"echo._rate_hour": 1}),
        _event("heartbeat", "ghost", ago(170, now), counters={"never": 9}),  # no startup: ignored
        _event("heartbeat", "a", ago(120, now), counters={"echo._rate_hour": 2, "_global._rate_day": 7}),
        _event("heartbeat", "b", ago(110, now), counters={}),
        _event("heartbeat", "a", ago(100, now), counters="not a dict"),  # malformed: keeps the last good one
        _event("shutdown", "b", ago(50, now)),
    ]
    summary = summarise(events, now)
    by_name = {i.server: i for i in summary.instances}
    assert set(by_name) == {"alpha", "beta"}
    assert by_name["alpha"].counters == {"echo._rate_hour": 2, "_global._rate_day": 7}
    assert by_name["alpha"].last_seen == ago(100, now)
    assert by_name["alpha"].stopped is False
    assert by_name["beta"].counters == {}
    assert by_name["beta"].stopped is True
    assert [i.server for i in summary.instances] == ["alpha", "beta"]  # by start time


def test_summarise_counts_the_last_hour_and_caps_the_lists() -> None:
    now = time.time()
    events = [_event("startup", "a", ago(7200, now), server="s", pid=1)]
    events += [_event("tool_call", "a", ago(5400, now), tool="t", result="allowed") for _ in range(4)]
    events += [_event("tool_call", "a", ago(3700, now), tool="old", result="denied", rule="old rule")]
    for n in range(TOP_RULES + 2):
        events += [
            _event("tool_call", "a", ago(1000 - n, now), server="s", tool=f"t{n}", result="denied", rule=f"r{n}")
        ] * (n + 1)
    events += [_event("tool_call", "a", ago(10, now), tool="t", result="allowed")] * 2
    events += [_event("tool_call", "a", ago(5, now), tool="w", result="approval_required", rule="human")]
    events += [_event("tool_call", "a", "not a timestamp", tool="t", result="allowed")]
    summary = summarise(sorted(events, key=lambda e: e["ts"]), now)

    denied_recent = sum(n + 1 for n in range(TOP_RULES + 2))
    assert summary.calls_last_hour == {"allowed": 2, "denied": denied_recent, "approval_required": 1}
    # Deny rules and last denials cover every event read, not just the last hour.
    assert len(summary.top_deny_rules) == TOP_RULES
    assert summary.top_deny_rules[0] == (f"r{TOP_RULES + 1}", TOP_RULES + 2)
    assert [count for _, count in summary.top_deny_rules] == sorted(
        (count for _, count in summary.top_deny_rules), reverse=True
    )
    assert len(summary.last_denied) == LAST_DENIED
    assert summary.last_denied[-1]["tool"] == f"t{TOP_RULES + 1}"
    assert set(summary.last_denied[-1]) == {"ts", "server", "tool", "rule"}
