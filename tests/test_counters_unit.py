"""Table-driven tests of the counters behind `state` and `rate_limit`, against `CallCounters`.

Every test uses a real SQLite file under tmp_path and an injected clock: `now_s` is always passed
explicitly, built from calendar times with `at(...)`, so windows and rollovers are exact.

`attempt()` decides one call as the proxy's call handler does: `CallCounters` reads the counters,
evaluates the policy with them and reserves them if the engine allowed it (one transaction), and
`counters_verdict` turns what the counters said into the decision.
"""

from __future__ import annotations

import sqlite3
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from intercept.counters.call_counters import CallCounters, CounterAsk
from intercept.counters.rules import counter_key, window_start
from intercept.counters.store import Reservation
from intercept.engine import Decision, ToolCall, evaluate
from intercept.policy import Policy, parse_policy
from intercept.proxy.call_handler import INTERNAL_POLICY_ERROR, FailMode, counters_verdict
from intercept.store.database import DATABASE_FILE, StoreUnavailable

# -- helpers ---------------------------------------------------------------------------------

ALLOW = "allow"
DENY = "deny"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> float:
    """Epoch seconds of a UTC calendar time."""
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC).timestamp()


NOON = at(2026, 3, 14, 12, 0, 0)


def _policy(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text))


def _counters(directory: Path, prefix: str = "") -> CallCounters:
    return CallCounters(directory, prefix)


def attempt(
    counters: CallCounters,
    policy: Policy,
    tool: str,
    arguments: dict[str, Any] | None = None,
    now_s: float = NOON,
    fail_mode: FailMode = "closed",
) -> tuple[str, str]:
    """(verdict, message) for one call, as the call handler decides it; an allowed call is
    reserved."""
    ask = CounterAsk(policy, ToolCall(tool, arguments or {}), now_s)
    decision, reserved = counters_verdict(ask, counters.count_one(ask), fail_mode)
    if decision.verdict != ALLOW:
        assert reserved == ()
        return decision.verdict, decision.message
    return ALLOW, ""


def reserve(
    counters: CallCounters, policy: Policy, call: ToolCall, now_s: float, fail_mode: FailMode = "closed"
) -> tuple[Reservation, ...] | Decision:
    """Take the counters of a call a human allowed: what was reserved, or the deny."""
    ask = CounterAsk(policy, call, now_s, approved=True)
    decision, reserved = counters_verdict(ask, counters.count_one(ask), fail_mode)
    return reserved if decision.verdict == ALLOW else decision


def values(counters: CallCounters, policy: Policy, tool: str, now_s: float = NOON) -> dict[str, float]:
    return counters.values(policy, tool, now_s)  # type: ignore[return-value]


def corrupt_database(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / DATABASE_FILE).write_bytes(b"this is not an SQLite database, just garbage\x00\xff" * 200)


# -- window_start ----------------------------------------------------------------------------

WINDOW_START_CASES = [
    pytest.param("minute", at(2026, 3, 14, 10, 30, 59, 999_000), at(2026, 3, 14, 10, 30), id="minute-end-of-minute"),
    pytest.param("minute", at(2026, 3, 14, 10, 31), at(2026, 3, 14, 10, 31), id="minute-exact-boundary"),
    pytest.param("hour", at(2026, 3, 14, 10, 59, 59), at(2026, 3, 14, 10), id="hour-last-second"),
    pytest.param("hour", at(2026, 3, 14, 11), at(2026, 3, 14, 11), id="hour-exact-boundary"),
    pytest.param("hour", at(2026, 3, 14, 11, 0, 0, 1), at(2026, 3, 14, 11), id="hour-just-after-boundary"),
    pytest.param("day", at(2026, 3, 14, 23, 59, 59), at(2026, 3, 14), id="day-last-second"),
    pytest.param("day", at(2026, 3, 15), at(2026, 3, 15), id="day-midnight-utc"),
    pytest.param("day", at(2024, 2, 29, 13, 7), at(2024, 2, 29), id="day-leap-day"),
    pytest.param("day", at(2026, 12, 31, 23, 59, 59), at(2026, 12, 31), id="day-new-years-eve"),
    pytest.param("hour", 0.0, 0, id="hour-epoch"),
    pytest.param("day", 86399.999, 0, id="day-epoch-last-instant"),
]


@pytest.mark.parametrize(("window", "now_s", "expected"), WINDOW_START_CASES)
def test_window_start_is_the_calendar_aligned_utc_start(window: str, now_s: float, expected: float) -> None:
    start = window_start(window, now_s)
    assert start == expected
    assert isinstance(start, int)


def test_counter_keys_carry_prefix_scope_counter_and_window() -> None:
    assert counter_key("", "search", "_rate_hour", "hour") == "search._rate_hour@hour"
    assert counter_key("stripe-prod:", "_global", "spend", "day") == "stripe-prod:_global.spend@day"


