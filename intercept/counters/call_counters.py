"""Deciding calls on their counters: read, evaluate and reserve in one transaction; give back.

`CallCounters` runs on the proxy's store thread (`store.worker`); `AsyncCallCounters` is what
the event loop awaits. Conditions see each counter before the call; all of a call's counters are
reserved or none; a denied call counts nothing. Unlike Intercept, a reservation is given back
only when the call provably never started (see `proxy.call_handler.Taken`), never on a mere
error reply: a tool can act and then fail.

Results are typed (`Judged`, `OverLimit`, `StoreDown`, `IncrementRefused`); the call handler
turns failures into the client's deny message and applies the fail mode.
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

from intercept.counters.rules import BadIncrement, Counted, counted, counter_rows
from intercept.counters.store import CounterStore, CounterTransaction, Reservation, fits_sqlite
from intercept.engine import Decision, ToolCall, evaluate
from intercept.engine.decision import ALLOW
from intercept.engine.evaluate import decide_presumed
from intercept.engine.plan import PresumedPlan
from intercept.policy.model import Policy, Rule
from intercept.store.database import PAST_DEADLINE, LazyConnection, StoreBusy, StoreUnavailable
from intercept.store.worker import StoreWorker, arm

log = logging.getLogger("intercept")

STARTED_GRACE_S = 1.0  # past its deadline, how long a call being decided under the lock may wait


@dataclass(frozen=True, slots=True)
class CounterAsk:
    """One call to decide on its counters."""

    policy: Policy
    call: ToolCall
    now_s: float
    deadline: float | None = None  # monotonic; None waits with SQLite's busy timeout
    strict: bool = False  # the server's schema does not vouch for the argument types
    approved: bool = False  # a human allowed it: only reserve
    counted: tuple[Counted, ...] | None = None  # what it counts, if already worked out (`rules.counted`)


@dataclass(frozen=True, slots=True)
class Judged:
    """The engine's decision on the counters' values; `reserved` holds what an allowed call took."""

    decision: Decision
    reserved: tuple[Reservation, ...] = ()


@dataclass(frozen=True, slots=True)
class OverLimit:
    """Taking the call's increments would pass `rule`'s limit: nothing was taken."""

    rule: Rule


@dataclass(frozen=True, slots=True)
class StoreDown:
    """The state store could not be used; `busy`: it works but stayed busy until the call's
    deadline (another process's lock, or this proxy's own queue)."""

    reason: str
    busy: bool = False


@dataclass(frozen=True, slots=True)
class IncrementRefused:
    """`increment_from` names no usable number: nothing was read or taken."""

    reason: str


CountOutcome = Judged | OverLimit | StoreDown | IncrementRefused
# A call of a batch, planned before the lock: its place, ask, counters, presumed judgement, reservations.
_Planned = tuple[int, CounterAsk, Sequence[Counted], tuple[Decision, PresumedPlan] | None, tuple[Reservation, ...]]


class CallCounters:
    """The counters of one proxy (`prefix`) in the state database; used on the store thread."""

    def __init__(self, state_dir: Path, prefix: str = "") -> None:
        self.state_dir = state_dir
        self.prefix = prefix
        self._connection = LazyConnection(state_dir)
        self._full_row: tuple[str, int, int | None] | None = None  # the last row a batch's sum found no room in

    def _open(self, deadline: float | None = None) -> CounterStore:
        connection = self._connection.get()
        arm(connection, deadline)
        return CounterStore(connection)

    def count(
        self, asks: Sequence[CounterAsk], started: Callable[[int], None] | None = None
    ) -> list[CountOutcome | Exception]:
        """Decide `asks` in order in one write transaction (group commit: one lock acquisition and
        one commit for calls queued together), each seeing what the earlier ones took. A call
        whose deadline passed before the lock was taken is refused; a failed commit takes
        nothing for any of them. A call whose own check raises (a bug) gets that error as its
        outcome and takes nothing; the others go on. `started(index)` is told of each call that
        is being decided under the lock (its outcome follows within this transaction)."""
        outcomes: list[CountOutcome | Exception | None] = [None] * len(asks)
        planned: list[_Planned] = []
        for index, ask in enumerate(asks):
            try:
                if not ask.policy.uses_counters(ask.call.name):  # nothing to read or take
                    outcomes[index] = Judged(ALLOW if ask.approved else evaluate(ask.policy, ask.call, {}, ask.strict))
                else:
                    call = ask.call
                    items = ask.counted if ask.counted is not None else counted(ask.policy, call, ask.now_s, self.prefix)
                    # judged now, before the lock; under it, only the conditions on counters are tested
                    presumed = None if ask.approved else decide_presumed(ask.policy, call.name, call.arguments, ask.strict)
                    taken = tuple([Reservation(item.key, item.window_start, item.amount) for item in items])
                    planned.append((index, ask, items, presumed, taken))
            except BadIncrement as exc:
                outcomes[index] = IncrementRefused(str(exc))
            except Exception as exc:
                outcomes[index] = exc
        if planned and not self._take_at_once(planned, outcomes):
            deadlines = [ask.deadline for _, ask, _, _, _ in planned]
            latest = None if None in deadlines else max(deadlines)  # type: ignore[type-var]
            try:
                with self._open(latest).transaction() as counters:
                    locked_at = time.monotonic()
                    for index, ask, items, presumed, taken in planned:
                        if ask.deadline is not None and ask.deadline <= locked_at:
                            outcomes[index] = StoreDown(PAST_DEADLINE, busy=True)
                            continue
                        if started is not None:
                            started(index)
                        try:
                            outcomes[index] = _count_in(counters, ask, items, presumed, taken)
                        except StoreUnavailable:
                            raise
                        except Exception as exc:
                            outcomes[index] = exc
            except StoreUnavailable as exc:
                self._store_down(planned, outcomes, exc)
        return outcomes  # type: ignore[return-value]

    def _store_down(
        self, planned: Sequence[_Planned], outcomes: list[CountOutcome | Exception | None], exc: StoreUnavailable
    ) -> None:
        """The store failed (or stayed busy) for the whole batch: every call's outcome; the
        connection is dropped so the next batch reconnects."""
        self._connection.drop(exc)
        for index, *_ in planned:
            outcomes[index] = StoreDown(str(exc), busy=isinstance(exc, StoreBusy))

    def _take_at_once(self, planned: Sequence[_Planned], outcomes: list[CountOutcome | Exception | None]) -> bool:
        """The usual batch in one statement instead of a transaction: every call counts the same
        one counter row under the same limit and, judged before the lock, is allowed with no
        condition left to test but that limit (or was approved by a human). If the batch's sum
        fits, each call in order would have fit: all are allowed and take their increments, and
        the write lock was held only while SQLite ran the statement.

        False, with nothing taken, when the batch is not of that kind, would pass the limit (then
        later batches on that row go straight to the transaction for the rest of its window: near
        a limit is where calls are denied one by one), its row holds something other than an
        integer, the numbers pass SQLite's 64-bit integers, or the lock stayed taken until the
        batch's earliest deadline: `count`'s transaction then decides each call exactly, and
        refuses the late ones. No try for the lock starts after that deadline
        (`database.write_statement`); one started before it ends within SQLite's 1 ms busy wait,
        and its outcome is the call's, as one decided under the lock in a transaction is. A
        database that cannot be opened (or is busy opening) is every call's outcome at once."""
        row = planned[0][2][0] if len(planned[0][2]) == 1 else None
        if row is None or self._full_row == (row.key, row.window_start, row.limit):
            return False
        total, deadlines = 0, []
        for _, ask, items, presumed, _ in planned:
            if len(items) != 1:
                return False
            item = items[0]
            if (item.key, item.window_start, item.limit) != (row.key, row.window_start, row.limit):
                return False
            if presumed is not None and (presumed[0].verdict != "allow" or presumed[1].checked):
                return False
            total += item.amount
            if ask.deadline is not None:
                deadlines.append(ask.deadline)
        if not fits_sqlite(total, row.limit):
            return False
        earliest = min(deadlines) if deadlines else None
        try:
            connection = self._connection.get()
        except StoreUnavailable as exc:  # busy opening included: the transaction would fail alike
            self._store_down(planned, outcomes, exc)
            return True
        try:
            arm(connection, earliest)
            took = CounterStore(connection).take_within_limit(row.key, row.window_start, total, row.limit)
        except StoreUnavailable as exc:
            if isinstance(exc, StoreBusy) and earliest is not None:  # the transaction waits until the latest
                return False
            self._store_down(planned, outcomes, exc)
            return True
        if not took:
            self._full_row = (row.key, row.window_start, row.limit)
            return False
        for index, _, _, presumed, taken in planned:
            outcomes[index] = Judged(ALLOW if presumed is None else presumed[0], taken)
        return True

    def count_one(self, ask: CounterAsk) -> CountOutcome:
        outcome = self.count([ask])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def values(self, policy: Policy, tool: str, now_s: float) -> dict[str, int]:
        """The values the engine would see for `tool` now (`scope.counter` -> value); raises
        StoreUnavailable. For status and tests: a call is decided by `count`."""
        rows = counter_rows(policy, tool, now_s, self.prefix) if policy.uses_counters(tool) else []
        if not rows:
            return {}
        store = self._open()
        return {name: store.value(key, start) for name, key, start, _, _ in rows}

    def give_back(self, reservations: Sequence[Reservation], why: str) -> None:
        """Undo the reservations of a call that provably never started."""
        if not reservations:
            return
        try:
            self._open().give_back(reservations)
            log.info("counters given back (%s): %s", why, ", ".join(r.key for r in reservations))
        except StoreUnavailable as exc:
            self._connection.drop(exc)
            log.error("could not give back counters %s: %s", [r.key for r in reservations], exc)

    def snapshot(self, now_s: float) -> dict[str, int]:
        """Current-window values of this proxy's counters (empty if the store is unavailable)."""
        try:
            return self._open().current(now_s, self.prefix)
        except StoreUnavailable as exc:
            self._connection.drop(exc)
            return {}


