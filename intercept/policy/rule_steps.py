"""A rule between the YAML and the model, and the steps after reading it (no I/O, no YAML).

The loader reads each rule into a `RuleDraft` (step 1: the shape and value of every field, with
located errors), then `desugar_rule` turns a `rate_limit` into the condition, counter and message
it stands for (step 2), `check_rule` says what is wrong with the parts together (step 3: action
against conditions and state, rate_limit against the rest, approval_timeout) and `check_counters`
what is wrong across the rules (counters defined twice, references to none), and `make_rule`
builds the immutable `Rule` with its digest (step 4). Each step can be tested alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from intercept.policy.desugar import RateLimit, desugar, scope_of
from intercept.policy.model import ONCE, ApprovalScope, Condition, CounterSpec, Rule, WhoDecides

Where = tuple[Any, ...]  # a place in the document: mapping keys and list indexes
# Reports an error about `where` at the node `at` below it (its key's node with key=True).
ReportError = Callable[..., None]


@dataclass(frozen=True, slots=True)
class RuleDraft:
    """One rule as read: what each field holds, and which fields were written at all.

    A field that was written but could not be read is None (its error already reported); the
    `*_given` flags say what the author wrote, which the checks need (a `rate_limit` with
    `conditions` beside it is an error even when the conditions are broken)."""

    where: Where
    tool: str
    name: str | None
    action: str  # "evaluate" when absent
    action_known: bool
    on_deny: str | None
    rate_limit_text: str | None = None  # as written, when given
    rate_limit: RateLimit | None = None  # parsed, when valid
    conditions: tuple[Condition, ...] = ()  # the readable ones
    conditions_given: bool = False
    conditions_listed: bool = True  # False: `conditions` is not a list
    conditions_count: int = 0  # as written, readable or not
    state: CounterSpec | None = None
    state_given: bool = False
    approval_timeout_given: bool = False
    approval_timeout_s: float | None = None
    wait_given: bool = False
    wait_s: float | None = None
    via: str | None = None  # a valid `via`, when given
    on_timeout: str | None = None  # a valid `on_timeout`, when given
    scope: ApprovalScope | None = None  # a valid `scope`, when given
    approvers: WhoDecides | None = None  # a valid `approvers` (with escalation), when given
    approvers_given: bool = False
    severity: str | None = None  # a valid `severity`, when given
    # For the checks across rules, read even where the rest of the rule is broken:
    counter: str | None = None  # the counter it defines (its state.counter, or its rate_limit's)
    condition_paths: tuple[tuple[int, Any], ...] = ()  # (index, path) of each condition written
    desugared: bool = field(default=False, compare=False)


def desugar_rule(draft: RuleDraft) -> RuleDraft:
    """A rule written with `rate_limit` as the rule it stands for; others unchanged."""
    if draft.rate_limit is None:
        return draft
    conditions, state, on_deny = desugar(draft.tool, draft.rate_limit, draft.on_deny or "")
    return replace(draft, conditions=conditions, state=state, on_deny=on_deny, desugared=True)


def check_rule(draft: RuleDraft, error: ReportError) -> None:
    """Report what is wrong with a rule's fields together (Intercept's messages)."""
    where, action = draft.where, draft.action
    if draft.rate_limit_text is not None:
        if draft.conditions_given or draft.state_given:
            error(
                where,
                "rate_limit cannot be combined with conditions or state; use separate rules or the full syntax instead",
                at=("conditions" if draft.conditions_given else "state",),
                key=True,
            )
        if action in ("deny", "require_approval"):
            error(where, f"rate_limit cannot be used with action {quote(action)}", at=("action",))
    else:
        if action == "deny" and draft.conditions_listed and draft.conditions_count:
            error(where, "deny rules must not have conditions", at=("conditions",), key=True)
        if action == "evaluate" and draft.conditions_listed and draft.conditions_count == 0:
            error(where, "evaluate rules must have at least one condition", at=("conditions",))
        if action == "require_approval" and draft.state_given:
            error(where, "require_approval rules must not have a state block", at=("state",), key=True)
    if draft.action_known and action != "require_approval":
        for key, given in (
            ("approval_timeout", draft.approval_timeout_given),
            ("wait", draft.wait_given),
            ("via", draft.via is not None),
            ("on_timeout", draft.on_timeout is not None),
            ("scope", draft.scope is not None),
            ("approvers", draft.approvers_given),
        ):
            if given:
                error(where, f'{key} is only valid with action "require_approval"', at=(key,), key=True)


def check_counters(drafts: dict[str, list[RuleDraft]], broken: set[str], error: ReportError) -> None:
    """Report counters defined twice in one scope and conditions naming a counter no rule of that
    scope defines. Counters are taken from what each rule wrote, so one invalid rule does not
    cascade into others; nor is a reference checked in a scope whose counters cannot all be read
    (`broken`: a rule or tool entry too broken to tell, or a counter defined but unclear)."""
    defined: dict[str, set[str]] = {}
    for tool, rules in drafts.items():
        scope = scope_of(tool)
        seen: dict[str, int] = {}
        for draft in rules:
            index = draft.where[-1]
            if draft.counter is None:
                if draft.state_given or draft.rate_limit_text is not None:
                    broken.add(scope)  # already reported: a counter is defined, but which is unclear
                continue
            if draft.counter in seen:
                error(
                    draft.where,
                    f"duplicate state counter {quote(draft.counter)} (also used by rules[{seen[draft.counter]}])",
                    at=("rate_limit",) if draft.rate_limit_text is not None else ("state", "counter"),
                )
            else:
                seen[draft.counter] = index
        defined.setdefault(scope, set()).update(seen)
    for rules in drafts.values():
        for draft in rules:
            for j, path in draft.condition_paths:
                parts = path.split(".", 2) if isinstance(path, str) else []
                if len(parts) < 3 or parts[0] != "state" or parts[1] in broken:
                    continue
                if parts[2] not in defined.get(parts[1], set()):
                    error(
                        draft.where,
                        f"condition references state.{parts[1]}.{parts[2]} but no matching state block found",
                        at=("conditions", j, "path"),
                    )


def make_rule(draft: RuleDraft) -> Rule:
    """The immutable rule (after `desugar_rule`), with the digest approvals bind to."""
    state = draft.state
    definition: dict[str, Any] = {
        "tool": draft.tool,
        "name": draft.name,
        "action": draft.action,
        "conditions": [[c.path, c.op, c.value] for c in draft.conditions],
        "on_deny": draft.on_deny,
        "state": None if state is None else [state.counter, state.window, state.increment, state.increment_from],
        "approval_timeout_s": draft.approval_timeout_s,
    }
    if draft.scope is not None and draft.scope != ONCE:  # absent for `once`: older digests stay as they were
        definition["scope"] = draft.scope.as_json()
    if draft.approvers is not None:  # who decides is part of what the rule says; absent: digests as before
        definition["approvers"] = draft.approvers.as_json()
    return Rule(
        name=draft.name or "",
        action=draft.action,  # type: ignore[arg-type]
        conditions=draft.conditions,
        on_deny=draft.on_deny or None,
        state=state,
        rate_limit=draft.rate_limit_text,
        approval_timeout_s=draft.approval_timeout_s,
        wait_s=draft.wait_s,
        via=draft.via,  # type: ignore[arg-type]
        on_timeout=draft.on_timeout or "pending",  # type: ignore[arg-type]
        scope=draft.scope or ONCE,
        approvers=draft.approvers,
        severity=draft.severity,  # type: ignore[arg-type]
        digest=digest(definition),
    )


def digest(value: Any) -> str:
    """SHA-256 of canonical JSON: what approvals and reloads compare."""
    try:
        blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    except TypeError:  # keys of mixed types (`{1: a, b: c}`) cannot be sorted: compare them as text
        blob = json.dumps(_text_keys(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _text_keys(value: Any) -> Any:
    """`value` with every mapping key as text (only for documents whose keys cannot be sorted, so
    every other digest stays what it was)."""
    if isinstance(value, dict):
        return {str(key): _text_keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_text_keys(item) for item in value]
    return value


def quote(value: Any) -> str:
    """Quote like Go's %q for the values that appear in validation messages."""
    if value is None:
        return '""'
    return json.dumps(value if isinstance(value, str) else str(value), ensure_ascii=False)
