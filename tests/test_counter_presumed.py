"""A counted call judged before the lock (`decide_presumed`) and finished under it (`_count_in`)
comes to exactly what evaluating it whole with the counters' values gives (`_count_exactly`).

Table-driven over policies that put counter conditions everywhere a policy can (own limits,
second limits, other counters, approval rules, the wildcard, fractions, deny rules, hidden and
unlisted tools), calls, argument readings (usual and strict) and a grid of counter values around
every limit, deciding batches of calls in one real SQLite transaction, so each call also sees
what the ones before it took.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from intercept.counters.call_counters import CallCounters, CounterAsk, IncrementRefused, _count_exactly, _count_in
from intercept.counters.rules import BadIncrement, counted
from intercept.counters.store import CounterTransaction, Reservation
from intercept.engine import ToolCall
from intercept.engine.evaluate import decide_presumed
from intercept.policy import parse_policy
from intercept.store.database import connect

NOON = 1_750_000_000.0

POLICIES = {
    "rate limit after an argument rule": """
tools:
  t:
    rules:
      - name: needs text
        conditions: [{path: args.text, op: exists, value: true}]
      - name: budget
        rate_limit: 3/hour
""",
    "a counter rule before an argument rule": """
tools:
  t:
    rules:
      - name: budget
        conditions: [{path: state.t.calls, op: lt, value: 3}]
        state: {counter: calls, window: hour}
      - name: needs text
        conditions: [{path: args.text, op: exists, value: true}]
""",
    "two limits on one counter": """
tools:
  t:
    rules:
      - name: budget
        conditions:
          - {path: state.t.calls, op: lte, value: 4}
          - {path: state.t.calls, op: lt, value: 2}
        state: {counter: calls, window: hour}
""",
    "a condition on another counter": """
tools:
  t:
    rules:
      - name: spend
        conditions: [{path: state.t.spent, op: lte, value: 5}]
        state: {counter: spent, window: hour, increment_from: args.n}
      - name: only after some spending
        conditions: [{path: state.t.spent, op: gt, value: 1}]
""",
    "approval over a count": """
tools:
  t:
    rules:
      - name: count
        conditions: [{path: state.t.calls, op: lte, value: 6}]
        state: {counter: calls, window: hour}
      - name: ask past two
        action: require_approval
        conditions: [{path: state.t.calls, op: gte, value: 2}]
""",
    "the wildcard's counter and the tool's": """
tools:
  t:
    rules:
      - name: own
        rate_limit: 4/hour
  "*":
    rules:
      - name: everyone
        conditions: [{path: state._global.calls, op: lt, value: 3}]
        state: {counter: calls, window: minute}
""",
    "fractional limits": """
tools:
  t:
    rules:
      - name: lt fraction
        conditions: [{path: state.t.a, op: lt, value: 2.5}]
        state: {counter: a, window: hour}
      - name: lte fraction
        conditions: [{path: state.t.b, op: lte, value: 1.5}]
        state: {counter: b, window: day}
""",
    "a deny rule after a counter": """
tools:
  t:
    rules:
      - name: budget
        rate_limit: 2/hour
  other:
    rules:
      - name: never
        action: deny
      - name: counted anyway
        rate_limit: 2/hour
""",
    "an approval rule before the counter it reads": """
tools:
  t:
    rules:
      - name: ask while few
        action: require_approval
        conditions:
          - {path: state.t.calls, op: lt, value: 2}
          - {path: args.text, op: exists, value: true}
      - name: count
        conditions: [{path: state.t.calls, op: lt, value: 5}]
        state: {counter: calls, window: hour}
""",
    "hidden, with counters": """
hide: [t]
tools:
  t:
    rules:
      - name: budget
        rate_limit: 2/hour
""",
    "unlisted under default deny, wildcard counter": """
default: deny
tools:
  "*":
    rules:
      - name: everyone
        rate_limit: 2/minute
""",
    "a typed argument next to a counter": """
tools:
  t:
    rules:
      - name: small
        conditions: [{path: args.n, op: lt, value: 10}]
      - name: budget
        conditions: [{path: state.t.calls, op: lte, value: 2}]
        state: {counter: calls, window: hour}
