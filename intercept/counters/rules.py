"""What a call counts, from the policy alone (no I/O): which counters, by how much, up to what.

Semantics are Intercept's: a counter is `<scope>.<counter>` in a calendar-aligned UTC window;
a rule's own `lt N` / `lte N` condition on its counter is its limit (`lt N` -> N-1); the tool's
rules come first, then the `"*"` rules (scope `_global`). `increment_from` must name a finite,
non-negative number of at most 2^53; fractions round up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from intercept.engine import ToolCall
from intercept.engine.plan import AmbiguousArgument, limit_condition, resolve_argument, rules_for
from intercept.policy.model import GLOBAL_SCOPE, Policy, Rule

WINDOW_S = {"minute": 60, "hour": 3600, "day": 86400}
MAX_INCREMENT = 2**53


class BadIncrement(ValueError):
    """`increment_from` names a missing, ambiguous, non-numeric or out-of-range argument."""


@dataclass(frozen=True, slots=True)
class Counted:
    """One counter a call reads and takes: its name for the engine (`scope.counter`), its row
    (`key`, `window_start`), the amount and the limit (None: counted without a limit)."""

    name: str
    key: str
    window_start: int
    amount: int
    limit: int | None
    rule: Rule


def window_start(window: str, now_s: float) -> int:
    """Start of the UTC minute/hour/day containing `now_s` (epoch seconds are UTC-aligned)."""
    size = WINDOW_S[window]
    return int(now_s // size) * size


def counter_key(prefix: str, scope: str, counter: str, window: str) -> str:
    """`<prefix><scope>.<counter>@<window>`: the window is part of the key so a reload that changes
    a rule's window starts a separate series instead of misreading the old one."""
    return f"{prefix}{scope}.{counter}@{window}"


def counted_rules(policy: Policy, tool: str) -> list[tuple[str, Rule]]:
    """(scope, rule) for each rule with a counter that applies to `tool`, tool rules first."""
    own = policy.tools.get(tool)
    own_count = len(own.rules) if own else 0
    return [
        (tool if index < own_count else GLOBAL_SCOPE, rule)
        for index, rule in enumerate(rules_for(policy, tool))
        if rule.state is not None
    ]


@dataclass(frozen=True, slots=True)
class CounterRow:
    """One counter the calls of a tool use, from the policy alone (its window's start comes from
    the time of each call): its name for the engine, its key, window, scope, rule and limit."""

    name: str
    key: str
    window: str
    scope: str
    rule: Rule
    limit: int | None


def counter_plan(policy: Policy, tool: str, prefix: str = "") -> tuple[CounterRow, ...]:
    """The counters `tool` uses, worked out once per policy (kept with its plans, under
    `("counters", tool, prefix)`; every tool the policy does not list shares one)."""
    cache_key = ("counters", tool if tool in policy.tools else None, prefix)
    plan: tuple[CounterRow, ...] | None = policy.plans.get(cache_key)  # type: ignore[call-overload]
    if plan is None:
        rows = []
        for scope, rule in counted_rules(policy, tool):
            state = rule.state
            assert state is not None
            name = f"{scope}.{state.counter}"
            key = counter_key(prefix, scope, state.counter, state.window)
            rows.append(CounterRow(name, key, state.window, scope, rule, limit(rule, scope)))
        plan = policy.plans[cache_key] = tuple(rows)  # type: ignore[index]
    return plan


def counter_rows(policy: Policy, tool: str, now_s: float, prefix: str = "") -> list[tuple[str, str, int, str, Rule]]:
    """(name for the engine, key, window start, scope, rule) of each counter `tool` uses at `now_s`."""
    return [
        (row.name, row.key, window_start(row.window, now_s), row.scope, row.rule)
        for row in counter_plan(policy, tool, prefix)
    ]


def counted(policy: Policy, call: ToolCall, now_s: float, prefix: str = "") -> list[Counted]:
    """Every counter `call` reads and takes at `now_s`; raises BadIncrement."""
    return [
        Counted(row.name, row.key, window_start(row.window, now_s), increment(row.rule, call), row.limit, row.rule)
        for row in counter_plan(policy, call.name, prefix)
    ]


def increment(rule: Rule, call: ToolCall) -> int:
    """How much `call` adds to `rule`'s counter; raises BadIncrement."""
    assert rule.state is not None
    source = rule.state.increment_from
    if source is None:
        return rule.state.increment
    try:
        found, value = resolve_argument(call.arguments, source[5:])
    except AmbiguousArgument:
        raise BadIncrement(f"{source} matches an argument only up to letter case") from None
    if not found or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadIncrement(f"{source} is missing or not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadIncrement(f"{source} is not a finite number")
    if value < 0:  # checked before rounding: -0.5 must not round up to a harmless 0
        raise BadIncrement(f"{source} is negative: must be between 0 and {MAX_INCREMENT}")
    amount = math.ceil(value)  # fractions round up: 200 calls of 0.99 must not count as nothing
    # A negative amount would let an agent refill its own budget; a huge one cannot be stored.
    if not 0 <= amount <= MAX_INCREMENT:
        raise BadIncrement(f"{source} is {amount}: must be between 0 and {MAX_INCREMENT}")
    return amount


def limit(rule: Rule, scope: str) -> int | None:
    """The most the counter may reach, from an lt/lte condition on the rule's own counter."""
    condition = limit_condition(rule, scope)
    if condition is None:
        return None
    value = int(condition.value)
    return value - 1 if condition.op == "lt" else value