def _count_in(
    counters: CounterTransaction,
    ask: CounterAsk,
    items: Sequence[Counted],
    presumed: tuple[Decision, PresumedPlan] | None,
    taken: tuple[Reservation, ...],
) -> CountOutcome:
    """One call inside the open transaction: evaluate (unless approved) and reserve, holding the
    lock as briefly as we can. The call was judged before the lock as if every counter condition
    held (`presumed`); here only those conditions are tested against the values, and an allowed
    call's own limits not even that: its reservation checks them. When a condition fails, or the
    reservation does, the call is evaluated whole with the values, as `_count_exactly` does: the
    outcome is always the one the whole evaluation gives. `taken`: the call's reservations, made
    before the lock."""
    if presumed is None:  # approved by a human: only reserve
        over = counters.reserve(items)
        return OverLimit(over.rule) if over is not None else Judged(ALLOW, taken)
    decision, plan = presumed
    allowed = decision.verdict == "allow"
    tests = plan.checked if allowed else plan.checked + plan.implied
    if tests:
        values = {item.name: counters.value(item.key, item.window_start) for item in items}
        arguments = ask.call.arguments
        for test in tests:
            if not test(arguments, values):
                return _count_exactly(counters, ask, items, taken)
    if not allowed:
        return Judged(decision)
    if counters.reserve(items) is not None:
        return _count_exactly(counters, ask, items, taken)  # it takes nothing: the reservation fails again
    return Judged(decision, taken)


