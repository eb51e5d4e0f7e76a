"""A rule's steps after reading, each alone (`policy.rule_steps`): desugar, check, make; and the
digests approvals bind to, which no refactoring may change."""

from __future__ import annotations

from typing import Any

import pytest

from intercept.policy import parse_policy
from intercept.policy.desugar import RateLimit
from intercept.policy.load import check_policy
from intercept.policy.model import Condition, CounterSpec
from intercept.policy.rule_steps import RuleDraft, check_counters, check_rule, desugar_rule, make_rule

WHERE = ("tools", "t", "rules", 0)


def draft(**fields: Any) -> RuleDraft:
    base: dict[str, Any] = {"where": WHERE, "tool": "t", "name": "r", "action": "evaluate", "action_known": True,
                            "on_deny": ""}  # fmt: skip
    return RuleDraft(**{**base, **fields})


def errors_of(check: Any, *args: Any) -> list[tuple[str, tuple[Any, ...]]]:
    found: list[tuple[str, tuple[Any, ...]]] = []
    check(*args, lambda where, message, at=(), key=False: found.append((message, (*where, *at))))
    return found


ONE = (Condition("args.x", "eq", 1),)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"conditions": ONE, "conditions_given": True, "conditions_count": 1}, []),
        ({}, [("evaluate rules must have at least one condition", (*WHERE, "conditions"))]),
        ({"conditions_listed": False, "conditions_given": True}, []),  # not a list: reported when read
        ({"action": "deny", "conditions": ONE, "conditions_given": True, "conditions_count": 1},
         [("deny rules must not have conditions", (*WHERE, "conditions"))]),
        ({"action": "deny"}, []),
        ({"action": "require_approval", "state_given": True},
         [("require_approval rules must not have a state block", (*WHERE, "state"))]),
        ({"rate_limit_text": "5/hour", "rate_limit": RateLimit(5, "hour"), "conditions_given": True},
         [("rate_limit cannot be combined with conditions or state; use separate rules or the full syntax instead",
           (*WHERE, "conditions"))]),
        ({"rate_limit_text": "5/hour", "rate_limit": RateLimit(5, "hour"), "action": "deny"},
         [('rate_limit cannot be used with action "deny"', (*WHERE, "action"))]),
        ({"rate_limit_text": "5/hour", "rate_limit": RateLimit(5, "hour"), "approval_timeout_given": True},
         [('approval_timeout is only valid with action "require_approval"', (*WHERE, "approval_timeout"))]),
        ({"action": "require_approval", "approval_timeout_given": True, "approval_timeout_s": 60.0}, []),
        ({"action": "bogus", "action_known": False, "approval_timeout_given": True,
          "conditions": ONE, "conditions_count": 1}, []),  # a bad action is reported once, when read
    ],
)  # fmt: skip
def test_check_rule(fields: dict[str, Any], expected: list[tuple[str, tuple[Any, ...]]]) -> None:
    assert errors_of(check_rule, draft(**fields)) == expected


def test_desugar_rule_fills_condition_state_and_message_and_leaves_others_alone() -> None:
    plain = draft(conditions=ONE, conditions_count=1)
    assert desugar_rule(plain) is plain
    sugared = desugar_rule(draft(rate_limit_text="3/minute", rate_limit=RateLimit(3, "minute"), counter="_rate_minute"))
    assert sugared.conditions == (Condition("state.t._rate_minute", "lte", 3),)
    assert sugared.state == CounterSpec("_rate_minute", "minute")
    assert sugared.on_deny == "Rate limit of 3 per minute reached. Try again later."
    assert make_rule(sugared).rate_limit == "3/minute"