# -- limits: lt vs lte, rate_limit, increments -----------------------------------------------


def _one_rule(rule: str, tool: str = "t") -> str:
    return f'version: "1"\ntools:\n  {tool}:\n    rules:\n' + textwrap.indent(textwrap.dedent(rule), "      ")


LIMIT_CASES = [
    pytest.param(
        _one_rule(
            """\
            - name: budget
              state: {counter: c, window: hour}
              conditions: [{path: state.t.c, op: lte, value: 3}]
            """
        ),
        [{}] * 5,
        [ALLOW, ALLOW, ALLOW, DENY, DENY],
        "Rate limit exceeded for budget",
        {"t.c": 3},
        id="lte-3-allows-3",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: budget
              state: {counter: c, window: hour}
              conditions: [{path: state.t.c, op: lt, value: 3}]
            """
        ),
        [{}] * 4,
        [ALLOW, ALLOW, DENY, DENY],
        "Rate limit exceeded for budget",
        {"t.c": 2},
        id="lt-3-allows-2",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: nothing
              state: {counter: c, window: hour}
              conditions: [{path: state.t.c, op: lte, value: 0}]
            """
        ),
        [{}] * 2,
        [DENY, DENY],
        "Rate limit exceeded for nothing",
        {"t.c": 0},
        id="lte-0-allows-none",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: nothing
              state: {counter: c, window: hour}
              conditions: [{path: state.t.c, op: lt, value: 1}]
            """
        ),
        [{}] * 2,
        [DENY, DENY],
        "Rate limit exceeded for nothing",
        {"t.c": 0},
        id="lt-1-allows-none",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: fractional
              state: {counter: c, window: hour}
              conditions: [{path: state.t.c, op: lte, value: 2.5}]
            """
        ),
        [{}] * 3,
        [ALLOW, ALLOW, DENY],
        "Rate limit exceeded for fractional",
        {"t.c": 2},
        id="lte-2.5-allows-2",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: budget
              state: {counter: c, window: hour}
              conditions: [{path: state.t.c, op: lte, value: 1}]
              on_deny: "slow down"
            """
        ),
        [{}] * 2,
        [ALLOW, DENY],
        "slow down",
        {"t.c": 1},
        id="lte-custom-on_deny",
    ),
    pytest.param(
        _one_rule('- name: limit\n  rate_limit: "3/hour"\n'),
        [{}] * 5,
        [ALLOW, ALLOW, ALLOW, DENY, DENY],
        "Rate limit of 3 per hour reached. Try again later.",
        {"t._rate_hour": 3},
        id="rate_limit-3-per-hour",
    ),
    pytest.param(
        _one_rule('- name: limit\n  rate_limit: "2/minute"\n'),
        [{}] * 3,
        [ALLOW, ALLOW, DENY],
        "Rate limit of 2 per minute reached. Try again later.",
        {"t._rate_minute": 2},
        id="rate_limit-2-per-minute",
    ),
    pytest.param(
        _one_rule('- name: limit\n  rate_limit: "1/day"\n  on_deny: "one a day"\n'),
        [{}] * 2,
        [ALLOW, DENY],
        "one a day",
        {"t._rate_day": 1},
        id="rate_limit-custom-on_deny",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: budget
              state: {counter: c, window: hour, increment: 2}
              conditions: [{path: state.t.c, op: lte, value: 5}]
            """
        ),
        [{}] * 3,
        [ALLOW, ALLOW, DENY],
        "Rate limit exceeded for budget",
        {"t.c": 4},
        id="increment-2-under-lte-5",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: spend
              state: {counter: cents, window: day, increment_from: args.n}
              conditions: [{path: state.t.cents, op: lte, value: 10}]
            """
        ),
        [{"n": 4}, {"n": 6}, {"n": 1}, {"n": 0}],
        [ALLOW, ALLOW, DENY, ALLOW],
        "Rate limit exceeded for spend",
        {"t.cents": 10},
        id="increment_from-fills-exactly-then-zero-still-fits",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: spend
              state: {counter: cents, window: day, increment_from: args.n}
              conditions: [{path: state.t.cents, op: lte, value: 10}]
            """
        ),
        [{"n": 2.9}, {"n": 7.99}, {"n": 1.5}, {"n": 0.999}, {"n": 4}, {"n": 0.01}],
        [ALLOW, DENY, ALLOW, ALLOW, ALLOW, DENY],
        "Rate limit exceeded for spend",
        {"t.cents": 10},
        id="increment_from-fractions-rounded-up",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: spend
              state: {counter: cents, window: day, increment_from: args.n}
              conditions: [{path: state.t.cents, op: lte, value: 10}]
            """
        ),
        [{"n": 11}, {"n": 10}],
        [DENY, ALLOW],
        "Rate limit exceeded for spend",
        {"t.cents": 10},
        id="increment_from-bigger-than-the-budget",
    ),
    pytest.param(
        _one_rule(
            """\
            - name: tokens
              state: {counter: tokens, window: hour, increment_from: args.usage.tokens}
              conditions: [{path: state.t.tokens, op: lt, value: 100}]
            """
        ),
        [{"usage": {"tokens": 60}}, {"usage": {"tokens": 40}}, {"usage": {"tokens": 39}}],
        [ALLOW, DENY, ALLOW],
        "Rate limit exceeded for tokens",
        {"t.tokens": 99},
        id="increment_from-nested-under-lt",
    ),
]


@pytest.mark.parametrize(("policy_text", "calls", "verdicts", "deny_message", "final"), LIMIT_CASES)
def test_limits(
    tmp_path: Path,
    policy_text: str,
    calls: list[dict[str, Any]],
    verdicts: list[str],
    deny_message: str,
    final: dict[str, float],
) -> None:
    policy = parse_policy(policy_text)
    counters = _counters(tmp_path)
    outcomes = [attempt(counters, policy, "t", arguments) for arguments in calls]
    assert [verdict for verdict, _ in outcomes] == verdicts
    for verdict, message in outcomes:
        assert message == (deny_message if verdict == DENY else "")
    assert values(counters, policy, "t") == final


def test_conditions_see_the_value_before_the_call(tmp_path: Path) -> None:
    """A limit lowered below the current value (e.g. by a reload) denies in the engine, not the store."""
    generous = _policy(
        """
        version: "1"
        tools:
          t:
            rules:
              - name: budget
                state: {counter: c, window: hour}
                conditions: [{path: state.t.c, op: lte, value: 10}]
        """
    )
    strict = _policy(
        """
        version: "1"
        tools:
          t:
            rules:
              - name: budget
                state: {counter: c, window: hour}
                conditions: [{path: state.t.c, op: lte, value: 3}]
        """
    )
    counters = _counters(tmp_path)
    for _ in range(5):
        assert attempt(counters, generous, "t") == (ALLOW, "")
    assert values(counters, strict, "t") == {"t.c": 5}
    assert attempt(counters, strict, "t") == (DENY, 'Denied by rule "budget"')
    assert values(counters, strict, "t") == {"t.c": 5}


def test_a_call_denied_by_another_rule_counts_nothing(tmp_path: Path) -> None:
    policy = _policy(
        """
        version: "1"
        tools:
          t:
            rules:
              - name: limit
                rate_limit: 2/hour
              - name: only main
                conditions: [{path: args.branch, op: eq, value: main}]
          "*":
            rules:
              - name: global
                rate_limit: 5/hour
        """
    )
    counters = _counters(tmp_path)
    for _ in range(3):
        assert attempt(counters, policy, "t", {"branch": "dev"}) == (DENY, 'Denied by rule "only main"')
    assert values(counters, policy, "t") == {"t._rate_hour": 0, "_global._rate_hour": 0}
    assert attempt(counters, policy, "t", {"branch": "main"}) == (ALLOW, "")
    assert values(counters, policy, "t") == {"t._rate_hour": 1, "_global._rate_hour": 1}


# -- increment_from errors -------------------------------------------------------------------

INCREMENT_FROM_POLICY = """
version: "1"
tools:
  t:
    rules:
      - name: limit
        rate_limit: 5/hour
      - name: spend
        state: {counter: cents, window: day, increment_from: args.amount.cents}
        conditions: [{path: state.t.cents, op: lte, value: 1000}]
