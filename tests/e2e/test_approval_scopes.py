"""Approval scopes (`scope:` on a require_approval rule): `{uses: N}` runs the exact call N times
(N racing retries in several proxies never more), `{for: D}` runs it as often as asked within D
of the approval, `{for: D, match: tool}` any arguments to the tool; a give-back returns a use."""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.e2e.support import TOOL_UPSTREAM, Harness, call_tool, pending_id, run_cli, text_of


def policy(scope: str) -> str:
    return f"""\
version: "1"
tools:
  write_file:
    rules:
      - name: writes need a human
        action: require_approval
        scope: {scope}
"""


ARGS = {"path": "s.txt", "content": "x"}


def approve(harness: Harness, approval_id: str) -> None:
    result = run_cli("approvals", "approve", approval_id, "--state-dir", str(harness.state_dir))
    assert result.returncode == 0, result.stderr


def shown(harness: Harness, approval_id: str) -> dict[str, Any]:
    result = run_cli("approvals", "show", approval_id, "--json", "--state-dir", str(harness.state_dir))
    return json.loads(result.stdout)


def ran(reply: dict[str, Any]) -> bool:
    return "result" in reply and not reply["result"].get("isError")


def test_uses_n_runs_the_exact_call_n_times(harness: Harness) -> None:
    harness.write_policy(policy("{uses: 2}"))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    approve(harness, approval_id)
    assert ran(call_tool(proxy, 2, "write_file", ARGS)) and ran(call_tool(proxy, 3, "write_file", ARGS))
    assert pending_id(call_tool(proxy, 4, "write_file", ARGS)) != approval_id  # used up: a new request
    assert pending_id(call_tool(proxy, 5, "write_file", {**ARGS, "content": "other"}))  # other arguments: asked
    record = shown(harness, approval_id)
    assert record["status"] == "consumed" and record["scope"] == {"uses": 2, "for_s": None, "match": "call"}
    assert [h["event"] for h in record["history"]].count("used") == 1
    assert len(harness.ran("write_file")) == 2


def test_racing_retries_in_several_proxies_never_exceed_uses(harness: Harness) -> None:
    harness.write_policy(policy("{uses: 3}"))
    proxies = [harness.start(TOOL_UPSTREAM) for _ in range(4)]
    approve(harness, pending_id(call_tool(proxies[0], 1, "write_file", ARGS)))
    replies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def retry(index: int) -> None:
        for n in range(3):
            reply = call_tool(proxies[index], 100 + n, "write_file", ARGS)
            with lock:
                replies.append(reply)

    threads = [threading.Thread(target=retry, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(ran(r) for r in replies) == 3
    assert len(harness.ran("write_file")) == 3


def test_for_a_window_runs_as_often_as_asked_and_any_arguments_with_match_tool(harness: Harness) -> None:
    harness.write_policy(policy("{for: 1h, match: tool}"))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    assert pending_id(call_tool(proxy, 2, "write_file", {"path": "other", "content": "y"})) == approval_id
    approve(harness, approval_id)
    for n, content in enumerate(("a", "bb", "ccc")):
        assert "wrote" in text_of(call_tool(proxy, 10 + n, "write_file", {"path": f"f{n}", "content": content}))
    record = shown(harness, approval_id)
    assert record["status"] == "approved" and record["scope"]["match"] == "tool"
    assert [h["event"] for h in record["history"]].count("used") == 3
    # Revoking the window ends it.
    assert run_cli("approvals", "expire", approval_id, "--state-dir", str(harness.state_dir)).returncode == 0
    assert pending_id(call_tool(proxy, 20, "write_file", ARGS)) != approval_id