def _count_exactly(
    counters: CounterTransaction, ask: CounterAsk, items: Sequence[Counted], taken: tuple[Reservation, ...]
) -> CountOutcome:
    """The call evaluated whole with the counters' values, then reserved if allowed."""
    values = {item.name: counters.value(item.key, item.window_start) for item in items}
    decision = evaluate(ask.policy, ask.call, values, ask.strict)
    if decision.verdict != "allow":
        return Judged(decision)
    over = counters.reserve(items)
    if over is not None:
        return OverLimit(over.rule)
    return Judged(decision, taken)


Then = Callable[[CountOutcome | Exception], None]  # told a call's outcome (or the error that decided it)


@dataclass(slots=True)
class _Waiting:
    """A queued call: whom to tell its outcome, its deadline, whether its batch is deciding it
    under the lock (`started`), and whether it was told already (`done`)."""

    then: Then
    deadline: float | None
    started: bool = False
    done: bool = False

    def tell(self, outcome: CountOutcome | Exception) -> None:
        self.done = True
        self.then(outcome)


def _tell_safely(waiting: _Waiting, outcome: CountOutcome | Exception) -> None:
    """Tell one call its outcome; its failure to act on it (a bug) must not keep others waiting."""
    try:
        waiting.tell(outcome)
    except Exception:
        log.exception("internal error while acting on a counted call's outcome")


