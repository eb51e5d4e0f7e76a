"""`rate_limit` as the rule it stands for (`policy.desugar`, pure), and the loader using it."""

from __future__ import annotations

import pytest

from intercept.policy import parse_policy
from intercept.policy.desugar import RateLimit, desugar, rate_limit_counter, scope_of, window_of
from intercept.policy.model import Condition, CounterSpec


@pytest.mark.parametrize(
    ("tool", "limit", "on_deny", "condition", "state", "message"),
    [
        ("search", RateLimit(5, "hour"), "", Condition("state.search._rate_hour", "lte", 5),
         CounterSpec("_rate_hour", "hour"), "Rate limit of 5 per hour reached. Try again later."),
        ("*", RateLimit(100, "day"), "slow down", Condition("state._global._rate_day", "lte", 100),
         CounterSpec("_rate_day", "day"), "slow down"),
        ("a.b", RateLimit(1, "minute"), "", Condition("state.a.b._rate_minute", "lte", 1),
         CounterSpec("_rate_minute", "minute"), "Rate limit of 1 per minute reached. Try again later."),
    ],
)  # fmt: skip
def test_a_rate_limit_stands_for_a_counter_a_condition_and_a_message(
    tool: str, limit: RateLimit, on_deny: str, condition: Condition, state: CounterSpec, message: str
) -> None:
    assert desugar(tool, limit, on_deny) == ((condition,), state, message)


@pytest.mark.parametrize(
    ("text", "window"), [("5/hour", "hour"), ("1/minute", "minute"), ("9/day", "day"), ("5/week", None), ("5", None)]
)
def test_window_of(text: str, window: str | None) -> None:
    assert window_of(text) == window


def test_scopes_and_counter_names() -> None:
    assert scope_of("*") == "_global" and scope_of("deploy") == "deploy"
    assert rate_limit_counter("hour") == "_rate_hour"


def test_the_loaded_rule_is_the_desugared_one() -> None:
    policy = parse_policy('version: "1"\ntools:\n  t:\n    rules:\n      - name: r\n        rate_limit: 3/hour\n')
    rule = policy.tools["t"].rules[0]
    conditions, state, message = desugar("t", RateLimit(3, "hour"), "")
    assert (rule.conditions, rule.state, rule.on_deny, rule.rate_limit) == (conditions, state, message, "3/hour")
    assert policy.counted_tools == frozenset({"t"})