"""

BAD_INCREMENT_CASES = [
    pytest.param({}, id="missing-object"),
    pytest.param({"amount": {}}, id="missing-field"),
    pytest.param({"amount": {"cents": None}}, id="null"),
    pytest.param({"amount": {"cents": "5"}}, id="numeric-string"),
    pytest.param({"amount": {"cents": "five"}}, id="string"),
    pytest.param({"amount": {"cents": True}}, id="bool-true"),
    pytest.param({"amount": {"cents": False}}, id="bool-false"),
    pytest.param({"amount": {"cents": [5]}}, id="list"),
    pytest.param({"amount": {"cents": {"value": 5}}}, id="object"),
    pytest.param({"amount": {"cents": float("nan")}}, id="nan"),
    pytest.param({"amount": {"cents": float("inf")}}, id="infinity"),
    pytest.param({"amount": "5 cents"}, id="parent-not-an-object"),
    pytest.param({"amount.cents": 5}, id="dotted-key-is-not-a-path"),
    pytest.param({"amount": {"cents": -0.5}}, id="negative-fraction-not-rounded-up-to-zero"),
    pytest.param({"amount": {"cents": -1e-300}}, id="tiny-negative"),
]


@pytest.mark.parametrize("arguments", BAD_INCREMENT_CASES)
def test_increment_from_not_a_number_denies_with_internal_policy_error(
    tmp_path: Path, arguments: dict[str, Any]
) -> None:
    policy = parse_policy(INCREMENT_FROM_POLICY)
    counters = _counters(tmp_path)
    assert attempt(counters, policy, "t", arguments) == (DENY, "Internal policy error")
    # Nothing is taken, not even the rate_limit counter that was reserved before it in rule order.
    assert values(counters, policy, "t") == {"t._rate_hour": 0, "t.cents": 0}
    assert attempt(counters, policy, "t", {"amount": {"cents": 7}}) == (ALLOW, "")
    assert values(counters, policy, "t") == {"t._rate_hour": 1, "t.cents": 7}


def test_increment_from_error_on_a_wildcard_rule_takes_nothing(tmp_path: Path) -> None:
    policy = _policy(
        """
        version: "1"
        tools:
          t:
            rules:
              - name: limit
                rate_limit: 5/hour
          "*":
            rules:
              - name: tokens
                state: {counter: tokens, window: day, increment_from: args.tokens}
                conditions: [{path: state._global.tokens, op: lte, value: 100}]
        """
    )
    counters = _counters(tmp_path)
    assert attempt(counters, policy, "t", {}) == (DENY, INTERNAL_POLICY_ERROR)
    assert attempt(counters, policy, "other", {"tokens": "3"}) == (DENY, INTERNAL_POLICY_ERROR)
    assert values(counters, policy, "t") == {"t._rate_hour": 0, "_global.tokens": 0}
    assert attempt(counters, policy, "t", {"tokens": 3.7}) == (ALLOW, "")
    assert values(counters, policy, "t") == {"t._rate_hour": 1, "_global.tokens": 4}  # fractions round up


@pytest.mark.parametrize(
    "amount",
    [pytest.param(1e300, id="float-1e300"), pytest.param(2**63, id="int-2**63"), pytest.param(10**30, id="int-10**30")],
)
def test_huge_increment_from_is_answered_not_raised(tmp_path: Path, amount: float) -> None:
    """A counter without an lt/lte limit, fed an amount SQLite cannot store: a decision, not an exception.

    An exception here escapes the interceptor and (see test_counters_e2e) leaves the proxy deaf.
    """
    policy = _policy(
        """
        version: "1"
        tools:
          t:
            rules:
              - name: tally
                state: {counter: total, window: day, increment_from: args.n}
                conditions: [{path: state.t.total, op: gte, value: 0}]
        """
    )
    counters = _counters(tmp_path)
    outcome = reserve(counters, policy, ToolCall("t", {"n": amount}), NOON)
    assert isinstance(outcome, (Decision, tuple))
    assert attempt(counters, policy, "t", {"n": 2}) == (ALLOW, "")


# -- wildcard and independent counters -------------------------------------------------------


def test_wildcard_counter_is_one_global_budget_shared_by_every_tool(tmp_path: Path) -> None:
    policy = _policy(
        """
        version: "1"
        tools:
          listed:
            rules: []
          "*":
            rules:
              - name: global
                rate_limit: 3/hour
        """
    )
    counters = _counters(tmp_path)
    sequence = ["a", "listed", "b", "a", "c", "listed"]
    outcomes = [attempt(counters, policy, tool) for tool in sequence]
    message = "Rate limit of 3 per hour reached. Try again later."
    assert outcomes == [(ALLOW, "")] * 3 + [(DENY, message)] * 3
    for tool in ("a", "b", "listed", "never-called"):
        assert values(counters, policy, tool) == {"_global._rate_hour": 3}
    assert counters.snapshot(NOON) == {"_global._rate_hour": 3}


def test_same_window_on_different_tools_is_independent(tmp_path: Path) -> None:
    policy = _policy(
        """
        version: "1"
        tools:
          a:
            rules:
              - name: a limit
                rate_limit: 2/hour
          b:
            rules:
              - name: b limit
                rate_limit: 2/hour
        """
    )
    counters = _counters(tmp_path)
    assert [attempt(counters, policy, "a")[0] for _ in range(3)] == [ALLOW, ALLOW, DENY]
    assert [attempt(counters, policy, "b")[0] for _ in range(3)] == [ALLOW, ALLOW, DENY]
    assert values(counters, policy, "a") == {"a._rate_hour": 2}
    assert values(counters, policy, "b") == {"b._rate_hour": 2}
    assert counters.snapshot(NOON) == {"a._rate_hour": 2, "b._rate_hour": 2}


def test_two_windows_on_one_tool_are_both_enforced(tmp_path: Path) -> None:
    policy = _policy(
        """
        version: "1"
        tools:
          t:
            rules:
              - name: burst
                rate_limit: 2/minute
              - name: hourly
                rate_limit: 3/hour
        """
    )
    counters = _counters(tmp_path)
    ten = at(2026, 3, 14, 10)
    assert attempt(counters, policy, "t", now_s=ten) == (ALLOW, "")
    assert attempt(counters, policy, "t", now_s=ten + 1) == (ALLOW, "")
    assert attempt(counters, policy, "t", now_s=ten + 2) == (
        DENY,
        "Rate limit of 2 per minute reached. Try again later.",
    )
    assert values(counters, policy, "t", ten + 2) == {"t._rate_minute": 2, "t._rate_hour": 2}
    assert attempt(counters, policy, "t", now_s=ten + 60) == (ALLOW, "")
    # The hour is full now; the minute counter must not be taken by the refused call.
    assert attempt(counters, policy, "t", now_s=ten + 61) == (
        DENY,
        "Rate limit of 3 per hour reached. Try again later.",
    )
    assert values(counters, policy, "t", ten + 61) == {"t._rate_minute": 1, "t._rate_hour": 3}


# -- window rollover -------------------------------------------------------------------------

ROLLOVER_CASES = [
    pytest.param("3/hour", "t._rate_hour", at(2026, 3, 14, 10, 59, 59), at(2026, 3, 14, 11), id="hour"),
    pytest.param(
        "3/hour", "t._rate_hour", at(2026, 3, 14, 10, 59, 59, 999_999), at(2026, 3, 14, 11), id="hour-last-microsecond"
    ),
    pytest.param("3/minute", "t._rate_minute", at(2026, 3, 14, 10, 0, 59), at(2026, 3, 14, 10, 1), id="minute"),
    pytest.param("3/day", "t._rate_day", at(2026, 3, 14, 23, 59, 59), at(2026, 3, 15), id="day"),
    pytest.param("3/day", "t._rate_day", at(2026, 12, 31, 23, 59, 59), at(2027, 1, 1), id="day-new-year"),
]


@pytest.mark.parametrize(("rate", "counter", "last_instant", "next_window"), ROLLOVER_CASES)
def test_window_rollover_is_calendar_aligned(
    tmp_path: Path, rate: str, counter: str, last_instant: float, next_window: float
) -> None:
    policy = parse_policy(_one_rule(f'- name: limit\n  rate_limit: "{rate}"\n'))
    counters = _counters(tmp_path)
    for _ in range(3):
        assert attempt(counters, policy, "t", now_s=last_instant) == (ALLOW, "")
    assert attempt(counters, policy, "t", now_s=last_instant)[0] == DENY
    assert counters.snapshot(last_instant) == {counter: 3}

    # One tick later the calendar window has changed: a fresh budget, not a sliding one.
    assert values(counters, policy, "t", next_window) == {counter: 0}
    assert counters.snapshot(next_window) == {}
    for _ in range(3):
        assert attempt(counters, policy, "t", now_s=next_window) == (ALLOW, "")
    assert attempt(counters, policy, "t", now_s=next_window)[0] == DENY
    # The old window's history is untouched.
    assert values(counters, policy, "t", last_instant) == {counter: 3}


def test_start_of_window_and_end_of_window_share_one_budget(tmp_path: Path) -> None:
    policy = parse_policy(_one_rule('- name: limit\n  rate_limit: "2/hour"\n'))
    counters = _counters(tmp_path)
    assert attempt(counters, policy, "t", now_s=at(2026, 3, 14, 10, 0, 0)) == (ALLOW, "")
    assert attempt(counters, policy, "t", now_s=at(2026, 3, 14, 10, 30, 0)) == (ALLOW, "")
    assert attempt(counters, policy, "t", now_s=at(2026, 3, 14, 10, 59, 59))[0] == DENY


# -- atomicity across a call's counters ------------------------------------------------------

ATOMIC_POLICY = """
version: "1"
tools:
  t:
    rules:
      - name: tool limit
        rate_limit: 5/hour
      - name: tool spend
        state: {counter: spend, window: day, increment_from: args.n}
        conditions: [{path: state.t.spend, op: lte, value: 10}]
  u:
    rules: []
  "*":
    rules:
      - name: global limit
        rate_limit: 2/hour
