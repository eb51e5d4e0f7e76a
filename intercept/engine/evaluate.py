"""Evaluate one tool call against a policy, in the order of Intercept's POLICY.md.

hide, then `default: deny` for unlisted tools, then the tool's rules followed by the `"*"` rules.
A `deny` decision wins over `require_approval`, which wins over `allow`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from intercept.engine.decision import ALLOW, DEFAULT_DENY_RULE, HIDDEN_RULE, Decision, ToolCall
from intercept.engine.plan import AmbiguousArgument, Plan, PresumedPlan, plan_for, presumed_plan_for, strict_plan_for
from intercept.policy.model import WILDCARD, Policy, Rule

AMBIGUOUS_RULE = "(ambiguous argument)"
_NO_COUNTERS: Mapping[str, float] = MappingProxyType({})


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _denied_by(rule: Rule) -> Decision:
    return Decision("deny", rule.name, rule.on_deny or f"Denied by rule {_quote(rule.name)}", rule)


def evaluate(
    policy: Policy, call: ToolCall, counters: Mapping[str, float] | None = None, strict: bool = False
) -> Decision:
    """Decide `call`; `counters` maps `scope.counter` to its value in the current window; `strict`
    when the server's schema does not vouch for the argument types (see `engine.plan`)."""
    return decide(policy, call.name, call.arguments, counters, strict)


def decide(
    policy: Policy,
    name: str,
    arguments: dict[str, Any],
    counters: Mapping[str, float] | None = None,
    strict: bool = False,
    plan: Plan | None = None,
) -> Decision:
    """`evaluate` for a call not yet wrapped in a ToolCall (the proxy's per-call path); `plan`
    instead of the tool's own (`decide_presumed`)."""
    if name in policy.hide or WILDCARD in policy.hide:
        return Decision("deny", HIDDEN_RULE, f"Tool {_quote(name)} is hidden by policy")
    if policy.default == "deny" and name not in policy.tools:
        return Decision("deny", DEFAULT_DENY_RULE, f"Tool {_quote(name)} is not permitted by policy")
    if plan is None:
        plan = strict_plan_for(policy, name) if strict else policy.plans.get(name)
        if plan is None:
            plan = plan_for(policy, name)
    if not plan:
        return ALLOW
    if counters is None:
        counters = _NO_COUNTERS
    approval: Decision | None = None
    try:  # the first failing `evaluate` rule or any `deny` rule decides; else the first selecting
        # `require_approval` rule; else allow. Conditions are tried in order and stop early.
        for rule, tests in plan:
            action = rule.action
            if action == "deny":
                return _denied_by(rule)
            if action == "evaluate":
                for test in tests:
                    if not test(arguments, counters):
                        return _denied_by(rule)
            elif approval is None:
                for test in tests:
                    if not test(arguments, counters):
                        break
                else:
                    approval = Decision("require_approval", rule.name, rule.on_deny or "", rule)
    except AmbiguousArgument as ambiguous:
        return Decision(
            "deny",
            AMBIGUOUS_RULE,
            f"Argument names must match the policy exactly: a key differs from {_quote(str(ambiguous))} only in letter case",
        )
    return approval or ALLOW


def decide_presumed(
    policy: Policy, name: str, arguments: dict[str, Any], strict: bool = False
) -> tuple[Decision, PresumedPlan]:
    """`decide` for a counted call before its counters are read: the decision if every condition
    on a counter holds, and those conditions' tests (`PresumedPlan`). When they all hold for the
    values read under the write lock, it is the decision `decide` makes with those values; when
    one fails, the caller decides with `decide` instead."""
    presumed = presumed_plan_for(policy, name, strict)
    return decide(policy, name, arguments, None, strict, presumed.plan), presumed