def test_check_counters_finds_duplicates_and_dangling_references_but_not_in_broken_scopes() -> None:
    def rule(tool: str, index: int, **fields: Any) -> RuleDraft:
        return draft(where=("tools", tool, "rules", index), tool=tool, **fields)

    drafts = {
        "a": [rule("a", 0, counter="n", state_given=True), rule("a", 1, counter="n", state_given=True),
              rule("a", 2, condition_paths=((0, "state.a.n"), (1, "state.a.missing"), (2, "args.x")))],
        "b": [rule("b", 0, state_given=True), rule("b", 1, condition_paths=((0, "state.b.whatever"),))],
        "*": [rule("*", 0, counter="_rate_day", rate_limit_text="9/day"),
              rule("*", 1, condition_paths=((0, "state._global._rate_day"),))],
    }  # fmt: skip
    broken: set[str] = set()
    assert errors_of(check_counters, drafts, broken) == [
        ('duplicate state counter "n" (also used by rules[0])', ("tools", "a", "rules", 1, "state", "counter")),
        ("condition references state.a.missing but no matching state block found",
         ("tools", "a", "rules", 2, "conditions", 1, "path")),
    ]  # fmt: skip
    assert broken == {"b"}  # its counter is defined but unclear: references into it are not judged


GOLDEN = '''version: "1"
tools:
  search:
    rules:
      - name: budget
        rate_limit: 5/hour
  deploy:
    rules:
      - name: humans deploy
        action: require_approval
        approval_timeout: 10m
        on_deny: "ask a human"
      - name: no prod on fridays
        conditions:
          - {path: args.env, op: neq, value: prod}
          - {path: args.note, op: regex, value: "^ok"}
  pay:
    rules:
      - name: cents
        state: {counter: spend, window: day, increment_from: args.cents}
        conditions: [{path: state.pay.spend, op: lte, value: 10000}]
  "*":
    rules:
      - name: global
        rate_limit: 100/day
      - name: banned
        action: deny
'''


def test_rule_digests_stay_what_approvals_were_bound_to() -> None:
    """Approvals in a state dir bind to these digests: a change would silently void every
    pending and approved request on upgrade. Values computed by intercept before the rule steps."""
    policy = parse_policy(GOLDEN)
    digests = {(tool, rule.name): rule.digest[:16] for tool, spec in policy.tools.items() for rule in spec.rules}
    assert digests == {
        ("search", "budget"): "edd9c45b89562823",
        ("deploy", "humans deploy"): "eac617cb572f3a3e",
        ("deploy", "no prod on fridays"): "d25b36e415935226",
        ("pay", "cents"): "e81e224ec970ef3c",
        ("*", "global"): "2e75b3ab597770a9",
        ("*", "banned"): "02c1dbf50f98b8f3",
    }
    assert policy.digest[:16] == "1ecb24df4ba47b07"


@pytest.mark.parametrize("key", ["countr", "Counter"])
def test_a_misspelled_counter_key_still_defines_its_counter_for_the_checks_across_rules(key: str) -> None:
    """The key is read as `counter` (one error for the typo); the counter it names still counts,
    so a duplicate is still reported, and a reference to a missing counter in its scope too."""
    text = f'''version: "1"
tools:
  transfer:
    rules:
      - name: a
        conditions: [{{path: state.transfer.n, op: lte, value: 5}}]
        state: {{counter: n, window: hour}}
      - name: b
        conditions: [{{path: state.transfer.missing, op: lte, value: 9}}]
        state: {{{key}: n, window: hour}}
'''
    _, issues = check_policy(text)
    messages = [issue.message for issue in issues]
    assert messages[0].startswith(f'unknown key "{key}" (did you mean "counter"?')
    assert 'duplicate state counter "n" (also used by rules[0])' in messages
    assert "condition references state.transfer.missing but no matching state block found" in messages


def test_a_policy_whose_keys_cannot_be_sorted_still_loads() -> None:
    """`123:` beside `transfer:`, or a mapping value with number and text keys: the digest compares
    keys as text instead of failing (it raised TypeError)."""
    policy = parse_policy('version: "1"\ntools:\n  transfer:\n    rules: []\n  123:\n    rules:\n'
                          '      - name: r\n        conditions: [{path: args.x, op: eq, value: {1: a, b: c}}]\n')  # fmt: skip
    assert set(policy.tools) == {"transfer", "123"} and len(policy.digest) == 64