"""


def test_global_limit_exhausted_takes_nothing_from_the_tool_counters(tmp_path: Path) -> None:
    policy = parse_policy(ATOMIC_POLICY)
    counters = _counters(tmp_path)
    assert attempt(counters, policy, "u") == (ALLOW, "")
    assert attempt(counters, policy, "u") == (ALLOW, "")
    # Both tool counters have room; the wildcard counter (reserved last) does not.
    assert attempt(counters, policy, "t", {"n": 3}) == (DENY, "Rate limit of 2 per hour reached. Try again later.")
    assert values(counters, policy, "t") == {"t._rate_hour": 0, "t.spend": 0, "_global._rate_hour": 2}


def test_tool_limit_exhausted_takes_nothing_from_the_global_counter(tmp_path: Path) -> None:
    policy = parse_policy(ATOMIC_POLICY)
    counters = _counters(tmp_path)
    assert attempt(counters, policy, "t", {"n": 8}) == (ALLOW, "")
    assert attempt(counters, policy, "t", {"n": 3}) == (DENY, "Rate limit exceeded for tool spend")
    assert values(counters, policy, "t") == {"t._rate_hour": 1, "t.spend": 8, "_global._rate_hour": 1}
    assert attempt(counters, policy, "t", {"n": 2}) == (ALLOW, "")
    assert values(counters, policy, "t") == {"t._rate_hour": 2, "t.spend": 10, "_global._rate_hour": 2}


def test_reservations_list_tool_counters_first_then_wildcard(tmp_path: Path) -> None:
    policy = parse_policy(ATOMIC_POLICY)
    counters = _counters(tmp_path, prefix="p:")
    reserved = reserve(counters, policy, ToolCall("t", {"n": 4.5}), at(2026, 3, 14, 10, 15))
    assert isinstance(reserved, tuple)
    assert [(r.key, r.window_start, r.amount) for r in reserved] == [
        ("p:t._rate_hour@hour", at(2026, 3, 14, 10), 1),
        ("p:t.spend@day", at(2026, 3, 14), 5),  # 4.5 rounds up
        ("p:_global._rate_hour@hour", at(2026, 3, 14, 10), 1),
    ]


# -- roll back -------------------------------------------------------------------------------


def test_give_back_restores_every_counter_of_the_call(tmp_path: Path) -> None:
    policy = parse_policy(ATOMIC_POLICY)
    counters = _counters(tmp_path)
    first = reserve(counters, policy, ToolCall("t", {"n": 6}), NOON)
    second = reserve(counters, policy, ToolCall("t", {"n": 4}), NOON)
    assert isinstance(first, tuple) and isinstance(second, tuple)
    assert attempt(counters, policy, "t", {"n": 0})[0] == DENY
    counters.give_back(first, "the upstream answered with an error")
    assert values(counters, policy, "t") == {"t._rate_hour": 1, "t.spend": 4, "_global._rate_hour": 1}
    assert attempt(counters, policy, "t", {"n": 6}) == (ALLOW, "")
    assert values(counters, policy, "t") == {"t._rate_hour": 2, "t.spend": 10, "_global._rate_hour": 2}


def test_give_back_after_the_window_ended_touches_only_the_old_window(tmp_path: Path) -> None:
    policy = parse_policy(_one_rule('- name: limit\n  rate_limit: "2/hour"\n'))
    counters = _counters(tmp_path)
    old = reserve(counters, policy, ToolCall("t", {}), at(2026, 3, 14, 10, 59, 59))
    assert isinstance(old, tuple)
    eleven = at(2026, 3, 14, 11)
    assert attempt(counters, policy, "t", now_s=eleven) == (ALLOW, "")
    counters.give_back(old, "the upstream exited before answering")
    assert values(counters, policy, "t", eleven) == {"t._rate_hour": 1}
    assert values(counters, policy, "t", at(2026, 3, 14, 10, 59, 59)) == {"t._rate_hour": 0}


def test_give_back_never_goes_below_zero_and_empty_is_a_no_op(tmp_path: Path) -> None:
    policy = parse_policy(_one_rule('- name: limit\n  rate_limit: "2/hour"\n'))
    counters = _counters(tmp_path)
    reserved = reserve(counters, policy, ToolCall("t", {}), NOON)
    assert isinstance(reserved, tuple)
    counters.give_back(reserved, "first")
    counters.give_back(reserved, "twice by mistake")
    counters.give_back([], "nothing")
    assert values(counters, policy, "t") == {"t._rate_hour": 0}
    assert [attempt(counters, policy, "t")[0] for _ in range(3)] == [ALLOW, ALLOW, DENY]


# -- persistence, sharing and prefixes -------------------------------------------------------

SHARED_POLICY = """
version: "1"
tools:
  t:
    rules:
      - name: limit
        rate_limit: 2/hour