""",
}

POLICIES["a spending limit"] = """
tools:
  t:
    rules:
      - name: budget
        conditions: [{path: state.t.spent, op: lte, value: 6}]
        state: {counter: spent, window: hour, increment_from: args.n}
"""
POLICIES["two tools, each its own limit"] = """
tools:
  t:
    rules:
      - name: t budget
        rate_limit: 3/hour
  other:
    rules:
      - name: other budget
        rate_limit: 4/hour
"""
POLICIES["a negative fractional limit (found in review)"] = """
tools:
  t:
    rules:
      - name: budget
        conditions: [{path: state.t.spent, op: lte, value: -0.5}]
        state: {counter: spent, window: hour, increment_from: args.n}
"""
POLICIES["a tool named _global beside the wildcard (found in review)"] = """
tools:
  _global:
    rules:
      - name: own
        conditions: [{path: state._global.calls, op: lt, value: 5}]
        state: {counter: calls, window: minute}
  "*":
    rules:
      - name: everyone
        conditions: [{path: state._global.calls, op: lt, value: 100}]
        state: {counter: calls, window: day}
"""

CALLS: list[dict[str, Any]] = [
    {"text": "hello", "n": 1},
    {"text": "main", "n": 3},
    {"n": 2},
    {"n": "7"},
    {"text": "x", "n": 0.5},
    {"Text": "case", "n": 1},
    {"n": 0},
]


def _values(names: list[str]) -> Iterator[dict[str, int]]:
    for combination in itertools.product(range(0, 8), repeat=len(names)):
        yield dict(zip(names, combination, strict=True))


def _shape(outcome: object) -> tuple[Any, ...]:
    decision = getattr(outcome, "decision", None)
    if decision is not None:
        return ("judged", decision.verdict, decision.rule_name, decision.message, outcome.reserved)  # type: ignore[attr-defined]
    return (type(outcome).__name__, getattr(getattr(outcome, "rule", None), "name", None))


def _decide_batch(
    connection: sqlite3.Connection, asks: list[CounterAsk], rows: dict[tuple[str, int], int], presumed: bool
) -> list[tuple[Any, ...]]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany("INSERT INTO counters (key, window_start, value) VALUES (?, ?, ?)", [(*k, v) for k, v in rows.items()])
        transaction = CounterTransaction(connection)
        shapes = []
        for ask in asks:
            try:
                items = counted(ask.policy, ask.call, ask.now_s)
            except BadIncrement:
                shapes.append(("bad increment",))
                continue
            taken = tuple(Reservation(item.key, item.window_start, item.amount) for item in items)
            if presumed:
                guess = decide_presumed(ask.policy, ask.call.name, ask.call.arguments, ask.strict)
                shapes.append(_shape(_count_in(transaction, ask, items, guess, taken)))
            else:
                shapes.append(_shape(_count_exactly(transaction, ask, items, taken)))
        return shapes
    finally:
        connection.execute("ROLLBACK")


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("strict", [False, True])
def test_a_call_judged_before_the_lock_comes_to_what_the_whole_evaluation_gives(
    name: str, strict: bool, tmp_path: Path
) -> None:
    policy = parse_policy('version: "1"\n' + POLICIES[name])
    connection = connect(tmp_path)
    tools = ["t", "other", "_global"]
    probe = [counted(policy, ToolCall(tool, {"n": 1}), NOON) for tool in tools]
    slots = sorted({(item.name, item.key, item.window_start) for items in probe for item in items})
    assert slots or name.startswith("hidden"), "the table should count something"
    compared = 0
    for values in _values(sorted({key for _, key, _ in slots})[:2]):  # each row its own value, even under one name
        rows = {(key, start): values.get(key, 0) for _, key, start in slots}
        for first, second in itertools.product(CALLS, repeat=2):
            for tool in tools:
                asks = [CounterAsk(policy, ToolCall(tool, arguments), NOON, None, strict) for arguments in (first, second, first)]
                presumed = _decide_batch(connection, asks, rows, presumed=True)
                exact = _decide_batch(connection, asks, rows, presumed=False)
                assert presumed == exact, (name, tool, values, first, second)
                compared += 1
    connection.close()
    assert compared > 0


def test_the_lock_does_not_evaluate_an_allowed_calls_rules(tmp_path: Path) -> None:
    """The point of it: an allowed call under a plain rate limit tests nothing under the lock
    (its reservation checks its limit), so the write lock is held for the reservation alone."""
    policy = parse_policy('version: "1"\n' + POLICIES["rate limit after an argument rule"])
    decision, presumed = decide_presumed(policy, "t", {"text": "hi"})
    assert decision.verdict == "allow"
    assert presumed.checked == () and len(presumed.implied) == 1
    _, second_limit = decide_presumed(parse_policy('version: "1"\n' + POLICIES["two limits on one counter"]), "t", {})
    assert len(second_limit.checked) == 1 and len(second_limit.implied) == 1  # only the limit reserve reads is implied


# The policies some batch of which `_take_at_once` takes in one statement (one row, nothing to test).
TAKEN_AT_ONCE = {
    "a counter rule before an argument rule",
    "a deny rule after a counter",
    "a spending limit",
    "a tool named _global beside the wildcard (found in review)",
    "a typed argument next to a counter",
    "rate limit after an argument rule",
    "two tools, each its own limit",
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_batch_decided_by_the_store_comes_to_what_the_whole_evaluation_gives(name: str, tmp_path: Path) -> None:
    """The same table through `CallCounters.count`, the store thread's entry point: a batch that
    fits under one limit is taken in one statement (`_take_at_once`), any other in a transaction;
    either way each call's outcome and what the rows end up holding are the exact evaluation's.
    Batches mix tools (so rows) and start from rows not made yet (value 0) as well as made ones."""
    policy = parse_policy('version: "1"\n' + POLICIES[name])
    counters = CallCounters(tmp_path / "store")
    store = counters._connection.get()
    exact = connect(tmp_path / "exact")
    tools = ("t", "_global", "other")
    probe = [counted(policy, ToolCall(tool, {"n": 1}), NOON) for tool in tools]
    slots = sorted({(item.key, item.window_start) for items in probe for item in items})
    statements: list[str] = []
    store.set_trace_callback(statements.append)
    compared = at_once = 0
    for values in itertools.product((0, 1, 2, 3, 5), repeat=min(len(slots), 2)):
        rows = {slot: values[min(index, len(values) - 1)] for index, slot in enumerate(slots)}
        made = [(*slot, value) for slot, value in rows.items() if value]
        for first, second in itertools.product(CALLS[:5], repeat=2):
            for one, other in itertools.product(tools, repeat=2):
                asks = [CounterAsk(policy, ToolCall(tool, arguments), NOON, None, strict)
                        for tool, arguments, strict in ((one, first, False), (other, second, True), (one, first, False))]  # fmt: skip
                store.execute("DELETE FROM counters")
                store.executemany("INSERT INTO counters (key, window_start, value) VALUES (?, ?, ?)", made)
                statements.clear()
                counters._full_row = None  # each batch as if first: a row full once is not full now
                decided = [("bad increment",) if isinstance(o, IncrementRefused) else _shape(o) for o in counters.count(asks)]
                at_once += "BEGIN IMMEDIATE" not in statements and any(sql.startswith("INSERT") for sql in statements)
                assert decided == _decide_batch(exact, asks, rows, presumed=False), (name, one, other, values, first, second)
                held = {slot: rows[slot] for slot in rows}
                for shape in decided:
                    for reservation in shape[4] if shape[0] == "judged" else ():
                        slot = (reservation.key, reservation.window_start)
                        held[slot] = held.get(slot, 0) + reservation.amount
                after = {(key, start): value for key, start, value in store.execute("SELECT key, window_start, value FROM counters")}
                assert {k: v for k, v in after.items() if v} == {k: v for k, v in held.items() if v}
                compared += 1
    exact.close()
    assert compared > 0
    assert (at_once > 0) == (name in TAKEN_AT_ONCE), at_once  # the table reaches the one-statement path
