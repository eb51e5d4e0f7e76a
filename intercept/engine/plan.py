"""Per-tool evaluation plans: a tool's rule chain with each condition bound to a predicate once.

Built on first use and kept on the policy (`Policy.plans`), so deciding a call walks prepared
tuples instead of re-joining rule lists and re-parsing `args.a.b` paths every time.

Conditions on `agent.*` are judged when a plan is built (`engine.agent_conditions`): the agent
is fixed for a proxy, so a call never evaluates them.

A tool has two plans. The usual one judges values with Intercept's semantics. The strict one is
for calls whose argument types the server's schema does not vouch for (no schema known, or a
read parameter without a declared type): a condition that would compare values of different
JSON kinds, or read through a value that is not an object, counts as failed in `evaluate` rules
and as selecting in `require_approval` rules, since the server may coerce the value into one
the rule would have judged otherwise. Text that is JSON for an object, an array or null is
judged both as the text and as that value (the Python SDK parses it): an `evaluate` rule must
hold for both readings, a `require_approval` rule selects if either does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from intercept.engine.agent_conditions import agent_condition_holds
from intercept.engine.arg_types import UNREADABLE, json_text_reading
from intercept.engine.operators import condition_holds, condition_selects, kinds_differ
from intercept.policy.model import GLOBAL_SCOPE, WILDCARD, Condition, Policy, Rule

Lookup = Callable[[dict[str, Any], Mapping[str, float]], tuple[bool, Any]]
Test = Callable[[dict[str, Any], Mapping[str, float]], bool]
Plan = tuple[tuple[Rule, tuple[Test, ...]], ...]

_MISSING = object()
_NOT_AN_OBJECT = object()  # a strict lookup read through a value that is not an object


class AmbiguousArgument(ValueError):
    """An argument key equals a policy path part only up to letter case (`DATABASE` for `database`).

    Upstreams disagree on such keys: Python and TypeScript servers ignore them, Go servers take
    them. Neither reading can be trusted, so the call is refused.
    """


def resolve_argument(arguments: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """Walk `a.b.c` through nested objects; (False, None) when any step is missing.

    Raises AmbiguousArgument when a step is missing exactly but present up to letter case.
    """
    return _walk(arguments, dotted.split("."))


_NOT_FOUND = (False, None)


def _walk(current: Any, parts: list[str], through_non_object: tuple[bool, Any] = _NOT_FOUND) -> tuple[bool, Any]:
    """Follow `parts`; reading through a present value that is not an object gives
    `through_non_object` (not found, unless the strict plan asks to tell it apart)."""
    for part in parts:
        if not isinstance(current, dict):
            return through_non_object if current is not None else _NOT_FOUND
        found = current.get(part, _MISSING)
        if found is _MISSING:
            return _absent(current, part)
        current = found
    return True, current


def _absent(obj: Mapping[str, Any], part: str) -> tuple[bool, Any]:
    folded = part.casefold()
    if any(key.casefold() == folded for key in obj):
        raise AmbiguousArgument(part)
    return False, None


def _strict_test(condition: Condition, for_approval: bool) -> Test:
    """The strict predicate: a comparison of different kinds fails (evaluate) or selects (approval)."""
    if not condition.path.startswith("args."):
        return _test(condition, for_approval)
    parts = condition.path[5:].split(".")
    judge = condition_selects if for_approval else condition_holds
    op, expected = condition.op, condition.value

    def reading(found: bool, actual: Any) -> bool:
        if found and (actual is _NOT_AN_OBJECT or actual is UNREADABLE or kinds_differ(op, actual, expected)):
            return for_approval
        return judge(condition, found, actual)

    def strict(arguments: dict[str, Any], counters: Mapping[str, float]) -> bool:
        found, actual = _walk(arguments, parts, (True, _NOT_AN_OBJECT))
        verdict = reading(found, actual)
        if found and type(actual) is str:  # the server may act on the JSON this text holds
            parsed, value = json_text_reading(actual)
            if parsed:
                other = reading(True, value)
                return (verdict or other) if for_approval else (verdict and other)
        return verdict

    return strict


def _lookup(path: str) -> Lookup:
    """How to read the value a condition's path names: `args.<dotted>` or `state.<scope>.<counter>`."""
    if not path.startswith("args."):
        counter = path[6:]  # a counter with no calls in its window reads as zero
        return lambda arguments, counters: (True, counters.get(counter, 0))
    parts = path[5:].split(".")
    return lambda arguments, counters: _walk(arguments, parts)


def _test(condition: Condition, for_approval: bool) -> Test:
    """The condition as one predicate over (arguments, counters): `condition_holds` for evaluate
    rules, `condition_selects` for require_approval rules. `exists` on a top-level argument, the
    most common condition, reads the argument directly."""
    parts = condition.path.split(".")
    if condition.op == "exists" and len(parts) == 2 and parts[0] == "args":
        part, wanted = parts[1], condition.value

        def exists(arguments: dict[str, Any], counters: Mapping[str, float]) -> bool:
            found = arguments.get(part, _MISSING)
            if found is _MISSING:
                _absent(arguments, part)
                return False == wanted  # noqa: E712 (the same comparison condition_holds makes)
            return (found is not None) == wanted

        return exists
    lookup = _lookup(condition.path)
    judge = condition_selects if for_approval else condition_holds
    return lambda arguments, counters: judge(condition, *lookup(arguments, counters))


