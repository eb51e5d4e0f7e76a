"""The call handler in process: a call and a policy in, a typed outcome and an event record out.

Real SQLite file, real store thread, real approval gate and event log; no pipes or processes.
Each row says what the handler must answer and record for one call.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.fingerprint import call_fingerprint
from intercept.approvals.gate import ABANDONED, ApprovalGate, Consumed, UpstreamServer, _Waiter
from intercept.audit.events import EventLog
from intercept.audit.hashing import ArgumentHasher
from intercept.counters.call_counters import AsyncCallCounters, CallCounters
from intercept.engine import ToolCall
from intercept.policy import Policy, parse_policy
from intercept.proxy.call_handler import (
    FORWARD,
    Answer,
    CallHandler,
    FailMode,
    Forward,
    Pending,
    Ticket,
)
from intercept.proxy.era import PROTOCOL_VERSION_META_KEY
from intercept.proxy.tool_schemas import FINE, TypeVerdict
from intercept.store.database import DATABASE_FILE
from intercept.store.worker import StoreWorker, deadline_after
from tests.store_support import approval_statuses, approve_all_pending

POLICY = """\
version: "1"
hide: [secret]
tools:
  read: {rules: []}
  push:
    rules:
      - name: no force push
        conditions: [{path: args.force, op: neq, value: true}]
  deploy:
    rules:
      - name: humans deploy
        action: require_approval
  search:
    rules:
      - name: search budget
        rate_limit: 2/hour
  pay:
    rules:
      - name: humans pay
        action: require_approval
      - name: pay budget
        rate_limit: 1/hour
  spend:
    rules:
      - name: spend cap
        state: {counter: spent, window: day, increment_from: args.n}
        conditions: [{path: state.spend.spent, op: lte, value: 10}]