"""


def test_counters_persist_and_are_shared_through_the_database_file(tmp_path: Path) -> None:
    policy = parse_policy(SHARED_POLICY)
    first, second = _counters(tmp_path), _counters(tmp_path)
    assert attempt(first, policy, "t") == (ALLOW, "")
    assert attempt(second, policy, "t") == (ALLOW, "")
    assert attempt(first, policy, "t")[0] == DENY
    assert attempt(second, policy, "t")[0] == DENY
    restarted = _counters(tmp_path)
    assert values(restarted, policy, "t") == {"t._rate_hour": 2}
    assert (tmp_path / DATABASE_FILE).exists()


PREFIX_CASES = [
    pytest.param(("a:", "b:"), [2, 2], id="two-prefixes"),
    pytest.param(("", "team:"), [2, 2], id="none-and-a-prefix"),
    pytest.param(("a:", "a:"), [2, 0], id="same-prefix-shares"),
    pytest.param(("", "", "x:"), [2, 0, 2], id="default-shares-prefix-does-not"),
]


@pytest.mark.parametrize(("prefixes", "allowed"), PREFIX_CASES)
def test_prefixes_give_separate_budgets(tmp_path: Path, prefixes: tuple[str, ...], allowed: list[int]) -> None:
    policy = parse_policy(SHARED_POLICY)
    got = []
    for prefix in prefixes:
        counters = _counters(tmp_path, prefix=prefix)
        got.append(sum(attempt(counters, policy, "t")[0] == ALLOW for _ in range(3)))
    assert got == allowed


def test_snapshot_shows_only_this_prefix(tmp_path: Path) -> None:
    policy = parse_policy(SHARED_POLICY)
    a, b = _counters(tmp_path, prefix="a:"), _counters(tmp_path, prefix="b:")
    attempt(a, policy, "t")
    attempt(b, policy, "t")
    attempt(b, policy, "t")
    assert a.snapshot(NOON) == {"a:t._rate_hour": 1}
    assert b.snapshot(NOON) == {"b:t._rate_hour": 2}


# -- fail mode -------------------------------------------------------------------------------

FAIL_MODE_POLICY = """
version: "1"
tools:
  limited:
    rules:
      - name: limit
        rate_limit: 1/hour
  free:
    rules:
      - name: only main
        conditions: [{path: args.branch, op: eq, value: main}]
