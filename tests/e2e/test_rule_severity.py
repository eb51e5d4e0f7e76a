"""A rule's own `severity`: the events its decisions produce (the `tool_call` of a denied or held
call, the request's approval events) carry it instead of their type's default."""

from __future__ import annotations

from intercept.audit.events import read_events
from tests.e2e.support import TOOL_UPSTREAM, Harness, call_tool, is_denied, pending_id

POLICY = """\
version: "1"
tools:
  delete_file:
    rules:
      - name: never delete
        action: deny
        severity: critical
  write_file:
    rules:
      - name: writes need a human
        action: require_approval
        severity: warning
  read_file:
    rules:
      - name: reads need a path
        conditions: [{path: args.path, op: exists, value: true}]
"""


def test_a_rules_severity_is_on_the_events_of_its_decisions(harness: Harness) -> None:
    harness.write_policy(POLICY)
    proxy = harness.start(TOOL_UPSTREAM)
    assert is_denied(call_tool(proxy, 1, "delete_file", {"path": "a"}))
    approval_id = pending_id(call_tool(proxy, 2, "write_file", {"path": "a", "content": "b"}))
    assert is_denied(call_tool(proxy, 3, "read_file", {}))
    proxy.close_stdin()
    proxy.wait()
    events = read_events(harness.state_dir)
    calls = {e["tool"]: (e["result"], e["severity"]) for e in events if e["type"] == "tool_call"}
    assert calls == {
        "delete_file": ("denied", "critical"),
        "write_file": ("approval_required", "warning"),
        "read_file": ("denied", "info"),  # a rule without one: the type's default
    }
    requested = next(e for e in events if e["type"] == "approval_requested")
    assert (requested["approval_id"], requested["severity"]) == (approval_id, "warning")
