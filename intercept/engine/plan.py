"""Per-tool evaluation plans: a tool's rule chain with each condition bound to a predicate once.

Built on first use and kept on the policy (`Policy.plans`), so deciding a call walks prepared
tuples instead of re-joining rule lists and re-parsing `args.a.b` paths every time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from intercept.engine.operators import condition_holds, condition_selects
from intercept.policy.model import WILDCARD, Condition, Policy, Rule

Lookup = Callable[[dict[str, Any], Mapping[str, float]], tuple[bool, Any]]
Test = Callable[[dict[str, Any], Mapping[str, float]], bool]
Plan = tuple[tuple[Rule, tuple[Test, ...]], ...]

_MISSING = object()


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


def _walk(current: Any, parts: list[str]) -> tuple[bool, Any]:
    for part in parts:
        if not isinstance(current, dict):
            return False, None
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
        plan = tuple(
            (rule, tuple(_test(condition, rule.action == "require_approval") for condition in rule.conditions))
            for rule in rules_for(policy, tool)
        )
        policy.plans[key] = plan
    return plan
