"""Counters for one call: read them for the engine, reserve them atomically, give them back.

Semantics are Intercept's: conditions see each counter before this call; a reservation succeeds
only if value + increment stays within the limit its own condition implies (`lte N` -> N,
`lt N` -> N-1); all of a call's counters are reserved in one transaction (tool rules first, then
`"*"`), so a failure takes none; a denied call counts nothing. Unlike Intercept, a reservation is
given back only when the call provably never started (see `proxy.reply_watch`), never on a
mere error reply: a tool can act and then fail.

`CallCounters` does the store work and runs on the proxy's store thread (`store.worker`);
`AsyncCallCounters` is what the event loop calls.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from intercept.engine import Decision, ToolCall
from intercept.engine.evaluate import evaluate, stateful_rules
from intercept.engine.plan import AmbiguousArgument, resolve_argument
from intercept.policy.model import Policy, Rule
from intercept.store.counters import CounterStore, Reservation, counter_key, window_start
from intercept.store.database import LazyConnection, StoreBusy, StoreUnavailable
from intercept.store.worker import StoreWorker, arm

log = logging.getLogger("intercept")

FailMode = Literal["closed", "open"]
INTERNAL_POLICY_ERROR = "Internal policy error"
MAX_INCREMENT = 2**53


class IncrementError(ValueError):
    """`increment_from` names a missing or non-numeric argument."""


@dataclass(frozen=True, slots=True)
class Reserved:
    reservations: list[Reservation]


NOTHING_RESERVED = Reserved([])
LATE = "database is locked (the state store stayed busy until this call's deadline)"


@dataclass(frozen=True, slots=True)
class CounterAsk:
    """One call to decide on its counters (see `CallCounters.evaluate_and_reserve`)."""

    policy: Policy
    call: ToolCall
    now_s: float
    deadline: float | None = None  # monotonic; None waits with SQLite's busy timeout
    strict: bool = False
    evaluated: Decision | None = None  # already allowed (e.g. by a human): only reserve


@dataclass(frozen=True, slots=True)
class _Counted:
    """One counter a call reads and takes: its name for the engine, its row, amount and limit."""

    name: str
    key: str
    start: int
    amount: int
    limit: int | None
    rule: Rule


@dataclass(frozen=True, slots=True)
class _Plan:
    ask: CounterAsk
    counters: list[_Counted]
ALLOW_AS_EVALUATED = Decision("allow", "", "")  # `reserve` for a call already allowed


def _increment(rule: Rule, call: ToolCall) -> int:
    assert rule.state is not None
    if rule.state.increment_from is None:
        return rule.state.increment
    try:
        found, value = resolve_argument(call.arguments, rule.state.increment_from[5:])
    except AmbiguousArgument:
        raise IncrementError(f"{rule.state.increment_from} matches an argument only up to letter case") from None
    if not found or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise IncrementError(f"{rule.state.increment_from} is missing or not a number")
    if value < 0:  # checked before rounding: -0.5 must not round up to a harmless 0
        raise IncrementError(f"{rule.state.increment_from} is negative: must be between 0 and {MAX_INCREMENT}")
    amount = math.ceil(value)  # fractions round up: 200 calls of 0.99 must not count as nothing
    # A negative amount would let an agent refill its own budget; a huge one cannot be stored.
    if not 0 <= amount <= MAX_INCREMENT:
        raise IncrementError(f"{rule.state.increment_from} is {amount}: must be between 0 and {MAX_INCREMENT}")
    return amount


def _limit(rule: Rule, scope: str) -> int | None:
    """The most the counter may reach, from an lt/lte condition on the rule's own counter."""
    assert rule.state is not None
    own_path = f"state.{scope}.{rule.state.counter}"
    for condition in rule.conditions:
        if condition.path == own_path and condition.op in ("lt", "lte"):
            limit = int(condition.value)
            return limit - 1 if condition.op == "lt" else limit
    return None


