"""The relay never waits for the state store on behalf of a message that does not need it.

Another process holds the database's write lock (as a backup, a `sqlite3` shell or a stuck proxy
would). Meanwhile a ping and an allowed call sent after a gated (or counted) call are answered
first, and the gated call fails closed with the reason once its bound has passed. The lock is
released only after that: the tests assert order, not time.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from intercept.store.database import connect, database_path
from tests.e2e.support import (
    TYPED_UPSTREAM,
    Harness,
    ask_and_approve,
    call,
    call_tool,
    cancel_message,
    denial_text,
    line,
    ping_message,
    read_through_reply,
    show,
)

GATED = 'version: "1"\ntools:\n  act:\n    rules:\n      - name: "act needs a human"\n        action: require_approval\n'
COUNTED = 'version: "1"\ntools:\n  act:\n    rules:\n      - name: "act once an hour"\n        rate_limit: 1/hour\n'


class WriteLock:
    """A write transaction held by this (other) process on the proxy's database."""

    def __init__(self, state_dir: Path) -> None:
        connect(state_dir).close()  # the schema exists before the lock is taken
        self.connection = sqlite3.connect(database_path(state_dir), isolation_level=None)
        self.connection.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.connection.execute("ROLLBACK")
        self.connection.close()


def reply_order(messages: list[dict[str, Any]]) -> list[Any]:
    return [m.get("id") for m in messages if "method" not in m]


@pytest.mark.parametrize("policy", [GATED, COUNTED], ids=["approval", "counter"])
def test_ping_and_allowed_call_overtake_a_call_waiting_for_a_locked_store(harness: Harness, policy: str) -> None:
    harness.write_policy(policy)
    proxy = harness.start(TYPED_UPSTREAM)
    lock = WriteLock(harness.state_dir)
    try:
        proxy.send_raw(
            line(call("waits", "act", {"job": "needs the store"}))
            + line(ping_message("ping"))
            + line(call("free", "push", {"branch": "main"}))
        )
        seen = read_through_reply(proxy, "waits")
        order = reply_order(seen)
        assert order.index("ping") < order.index("waits") and order.index("free") < order.index("waits"), order
        answer = seen[-1]
        text = denial_text(answer) or ""
        assert "unavailable" in text and "locked" in text, answer  # fails closed, saying why
        assert harness.ran("act") == [] and harness.ran("push") == [{"branch": "main", "force": False}]
    finally:
        lock.release()
    # With the lock gone, the same call is decided normally.
    answer = call_tool(proxy, "after", "act", {"job": "needs the store"})
    assert "unavailable" not in str(answer), answer


def test_an_id_waiting_for_the_store_stays_taken(harness: Harness) -> None:
    harness.write_policy(GATED)
    proxy = harness.start(TYPED_UPSTREAM)
    lock = WriteLock(harness.state_dir)
    try:
        proxy.send_raw(line(call(7, "act", {"job": "x"})) + line(call(7, "push", {"branch": "main"})))
        first = proxy.read()
        assert first["id"] == 7 and first["error"]["code"] == -32600 and "in use" in first["error"]["message"], first
        assert read_through_reply(proxy, 7)[-1]["result"]["isError"] is True  # the gated call, failed closed
    finally:
        lock.release()
    assert harness.ran("push") == []


def test_a_cancel_while_the_store_is_locked_ends_the_call_there(harness: Harness) -> None:
    """Cancelled while its approval check waits: never forwarded, never answered, and the
    approval it may have taken is given back."""
    harness.write_policy(GATED)
    proxy = harness.start(TYPED_UPSTREAM)
    approval_id = ask_and_approve(proxy, harness.state_dir, 1, "act", {"job": "x"})
    lock = WriteLock(harness.state_dir)
    cancel = cancel_message(2)
    try:
        proxy.send_raw(line(call(2, "act", {"job": "x"})) + line(cancel) + line(ping_message("p")))
        assert reply_order(read_through_reply(proxy, "p")) == ["p"]
    finally:
        lock.release()
    proxy.send(ping_message("p2"))
    assert reply_order(read_through_reply(proxy, "p2")) == ["p2"]  # still no answer to the cancelled call
    assert harness.ran("act") == [] and show(harness.state_dir, approval_id)["status"] == "approved"
    answer = call_tool(proxy, 3, "act", {"job": "x"})
    assert "result" in answer and harness.ran("act") == [{"job": "x"}], answer