"""


def test_fail_closed_denies_calls_that_need_counters(tmp_path: Path) -> None:
    corrupt_database(tmp_path)
    policy = parse_policy(FAIL_MODE_POLICY)
    counters = _counters(tmp_path)
    with pytest.raises(StoreUnavailable):
        counters.values(policy, "limited", NOON)
    reserved = reserve(counters, policy, ToolCall("limited", {}), NOON)
    assert isinstance(reserved, Decision) and reserved.verdict == DENY
    assert INTERNAL_POLICY_ERROR in reserved.message
    verdict, message = attempt(counters, policy, "limited")
    assert verdict == DENY and INTERNAL_POLICY_ERROR in message
    # Calls that need no counter never touch the store.
    assert attempt(counters, policy, "free", {"branch": "main"}) == (ALLOW, "")
    assert attempt(counters, policy, "free", {"branch": "dev"}) == (DENY, 'Denied by rule "only main"')
    assert attempt(counters, policy, "unlisted") == (ALLOW, "")
    assert counters.snapshot(NOON) == {}
    counters.give_back([], "nothing")


def test_fail_open_allows_as_if_counters_were_zero(tmp_path: Path) -> None:
    corrupt_database(tmp_path)
    policy = parse_policy(FAIL_MODE_POLICY)
    counters = _counters(tmp_path)
    assert reserve(counters, policy, ToolCall("limited", {}), NOON, "open") == ()
    # The limit is 1/hour, but nothing can be counted: every call is allowed.
    assert [attempt(counters, policy, "limited", fail_mode="open") for _ in range(3)] == [(ALLOW, "")] * 3
    assert attempt(counters, policy, "free", {"branch": "dev"}, fail_mode="open") == (DENY, 'Denied by rule "only main"')
    assert counters.snapshot(NOON) == {}


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_a_store_that_breaks_after_a_reservation_does_not_raise_on_give_back(tmp_path: Path, fail_mode: str) -> None:
    policy = parse_policy(FAIL_MODE_POLICY)
    counters = _counters(tmp_path)
    reserved = reserve(counters, policy, ToolCall("limited", {}), NOON, fail_mode)  # type: ignore[arg-type]
    assert isinstance(reserved, tuple) and reserved
    connection = counters._connection._connection
    assert connection is not None
    connection.close()  # the store becomes unusable under the counters' feet
    counters.give_back(reserved, "the upstream exited before answering")
    # The next use reconnects to the (healthy) file and works again.
    assert values(counters, policy, "limited")["limited._rate_hour"] in (0, 1)


def test_corrupt_database_is_not_repaired_or_overwritten(tmp_path: Path) -> None:
    corrupt_database(tmp_path)
    before = (tmp_path / DATABASE_FILE).read_bytes()
    policy = parse_policy(FAIL_MODE_POLICY)
    for mode in ("closed", "open"):
        attempt(_counters(tmp_path), policy, "limited", fail_mode=mode)  # type: ignore[arg-type]
    assert (tmp_path / DATABASE_FILE).read_bytes() == before
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(tmp_path / DATABASE_FILE).execute("SELECT * FROM sqlite_master").fetchall()


# -- the engine sees the counters ------------------------------------------------------------

SEED_POLICY = """
version: "1"
tools:
  search:
    rules:
      - name: budget
        state: {counter: calls, window: hour}
        conditions: [{path: state.search.calls, op: lte, value: 100}]
  "*":
    rules:
      - name: everything
        state: {counter: total, window: day}
        conditions: [{path: state._global.total, op: lte, value: 100}]