class CallCounters:
    """Counter reads and reservations against the state database, with a fail mode."""

    def __init__(self, state_dir: Path, prefix: str = "", fail_mode: FailMode = "closed") -> None:
        self.state_dir = state_dir
        self.prefix = prefix
        self.fail_mode = fail_mode
        self._connection = LazyConnection(state_dir)

    def _open(self, deadline: float | None = None) -> CounterStore:
        connection = self._connection.get()
        arm(connection, deadline)
        return CounterStore(connection)

    def _drop(self, after: StoreUnavailable | None = None) -> None:
        self._connection.drop(after)

    def _key(self, scope: str, rule: Rule) -> str:
        assert rule.state is not None
        return counter_key(self.prefix, scope, rule.state.counter, rule.state.window)

    def read(self, policy: Policy, tool: str, now_s: float, deadline: float | None = None) -> dict[str, float] | Decision:
        """Counter values for the engine (`scope.counter` -> value), or a deny if the store fails
        (or cannot answer before `deadline`, a monotonic time)."""
        if not policy.uses_counters(tool):
            return {}
        specs = stateful_rules(policy, tool)
        try:
            store = self._open(deadline)
            values: dict[str, float] = {}
            for scope, rule in specs:
                assert rule.state is not None
                values[f"{scope}.{rule.state.counter}"] = store.value(
                    self._key(scope, rule), window_start(rule.state.window, now_s)
                )
            return values
        except StoreUnavailable as exc:
            return self._unavailable(exc, tool)

    def reserve(self, policy: Policy, call: ToolCall, now_s: float, deadline: float | None = None) -> Reserved | Decision:
        """Take every counter's increment for an allowed call, or a deny (nothing taken)."""
        outcome = self.evaluate_and_reserve(policy, call, now_s, deadline, evaluated=ALLOW_AS_EVALUATED)
        return outcome[1] if outcome[1] is not None else outcome[0]

    def evaluate_and_reserve(
        self,
        policy: Policy,
        call: ToolCall,
        now_s: float,
        deadline: float | None = None,
        strict: bool = False,
        evaluated: Decision | None = None,
    ) -> tuple[Decision, Reserved | None]:
        """Read the call's counters, evaluate the policy on them and, if it allows the call, take
        every increment: all in one write transaction, so calls decided at the same time (in this
        proxy or another) each see the counters the earlier ones left. Returns the decision and
        what was reserved (None unless allowed). `evaluated` skips the evaluation (a call already
        allowed, e.g. by a human)."""
        return self.evaluate_and_reserve_all([CounterAsk(policy, call, now_s, deadline, strict, evaluated)])[0]

    def evaluate_and_reserve_all(self, asks: Sequence[CounterAsk]) -> list[tuple[Decision, Reserved | None]]:
        """`evaluate_and_reserve` for several calls in one write transaction (group commit: one
        lock acquisition and one commit for the calls queued together), decided in order, each
        seeing the counters the earlier ones left. A call whose deadline passed before the lock
        was taken is refused; a failed commit takes nothing for any of them."""
        outcomes: list[tuple[Decision, Reserved | None] | None] = [None] * len(asks)
        plans: list[tuple[int, _Plan]] = []
        for index, ask in enumerate(asks):
            planned = self._plan(ask)
            if isinstance(planned, _Plan):
                plans.append((index, planned))
            else:
                outcomes[index] = planned
        if plans:
            decided = self._in_one_transaction([plan for _, plan in plans])
            for (index, _), outcome in zip(plans, decided, strict=True):
                outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    def _plan(self, ask: CounterAsk) -> _Plan | tuple[Decision, Reserved | None]:
        """What `ask` reads and takes, or its outcome when it needs no store."""
        policy, call = ask.policy, ask.call
        if not policy.uses_counters(call.name):  # nothing to read or take: the store is not touched
            decision = ask.evaluated or evaluate(policy, call, {}, ask.strict)
            return decision, (NOTHING_RESERVED if decision.verdict == "allow" else None)
        specs = stateful_rules(policy, call.name)
        try:
            increments = [_increment(rule, call) for _, rule in specs]
        except IncrementError as exc:
            log.error("denied %s: %s", call.name, exc)
            return Decision("deny", "(increment_from)", INTERNAL_POLICY_ERROR), None
        counters = [
            _Counted(f"{scope}.{rule.state.counter}", self._key(scope, rule), window_start(rule.state.window, ask.now_s),  # type: ignore[union-attr]
                     amount, _limit(rule, scope), rule)
            for (scope, rule), amount in zip(specs, increments, strict=True)
        ]  # fmt: skip
        return _Plan(ask, counters)

    def _in_one_transaction(self, plans: list[_Plan]) -> list[tuple[Decision, Reserved | None]]:
        deadlines = [plan.ask.deadline for plan in plans]
        latest = None if None in deadlines else max(deadlines)  # type: ignore[type-var]
        try:
            store = self._open(latest)
            store.begin()
            try:
                outcomes = self._decide_in(store, plans)
                store.commit()
            except BaseException:
                store.abort()
                raise
            return outcomes
        except StoreUnavailable as exc:
            return [self._without_store(plan, exc) for plan in plans]

    def _decide_in(self, store: CounterStore, plans: list[_Plan]) -> list[tuple[Decision, Reserved | None]]:
        """Decide each planned call in order inside the open transaction; the increments of the
        calls allowed are written once per counter at the end."""
        values: dict[tuple[str, int], int] = {}  # what the calls so far leave, per (key, window start)
        taken: dict[tuple[str, int], int] = {}

        def value(counted: _Counted) -> int:
            slot = (counted.key, counted.start)
            if slot not in values:
                values[slot] = store.value(counted.key, counted.start)
            return values[slot]

        outcomes: list[tuple[Decision, Reserved | None]] = []
        now = time.monotonic()
        for plan in plans:
            ask = plan.ask
            if ask.deadline is not None and ask.deadline <= now:
                outcomes.append(self._without_store(plan, StoreBusy(LATE)))
                continue
            decision = ask.evaluated
            if decision is None:
                decision = evaluate(ask.policy, ask.call, {c.name: value(c) for c in plan.counters}, ask.strict)
                if decision.verdict != "allow":
                    outcomes.append((decision, None))
                    continue
            mine: dict[tuple[str, int], int] = {}
            refused: Rule | None = None
            for counted in plan.counters:
                slot = (counted.key, counted.start)
                after = value(counted) + mine.get(slot, 0) + counted.amount
                if counted.limit is not None and after > counted.limit:
                    refused = counted.rule
                    break
                mine[slot] = mine.get(slot, 0) + counted.amount
            if refused is not None:
                message = refused.on_deny or f"Rate limit exceeded for {refused.name}"
                outcomes.append((Decision("deny", refused.name, message, refused), None))
                continue
            for slot, amount in mine.items():
                values[slot] += amount
                taken[slot] = taken.get(slot, 0) + amount
            outcomes.append((decision, Reserved([Reservation(c.key, c.start, c.amount) for c in plan.counters])))
        for (key, start), amount in taken.items():
            store.add(key, start, amount)
        return outcomes

    def _without_store(self, plan: _Plan, exc: StoreUnavailable) -> tuple[Decision, Reserved | None]:
        """The outcome of a call whose counters could not be reached: deny, or under fail-open,
        judged as if every counter were zero with nothing reserved."""
        ask = plan.ask
        outcome = self._unavailable(exc, ask.call.name)
        if isinstance(outcome, Decision):
            return outcome, None
        zeros = {counted.name: 0.0 for counted in plan.counters}
        decision = ask.evaluated or evaluate(ask.policy, ask.call, zeros, ask.strict)
        return decision, (NOTHING_RESERVED if decision.verdict == "allow" else None)

    def give_back(self, reservations: list[Reservation], why: str) -> None:
        """Undo the reservations of a call that provably never started."""
        if not reservations:
            return
        try:
            self._open().give_back(reservations)
            log.info("counters given back (%s): %s", why, ", ".join(r.key for r in reservations))
        except StoreUnavailable as exc:
            self._drop()
            log.error("could not give back counters %s: %s", [r.key for r in reservations], exc)

    def snapshot(self, now_s: float) -> dict[str, int]:
        """Current-window values of this proxy's counters (empty if the store is unavailable)."""
        try:
            return self._open().current(now_s, self.prefix)
        except StoreUnavailable:
            self._drop()
            return {}

    def _unavailable(self, exc: StoreUnavailable, tool: str) -> dict[str, float] | Decision:
        self._drop(exc)
        if self.fail_mode == "open":
            log.warning("STATE STORE UNAVAILABLE, fail-open: %s allowed as if counters were zero (%s)", tool, exc)
            return {}
        log.error("state store unavailable, denying %s: %s", tool, exc)
        return Decision("deny", "(state store)", f"{INTERNAL_POLICY_ERROR}: state store unavailable ({exc})")


