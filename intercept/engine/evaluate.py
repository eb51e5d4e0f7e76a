"""Evaluate one tool call against a policy, in the order of Intercept's POLICY.md.

hide, then `default: deny` for unlisted tools, then the tool's rules followed by the `"*"` rules.
A `deny` decision wins over `require_approval`, which wins over `allow`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from intercept.engine.decision import ALLOW, DEFAULT_DENY_RULE, HIDDEN_RULE, Decision, ToolCall
from intercept.engine.operators import condition_holds, condition_selects
from intercept.policy.model import GLOBAL_SCOPE, WILDCARD, Policy, Rule

AMBIGUOUS_RULE = "(ambiguous argument)"

_MISSING = object()


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class AmbiguousArgument(ValueError):
    """An argument key equals a policy path part only up to letter case (`DATABASE` for `database`).

    Upstreams disagree on such keys: Python and TypeScript servers ignore them, Go servers take
    them. Neither reading can be trusted, so the call is refused.
    """


def resolve_argument(arguments: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """Walk `a.b.c` through nested objects; (False, None) when any step is missing.

    Raises AmbiguousArgument when a step is missing exactly but present up to letter case.
    """
    current: Any = arguments
    for part in dotted.split("."):
        if not isinstance(current, dict):
            return False, None
        found = current.get(part, _MISSING)
        if found is _MISSING:
            folded = part.casefold()
            if any(k.casefold() == folded for k in current):
                raise AmbiguousArgument(part)
            return False, None
        current = found
    return True, current


def _resolve(path: str, call: ToolCall, counters: Mapping[str, float]) -> tuple[bool, Any]:
    if path.startswith("args."):
        return resolve_argument(call.arguments, path[5:])
    # state.<scope>.<counter>: a counter with no calls in its window reads as zero.
    return True, counters.get(path[6:], 0)


def rules_for(policy: Policy, tool: str) -> tuple[Rule, ...]:
    """The tool's own rules followed by the wildcard rules."""
    own = policy.tools.get(tool)
    wildcard = policy.tools.get(WILDCARD) if tool != WILDCARD else None
    return (own.rules if own else ()) + (wildcard.rules if wildcard else ())


def stateful_rules(policy: Policy, tool: str) -> list[tuple[str, Rule]]:
    """(scope, rule) for each rule with a counter that applies to `tool`, tool rules first."""
    found: list[tuple[str, Rule]] = []
    own = policy.tools.get(tool)
    for rule in own.rules if own else ():
        if rule.state is not None:
            found.append((tool, rule))
    wildcard = policy.tools.get(WILDCARD)
    for rule in wildcard.rules if wildcard and tool != WILDCARD else ():
        if rule.state is not None:
            found.append((GLOBAL_SCOPE, rule))
    return found


def _denied_by(rule: Rule) -> Decision:
    return Decision("deny", rule.name, rule.on_deny or f"Denied by rule {_quote(rule.name)}", rule)


def evaluate(policy: Policy, call: ToolCall, counters: Mapping[str, float] | None = None) -> Decision:
    """Decide `call`; `counters` maps `scope.counter` to its value in the current window."""
    if policy.hides(call.name):
        return Decision("deny", HIDDEN_RULE, f"Tool {_quote(call.name)} is hidden by policy")
    if policy.default == "deny" and call.name not in policy.tools:
        return Decision("deny", DEFAULT_DENY_RULE, f"Tool {_quote(call.name)} is not permitted by policy")

    try:
        return _evaluate_rules(policy, call, counters or {})
    except AmbiguousArgument as ambiguous:
        return Decision(
            "deny",
            AMBIGUOUS_RULE,
            f"Argument names must match the policy exactly: a key differs from {_quote(str(ambiguous))} only in letter case",
        )


def _evaluate_rules(policy: Policy, call: ToolCall, counter_values: Mapping[str, float]) -> Decision:
    approval: Decision | None = None
    for rule in rules_for(policy, call.name):
        if rule.action == "deny":
            return _denied_by(rule)
        if rule.action == "evaluate":
            if not all(condition_holds(c, *_resolve(c.path, call, counter_values)) for c in rule.conditions):
                return _denied_by(rule)
        elif approval is None and all(
            condition_selects(c, *_resolve(c.path, call, counter_values)) for c in rule.conditions
        ):
            approval = Decision("require_approval", rule.name, rule.on_deny or "", rule)
    return approval or ALLOW