class AsyncCallCounters:
    """The counters as the event loop uses them: every store access runs on the store thread.

    Calls that ask while a batch is queued join it: the store thread takes every ask queued when
    it starts and decides them in one transaction (`CallCounters.count`), then hands the
    outcomes back to the event loop in one wake-up. Under load that is one lock acquisition, one
    commit and one thread hand-off per batch instead of per call. A call is told its outcome
    through a callback (`count_then`), with no task, future or timer of its own: one timer
    watches the deadlines of every call still waiting (`_check_deadlines`)."""

    def __init__(self, counters: CallCounters, worker: StoreWorker) -> None:
        self.counters = counters
        self.worker = worker
        self._asks: collections.deque[tuple[CounterAsk, _Waiting]] = collections.deque()
        self._batch_queued = False
        self._waiting: collections.deque[_Waiting] = collections.deque()  # with a deadline, oldest first
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def count_then(self, ask: CounterAsk, then: Then) -> None:
        """Decide one call (with the others queued meanwhile) and tell `then` its outcome, on the
        event loop. What the call counts is worked out here first: an unusable `increment_from`
        is refused at once (`then` is told before this returns), never mistaken for a slow
        store. A call whose batch has not reached it by its deadline is refused then (a batch
        waits for the lock until its latest call's deadline); one being decided under the lock
        gets its real outcome (what the batch takes for a refused call is given back)."""
        if ask.counted is None and ask.policy.uses_counters(ask.call.name):
            try:
                items = counted(ask.policy, ask.call, ask.now_s, self.counters.prefix)
            except BadIncrement as exc:
                then(IncrementRefused(str(exc)))
                return
            ask = CounterAsk(ask.policy, ask.call, ask.now_s, ask.deadline, ask.strict, ask.approved, tuple(items))
        waiting = _Waiting(then, ask.deadline)
        self._asks.append((ask, waiting))
        if not self._batch_queued:
            self._batch_queued = True
            # Queued for the store thread once this turn of the loop is done (the calls of the
            # same chunk join the batch meanwhile): woken while the loop still runs, the thread
            # would only go back to sleep waiting for the GIL, one more thread switch per batch.
            asyncio.get_running_loop().call_soon(self.worker.spawn, self._count_queued, self._hand_out)
        if ask.deadline is not None:
            self._waiting.append(waiting)
            if ask.deadline < self._timer_at:
                self._watch_deadlines(ask.deadline)

    async def count(self, ask: CounterAsk) -> CountOutcome:
        """`count_then` for a caller that awaits; if it stops waiting (cancelled) after its outcome
        was decided, what the call took is given back."""
        future: asyncio.Future[CountOutcome] = asyncio.get_running_loop().create_future()

        def settle(outcome: CountOutcome | Exception) -> None:
            if future.done():  # cancelled meanwhile
                if isinstance(outcome, Judged):
                    self.give_back(outcome.reserved, "the call stopped waiting before it was decided")
            elif isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.count_then(ask, settle)
        try:
            return await future
        except asyncio.CancelledError:  # cancelled after its outcome arrived: give back what it took
            if future.done() and not future.cancelled():
                outcome = future.result()
                if isinstance(outcome, Judged):
                    self.give_back(outcome.reserved, "the call stopped waiting before it was decided")
            raise

    def _count_queued(self) -> list[tuple[_Waiting, CountOutcome | Exception]]:
        """On the store thread: decide every ask queued now. The flag is cleared before the queue
        is read, so an ask added after the read finds it cleared and queues a batch of its own."""
        self._batch_queued = False
        taken = []
        while self._asks:
            taken.append(self._asks.popleft())
        if not taken:
            return []

        def started(index: int) -> None:
            taken[index][1].started = True  # one attribute store: the event loop reads it under the GIL

        try:
            outcomes = self.counters.count([ask for ask, _ in taken], started)
        except Exception as exc:  # a bug fails these calls (closed), not the store thread
            outcomes = [exc] * len(taken)
        return [(waiting, outcome) for (_, waiting), outcome in zip(taken, outcomes, strict=True)]

    def _hand_out(self, results: list[tuple[_Waiting, CountOutcome | Exception]]) -> None:
        """On the event loop: tell each waiting call its outcome (or the error that decided it).
        A call that stopped waiting meanwhile (refused at its deadline) gets back what it took.
        One call's failure to act on its outcome (a bug) does not keep the others waiting."""
        for waiting, outcome in results:
            if waiting.done:
                if isinstance(outcome, Judged):
                    self.give_back(outcome.reserved, "the call stopped waiting before it was decided")
                continue
            _tell_safely(waiting, outcome)
        waiting_now = self._waiting
        while waiting_now and waiting_now[0].done:
            waiting_now.popleft()

    def _watch_deadlines(self, at: float) -> None:
        """(Re-)arm the one timer for the calls' deadlines to fire at `at` (monotonic)."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._timer_at = at  # (the loop's clock is time.monotonic, the deadlines')
        self._deadline_timer = asyncio.get_running_loop().call_at(at, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """Refuse every waiting call whose deadline has passed (fail closed, in either fail mode:
        the store works), then watch the earliest deadline left. One its batch is deciding under
        the lock gets STARTED_GRACE_S more for its real outcome (it waits for the rest of its
        batch and the commit), then is refused all the same; what its batch takes for it is
        given back."""
        self._deadline_timer, self._timer_at = None, math.inf
        now = time.monotonic()
        left: collections.deque[_Waiting] = collections.deque()
        earliest = math.inf
        for waiting in self._waiting:
            if waiting.done:
                continue
            deadline = waiting.deadline
            assert deadline is not None
            if deadline <= now:
                if waiting.started:
                    waiting.deadline = deadline = now + STARTED_GRACE_S
                    waiting.started = False  # refused at the end of its grace, started or not
                else:
                    _tell_safely(waiting, StoreDown(PAST_DEADLINE, busy=True))
                    continue
            left.append(waiting)
            earliest = min(earliest, deadline)
        self._waiting = left
        if left:
            self._watch_deadlines(earliest)

    def give_back(self, reservations: Sequence[Reservation], why: str) -> None:
        """Queued on the store thread at once (after the reservation it undoes)."""
        if reservations:
            self.worker.spawn(lambda: self.counters.give_back(reservations, why))

    def snapshot(self, now_s: float, then: Callable[[dict[str, int]], object]) -> None:
        """Hand the current-window values to `then` on the event loop, once read."""
        self.worker.spawn(lambda: self.counters.snapshot(now_s), then=then)
