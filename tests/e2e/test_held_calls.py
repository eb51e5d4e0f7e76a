"""Bounded hold-open (`approvals.wait` / rule `wait`): the call waits while a human decides
elsewhere, with progress notifications when the client gave a token. Approved in time → it runs
in the same call; denied → the deny result; no decision → -32003 as without hold; a cancel ends
the wait and leaves the request pending. Other requests flow meanwhile."""

from __future__ import annotations

import re
from typing import Any

from tests.e2e.support import (
    TOOL_UPSTREAM,
    Harness,
    ProxyProcess,
    call,
    cancel_message,
    denial_text,
    is_reply,
    line,
    pending_id,
    ping_message,
    read_reply,
    read_through_reply,
    read_until,
    run_cli,
    text_of,
    wait_until,
)

ARGS = {"path": "held.txt", "content": "hi"}


def policy(wait: str) -> str:
    return f"""\
version: "1"
approvals:
  wait: {wait}
tools:
  write_file:
    rules:
      - name: writes need a human
        action: require_approval
"""


def held_call(proxy: ProxyProcess, request_id: Any, token: str = "tok") -> str:
    """Send write_file with a progress token; the approval id from the first progress notification
    (sent as soon as the call is held)."""
    proxy.send(call(request_id, "write_file", ARGS, _meta={"progressToken": token}))
    note = read_until(proxy, lambda m: m.get("method") == "notifications/progress")
    assert note["params"]["progressToken"] == token and note["params"]["progress"] == 1
    found = re.search(r"apr_[0-9a-f]{32}", note["params"]["message"])
    assert found, note
    return found.group(0)


def decide(harness: Harness, verb: str, approval_id: str, *extra: str) -> None:
    result = run_cli("approvals", verb, approval_id, "--state-dir", str(harness.state_dir), *extra)
    assert result.returncode == 0, result.stderr


def status_of(harness: Harness, approval_id: str) -> str:
    import json

    shown = run_cli("approvals", "show", approval_id, "--json", "--state-dir", str(harness.state_dir))
    return json.loads(shown.stdout)["status"]


def test_approved_while_held_runs_in_the_same_call(harness: Harness) -> None:
    harness.write_policy(policy("60s"))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = held_call(proxy, 1)
    proxy.send(ping_message("p"))  # other requests keep flowing while the call is held
    assert "result" in read_until(proxy, lambda m: is_reply(m, "p"))
    proxy.send(call(2, "echo", {"text": "meanwhile"}))
    assert text_of(read_until(proxy, lambda m: is_reply(m, 2))) == "meanwhile"
    decide(harness, "approve", approval_id)
    reply = read_reply(proxy, 1)
    assert "wrote 2 bytes" in text_of(reply), reply
    assert harness.ran("write_file") == [ARGS]
    assert status_of(harness, approval_id) == "consumed"


def test_denied_while_held_gets_the_deny_result(harness: Harness) -> None:
    harness.write_policy(policy("60s"))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = held_call(proxy, 1)
    decide(harness, "deny", approval_id, "--reason", "not today")
    text = denial_text(read_reply(proxy, 1))
    assert text is not None and "not today" in text
    assert harness.ran("write_file") == []


def test_no_decision_in_time_answers_approval_required(harness: Harness) -> None:
    harness.write_policy(policy("1s"))
    proxy = harness.start(TOOL_UPSTREAM)
    proxy.send(call(1, "write_file", ARGS))  # no progress token: no notifications
    reply = read_reply(proxy, 1)
    approval_id = pending_id(reply)
    assert status_of(harness, approval_id) == "pending"
    assert harness.ran("write_file") == []


def test_a_cancel_ends_the_wait_and_leaves_the_request_pending(harness: Harness) -> None:
    harness.write_policy(policy("60s"))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = held_call(proxy, 1)
    proxy.send(cancel_message(1))
    proxy.send(ping_message("after"))
    seen = read_until(proxy, lambda m: is_reply(m, "after") or is_reply(m, 1))
    assert is_reply(seen, "after"), f"the cancelled call was answered: {seen}"
    assert status_of(harness, approval_id) == "pending"
    decide(harness, "approve", approval_id)  # approving later does not run the cancelled call
    proxy.send(call(3, "echo", {"text": "sync"}))
    assert text_of(read_until(proxy, lambda m: is_reply(m, 3) or is_reply(m, 1))) == "sync"
    assert harness.ran("write_file") == []