"""



async def decided(pending: Pending, ticket: Ticket) -> Forward | Answer:
    """What a pending call comes to (`Pending.start`, told through a future)."""
    told: asyncio.Future[Forward | Answer] = asyncio.get_running_loop().create_future()
    pending.start(ticket, told.set_result)
    return await told

class Harness:
    def __init__(self, state_dir: Path, fail_mode: FailMode = "closed") -> None:
        self.state_dir = state_dir
        hasher = ArgumentHasher(b"k" * 32)
        self.events = EventLog(state_dir, "unit", hasher)
        self.worker = StoreWorker()
        gate = ApprovalGate(state_dir, UpstreamServer("unit", "name:unit", '["unit"]'), self.events, hasher, self.worker)
        self.counters = AsyncCallCounters(CallCounters(state_dir), self.worker)
        self.handler = CallHandler("unit", self.events, gate, self.counters, fail_mode)
        self.policy: Policy = parse_policy(POLICY)
        self.closed = ""
        self.handler.forwarding_closed = lambda: self.closed
        self._ids = iter(range(1, 10_000))

    async def call(
        self, tool: str, arguments: dict[str, Any] | None = None, *, params: dict[str, Any] | None = None,
        types: TypeVerdict = FINE, ticket: Ticket | None = None,
    ) -> Forward | Answer:  # fmt: skip
        """Decide one call; a Pending one is awaited with a fresh ticket (or `ticket`); a call that
        took something is forwarded as the interceptor would (`Taken.forwarded` records it)."""
        arguments = arguments or {}
        params = params or {"name": tool, "arguments": arguments}
        outcome = self.handler.handle(next(self._ids), tool, arguments, params, self.policy, types)
        if isinstance(outcome, Pending):
            outcome = await decided(outcome, ticket or Ticket(deadline_after()))
        if isinstance(outcome, Forward) and outcome.taken is not None:
            outcome.taken.forwarded()
        return outcome

    async def drain_store(self) -> None:
        """Let the store work the handler queued (give-backs) finish."""
        while self.worker.busy:
            await self.worker.drain(5)

    def records(self) -> list[dict[str, Any]]:
        self.events.flush()
        if not self.events.path.exists():
            return []
        return [json.loads(line) for line in self.events.path.read_text().splitlines()]

    def tool_calls(self) -> list[tuple[str, str, str]]:
        return [(r["tool"], r["result"], r.get("rule", "")) for r in self.records() if r["type"] == "tool_call"]

    def approve_all(self) -> None:
        approve_all_pending(self.state_dir)

    def approval_status(self) -> list[str]:
        return approval_statuses(self.state_dir)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    made = Harness(tmp_path)
    yield made
    await made.drain_store()
    made.worker.close()


def denial_text(outcome: Forward | Answer) -> str:
    assert isinstance(outcome, Answer), outcome
    return outcome.message["result"]["content"][0]["text"]


# -- without the store ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "forwarded", "record", "text"),
    [
        ("read", {}, True, ("read", "allowed", ""), ""),
        ("unlisted", {"x": 1}, True, ("unlisted", "allowed", ""), ""),
        ("push", {"force": False}, True, ("push", "allowed", ""), ""),
        ("push", {"force": True}, False, ("push", "denied", "no force push"), 'Denied by rule "no force push"'),
        ("secret", {}, False, ("secret", "denied", "(hidden)"), 'Tool "secret" is hidden by policy'),
    ],
)
async def test_a_call_the_engine_decides_alone(
    harness: Harness, tool: str, arguments: dict[str, Any], forwarded: bool, record: tuple[str, str, str], text: str
) -> None:
    outcome = harness.handler.handle(1, tool, arguments, {"name": tool}, harness.policy, TypeVerdict())
    if forwarded:
        assert outcome is FORWARD  # sent as the client sent it: nothing taken, nothing watched
    else:
        assert text in denial_text(outcome)  # type: ignore[arg-type]
        assert outcome.message["id"] == 1  # type: ignore[union-attr]
    assert harness.tool_calls() == [record]


async def test_a_type_problem_denies_before_the_engine(harness: Harness) -> None:
    outcome = await harness.call("read", {"n": "1"}, types=TypeVerdict(problem='"n" must be an integer'))
    assert '"n" must be an integer' in denial_text(outcome)
    assert harness.tool_calls() == [("read", "denied", "(argument type)")]


async def test_a_stateless_era_denial_says_its_result_type(harness: Harness) -> None:
    params = {"name": "secret", "_meta": {PROTOCOL_VERSION_META_KEY: "2026-07-28"}}
    outcome = await harness.call("secret", params=params)
    assert isinstance(outcome, Answer) and outcome.message["result"]["resultType"] == "complete"
    plain = await harness.call("secret")
    assert isinstance(plain, Answer) and "resultType" not in plain.message["result"]


# -- counters --------------------------------------------------------------------------------


async def test_counted_calls_take_their_counters_until_the_limit(harness: Harness) -> None:
    first, second, third = [await harness.call("search", {"q": str(i)}) for i in range(3)]
    for outcome in (first, second):
        assert isinstance(outcome, Forward) and outcome.taken is not None
        assert outcome.taken.approval_id is None and len(outcome.taken.reserved) == 1
    assert "Rate limit of 2 per hour reached" in denial_text(third)
    assert harness.tool_calls() == [
        ("search", "allowed", ""), ("search", "allowed", ""), ("search", "denied", "search budget")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "given_back"),
    [
        ({"error": {"code": -32601, "message": "Method not found"}}, True),
        ({"error": {"code": -32700, "message": "Parse error"}}, True),
        ({"error": {"code": -32603, "message": "Internal error"}}, False),  # the tool may have run
        ({"result": {"content": [], "isError": True}}, False),
        ({"result": {"content": []}}, False),
    ],
)
async def test_a_reply_gives_counters_back_only_if_the_tool_never_started(
    harness: Harness, reply: dict[str, Any], given_back: bool
) -> None:
    outcome = await harness.call("search")
    assert isinstance(outcome, Forward) and outcome.taken is not None
    outcome.taken.on_reply({"jsonrpc": "2.0", "id": "x", **reply})
    await harness.drain_store()
    assert harness.counters.counters.values(harness.policy, "search", time.time()) == {
        "search._rate_hour": 0 if given_back else 1
    }


@pytest.mark.parametrize("why", ["cancelled", "upstream gone"])
async def test_a_call_that_can_no_longer_be_forwarded_gives_back_what_it_took(harness: Harness, why: str) -> None:
    ticket = Ticket(deadline_after())
    if why == "cancelled":
        ticket.cancelled = True
    else:
        harness.closed = "the upstream was gone (or its input closed) before it was forwarded"
    outcome = await harness.call("search", ticket=ticket)
    assert isinstance(outcome, Answer) and outcome.message["error"]["code"] == -32603
    assert "search was not forwarded" in outcome.message["error"]["message"]
    await harness.drain_store()
    assert harness.counters.counters.values(harness.policy, "search", time.time()) == {
        "search._rate_hour": 0
    }
    assert harness.tool_calls() == []  # never forwarded: no "allowed" record


@pytest.mark.parametrize(("fail_mode", "forwarded"), [("closed", False), ("open", True)])
async def test_a_broken_store_denies_counted_calls_unless_the_fail_mode_is_open(
    tmp_path: Path, fail_mode: FailMode, forwarded: bool
) -> None:
    (tmp_path / DATABASE_FILE).write_bytes(b"not a database" * 100)
    harness = Harness(tmp_path, fail_mode)
    try:
        outcome = await harness.call("search")
        if forwarded:
            assert outcome is FORWARD  # allowed as if every counter were 0; nothing taken
            assert harness.tool_calls() == [("search", "allowed", "")]
        else:
            assert "Internal policy error: state store unavailable" in denial_text(outcome)
            assert harness.tool_calls() == [("search", "denied", "(state store)")]
    finally:
        harness.worker.close()
    with pytest.raises(sqlite3.DatabaseError):  # and it is left as it was
        sqlite3.connect(tmp_path / DATABASE_FILE).execute("SELECT * FROM sqlite_master").fetchall()


# -- approvals -------------------------------------------------------------------------------


async def test_an_approval_is_requested_then_consumed_once(harness: Harness) -> None:
    asked = await harness.call("deploy", {"env": "prod"})
    assert isinstance(asked, Answer) and asked.message["error"]["code"] == -32003
    harness.approve_all()
    approved = await harness.call("deploy", {"env": "prod"})
    assert isinstance(approved, Forward) and approved.taken is not None and approved.taken.approval_id
    again = await harness.call("deploy", {"env": "prod"})
    assert isinstance(again, Answer) and again.message["error"]["code"] == -32003  # a new request
    assert harness.approval_status() == ["consumed", "pending"]
    assert [(t, r) for t, r, _ in harness.tool_calls()] == [
        ("deploy", "approval_required"), ("deploy", "allowed"), ("deploy", "approval_required")
    ]  # fmt: skip


async def test_an_approved_call_over_its_limit_is_denied_and_its_approval_given_back(harness: Harness) -> None:
    await harness.call("pay", {"cents": 5})  # -32003
    harness.approve_all()
    first = await harness.call("pay", {"cents": 5})  # consumes, takes the one unit of the budget
    assert isinstance(first, Forward) and first.taken is not None and first.taken.reserved
    await harness.call("pay", {"cents": 5})  # -32003: a new request
    harness.approve_all()
    over = await harness.call("pay", {"cents": 5})
    assert "Rate limit of 1 per hour reached" in denial_text(over)
    await harness.drain_store()
    assert harness.approval_status() == ["consumed", "approved"]  # given back: usable once the budget allows
    assert harness.tool_calls()[-1] == ("pay", "denied", "pay budget")


async def test_the_upstream_refusing_an_approved_call_re_arms_its_approval(harness: Harness) -> None:
    await harness.call("deploy")
    harness.approve_all()
    outcome = await harness.call("deploy")
    assert isinstance(outcome, Forward) and outcome.taken is not None
    outcome.taken.on_reply({"jsonrpc": "2.0", "id": "x", "error": {"code": -32600, "message": "Invalid Request"}})
    await harness.drain_store()
    assert harness.approval_status() == ["approved"]


# -- batches ---------------------------------------------------------------------------------


async def test_in_a_batch_only_calls_the_engine_allows_alone_may_go(harness: Harness) -> None:
    judge = harness.handler.judge_in_batch
    policy, types = harness.policy, TypeVerdict()
    assert judge(1, "read", {}, {"name": "read"}, policy, types) is FORWARD
    counted = judge(2, "search", {}, {"name": "search"}, policy, types)
    assert isinstance(counted, Answer) and "uses counters" in counted.message["error"]["message"]
    gated = judge(3, "deploy", {}, {"name": "deploy"}, policy, types)
    assert isinstance(gated, Answer) and "needs approval" in gated.message["error"]["message"]
    assert "no force push" in denial_text(judge(4, "push", {"force": True}, {"name": "push"}, policy, types))
    assert harness.tool_calls() == [("deploy", "denied", "humans deploy"), ("push", "denied", "no force push")]
    harness.handler.forwarded_in_batch([ToolCall("read", {})])  # the batch went upstream
    assert harness.tool_calls()[-1] == ("read", "allowed", "")


async def test_calls_decided_at_once_share_a_budget_exactly(harness: Harness) -> None:
    outcomes = await asyncio.gather(*(harness.call("search", {"q": str(i)}) for i in range(6)))
    assert sum(isinstance(o, Forward) for o in outcomes) == 2
    assert sum(isinstance(o, Answer) for o in outcomes) == 4


# -- the store busy or the call abandoned -----------------------------------------------------


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
@pytest.mark.parametrize("arguments", [{"n": -5}, {"n": 2**60}, {"n": "lots"}, {}])
async def test_an_unusable_increment_is_refused_at_once_however_busy_the_store(
    tmp_path: Path, fail_mode: FailMode, arguments: dict[str, Any]
) -> None:
    """Worked out before the store is asked: never mistaken for a slow store (which fail-open
    would let through uncounted)."""
    harness = Harness(tmp_path, fail_mode)
    try:
        busy = threading.Event()
        harness.worker.spawn(lambda: busy.wait(5))  # e.g. a give-back waiting out another process's lock
        outcome = await harness.call("spend", arguments, ticket=Ticket(time.monotonic() + 0.1))
        busy.set()
        assert "Internal policy error" in denial_text(outcome)
        assert harness.tool_calls() == [("spend", "denied", "(increment_from)")]
    finally:
        await harness.drain_store()
        harness.worker.close()


@pytest.mark.parametrize("who", ["store thread", "event loop"])
async def test_an_approval_consumed_for_a_call_that_stopped_waiting_is_given_back(harness: Harness, who: str) -> None:
    """At exit a waiting call's task is cancelled while the store may be consuming its approval.
    Whichever side comes second gives it back: the store thread if the call stopped waiting
    first (no event loop may be left to do it), else the event loop."""
    await harness.call("deploy", {"e": 1})
    harness.approve_all()
    gate, policy = harness.handler.gate, harness.policy
    call, rule = ToolCall("deploy", {"e": 1}), policy.tools["deploy"].rules[0]
    fingerprint = call_fingerprint(gate.hasher, gate.upstream.identity, call.name, call.arguments, rule.digest)
    waiter = _Waiter(asyncio.get_running_loop())
    if who == "store thread":
        assert waiter.abandon() is None  # the call stopped waiting before the check was done
    args = (waiter, policy, call, rule, fingerprint, time.time(), deadline_after())
    outcome, _ = await harness.worker.run(gate._check_for, *args)
    assert isinstance(outcome, Consumed)
    if who == "event loop":
        assert harness.approval_status() == ["consumed"]
        assert waiter.abandon() == outcome  # the check was done first: the loop gives it back
        gate.give_back(outcome.approval.id, call.arguments, time.time(), ABANDONED)
    await harness.drain_store()
    await asyncio.sleep(0)  # the store thread's record of it reaches the loop
    assert harness.approval_status() == ["approved"]
    assert [r["reason"] for r in harness.records() if r["type"] == "approval_given_back"] == [ABANDONED]


async def test_fail_open_does_not_wave_calls_through_a_store_that_is_only_busy(tmp_path: Path) -> None:
    """Fail-open is for a store that cannot be used. One that works but stays busy past a call's
    deadline (a lock held elsewhere, or a queue an agent fills with slow calls) denies in both
    modes: otherwise an agent could spend past its limit by keeping the store busy."""
    harness = Harness(tmp_path, "open")
    try:
        for _ in range(2):
            assert isinstance(await harness.call("search"), Forward)  # the 2/hour budget is spent
        holder = sqlite3.connect(tmp_path / DATABASE_FILE, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            outcome = await harness.call("search", ticket=Ticket(time.monotonic() + 0.1))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert "state store unavailable" in denial_text(outcome) and "locked" in denial_text(outcome)
        assert harness.tool_calls()[-1] == ("search", "denied", "(state store)")
    finally:
        await harness.drain_store()
        harness.worker.close()