def _never(arguments: dict[str, Any], counters: Mapping[str, float]) -> bool:
    return False


def _tests(policy: Policy, rule: Rule, make: Callable[[Condition, bool], Test]) -> tuple[Test, ...]:
    """The rule's conditions as predicates (`make`), with those on `agent.*` judged now for the
    policy's agent: one that holds is left out, one that does not always fails
    (`engine.agent_conditions`)."""
    for_approval = rule.action == "require_approval"
    tests: list[Test] = []
    for condition in rule.conditions:
        if not condition.path.startswith("agent."):
            tests.append(make(condition, for_approval))
        elif not agent_condition_holds(policy.agent, condition, for_approval):
            tests.append(_never)
    return tuple(tests)


@dataclass(frozen=True, slots=True)
class PresumedPlan:
    """A counted tool's rule chain with every condition on a counter (`state.*`) presumed to
    hold (`plan`), and the tests of those conditions: `implied` are the limits a reservation
    checks itself (each counter rule's own `lt`/`lte`, the one `counters.rules.limit` reads), so
    when every increment was taken they hold; `checked` are all the others. When all of them
    hold for the counters' values, the plan decides as the whole one does."""

    plan: Plan
    checked: tuple[Test, ...]
    implied: tuple[Test, ...]


def presumed_plan_for(policy: Policy, tool: str, strict: bool) -> PresumedPlan:
    """The presumed plan for `tool` (see `PresumedPlan`), kept under `("presumed", strict, key)`:
    a counted call is judged with it before its counters are read, so the write transaction only
    checks the counter conditions."""
    key = ("presumed", strict, tool if tool in policy.tools else None)
    found: PresumedPlan | None = policy.plans.get(key)  # type: ignore[call-overload]
    if found is not None:
        return found
    make = _strict_test if strict else _test
    own_count = len(policy.tools[tool].rules) if tool in policy.tools else 0
    rules = rules_for(policy, tool)
    scopes = [tool if index < own_count else GLOBAL_SCOPE for index in range(len(rules))]
    names = [f"{scope}.{rule.state.counter}" for scope, rule in zip(scopes, rules, strict=True) if rule.state]
    # A limit is implied only where the reservation is as strict as the condition: every counter
    # has a name of its own for the engine (a tool named `_global` can share one with the "*"
    # rules), and `lte N` with N below 0 (the limit rounds towards 0) is tested, not implied.
    may_imply = len(names) == len(set(names))
    plan, checked, implied = [], [], []
    for scope, rule in zip(scopes, rules, strict=True):
        implied_by = limit_condition(rule, scope) if may_imply and rule.action == "evaluate" else None
        if implied_by is not None and implied_by.op == "lte" and implied_by.value < 0:
            implied_by = None
        for_approval = rule.action == "require_approval"
        tests: list[Test] = []
        for condition in rule.conditions:
            if condition.path.startswith("agent."):
                if not agent_condition_holds(policy.agent, condition, for_approval):
                    tests.append(_never)
            elif condition.path.startswith("state."):
                (implied if condition is implied_by else checked).append(make(condition, for_approval))
            else:
                tests.append(make(condition, for_approval))
        plan.append((rule, tuple(tests)))
    found = policy.plans[key] = PresumedPlan(tuple(plan), tuple(checked), tuple(implied))  # type: ignore[index]
    return found


def limit_condition(rule: Rule, scope: str) -> Condition | None:
    """The condition that is a counter rule's limit: the first `lt`/`lte` on its own counter
    (`state.<scope>.<counter>`), or None. `counters.rules.limit` reads the limit from it, and a
    reservation enforces it."""
    if rule.state is None:
        return None
    own_path = f"state.{scope}.{rule.state.counter}"
    for condition in rule.conditions:
        if condition.path == own_path and condition.op in ("lt", "lte"):
            return condition
    return None


def rules_for(policy: Policy, tool: str) -> tuple[Rule, ...]:
    """The tool's own rules followed by the wildcard rules."""
    own = policy.tools.get(tool)
    wildcard = policy.tools.get(WILDCARD) if tool != WILDCARD else None
    return (own.rules if own else ()) + (wildcard.rules if wildcard else ())


def plan_for(policy: Policy, tool: str) -> Plan:
    """The prepared rule chain for `tool`; every tool the policy does not list shares one."""
    key = tool if tool in policy.tools else None
    plan = policy.plans.get(key)
    if plan is None:
        plan = tuple((rule, _tests(policy, rule, _test)) for rule in rules_for(policy, tool))
        policy.plans[key] = plan
    return plan


def strict_plan_for(policy: Policy, tool: str) -> Plan:
    """The strict rule chain for `tool` (see the module docstring), kept under `("strict", key)`."""
    key = ("strict", tool if tool in policy.tools else None)
    plan = policy.plans.get(key)  # type: ignore[call-overload]
    if plan is None:
        plan = tuple((rule, _tests(policy, rule, _strict_test)) for rule in rules_for(policy, tool))
        policy.plans[key] = plan  # type: ignore[index]
    return plan