def test_a_call_sent_just_before_the_client_closes_is_not_held(harness: Harness) -> None:
    """The client's EOF ends every wait, also that of a call whose first gate check was still on
    the store thread: approving it after the EOF runs nothing."""
    import json

    harness.write_policy(policy("60s"))
    proxy = harness.start(TOOL_UPSTREAM)
    proxy.send(call(1, "write_file", ARGS))
    proxy.close_stdin()

    def pending() -> list[str]:
        listed = run_cli("approvals", "list", "--json", "--state-dir", str(harness.state_dir))
        return [record["id"] for record in json.loads(listed.stdout or "[]")]

    assert wait_until(lambda: bool(pending()), 10)
    [approval_id] = pending()
    decide(harness, "approve", approval_id)
    reply = read_reply(proxy, 1)
    assert "error" in reply and reply["error"]["code"] == -32003, reply
    assert proxy.wait() == 0
    assert harness.ran("write_file") == []


def test_a_request_revoked_while_held_is_not_named_as_pending(harness: Harness) -> None:
    """Revoked (expired) while the call waits: the answer names a request that is pending, not
    the revoked one."""
    harness.write_policy(policy("60s"))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = held_call(proxy, 1)
    decide(harness, "expire", approval_id)
    named = pending_id(read_reply(proxy, 1))
    assert named != approval_id
    assert status_of(harness, approval_id) == "expired" and status_of(harness, named) == "pending"
    assert harness.ran("write_file") == []


def test_more_held_calls_than_the_proxy_holds_leave_the_client_heard(harness: Harness) -> None:
    """Beyond MAX_WAITING_FOR_HUMAN held calls, more are answered -32003 at once: the held ones
    never fill the relay's bound on calls decided on the side (which pauses client input), so a
    ping, and a cancel, still get through."""
    from intercept.proxy.call_handler import MAX_WAITING_FOR_HUMAN
    from intercept.proxy.relay import MAX_DECIDING

    assert MAX_WAITING_FOR_HUMAN < MAX_DECIDING
    harness.write_policy(policy("60s"))
    proxy = harness.start(TOOL_UPSTREAM)
    count = MAX_DECIDING + 2
    proxy.send_raw(b"".join(line(call(i, "write_file", {"path": f"f{i}", "content": "x"})) for i in range(count)))
    proxy.send(ping_message("p"))
    answered: list[Any] = []
    pinged = False
    while not pinged or len(answered) < count - MAX_WAITING_FOR_HUMAN:  # without the bound: 60 s of nothing
        message = proxy.read()
        pinged = pinged or is_reply(message, "p")
        if "method" not in message and message.get("id") != "p":
            assert message["error"]["code"] == -32003, message
            answered.append(message["id"])
    held = next(i for i in range(count) if i not in answered)
    proxy.send(cancel_message(held))
    proxy.send(ping_message("q"))
    assert not any(is_reply(m, held) for m in read_through_reply(proxy, "q"))
    assert harness.ran("write_file") == []


def test_a_reload_while_held_judges_the_call_again(harness: Harness) -> None:
    """A reload denies the call while it is held; a human then approves its request (the rule it
    binds is unchanged, so it is not stale): the held call must not run under the policy it was
    judged by. It is answered -32003, and its retry is judged by the policy in force: denied."""
    harness.write_policy(policy("60s"))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = held_call(proxy, 1)
    stricter = policy("60s").replace(
        "    rules:\n",
        "    rules:\n      - name: not held.txt\n        conditions: [{path: args.path, op: neq, value: held.txt}]\n",
    )
    harness.write_policy(stricter)
    proxy.wait_for_stderr("policy reloaded")
    decide(harness, "approve", approval_id)
    reply = read_reply(proxy, 1)
    assert "error" in reply and reply["error"]["code"] == -32003, reply
    proxy.send(call(2, "write_file", ARGS))
    assert denial_text(read_reply(proxy, 2)) is not None
    assert harness.ran("write_file") == []


def on_timeout_policy(on_timeout: str) -> str:
    return policy("1s") + f"        on_timeout: {on_timeout}\n"


