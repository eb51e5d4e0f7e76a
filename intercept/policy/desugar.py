"""`rate_limit: N/window` as the rule it stands for, in one place (pure).

Intercept's sugar: `rate_limit: 5/hour` on tool `t` is a counter `_rate_hour` in scope `t`
(`_global` for `"*"`), a condition `state.t._rate_hour lte 5`, and a default `on_deny`.
"""

from __future__ import annotations

from dataclasses import dataclass

from intercept.policy.model import GLOBAL_SCOPE, WILDCARD, WINDOWS, Condition, CounterSpec


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A parsed `rate_limit`: at most `count` calls per calendar `window`."""

    count: int
    window: str


def scope_of(tool: str) -> str:
    """The scope a tool's counters live in: the tool itself, or `_global` for `"*"`."""
    return GLOBAL_SCOPE if tool == WILDCARD else tool


def rate_limit_counter(window: str) -> str:
    """The counter a `rate_limit` with this window defines."""
    return f"_rate_{window}"


def window_of(text: str) -> str | None:
    """The window a `rate_limit` text names if it is a known one (for checks that read raw rules)."""
    window = text.partition("/")[2]
    return window if window in WINDOWS else None


def desugar(tool: str, limit: RateLimit, on_deny: str) -> tuple[tuple[Condition, ...], CounterSpec, str]:
    """The conditions, counter and on_deny a `rate_limit` rule on `tool` stands for."""
    counter = rate_limit_counter(limit.window)
    condition = Condition(f"state.{scope_of(tool)}.{counter}", "lte", limit.count)
    state = CounterSpec(counter=counter, window=limit.window)  # type: ignore[arg-type]
    message = on_deny or f"Rate limit of {limit.count} per {limit.window} reached. Try again later."
    return (condition,), state, message

