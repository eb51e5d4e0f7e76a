"""The fatigue guard (`approvals.max_pending`): beyond the limit, a call that would open a new
request is denied with the reason and no record is made (recorded as `approvals_limited`); an
identical retry of a pending request still gets its id; deciding one makes room again."""

from __future__ import annotations

import json

from intercept.audit.events import read_events
from tests.e2e.support import TOOL_UPSTREAM, Harness, call_tool, denial_text, pending_id, run_cli

POLICY = """\
version: "1"
approvals:
  max_pending: {per_tool: 2, per_server: 3}
tools:
  write_file:
    rules:
      - name: writes need a human
        action: require_approval
  create_charge:
    rules:
      - name: charges need a human
        action: require_approval
"""


def pending_count(harness: Harness) -> int:
    listed = run_cli("approvals", "list", "--json", "--state-dir", str(harness.state_dir))
    return len(json.loads(listed.stdout))


def test_requests_beyond_the_limit_are_denied_unrecorded(harness: Harness) -> None:
    harness.write_policy(POLICY)
    proxy = harness.start(TOOL_UPSTREAM)
    first = pending_id(call_tool(proxy, 1, "write_file", {"path": "a", "content": "1"}))
    pending_id(call_tool(proxy, 2, "write_file", {"path": "b", "content": "2"}))
    text = denial_text(call_tool(proxy, 3, "write_file", {"path": "c", "content": "3"}))
    assert text is not None and "Too many pending approvals for write_file on fixture (2, the policy allows 2)" in text
    assert pending_id(call_tool(proxy, 4, "write_file", {"path": "a", "content": "1"})) == first  # a retry reuses
    assert pending_count(harness) == 2
    # Per server: one more tool fits (3 in all), the next does not.
    pending_id(call_tool(proxy, 5, "create_charge", {"amount": 1}))
    text = denial_text(call_tool(proxy, 6, "create_charge", {"amount": 2}))
    assert text is not None and "Too many pending approvals for fixture (3, the policy allows 3)" in text
    limited = [e for e in read_events(harness.state_dir) if e["type"] == "approvals_limited"]
    assert [(e["scope"], e["pending"], e["limit"]) for e in limited] == [("tool", 2, 2), ("server", 3, 3)]
    # Deciding one makes room.
    denied = run_cli("approvals", "deny", first, "--reason", "no", "--state-dir", str(harness.state_dir))
    assert denied.returncode == 0, denied.stderr
    pending_id(call_tool(proxy, 7, "write_file", {"path": "c", "content": "3"}))