class AsyncCallCounters:
    """The counters as the event loop uses them: every store access runs on the store thread.

    Calls that ask while a batch is queued join it: the store thread takes every ask queued when
    it starts and decides them in one transaction (`evaluate_and_reserve_all`), then hands the
    outcomes back to the event loop in one wake-up. Under load that is one lock acquisition, one
    commit and one thread hand-off per batch instead of per call."""

    def __init__(self, counters: CallCounters, worker: StoreWorker) -> None:
        self.counters = counters
        self.worker = worker
        self._asks: collections.deque[tuple[CounterAsk, asyncio.Future[tuple[Decision, Reserved | None]]]] = (
            collections.deque()
        )
        self._batch_queued = False

    async def reserve(self, policy: Policy, call: ToolCall, now_s: float, deadline: float) -> Reserved | Decision:
        """Take the counters of a call already allowed (e.g. by a human), or a deny."""
        decision, reserved = await self._ask(CounterAsk(policy, call, now_s, deadline, evaluated=ALLOW_AS_EVALUATED))
        return reserved if reserved is not None else decision

    async def evaluate_and_reserve(
        self, policy: Policy, call: ToolCall, now_s: float, deadline: float, strict: bool
    ) -> tuple[Decision, Reserved | None]:
        return await self._ask(CounterAsk(policy, call, now_s, deadline, strict))

    async def _ask(self, ask: CounterAsk) -> tuple[Decision, Reserved | None]:
        future: asyncio.Future[tuple[Decision, Reserved | None]] = asyncio.get_running_loop().create_future()
        self._asks.append((ask, future))
        if not self._batch_queued:
            self._batch_queued = True
            self.worker.spawn(self._decide_queued, then=self._settle)
        return await future

    def _decide_queued(self) -> list[tuple[asyncio.Future[tuple[Decision, Reserved | None]], object]]:
        """On the store thread: decide every ask queued now. The flag is cleared before the queue
        is read, so an ask added after the read finds it cleared and queues a batch of its own."""
        self._batch_queued = False
        taken = []
        while self._asks:
            taken.append(self._asks.popleft())
        if not taken:
            return []
        futures = [future for _, future in taken]
        try:
            outcomes: list[object] = list(self.counters.evaluate_and_reserve_all([ask for ask, _ in taken]))
        except Exception as exc:  # a bug fails these calls (closed), not the store thread
            outcomes = [exc] * len(taken)
        return list(zip(futures, outcomes, strict=True))

    def _settle(self, results: list[tuple[asyncio.Future[tuple[Decision, Reserved | None]], object]]) -> None:
        """On the event loop: hand each waiting call its outcome (or the error that decided it).
        A call that stopped waiting meanwhile (its task was cancelled) gets back what it took."""
        for future, outcome in results:
            if future.done():
                if isinstance(outcome, tuple) and outcome[1] is not None:
                    self.give_back(outcome[1].reservations, "the call stopped waiting before it was decided")
            elif isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)  # type: ignore[arg-type]

    def give_back(self, reservations: list[Reservation], why: str) -> None:
        """Queued on the store thread at once (after the reservation it undoes)."""
        if reservations:
            self.worker.spawn(lambda: self.counters.give_back(reservations, why))

    def snapshot(self, now_s: float, then: Callable[[dict[str, int]], object]) -> None:
        """Hand the current-window values to `then` on the event loop, once read."""
        self.worker.spawn(lambda: self.counters.snapshot(now_s), then=then)
