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

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from intercept.engine import Decision, ToolCall
from intercept.engine.evaluate import evaluate, stateful_rules
from intercept.engine.plan import AmbiguousArgument, resolve_argument
from intercept.policy.model import Policy, Rule
from intercept.store.counters import CounterStore, Reservation, counter_key, window_start
from intercept.store.database import LazyConnection, StoreUnavailable
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
        if not policy.uses_counters(call.name):  # nothing to read or take: the store is not touched
            decision = evaluated or evaluate(policy, call, {}, strict)
            return decision, (NOTHING_RESERVED if decision.verdict == "allow" else None)
        specs = stateful_rules(policy, call.name)
        try:
            increments = [(scope, rule, _increment(rule, call)) for scope, rule in specs]
        except IncrementError as exc:
            log.error("denied %s: %s", call.name, exc)
            return Decision("deny", "(increment_from)", INTERNAL_POLICY_ERROR), None
        keys = [(self._key(scope, rule), window_start(rule.state.window, now_s)) for scope, rule in specs]  # type: ignore[union-attr]
        try:
            store = self._open(deadline)
            store.begin()
            try:
                decision = evaluated
                if decision is None:
                    values = {
                        f"{scope}.{rule.state.counter}": store.value(key, start)  # type: ignore[union-attr]
                        for (scope, rule), (key, start) in zip(specs, keys, strict=True)
                    }
                    decision = evaluate(policy, call, values, strict)
                    if decision.verdict != "allow":
                        store.abort()
                        return decision, None
                reservations = []
                for (scope, rule, amount), (key, start) in zip(increments, keys, strict=True):
                    limit = _limit(rule, scope)
                    if limit is not None and store.value(key, start) + amount > limit:
                        store.abort()
                        refused = rule.on_deny or f"Rate limit exceeded for {rule.name}"
                        return Decision("deny", rule.name, refused, rule), None
                    store.add(key, start, amount)
                    reservations.append(Reservation(key, start, amount))
                store.commit()
            except BaseException:
                store.abort()
                raise
            return decision, Reserved(reservations)
        except StoreUnavailable as exc:
            outcome = self._unavailable(exc, call.name)
            if isinstance(outcome, Decision):
                return outcome, None
            # fail open: judged as if every counter were zero, nothing reserved
            decision = evaluated or evaluate(policy, call, dict.fromkeys(
                (f"{scope}.{rule.state.counter}" for scope, rule in specs), 0.0  # type: ignore[union-attr]
            ), strict)
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
    """The counters as the event loop uses them: every store access runs on the store thread."""

    def __init__(self, counters: CallCounters, worker: StoreWorker) -> None:
        self.counters = counters
        self.worker = worker

    async def reserve(self, policy: Policy, call: ToolCall, now_s: float, deadline: float) -> Reserved | Decision:
        return await self.worker.run(self.counters.reserve, policy, call, now_s, deadline)

    async def evaluate_and_reserve(
        self, policy: Policy, call: ToolCall, now_s: float, deadline: float, strict: bool
    ) -> tuple[Decision, Reserved | None]:
        return await self.worker.run(self.counters.evaluate_and_reserve, policy, call, now_s, deadline, strict)

    def give_back(self, reservations: list[Reservation], why: str) -> None:
        """Queued on the store thread at once (after the reservation it undoes)."""
        if reservations:
            self.worker.spawn(lambda: self.counters.give_back(reservations, why))

    def snapshot(self, now_s: float, then: Callable[[dict[str, int]], object]) -> None:
        """Hand the current-window values to `then` on the event loop, once read."""
        self.worker.spawn(lambda: self.counters.snapshot(now_s), then=then)