def test_client_eof_lets_a_waiting_call_through_before_the_upstream_input_closes(harness: Harness) -> None:
    """The client sends an approved call and closes its output at once: the call is still decided
    and forwarded (its approval consumed, not given back) before the upstream's stdin closes."""
    harness.write_policy(GATED)
    proxy = harness.start(TYPED_UPSTREAM)
    approval_id = ask_and_approve(proxy, harness.state_dir, 1, "act", {"job": "x"})
    proxy.send_raw(line(call(2, "act", {"job": "x"})))
    proxy.close_stdin()
    assert proxy.wait() == 0
    assert "approval " + approval_id + " consumed" in proxy.stderr and "given back" not in proxy.stderr, proxy.stderr
    assert "not forwarded" not in proxy.stderr and show(harness.state_dir, approval_id)["status"] == "consumed"
    assert harness.ran("act") == [{"job": "x"}]  # the upstream read it before its input closed


# -- calls decided side by side (review of the change above) ---------------------------------------

CAP_ON_ANOTHER_RULE = """version: "1"
tools:
  act:
    rules:
      - name: "count act"
        conditions: [{path: state.act.n, op: lte, value: 1000}]
        state: {counter: n, window: hour}
      - name: "at most 2 acts an hour"
        conditions: [{path: state.act.n, op: lt, value: 2}]
"""
APPROVAL_AFTER_TWO = """version: "1"
tools:
  act:
    rules:
      - name: "count act"
        conditions: [{path: state.act.n, op: lte, value: 1000}]
        state: {counter: n, window: hour}
      - name: "after 2 acts a human must approve"
        action: require_approval
        conditions: [{path: state.act.n, op: gte, value: 2}]
"""


@pytest.mark.parametrize("policy", [CAP_ON_ANOTHER_RULE, APPROVAL_AFTER_TWO], ids=["cap-on-another-rule", "approval-after-two"])
def test_parallel_counted_calls_each_see_the_counts_of_the_earlier_ones(harness: Harness, policy: str) -> None:
    """Ten calls in one write are decided side by side: each must still be judged on the counters
    the calls before it left, not on a value read before any of them reserved."""
    harness.write_policy(policy)
    proxy = harness.start(TYPED_UPSTREAM)
    proxy.send_raw(b"".join(line(call(n, "act", {"job": str(n)})) for n in range(10)))
    answers: list[dict[str, Any]] = []
    while len(answers) < 10:
        message = proxy.read()
        if "method" not in message:
            answers.append(message)
    ran = [a for a in answers if "result" in a and not a["result"].get("isError")]
    assert len(ran) == 2 and len(harness.ran("act")) == 2, answers


def test_a_flood_of_calls_waiting_for_a_locked_store_pauses_the_client_instead_of_piling_up(harness: Harness) -> None:
    """Three times MAX_DECIDING calls while the store is locked, then a ping: the proxy stops
    reading the client once MAX_DECIDING calls wait (as it does when the upstream's pipe is full)
    instead of holding every call in memory, so the ping is read, and answered, only after most of
    the calls. Large calls keep a read chunk to a few lines."""
    from intercept.proxy.relay import MAX_DECIDING

    harness.write_policy(GATED)
    proxy = harness.start(TYPED_UPSTREAM)
    lock = WriteLock(harness.state_dir)
    count = MAX_DECIDING * 3
    padding = "x" * 16_000
    try:
        proxy.send_raw(
            b"".join(line(call(n, "act", {"job": f"{n} {padding}"})) for n in range(count)) + line(ping_message("after"))
        )
        seen = read_through_reply(proxy, "after")
    finally:
        lock.release()
    answered_first = len(seen) - 1
    assert answered_first >= count - MAX_DECIDING - 8, f"only {answered_first} of {count} calls answered before the ping"
    assert all("locked" in (denial_text(m) or "") for m in seen[:-1]), seen[:3]
