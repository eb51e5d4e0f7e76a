"""Counter decisions in batches (group commit): several calls decided in one write transaction
must come out exactly as if decided one by one, each call keeps its own deadline, and the event
loop's calls that queue while the store thread is busy join one batch.

In-process against a real SQLite file and the real store thread; another connection holds the
write lock where a test needs calls to queue.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from intercept.counters.call_counters import (
    STARTED_GRACE_S,
    AsyncCallCounters,
    CallCounters,
    CounterAsk,
    CountOutcome,
    Judged,
    StoreDown,
    _Waiting,
)
from intercept.engine import ToolCall
from intercept.policy import parse_policy
from intercept.proxy.call_handler import counters_verdict
from intercept.store.database import connect, database_path
from intercept.store.worker import StoreWorker, deadline_after
from tests.test_counters_unit import LIMIT_CASES, NOON, attempt

LIMITED = """\
version: "1"
tools:
  t:
    rules:
      - name: budget
        rate_limit: 3/hour
  free:
    rules:
      - name: only main
        conditions: [{path: args.branch, op: eq, value: main}]
"""


def _commits(counters: CallCounters) -> list[str]:
    """The COMMIT statements the counters' connection runs from now on (SQLite's own trace)."""
    seen: list[str] = []
    counters._connection.get().set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


@pytest.mark.parametrize(("policy_text", "calls", "verdicts", "deny_message", "final"), LIMIT_CASES)
def test_a_batch_decides_as_the_calls_would_one_by_one(
    tmp_path: Path,
    policy_text: str,
    calls: list[dict[str, Any]],
    verdicts: list[str],
    deny_message: str,
    final: dict[str, float],
) -> None:
    policy = parse_policy(policy_text)
    batched = CallCounters(tmp_path / "batched")
    one_by_one = CallCounters(tmp_path / "one-by-one")
    commits = _commits(batched)
    asks = [CounterAsk(policy, ToolCall("t", arguments), NOON) for arguments in calls]
    decided = [counters_verdict(ask, outcome, "closed") for ask, outcome in zip(asks, batched.count(asks), strict=True)]
    expected = [attempt(one_by_one, policy, "t", arguments) for arguments in calls]
    assert [(d.verdict, "" if d.verdict == "allow" else d.message) for d, _ in decided] == expected
    assert [d.verdict for d, _ in decided] == verdicts
    assert batched.values(policy, "t", NOON) == one_by_one.values(policy, "t", NOON) == final
    assert len(commits) == 1  # one transaction for the whole batch


def test_a_late_call_in_a_batch_is_refused_and_the_others_go_on(tmp_path: Path) -> None:
    policy = parse_policy(LIMITED)
    counters = CallCounters(tmp_path)
    fresh, late = deadline_after(), time.monotonic() - 0.001
    outcomes = counters.count(
        [CounterAsk(policy, ToolCall("t", {}), NOON, fresh), CounterAsk(policy, ToolCall("t", {}), NOON, late),
         CounterAsk(policy, ToolCall("t", {}), NOON, fresh)]
    )  # fmt: skip
    assert [type(outcome) for outcome in outcomes] == [Judged, StoreDown, Judged]
    assert "database is locked" in outcomes[1].reason  # type: ignore[union-attr]
    assert counters.values(policy, "t", NOON) == {"t._rate_hour": 2}  # the late call took nothing


def test_calls_that_need_no_store_and_approved_calls_mix_with_evaluated_ones(tmp_path: Path) -> None:
    policy = parse_policy(LIMITED)
    counters = CallCounters(tmp_path)
    assert attempt(counters, policy, "t") == ("allow", "")
    asks = [CounterAsk(policy, ToolCall("free", {"branch": "dev"}), NOON),
            CounterAsk(policy, ToolCall("t", {}), NOON, approved=True),
            CounterAsk(policy, ToolCall("free", {"branch": "main"}), NOON),
            CounterAsk(policy, ToolCall("t", {}), NOON),
            CounterAsk(policy, ToolCall("t", {}), NOON)]  # fmt: skip
    decided = [
        counters_verdict(ask, outcome, "closed") for ask, outcome in zip(asks, counters.count(asks), strict=True)
    ]
    assert [d.verdict for d, _ in decided] == ["deny", "allow", "allow", "allow", "deny"]
    assert [len(reserved) for _, reserved in decided] == [0, 1, 0, 1, 0]
    assert counters.values(policy, "t", NOON) == {"t._rate_hour": 3}


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_a_batch_the_store_stays_busy_for_is_denied_in_either_fail_mode(tmp_path: Path, fail_mode: str) -> None:
    """A lock held past the calls' deadline: the store works, it is only busy, so fail-open does
    not apply (an agent could make the store busy with slow calls to get the rest uncounted)."""
    policy = parse_policy(LIMITED)
    counters = CallCounters(tmp_path)
    holder = connect(tmp_path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        asks = [CounterAsk(policy, ToolCall("t", {}), NOON, time.monotonic() + 0.05)] * 3
        outcomes = counters.count(asks)
    finally:
        holder.execute("ROLLBACK")
    assert all(isinstance(outcome, StoreDown) and outcome.busy for outcome in outcomes)
    decided = [counters_verdict(ask, outcome, fail_mode) for ask, outcome in zip(asks, outcomes, strict=True)]  # type: ignore[arg-type]
    assert all(d.verdict == "deny" and "database is locked" in d.message for d, _ in decided)
    assert counters.values(policy, "t", NOON) == {"t._rate_hour": 0}


class Locked:
    """The counters on the real store thread while another connection holds the write lock
    (until `release`), so that calls queue up."""

    def __init__(self, tmp_path: Path) -> None:
        self.state_dir = tmp_path
        self.policy = parse_policy(LIMITED)
        self.counters = CallCounters(tmp_path)
        self.worker = StoreWorker()
        self.facade = AsyncCallCounters(self.counters, self.worker)
        self.holder: sqlite3.Connection | None = None

    async def __aenter__(self) -> Locked:
        await self.worker.run(self.counters._connection.get)  # opened (and migrated) before the lock
        self.holder = sqlite3.connect(database_path(self.state_dir), isolation_level=None)
        self.holder.execute("BEGIN IMMEDIATE")
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()
        while self.facade._asks or self.worker.busy:  # the batches, then the give-backs they queue
            await self.worker.drain(5)
        self.worker.close()

    def ask(self, deadline: float) -> asyncio.Task[CountOutcome]:
        return asyncio.create_task(self.facade.count(CounterAsk(self.policy, ToolCall("t", {}), NOON, deadline)))

    def release(self) -> None:
        if self.holder is not None:
            self.holder.execute("ROLLBACK")
            self.holder.close()
            self.holder = None

    def taken(self) -> int:
        return self.counters.values(self.policy, "t", NOON)["t._rate_hour"]


async def test_calls_queued_while_the_store_is_busy_are_decided_in_one_or_two_transactions(tmp_path: Path) -> None:
    async with Locked(tmp_path) as locked:
        commits = await locked.worker.run(_commits, locked.counters)
        tasks = [locked.ask(deadline_after()) for _ in range(8)]
        await asyncio.sleep(0)  # every call is queued (the first batch may already wait for the lock)
        assert not any(task.done() for task in tasks)
        locked.release()
        outcomes = await asyncio.gather(*tasks)
    assert [type(outcome).__name__ for outcome in outcomes] == ["Judged"] * 3 + ["OverLimit"] * 5
    assert len(commits) <= 2  # the batch that was waiting for the lock, and everything queued behind it
    assert locked.taken() == 3


async def test_a_call_that_stops_waiting_gets_back_what_its_batch_took(tmp_path: Path) -> None:
    async with Locked(tmp_path) as locked:
        task = locked.ask(deadline_after())
        await asyncio.sleep(0)
        task.cancel()  # e.g. the proxy winding down while the call waits for the lock
        locked.release()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert locked.taken() == 0


async def test_each_call_in_a_batch_is_refused_by_its_own_deadline(tmp_path: Path) -> None:
    """A batch waits for the lock until its latest call's deadline; an earlier call in it must
    still be answered (refused) at its own."""
    async with Locked(tmp_path) as locked:
        first = locked.ask(time.monotonic() + 0.2)
        while locked.facade._asks:  # the store thread has taken it and waits for the lock
            await asyncio.sleep(0.001)
        soon, late = locked.ask(time.monotonic() + 0.3), locked.ask(time.monotonic() + 30)
        # `soon` and `late` queue together behind `first`: one batch, which waits until `late`'s deadline.
        answered = await asyncio.wait_for(soon, timeout=5)
        assert isinstance(answered, StoreDown) and "database is locked" in answered.reason
        assert isinstance(await first, StoreDown)
        assert not late.done()
        locked.release()
        assert isinstance(await late, Judged)
    assert locked.taken() == 1  # only `late` took anything


def test_a_call_whose_check_fails_fails_alone(tmp_path: Path) -> None:
    policy = parse_policy(LIMITED)
    counters = CallCounters(tmp_path)
    asks = [CounterAsk(policy, ToolCall("t", {}), NOON), CounterAsk(policy, ToolCall("t", {}), math.nan),
            CounterAsk(policy, ToolCall("t", {}), NOON)]  # fmt: skip
    outcomes = counters.count(asks)  # a NaN clock cannot name a window: that call's check raises
    assert isinstance(outcomes[0], Judged) and isinstance(outcomes[2], Judged)
    assert isinstance(outcomes[1], ValueError)
    assert counters.values(policy, "t", NOON) == {"t._rate_hour": 2}


def test_the_store_says_which_calls_it_decides_under_the_lock(tmp_path: Path) -> None:
    """`started` is told of the calls decided inside the transaction, not of the late ones: the
    event loop then refuses at the deadline only calls whose batch has not reached them."""
    policy = parse_policy(LIMITED)
    counters = CallCounters(tmp_path)
    seen: list[int] = []
    asks = [CounterAsk(policy, ToolCall("t", {}), NOON, deadline_after()),
            CounterAsk(policy, ToolCall("t", {}), NOON, time.monotonic() - 1),
            CounterAsk(policy, ToolCall("free", {"branch": "main"}), NOON)]  # fmt: skip
    outcomes = counters.count(asks, seen.append)
    assert seen == [0]  # the late one is refused unstarted; the free one needs no store
    assert [type(outcome) for outcome in outcomes] == [Judged, StoreDown, Judged]


async def test_a_call_being_decided_gets_a_grace_for_its_real_outcome_then_is_refused(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    facade = AsyncCallCounters(CallCounters(tmp_path), StoreWorker())
    told: dict[str, asyncio.Future[CountOutcome | Exception]] = {
        "waiting": loop.create_future(),
        "started": loop.create_future(),
    }
    past = time.monotonic() - 1
    facade._waiting.extend(
        [_Waiting(told["waiting"].set_result, past), _Waiting(told["started"].set_result, past, started=True)]
    )
    facade._check_deadlines()
    refused_at_once = told["waiting"].result()
    assert isinstance(refused_at_once, StoreDown) and refused_at_once.busy
    assert not told["started"].done()  # its batch may still hand it the store's own outcome...
    refused = await asyncio.wait_for(told["started"], timeout=STARTED_GRACE_S + 5)  # ...but not forever
    assert isinstance(refused, StoreDown) and refused.busy


def test_a_database_locked_while_opening_is_busy_not_broken(tmp_path: Path) -> None:
    """Opening a connection under another process's exclusive lock: busy, so fail-open does not
    wave the call through (a corrupt file, by contrast, stays `busy=False`)."""
    policy = parse_policy(LIMITED)
    connect(tmp_path).close()
    holder = sqlite3.connect(database_path(tmp_path), isolation_level=None, timeout=0)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        outcome = CallCounters(tmp_path).count([CounterAsk(policy, ToolCall("t", {}), NOON, time.monotonic() + 0.2)])[0]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert isinstance(outcome, StoreDown) and outcome.busy, outcome
