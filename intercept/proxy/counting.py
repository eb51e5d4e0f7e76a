"""Counters for one call: read them for the engine, reserve them atomically, give them back.

Semantics are Intercept's: conditions see each counter before this call; a reservation succeeds
only if value + increment stays within the limit its own condition implies (`lte N` -> N,
`lt N` -> N-1); all of a call's counters are reserved in one transaction (tool rules first, then
`"*"`), so a failure takes none; a denied call counts nothing. Unlike Intercept, a reservation is
given back only when the call provably never started (see `proxy.reply_watch`), never on a
mere error reply: a tool can act and then fail.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from intercept.engine import Decision, ToolCall
from intercept.engine.evaluate import stateful_rules
from intercept.engine.plan import AmbiguousArgument, resolve_argument
from intercept.policy.model import Policy, Rule
from intercept.store.counters import CounterStore, Reservation, counter_key, window_start
from intercept.store.database import LazyConnection, StoreUnavailable

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

    def _open(self) -> CounterStore:
        return CounterStore(self._connection.get())

    def _drop(self) -> None:
        self._connection.drop()

    def _key(self, scope: str, rule: Rule) -> str:
        assert rule.state is not None
        return counter_key(self.prefix, scope, rule.state.counter, rule.state.window)

    def read(self, policy: Policy, tool: str, now_s: float) -> dict[str, float] | Decision:
        """Counter values for the engine (`scope.counter` -> value), or a deny if the store fails."""
        if not policy.uses_counters(tool):
            return {}
        specs = stateful_rules(policy, tool)
        try:
            store = self._open()
            values: dict[str, float] = {}
            for scope, rule in specs:
                assert rule.state is not None
                values[f"{scope}.{rule.state.counter}"] = store.value(
                    self._key(scope, rule), window_start(rule.state.window, now_s)
                )
            return values
        except StoreUnavailable as exc:
            return self._unavailable(exc, tool)

    def reserve(self, policy: Policy, call: ToolCall, now_s: float) -> Reserved | Decision:
        """Take every counter's increment for an allowed call, or a deny (nothing taken)."""
        if not policy.uses_counters(call.name):
            return NOTHING_RESERVED
        specs = stateful_rules(policy, call.name)
        try:
            increments = [(scope, rule, _increment(rule, call)) for scope, rule in specs]
        except IncrementError as exc:
            log.error("denied %s: %s", call.name, exc)
            return Decision("deny", "(increment_from)", INTERNAL_POLICY_ERROR)
        try:
            store = self._open()
            store.begin()
            try:
                reservations = []
                for scope, rule, amount in increments:
                    assert rule.state is not None
                    key, start = self._key(scope, rule), window_start(rule.state.window, now_s)
                    limit = _limit(rule, scope)
                    if limit is not None and store.value(key, start) + amount > limit:
                        store.abort()
                        return Decision("deny", rule.name, rule.on_deny or f"Rate limit exceeded for {rule.name}", rule)
                    store.add(key, start, amount)
                    reservations.append(Reservation(key, start, amount))
                store.commit()
            except BaseException:
                store.abort()
                raise
            return Reserved(reservations)
        except StoreUnavailable as exc:
            outcome = self._unavailable(exc, call.name)
            return Reserved([]) if isinstance(outcome, dict) else outcome

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
        self._drop()
        if self.fail_mode == "open":
            log.warning("STATE STORE UNAVAILABLE, fail-open: %s allowed as if counters were zero (%s)", tool, exc)
            return {}
        log.error("state store unavailable, denying %s: %s", tool, exc)
        return Decision("deny", "(state store)", f"{INTERNAL_POLICY_ERROR}: state store unavailable")
