"""`summarise` on synthetic events (heartbeat counters, windows, caps), since a real heartbeat comes
only once a minute (`intercept status` itself: tests/e2e/test_status.py)."""

from __future__ import annotations

import time
from typing import Any

from intercept.audit.summary import LAST_DENIED, TOP_RULES, summarise
from tests.support import ago


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
