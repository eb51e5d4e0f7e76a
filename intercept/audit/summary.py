"""Summarise events into what `intercept status` shows (pending approvals come from the store,
not from here). No I/O here.

Event files are data, not trusted: fields of the wrong type are dropped or stringified here, and
the text is escaped for the terminal where it is printed (`intercept.cmd.status`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from intercept.store.timestamps import parse_rfc3339

RECENT_S = 3600.0
TOP_RULES = 10
LAST_DENIED = 10
LAST_MISMATCHES = 20


@dataclass
class Instance:
    instance: str
    server: str
    pid: int | None
    upstream: list[str]
    started: str
    last_seen: str
    stopped: bool
    counters: dict[str, Any] = field(default_factory=dict)
    state: str = "unknown"


@dataclass
class Summary:
    instances: list[Instance]
    calls_last_hour: dict[str, int]
    top_deny_rules: list[tuple[str, int]]
    last_denied: list[dict[str, Any]]
    policy_mismatches: list[dict[str, Any]] = field(default_factory=list)


def _pid(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _words(value: Any) -> list[str]:
    """A command line as a list of strings (anything else in its place: empty)."""
    return [str(word) for word in value] if isinstance(value, list) else []


def summarise(events: list[dict[str, Any]], now_s: float) -> Summary:
    """`events` oldest first, as `read_events` returns them."""
    instances: dict[str, Instance] = {}
    calls: Counter[str] = Counter()
    deny_rules: Counter[str] = Counter()
    denied: list[dict[str, Any]] = []
    mismatches: dict[tuple[str, str, str], dict[str, Any]] = {}
    for event in events:
        kind, instance_id, ts = event.get("type"), str(event.get("instance", "")), str(event.get("ts", ""))
        if kind == "startup":
            instances[instance_id] = Instance(
                instance=instance_id,
                server=str(event.get("server", "")),
                pid=_pid(event.get("pid")),
                upstream=_words(event.get("upstream")),
                started=ts,
                last_seen=ts,
                stopped=False,
            )
        known = instances.get(instance_id)
        if known is not None:
            known.last_seen = max(known.last_seen, ts)
            if kind == "shutdown":
                known.stopped = True
            elif kind == "heartbeat" and isinstance(event.get("counters"), dict):
                known.counters = event["counters"]
        if kind == "policy_mismatch":  # the latest report of each (server, kind, name)
            found = {k: event.get(k) for k in ("ts", "server", "kind", "name", "closest")}
            mismatches.pop((str(found["server"]), str(found["kind"]), str(found["name"])), None)
            mismatches[(str(found["server"]), str(found["kind"]), str(found["name"]))] = found
        if kind != "tool_call":
            continue
        result = str(event.get("result", ""))
        try:
            recent = now_s - parse_rfc3339(ts) <= RECENT_S
        except ValueError:
            recent = False
        if recent:
            calls[result] += 1
        if result == "denied":
            deny_rules[str(event.get("rule", ""))] += 1
            denied.append({k: event.get(k) for k in ("ts", "server", "tool", "rule")})
    return Summary(
        instances=sorted(instances.values(), key=lambda i: i.started),
        calls_last_hour={key: calls.get(key, 0) for key in ("allowed", "denied", "approval_required")},
        top_deny_rules=deny_rules.most_common(TOP_RULES),
        last_denied=denied[-LAST_DENIED:],
        policy_mismatches=list(mismatches.values())[-LAST_MISMATCHES:],
    )