def test_on_timeout_deny_denies_and_ends_the_request(harness: Harness) -> None:
    harness.write_policy(on_timeout_policy("deny"))
    proxy = harness.start(TOOL_UPSTREAM)
    proxy.send(call(1, "write_file", ARGS))
    text = denial_text(read_reply(proxy, 1))
    assert text is not None and "No human decided in time" in text and "on_timeout deny" in text
    assert harness.ran("write_file") == []
    [record] = run_approvals_json(harness)
    assert record["status"] == "expired"  # a late approval cannot run a call that was answered


def test_on_timeout_allow_runs_the_call_once_and_says_so(harness: Harness) -> None:
    harness.write_policy(on_timeout_policy("allow"))
    proxy = harness.start(TOOL_UPSTREAM)
    proxy.send(call(1, "write_file", ARGS))
    assert "wrote 2 bytes" in text_of(read_reply(proxy, 1))
    assert harness.ran("write_file") == [ARGS]
    [record] = run_approvals_json(harness)
    assert record["status"] == "expired"
    from intercept.audit.events import read_events

    timed_out = [e for e in read_events(harness.state_dir) if e["type"] == "approval_timed_out"]
    assert [(e["approval_id"], e["on_timeout"]) for e in timed_out] == [(record["id"], "allow")]


def test_on_timeout_allow_takes_counters_with_a_deadline_of_its_own(harness: Harness) -> None:
    """A call held longer than the store's 2 s bound that then runs by `on_timeout: allow` still
    has its counters taken: the store gets a fresh deadline, not the one from when the call came
    (which had passed, and refused the call as if the database were locked)."""
    harness.write_policy(
        policy("3s").replace("        action: require_approval\n", "        action: require_approval\n        on_timeout: allow\n")
        + "      - name: write budget\n        rate_limit: 5/hour\n"
    )
    proxy = harness.start(TOOL_UPSTREAM)
    proxy.send(call(1, "write_file", ARGS))
    reply = read_reply(proxy, 1)
    assert "wrote 2 bytes" in text_of(reply), reply
    assert harness.ran("write_file") == [ARGS]


def run_approvals_json(harness: Harness) -> list[dict[str, Any]]:
    import json

    listed = run_cli("approvals", "list", "--all", "--json", "--state-dir", str(harness.state_dir))
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_on_timeout_allow_runs_one_call_per_request_across_proxies(harness: Harness) -> None:
    """Two identical calls held on one request in two proxies: when the first times out it ends
    the request and runs; the other ends without running (its retry waits a whole wait again)."""
    harness.write_policy(policy("2s") + "        on_timeout: allow\n")
    first, second = harness.start(TOOL_UPSTREAM), harness.start(TOOL_UPSTREAM)
    approval_id = held_call(first, 1)
    assert held_call(second, 1) == approval_id  # the identical call reuses the pending request
    replies = [read_through_reply(first, 1)[-1], read_through_reply(second, 1)[-1]]
    ran = [r for r in replies if "result" in r and "wrote 2 bytes" in text_of(r)]
    assert len(ran) == 1, replies
    assert harness.ran("write_file") == [ARGS]
    assert status_of(harness, approval_id) == "expired"


def test_on_timeout_allow_never_runs_a_cancelled_or_abandoned_call_nor_sooner(harness: Harness) -> None:
    """A cancel or the client's EOF ends the wait without on_timeout: nothing runs and the request
    stays pending; a retry after a cancel waits its own whole wait."""
    import time

    harness.write_policy(policy("1s") + "        on_timeout: allow\n")
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = held_call(proxy, 1)
    proxy.send(cancel_message(1))
    sent = time.monotonic()
    proxy.send(call(2, "write_file", ARGS))
    seen = read_until(proxy, lambda m: is_reply(m, 2) or is_reply(m, 1))
    assert is_reply(seen, 2) and "wrote 2 bytes" in text_of(seen), seen
    assert time.monotonic() - sent >= 0.9  # the retry waited its own wait, not what was left of the first
    assert harness.ran("write_file") == [ARGS]
    assert status_of(harness, approval_id) == "expired"
    other = harness.start(TOOL_UPSTREAM)
    left = held_call(other, 1)
    other.close_stdin()
    assert other.wait() == 0
    assert status_of(harness, left) == "pending"
    assert harness.ran("write_file") == [ARGS]
