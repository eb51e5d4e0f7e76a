"""Races of the callback-driven deciding path (`Deciding`, `count_then`, the store thread's hand-back),
as an independent review found them.

Real objects only: a real SQLite file under tmp_path, the real store thread, approval gate, event
log, counters and interceptor. The store thread is held with a real job waiting on an Event, so
that several results are handed back to the event loop in one wake-up, as under load.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.gate import ApprovalGate, UpstreamServer
from intercept.audit.events import EventLog
from intercept.audit.hashing import ArgumentHasher
from intercept.counters.call_counters import AsyncCallCounters, CallCounters, CounterAsk, Judged
from intercept.engine import ToolCall
from intercept.policy import Policy, parse_policy
from intercept.proxy.interceptor import Interceptor
from intercept.proxy.outcomes import Deciding, Rewritten
from intercept.store.worker import StoreWorker, deadline_after
from tests.store_support import approval_statuses, approve_all_pending

POLICY = """\
version: "1"
tools:
  pay:
    rules:
      - name: humans pay
        action: require_approval
      - name: pay budget
        rate_limit: 5/hour
  search:
    rules:
      - name: search budget
        rate_limit: 100/hour
"""


class Session:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        hasher = ArgumentHasher(b"k" * 32)
        self.events = EventLog(state_dir, "races", hasher)
        self.worker = StoreWorker()
        gate = ApprovalGate(state_dir, UpstreamServer("races", "name:races", '["races"]'), self.events, hasher, self.worker)
        self.counters = CallCounters(state_dir)
        self.async_counters = AsyncCallCounters(self.counters, self.worker)
        self.policy: Policy = parse_policy(POLICY)
        self.interceptor = Interceptor(self.policy, "races", self.events, gate, self.async_counters, self.worker)

    def client(self, message: dict[str, Any]) -> Any:
        return self.interceptor.on_client_line(json.dumps(message, separators=(",", ":")).encode())

    def approve_all(self) -> None:
        approve_all_pending(self.state_dir)

    def approval_statuses(self) -> list[str]:
        return approval_statuses(self.state_dir)

    async def drain(self) -> None:
        while self.worker.busy:
            await self.worker.drain(5)

    async def value(self, tool: str) -> int:
        await self.drain()
        values = await self.worker.run(self.counters.values, self.policy, tool, time.time())
        return sum(values.values())

    def hold_store_thread(self) -> threading.Event:
        """Queue a real job that keeps the store thread busy until the returned Event is set."""
        release = threading.Event()
        self.worker.spawn(lambda: release.wait(10))
        return release


def call(request_id: Any, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments or {}}}


def cancel(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    made = Session(tmp_path)
    yield made
    await made.worker.drain(5)  # once, bounded: a lost hand-back leaves the worker busy for good
    made.worker.close()


async def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    until = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < until, "timed out"
        await asyncio.sleep(0.001)


async def test_a_cancel_between_an_approved_decision_and_its_forwarding_gives_back_what_it_took(
    session: Session,
) -> None:
    """An approved, counted call whose decision ended (approval consumed, counter reserved, not
    cancelled) must be forwarded in that same step, or what it took given back. A cancel handled
    in the loop iteration between the gate task's end and its done-callback (`CallHandler._run`)
    finds the call still waiting: it is dropped, never forwarded, and what it took stays taken."""
    loop = asyncio.get_running_loop()
    first = session.client(call(1, "pay"))
    assert isinstance(first, Deciding)
    assert b"-32003" in (await first.wait()) or b"approval" in (await first.wait())  # type: ignore[operator]
    session.approve_all()

    # A counted call needing approval goes: counter batch, the gate's check (in a task), then the
    # approved call's counter batch. Hold the store thread around each step, so the last batch
    # holds the approved call's ask and ours, handed back in one wake-up (as under load).
    release_first_batch = session.hold_store_thread()
    deciding = session.client(call(2, "pay"))  # its first counter batch goes to the thread this turn
    assert isinstance(deciding, Deciding)
    await asyncio.sleep(0)  # (the batch is handed to the store thread once the loop's turn ends)
    release_check = session.hold_store_thread()
    release_first_batch.set()
    await wait_until(lambda: any(task._fut_waiter is not None for task in session.interceptor.calls._tasks))
    release_batch = session.hold_store_thread()  # behind the gate's check, which the task awaits
    release_check.set()
    await wait_until(lambda: len(session.async_counters._asks) >= 1)  # the approved call's counter ask

    def client_cancels(outcome: object) -> None:  # the client's cancel arrives in the next iteration
        loop.call_soon(session.client, cancel(2))

    session.async_counters.count_then(
        CounterAsk(session.policy, ToolCall("search", {}), time.time(), deadline_after()), client_cancels
    )
    release_batch.set()
    outcome = await asyncio.wait_for(deciding.wait(), 5)
    await session.drain()
    if outcome == b"":  # not forwarded: the approval and the counter must come back
        assert (await session.value("pay"), session.approval_statuses()) == (0, ["approved"])
    else:  # forwarded (the cancel then follows it upstream)
        assert isinstance(outcome, Rewritten)


async def test_count_cancelled_after_its_outcome_was_set_gives_back_what_it_took(session: Session) -> None:
    """`AsyncCallCounters.count` promises that a caller that stops waiting after its outcome was
    decided gets back what the call took. Its outcome set, its task cancelled before it resumed
    (as asyncio.run does at exit, or any cancel in that iteration): the reservation stays taken."""
    counters = session.async_counters
    release = session.hold_store_thread()
    waiter = asyncio.create_task(
        counters.count(CounterAsk(session.policy, ToolCall("search", {}), time.time(), deadline_after()))
    )
    await wait_until(lambda: len(counters._asks) == 1)
    told: list[object] = []

    def then(outcome: object) -> None:  # same batch, handed out just after the waiter's outcome
        told.append(outcome)
        waiter.cancel()

    counters.count_then(CounterAsk(session.policy, ToolCall("search", {}), time.time(), deadline_after()), then)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert isinstance(told[0], Judged) and told[0].reserved
    assert await session.value("search") == 1  # the cancelled call's reservation was given back


async def test_one_result_that_cannot_be_handed_back_does_not_lose_the_others(session: Session) -> None:
    """Results handed back together (`StoreWorker._hand_back`): one whose settle raises (a `run`
    job that raised StopIteration, which a future refuses) must not drop the others in that
    wake-up: here a counted call's outcome, which is then never told (refused at its deadline
    instead) and whose reservation is never given back, and a spawned job that stays `busy`."""
    counters = session.async_counters
    assert await session.value("search") == 0  # the database is made: the batch below is quick
    release = session.hold_store_thread()

    def broken() -> None:
        raise StopIteration

    failing = asyncio.create_task(session.worker.run(broken))
    await wait_until(lambda: failing._fut_waiter is not None)  # its job is queued behind the hold
    told: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    counters.count_then(
        CounterAsk(session.policy, ToolCall("search", {}), time.time(), deadline_after()), told.set_result
    )
    time.sleep(0.01)
    release.set()
    time.sleep(0.3)  # both results are queued before the loop takes either (one wake-up)
    outcome = await asyncio.wait_for(told, 5)
    assert isinstance(outcome, Judged), outcome  # its real outcome, not a refusal at the deadline
    with pytest.raises(RuntimeError, match="StopIteration"):  # the job's error, as one a future can carry
        await asyncio.wait_for(failing, 1)
    await asyncio.wait_for(session.drain(), 3)
    assert await session.value("search") == 1


async def test_one_failing_callback_at_a_deadline_does_not_keep_other_calls_past_theirs(session: Session) -> None:
    """`_check_deadlines` refuses every call whose deadline passed; a callback that raises (a bug
    acting on one call's refusal) must cost that call only, as in `_hand_out`: the later call is
    still refused at its deadline (fail closed) while the store thread stays busy."""
    counters = session.async_counters
    release = session.hold_store_thread()
    try:
        def broken(outcome: object) -> None:
            raise RuntimeError("a bug acting on this call's outcome")

        told: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        counters.count_then(CounterAsk(session.policy, ToolCall("search", {}), time.time(), now + 0.2), broken)
        counters.count_then(CounterAsk(session.policy, ToolCall("search", {}), time.time(), now + 0.3), told.set_result)
        outcome = await asyncio.wait_for(told, 1.5)  # its deadline was 0.3 s away
        assert type(outcome).__name__ == "StoreDown"
    finally:
        release.set()


async def test_a_decision_that_fails_to_start_costs_that_call_only(session: Session, monkeypatch: Any) -> None:
    """A bug raised while a pending call's decision starts (before any store work): the call is
    answered with an internal error under its own id, its id is free again, and the next call
    with it is decided as usual."""
    from intercept.proxy.call_handler import CallHandler

    def broken(*_: object) -> None:
        raise RuntimeError("a bug starting the count")

    with monkeypatch.context() as patched:
        patched.setattr(CallHandler, "_count", broken)
        answer = session.client(call(7, "search"))
    assert isinstance(answer, bytes) and json.loads(answer)["id"] == 7 and json.loads(answer)["error"]["code"] == -32603
    again = session.client(call(7, "search"))
    assert isinstance(again, Deciding)
    assert isinstance(await asyncio.wait_for(again.wait(), 5), Rewritten)