"""


def _condition_policy(path: str, op: str, value: Any) -> Policy:
    return parse_policy(
        SEED_POLICY
        + "      - name: watch\n"
        + f"        conditions: [{{path: {path}, op: {op}, value: {value}}}]\n"
        + "        on_deny: watched\n"
    )


ENGINE_CASES = [
    pytest.param("state.search.calls", "gt", 2, 2, DENY, id="gt-2-at-2-denies"),
    pytest.param("state.search.calls", "gt", 2, 3, ALLOW, id="gt-2-at-3-allows"),
    pytest.param("state.search.calls", "eq", 0, 0, ALLOW, id="eq-0-first-call-allowed"),
    pytest.param("state.search.calls", "eq", 0, 1, DENY, id="eq-0-second-call-denied"),
    pytest.param("state.search.calls", "neq", 3, 3, DENY, id="neq-3-at-3-denies"),
    pytest.param("state.search.calls", "gte", 1, 1, ALLOW, id="gte-1-at-1-allows"),
    pytest.param("state.search.calls", "in", [1, 4], 4, ALLOW, id="in-list"),
    pytest.param("state._global.total", "eq", 2, 2, ALLOW, id="global-eq-2-at-2"),
    pytest.param("state._global.total", "gt", 2, 2, DENY, id="global-gt-2-at-2"),
    pytest.param("state._global.total", "lt", 2, 1, ALLOW, id="global-lt-2-at-1"),
]


@pytest.mark.parametrize(("path", "op", "value", "seed", "verdict"), ENGINE_CASES)
def test_engine_conditions_read_counters(
    tmp_path: Path, path: str, op: str, value: Any, seed: int, verdict: str
) -> None:
    seed_policy = parse_policy(SEED_POLICY)
    counters = _counters(tmp_path)
    for _ in range(seed):
        assert attempt(counters, seed_policy, "search", now_s=NOON + 60) == (ALLOW, "")
    policy = _condition_policy(path, op, value)
    read = values(counters, policy, "search")
    assert read == {"search.calls": seed, "_global.total": seed}
    decision = evaluate(policy, ToolCall("search", {}), read)
    assert decision.verdict == verdict
    if verdict == DENY:
        assert (decision.rule_name, decision.message) == ("watch", "watched")


def test_engine_without_counters_reads_zero(tmp_path: Path) -> None:
    policy = _condition_policy("state.search.calls", "eq", 0)
    counters = _counters(tmp_path)
    read = values(counters, policy, "search")
    assert read == {"search.calls": 0, "_global.total": 0}
    assert evaluate(policy, ToolCall("search", {}), read).verdict == ALLOW
    # A tool with only wildcard counters reads just those; a tool with none reads nothing at all.
    assert values(counters, policy, "fetch") == {"_global.total": 0}
    plain = parse_policy('version: "1"\ntools:\n  t:\n    rules: []\n')
    assert values(counters, plain, "t") == {}


def test_engine_sees_counters_of_the_current_window_only(tmp_path: Path) -> None:
    seed_policy = parse_policy(SEED_POLICY)
    counters = _counters(tmp_path)
    for _ in range(3):
        attempt(counters, seed_policy, "search", now_s=at(2026, 3, 14, 10, 59))
    policy = _condition_policy("state.search.calls", "gt", 2)
    in_window = values(counters, policy, "search", at(2026, 3, 14, 10, 59, 59))
    next_hour = values(counters, policy, "search", at(2026, 3, 14, 11))
    assert in_window == {"search.calls": 3, "_global.total": 3}
    assert next_hour == {"search.calls": 0, "_global.total": 3}  # the day counter carries on
    assert evaluate(policy, ToolCall("search", {}), in_window).verdict == ALLOW
    assert evaluate(policy, ToolCall("search", {}), next_hour).verdict == DENY
