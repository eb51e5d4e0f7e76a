"""Table-driven tests of the pure engine: every operator, path resolution, and the evaluation order
of Intercept's POLICY.md ("Rule evaluation order"), plus our `require_approval` extension.

Policies are always built from YAML text with `parse_policy`, exactly as a policy file would be.
"""

from __future__ import annotations

import copy
import json
import textwrap
from typing import Any

import pytest

from intercept.engine import Decision, ToolCall, evaluate
from intercept.policy import Condition, CounterSpec, Policy, parse_policy

# -- helpers ---------------------------------------------------------------------------------


def _policy(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text))


def _single_condition_policy(op: str, value: Any, path: str = "args.x") -> Policy:
    """One tool `t` with one evaluate rule holding one condition; the call is allowed iff it holds."""
    # JSON is valid YAML flow syntax, so json.dumps renders the expected value with its exact type.
    return parse_policy(
        'version: "1"\n'
        "tools:\n"
        "  t:\n"
        "    rules:\n"
        "      - name: check\n"
        "        conditions:\n"
        f"          - path: {json.dumps(path)}\n"
        f"            op: {json.dumps(op)}\n"
        f"            value: {json.dumps(value)}\n"
    )


def _holds(op: str, value: Any, arguments: dict[str, Any], path: str = "args.x") -> bool:
    decision = evaluate(_single_condition_policy(op, value, path), ToolCall("t", arguments), {})
    assert decision.verdict in ("allow", "deny")
    if decision.verdict == "deny":
        assert decision.rule_name == "check"
        assert decision.message == 'Denied by rule "check"'
    return decision.verdict == "allow"


# -- operators -------------------------------------------------------------------------------

MISSING: dict[str, Any] = {"other": 1}

OPERATOR_CASES = [
    # eq
    pytest.param("eq", "main", {"x": "main"}, True, id="eq-string-match"),
    pytest.param("eq", "main", {"x": "dev"}, False, id="eq-string-mismatch"),
    pytest.param("eq", "main", {"x": "Main"}, False, id="eq-case-sensitive"),
    pytest.param("eq", 5, {"x": 5.0}, True, id="eq-int-value-equals-float-arg"),
    pytest.param("eq", 5.0, {"x": 5}, True, id="eq-float-value-equals-int-arg"),
    pytest.param("eq", 5, {"x": 6}, False, id="eq-number-mismatch"),
    pytest.param("eq", "5", {"x": 5}, True, id="eq-string-value-matches-number-arg-via-%v"),
    pytest.param("eq", 5, {"x": "5"}, True, id="eq-number-value-matches-string-arg-via-%v"),
    pytest.param("eq", "0.5", {"x": 0.5}, True, id="eq-%v-of-float-arg"),
    pytest.param("eq", "1e+06", {"x": 1000000}, True, id="eq-%v-of-json-number-is-float64-1e+06"),
    pytest.param("eq", 1000000, {"x": "1000000"}, True, id="eq-%v-of-yaml-integer-value-is-decimal"),
    pytest.param("eq", True, {"x": "true"}, True, id="eq-bool-value-matches-string-true"),
    pytest.param("eq", "true", {"x": True}, True, id="eq-string-value-matches-bool-true"),
    pytest.param("eq", True, {"x": True}, True, id="eq-bool-match"),
    pytest.param("eq", True, {"x": False}, False, id="eq-bool-mismatch"),
    pytest.param("eq", 1, {"x": True}, False, id="eq-bool-is-not-the-number-1"),
    pytest.param("eq", 0, {"x": False}, False, id="eq-bool-false-is-not-the-number-0"),
    pytest.param("eq", "[a b]", {"x": ["a", "b"]}, True, id="eq-%v-of-list"),
    pytest.param("eq", "main", MISSING, False, id="eq-missing-argument"),
    # neq
    pytest.param("neq", "draft", {"x": "final"}, True, id="neq-different"),
    pytest.param("neq", "draft", {"x": "draft"}, False, id="neq-same"),
    pytest.param("neq", 5, {"x": 5.0}, False, id="neq-int-vs-equal-float"),
    pytest.param("neq", "5", {"x": 5}, False, id="neq-%v-equal"),
    pytest.param("neq", 1, {"x": True}, True, id="neq-bool-is-not-number"),
    pytest.param("neq", "draft", MISSING, False, id="neq-missing-argument"),
    # in
    pytest.param("in", ["usd", "eur"], {"x": "eur"}, True, id="in-member"),
    pytest.param("in", ["usd", "eur"], {"x": "gbp"}, False, id="in-not-member"),
    pytest.param("in", [1.0, 2.0], {"x": 2}, True, id="in-int-arg-in-float-list"),
    pytest.param("in", [5], {"x": "5"}, True, id="in-%v-fallback"),
    pytest.param("in", [1], {"x": True}, False, id="in-bool-is-not-number"),
    pytest.param("in", [], {"x": "a"}, False, id="in-empty-list"),
    pytest.param("in", ["usd"], MISSING, False, id="in-missing-argument"),
    # not_in
    pytest.param("not_in", ["admin", "root"], {"x": "alice"}, True, id="not_in-not-member"),
    pytest.param("not_in", ["admin", "root"], {"x": "root"}, False, id="not_in-member"),
    pytest.param("not_in", [5], {"x": 5.0}, False, id="not_in-float-arg-equal-to-int-member"),
    pytest.param("not_in", [], {"x": "a"}, True, id="not_in-empty-list"),
    pytest.param("not_in", ["admin"], MISSING, False, id="not_in-missing-argument"),
    # lt
    pytest.param("lt", 100, {"x": 99}, True, id="lt-less"),
    pytest.param("lt", 100, {"x": 100}, False, id="lt-equal"),
    pytest.param("lt", 100, {"x": 101}, False, id="lt-greater"),
    pytest.param("lt", 2, {"x": 1.5}, True, id="lt-float-arg-int-value"),
    pytest.param("lt", 100, {"x": "10"}, False, id="lt-string-arg-not-coerced"),
    pytest.param("lt", 100, {"x": False}, False, id="lt-bool-is-not-number"),
    pytest.param("lt", 100, {"x": None}, False, id="lt-null-arg"),
    pytest.param("lt", 100, MISSING, False, id="lt-missing-argument"),
    # lte
    pytest.param("lte", 50000, {"x": 49999}, True, id="lte-less"),
    pytest.param("lte", 50000, {"x": 50000}, True, id="lte-equal"),
    pytest.param("lte", 50000, {"x": 50000.0}, True, id="lte-equal-float"),
    pytest.param("lte", 50000, {"x": 50001}, False, id="lte-greater"),
    pytest.param("lte", 50000, {"x": "1"}, False, id="lte-string-arg-not-coerced"),
    pytest.param("lte", 1, {"x": True}, False, id="lte-bool-is-not-number"),
    pytest.param("lte", 50000, MISSING, False, id="lte-missing-argument"),
    # gt
    pytest.param("gt", 50, {"x": 51}, True, id="gt-greater"),
    pytest.param("gt", 50, {"x": 50}, False, id="gt-equal"),
    pytest.param("gt", 50, {"x": 49}, False, id="gt-less"),
    pytest.param("gt", 0.5, {"x": 0.75}, True, id="gt-floats"),
    pytest.param("gt", 50, {"x": "100"}, False, id="gt-string-100-vs-50-not-coerced"),
    pytest.param("gt", 0, {"x": True}, False, id="gt-bool-is-not-number"),
    pytest.param("gt", 0, {"x": [1]}, False, id="gt-list-arg"),
    pytest.param("gt", 50, MISSING, False, id="gt-missing-argument"),
    # gte
    pytest.param("gte", 1, {"x": 2}, True, id="gte-greater"),
    pytest.param("gte", 1, {"x": 1}, True, id="gte-equal"),
    pytest.param("gte", 1, {"x": 0}, False, id="gte-less"),
    pytest.param("gte", -1.5, {"x": -1}, True, id="gte-negative-float"),
    pytest.param("gte", 1, {"x": "2"}, False, id="gte-string-arg-not-coerced"),
    pytest.param("gte", 1, {"x": True}, False, id="gte-bool-is-not-number"),
    pytest.param("gte", 1, MISSING, False, id="gte-missing-argument"),
    # integers beyond float's range (the client parse keeps them exact): compared exactly, never raising
    pytest.param("lte", 50000, {"x": 10**400}, False, id="lte-integer-beyond-float"),
    pytest.param("gt", 50, {"x": 10**400}, True, id="gt-integer-beyond-float"),
    pytest.param("gte", 0, {"x": -(10**400)}, False, id="gte-negative-integer-beyond-float"),
    pytest.param("lt", 0, {"x": -(10**400)}, True, id="lt-negative-integer-beyond-float"),
    pytest.param("eq", 1e308, {"x": 10**400}, False, id="eq-integer-beyond-float"),
    pytest.param("eq", "+Inf", {"x": 10**400}, True, id="eq-integer-beyond-float-renders-as-go-reads-it"),
    pytest.param("in", [1, 2], {"x": 10**400}, False, id="in-integer-beyond-float"),
    pytest.param("neq", 5, {"x": 10**400}, True, id="neq-integer-beyond-float"),
    # regex (unanchored RE2 search)
    pytest.param("regex", "^feat/", {"x": "feat/login"}, True, id="regex-anchored-match"),
    pytest.param("regex", "^feat/", {"x": "x/feat/y"}, False, id="regex-anchored-no-match"),
    pytest.param("regex", "feat/", {"x": "x/feat/y"}, True, id="regex-unanchored-search"),
    pytest.param("regex", r"@example\.com$", {"x": "bob@example.com"}, True, id="regex-suffix-match"),
    pytest.param("regex", r"@example\.com$", {"x": "bob@example.com.evil"}, False, id="regex-suffix-no-match"),
    pytest.param("regex", "(?i)^main$", {"x": "MAIN"}, True, id="regex-re2-inline-flag"),
    pytest.param("regex", r"\d+", {"x": 42}, False, id="regex-number-arg-is-not-a-string"),
    pytest.param("regex", ".*", {"x": None}, False, id="regex-null-arg"),
    pytest.param("regex", ".*", MISSING, False, id="regex-missing-argument"),
    # contains
    pytest.param("contains", "test", {"x": "a test run"}, True, id="contains-substring"),
    pytest.param("contains", "test", {"x": "a TEST run"}, False, id="contains-substring-case-sensitive"),
    pytest.param("contains", "prod", {"x": "staging"}, False, id="contains-no-substring"),
    pytest.param("contains", "b", {"x": ["a", "b", "c"]}, True, id="contains-list-element"),
    pytest.param("contains", "d", {"x": ["a", "b", "c"]}, False, id="contains-list-no-element"),
    pytest.param("contains", 2, {"x": [1, 2.0, 3]}, True, id="contains-list-numeric-element"),
    pytest.param("contains", 5, {"x": ["5"]}, True, id="contains-list-element-%v-fallback"),
    pytest.param("contains", "b", {"x": ["abc"]}, False, id="contains-list-is-element-not-substring"),
    pytest.param("contains", "4", {"x": 42}, False, id="contains-number-arg"),
    pytest.param("contains", 1, {"x": "abc1"}, False, id="contains-string-arg-non-string-value"),
    pytest.param("contains", "test", MISSING, False, id="contains-missing-argument"),
    # exists (an explicit JSON null counts as absent)
    pytest.param("exists", True, {"x": "v"}, True, id="exists-true-present"),
    pytest.param("exists", True, {"x": 0}, True, id="exists-true-present-zero"),
    pytest.param("exists", True, {"x": ""}, True, id="exists-true-present-empty-string"),
    pytest.param("exists", True, {"x": False}, True, id="exists-true-present-false"),
    pytest.param("exists", True, MISSING, False, id="exists-true-missing"),
    pytest.param("exists", True, {"x": None}, False, id="exists-true-null-is-absent"),
    pytest.param("exists", False, MISSING, True, id="exists-false-missing"),
    pytest.param("exists", False, {"x": None}, True, id="exists-false-null-is-absent"),
    pytest.param("exists", False, {"x": "v"}, False, id="exists-false-present"),
]


@pytest.mark.parametrize(("op", "value", "arguments", "expected"), OPERATOR_CASES)
def test_operator(op: str, value: Any, arguments: dict[str, Any], expected: bool) -> None:
    assert _holds(op, value, arguments) is expected


def test_every_operator_is_covered() -> None:
    covered = {case.values[0] for case in OPERATOR_CASES}
    assert covered == {"eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists"}


@pytest.mark.parametrize(
    ("op", "value"),
    [
        pytest.param("eq", "a", id="eq"),
        pytest.param("neq", "a", id="neq"),
        pytest.param("in", ["a"], id="in"),
        pytest.param("not_in", ["a"], id="not_in"),
        pytest.param("lt", 1, id="lt"),
        pytest.param("lte", 1, id="lte"),
        pytest.param("gt", 1, id="gt"),
        pytest.param("gte", 1, id="gte"),
        pytest.param("regex", ".*", id="regex"),
        pytest.param("contains", "a", id="contains"),
        pytest.param("exists", True, id="exists-true"),
    ],
)
def test_missing_argument_fails_every_operator_but_exists_false(op: str, value: Any) -> None:
    assert _holds(op, value, {}) is False
    assert _holds(op, value, {"x": {"nested": "a"}}, path="args.x.absent") is False


def test_missing_argument_passes_exists_false() -> None:
    assert _holds("exists", False, {}) is True


def test_pathological_regex_finishes() -> None:
    """RE2 is linear-time: a catastrophic-backtracking pattern for a backtracking engine must finish."""
    assert _holds("regex", "(a+)+$", {"x": "a" * 10_000 + "!"}) is False
    assert _holds("regex", "(a+)+$", {"x": "a" * 10_000}) is True


# -- paths -----------------------------------------------------------------------------------

PATH_CASES = [
    pytest.param("args.a.b.c", "eq", 1, {"a": {"b": {"c": 1}}}, True, id="nested-match"),
    pytest.param("args.a.b.c", "eq", 1, {"a": {"b": {"c": 2}}}, False, id="nested-mismatch"),
    pytest.param("args.metadata.key", "eq", "val", {"metadata": {"key": "val"}}, True, id="nested-doc-example"),
    pytest.param("args.a.b.c", "eq", 1, {"a": {"b": {}}}, False, id="nested-missing-leaf"),
    pytest.param("args.a.b.c", "eq", 1, {"a": {}}, False, id="nested-missing-intermediate"),
    pytest.param("args.a.b.c", "eq", 1, {}, False, id="nested-missing-root"),
    pytest.param("args.a.b", "eq", "x", {"a": "not-an-object"}, False, id="through-string-fails"),
    pytest.param("args.a.b", "eq", 1, {"a": [{"b": 1}]}, False, id="through-list-fails"),
    pytest.param("args.a.0", "eq", 1, {"a": [1]}, False, id="list-index-is-not-a-path-step"),
    pytest.param("args.a.b", "eq", 1, {"a": None}, False, id="through-null-fails"),
    pytest.param("args.a.b", "eq", 1, {"a": 5}, False, id="through-number-fails"),
    pytest.param("args.a.b", "exists", True, {"a": "not-an-object"}, False, id="exists-true-through-non-object"),
    pytest.param("args.a.b", "exists", False, {"a": "not-an-object"}, True, id="exists-false-through-non-object"),
    pytest.param("args.a.b", "exists", True, {"a": {"b": None}}, False, id="exists-true-nested-null"),
    pytest.param("args.a", "eq", "map[b:1]", {"a": {"b": 1}}, True, id="object-%v-rendering"),
]


@pytest.mark.parametrize(("path", "op", "value", "arguments", "expected"), PATH_CASES)
def test_path_resolution(path: str, op: str, value: Any, arguments: dict[str, Any], expected: bool) -> None:
    assert _holds(op, value, arguments, path=path) is expected


# -- evaluation order ------------------------------------------------------------------------

HIDE_POLICY = """
    version: "1"
    hide: [secret_tool]
    tools:
      secret_tool:
        rules:
          - name: always approve
            action: require_approval
"""

HIDE_ALL_POLICY = """
    version: "1"
    default: deny
    hide: ["*"]
    tools:
      read_file:
        rules: []
      "*":
        rules:
          - name: gate everything
            action: require_approval
"""

HIDE_UNDER_DEFAULT_DENY_POLICY = """
    version: "1"
    default: deny
    hide: [read_file]
    tools:
      read_file:
        rules: []
"""

DEFAULT_DENY_POLICY = """
    version: "1"
    default: deny
    tools:
      read_file:
        rules: []
      write_file:
        rules:
          - name: home only
            conditions:
              - path: args.path
                op: regex
                value: "^/home/"
            on_deny: "Writes are limited to /home"
      "*":
        rules:
          - name: anything goes
            conditions:
              - path: args.never_sent
                op: exists
                value: false
"""

DEFAULT_DENY_WILDCARD_DENY_POLICY = """
    version: "1"
    default: deny
    tools:
      read_file:
        rules: []
      "*":
        rules:
          - name: no dry runs
            conditions:
              - path: args.dry_run
                op: exists
                value: false
            on_deny: "Dry runs are not allowed"
          - name: approve big reads
            action: require_approval
            conditions:
              - path: args.size
                op: gt
                value: 1000
"""

ORDER_POLICY = """
    version: "1"
    tools:
      create_issue:
        rules:
          - name: title required
            conditions:
              - path: args.title
                op: exists
                value: true
            on_deny: "A title is required"
          - name: no spam label
            conditions:
              - path: args.label
                op: neq
                value: spam
          - name: short body
            conditions:
              - path: args.length
                op: lte
                value: 100
            on_deny: "Body too long"
      delete_repository:
        rules:
          - name: block repo deletion
            action: deny
            on_deny: "Repository deletion is not permitted via AI agents"
      drop_table:
        rules:
          - name: block drops
            action: deny
      "*":
        rules:
          - name: global no force
            conditions:
              - path: args.force
                op: exists
                value: false
            on_deny: "Forced calls are not allowed"
"""

DENY_AFTER_PASSING_POLICY = """
    version: "1"
    tools:
      t:
        rules:
          - name: small
            conditions:
              - path: args.n
                op: lt
                value: 10
          - name: never
            action: deny
            on_deny: "t is disabled"
"""

APPROVAL_POLICY = """
    version: "1"
    tools:
      send_email:
        rules:
          - name: external recipients
            action: require_approval
            conditions:
              - path: args.to
                op: regex
                value: "@external\\\\.com$"
              - path: args.attachments
                op: exists
                value: true
            on_deny: "Emails with attachments to external recipients need approval"
          - name: no bcc
            conditions:
              - path: args.bcc
                op: exists
                value: false
            on_deny: "BCC is not allowed"
      run_query:
        rules:
          - name: every query
            action: require_approval
      transfer:
        rules:
          - name: large transfers
            action: require_approval
            conditions:
              - path: args.amount
                op: gt
                value: 1000
      "*":
        rules:
          - name: global no force
            conditions:
              - path: args.force
                op: exists
                value: false
            on_deny: "Forced calls are not allowed"
          - name: approve deletes
            action: require_approval
            conditions:
              - path: args.delete
                op: eq
                value: true
"""

APPROVAL_THEN_DENY_POLICY = """
    version: "1"
    tools:
      t:
        rules:
          - name: gate
            action: require_approval
          - name: blocked
            action: deny
            on_deny: "t is blocked"
"""

STATE_POLICY = """
    version: "1"
    tools:
      create_issue:
        rules:
          - name: hourly issue limit
            rate_limit: 5/hour
      create_pr:
        rules:
          - name: hourly pr limit
            rate_limit: 3/hour
            on_deny: "Hourly limit of 3 new pull requests reached"
      create_charge:
        rules:
          - name: daily spend cap
            conditions:
              - path: state.create_charge.daily_spend
                op: lt
                value: 1000000
            on_deny: "Daily spending cap reached"
            state:
              counter: daily_spend
              window: day
              increment_from: args.amount
          - name: at least one prior call
            conditions:
              - path: state.create_charge.warmup
                op: gte
                value: 1
            state:
              counter: warmup
              window: minute
      "*":
        rules:
          - name: global rate limit
            rate_limit: 60/minute
          - name: global budget
            conditions:
              - path: state._global.calls
                op: lte
                value: 100
            on_deny: "Global budget exhausted"
            state:
              counter: calls
              window: day
"""

ORDER_CASES = [
    # hide beats everything
    pytest.param(
        HIDE_POLICY,
        "secret_tool",
        {},
        {},
        "deny",
        "(hidden)",
        'Tool "secret_tool" is hidden by policy',
        id="hide-listed-tool",
    ),
    pytest.param(HIDE_POLICY, "other_tool", {}, {}, "allow", "", "", id="hide-does-not-affect-other-tools"),
    pytest.param(
        HIDE_ALL_POLICY,
        "read_file",
        {},
        {},
        "deny",
        "(hidden)",
        'Tool "read_file" is hidden by policy',
        id="hide-star-beats-listed-tool",
    ),
    pytest.param(
        HIDE_ALL_POLICY,
        "unlisted",
        {},
        {},
        "deny",
        "(hidden)",
        'Tool "unlisted" is hidden by policy',
        id="hide-star-beats-default-deny",
    ),
    pytest.param(
        HIDE_UNDER_DEFAULT_DENY_POLICY,
        "read_file",
        {},
        {},
        "deny",
        "(hidden)",
        'Tool "read_file" is hidden by policy',
        id="hide-beats-rules-empty-allow",
    ),
    # default: deny
    pytest.param(
        DEFAULT_DENY_POLICY,
        "delete_file",
        {},
        {},
        "deny",
        "(default deny)",
        'Tool "delete_file" is not permitted by policy',
        id="default-deny-unlisted",
    ),
    pytest.param(DEFAULT_DENY_POLICY, "read_file", {}, {}, "allow", "", "", id="default-deny-listed-rules-empty"),
    pytest.param(
        DEFAULT_DENY_POLICY, "write_file", {"path": "/home/a"}, {}, "allow", "", "", id="default-deny-listed-rules-pass"
    ),
    pytest.param(
        DEFAULT_DENY_POLICY,
        "write_file",
        {"path": "/etc/passwd"},
        {},
        "deny",
        "home only",
        "Writes are limited to /home",
        id="default-deny-listed-rules-fail",
    ),
    pytest.param(
        DEFAULT_DENY_WILDCARD_DENY_POLICY,
        "unlisted",
        {"size": 5000},
        {},
        "deny",
        "(default deny)",
        'Tool "unlisted" is not permitted by policy',
        id="default-deny-wildcard-approval-does-not-rescue",
    ),
    pytest.param(
        DEFAULT_DENY_WILDCARD_DENY_POLICY,
        "read_file",
        {"dry_run": True},
        {},
        "deny",
        "no dry runs",
        "Dry runs are not allowed",
        id="default-deny-wildcard-still-applies-to-listed",
    ),
    pytest.param(
        DEFAULT_DENY_WILDCARD_DENY_POLICY,
        "read_file",
        {"size": 5000},
        {},
        "require_approval",
        "approve big reads",
        "",
        id="default-deny-wildcard-approval-applies-to-listed",
    ),
    pytest.param(
        DEFAULT_DENY_WILDCARD_DENY_POLICY,
        "read_file",
        {"size": 5},
        {},
        "allow",
        "",
        "",
        id="default-deny-listed-with-passing-wildcard",
    ),
    # tool rules first, then "*"; the first failing rule decides
    pytest.param(
        ORDER_POLICY,
        "create_issue",
        {"title": "t", "label": "bug", "length": 5},
        {},
        "allow",
        "",
        "",
        id="all-rules-pass",
    ),
    pytest.param(
        ORDER_POLICY,
        "create_issue",
        {"label": "spam", "length": 500, "force": True},
        {},
        "deny",
        "title required",
        "A title is required",
        id="first-failing-rule-decides",
    ),
    pytest.param(
        ORDER_POLICY,
        "create_issue",
        {"title": "t", "label": "spam", "length": 500},
        {},
        "deny",
        "no spam label",
        'Denied by rule "no spam label"',
        id="default-deny-message-names-rule",
    ),
    pytest.param(
        ORDER_POLICY,
        "create_issue",
        {"title": "t", "label": "bug", "length": 500},
        {},
        "deny",
        "short body",
        "Body too long",
        id="third-rule-decides",
    ),
    pytest.param(
        ORDER_POLICY,
        "create_issue",
        {"title": "t", "label": "spam", "force": True},
        {},
        "deny",
        "no spam label",
        'Denied by rule "no spam label"',
        id="tool-rules-before-wildcard",
    ),
    pytest.param(
        ORDER_POLICY,
        "create_issue",
        {"title": "t", "label": "bug", "length": 1, "force": True},
        {},
        "deny",
        "global no force",
        "Forced calls are not allowed",
        id="wildcard-after-tool-rules-pass",
    ),
    pytest.param(
        ORDER_POLICY,
        "unlisted",
        {"force": True},
        {},
        "deny",
        "global no force",
        "Forced calls are not allowed",
        id="wildcard-applies-to-unlisted-under-default-allow",
    ),
    pytest.param(ORDER_POLICY, "unlisted", {"env": "prod"}, {}, "allow", "", "", id="default-allow-unlisted"),
    # action: deny is unconditional
    pytest.param(
        ORDER_POLICY,
        "delete_repository",
        {},
        {},
        "deny",
        "block repo deletion",
        "Repository deletion is not permitted via AI agents",
        id="deny-action-no-args",
    ),
    pytest.param(
        ORDER_POLICY,
        "delete_repository",
        {"env": "dev", "title": "t"},
        {},
        "deny",
        "block repo deletion",
        "Repository deletion is not permitted via AI agents",
        id="deny-action-any-args",
    ),
    pytest.param(
        ORDER_POLICY,
        "drop_table",
        {},
        {},
        "deny",
        "block drops",
        'Denied by rule "block drops"',
        id="deny-action-default-message",
    ),
    pytest.param(
        ORDER_POLICY,
        "delete_repository",
        {"force": True},
        {},
        "deny",
        "block repo deletion",
        "Repository deletion is not permitted via AI agents",
        id="deny-action-before-wildcard",
    ),
    pytest.param(
        DENY_AFTER_PASSING_POLICY,
        "t",
        {"n": 1},
        {},
        "deny",
        "never",
        "t is disabled",
        id="deny-action-after-passing-rule",
    ),
    pytest.param(
        DENY_AFTER_PASSING_POLICY,
        "t",
        {"n": 50},
        {},
        "deny",
        "small",
        'Denied by rule "small"',
        id="failing-rule-before-deny-action",
    ),
]

APPROVAL_CASES = [
    pytest.param(
        APPROVAL_POLICY,
        "send_email",
        {"to": "a@external.com", "attachments": ["f"]},
        {},
        "require_approval",
        "external recipients",
        id="approval-all-conditions-hold",
    ),
    pytest.param(
        APPROVAL_POLICY,
        "send_email",
        {"to": "a@external.com"},
        {},
        "allow",
        "",
        id="approval-one-condition-fails-allows",
    ),
    pytest.param(
        APPROVAL_POLICY,
        "send_email",
        {"to": "a@internal.com", "attachments": ["f"]},
        {},
        "allow",
        "",
        id="approval-other-condition-fails-allows",
    ),
    pytest.param(
        APPROVAL_POLICY,
        "send_email",
        {"to": "a@external.com", "attachments": ["f"], "bcc": "x"},
        {},
        "deny",
        "no bcc",
        id="later-evaluate-deny-beats-approval",
    ),
    pytest.param(
        APPROVAL_POLICY,
        "send_email",
        {"to": "a@external.com", "attachments": ["f"], "force": True},
        {},
        "deny",
        "global no force",
        id="wildcard-deny-beats-approval",
    ),
    pytest.param(
        APPROVAL_POLICY, "run_query", {}, {}, "require_approval", "every query", id="approval-no-conditions-every-call"
    ),
    pytest.param(
        APPROVAL_POLICY,
        "run_query",
        {"sql": "select 1"},
        {},
        "require_approval",
        "every query",
        id="approval-no-conditions-any-args",
    ),
    pytest.param(
        APPROVAL_POLICY,
        "run_query",
        {"force": True},
        {},
        "deny",
        "global no force",
        id="wildcard-deny-beats-unconditional-approval",
    ),
    pytest.param(
        APPROVAL_POLICY,
        "transfer",
        {"amount": 5000},
        {},
        "require_approval",
        "large transfers",
        id="approval-beats-allow",
    ),
    pytest.param(APPROVAL_POLICY, "transfer", {"amount": 50}, {}, "allow", "", id="approval-not-selected-allows"),
    pytest.param(
        APPROVAL_POLICY,
        "transfer",
        {"amount": "5000"},
        {},
        "require_approval",
        "large transfers",
        id="approval-condition-fails-closed-on-a-number-sent-as-text",
    ),
    pytest.param(
        APPROVAL_POLICY,
        "transfer",
        {"amount": "50"},
        {},
        "require_approval",
        "large transfers",
        id="approval-any-text-amount",
    ),
    pytest.param(
        APPROVAL_POLICY, "transfer", {}, {}, "allow", "", id="approval-condition-on-a-missing-argument-does-not-select"
    ),
    pytest.param(APPROVAL_POLICY, "transfer", {}, {}, "allow", "", id="approval-condition-missing-argument"),
    pytest.param(
        APPROVAL_POLICY, "unlisted", {"delete": True}, {}, "require_approval", "approve deletes", id="wildcard-approval"
    ),
    pytest.param(
        APPROVAL_POLICY,
        "transfer",
        {"amount": 1, "delete": True},
        {},
        "require_approval",
        "approve deletes",
        id="wildcard-approval-after-tool-rules-pass",
    ),
    pytest.param(APPROVAL_THEN_DENY_POLICY, "t", {}, {}, "deny", "blocked", id="later-deny-action-beats-approval"),
]

STATE_CASES = [
    pytest.param(STATE_POLICY, "create_issue", {}, {}, "allow", "", "", id="rate-limit-missing-counter-reads-zero"),
    pytest.param(STATE_POLICY, "create_issue", {}, None, "allow", "", "", id="rate-limit-no-counters-mapping"),
    pytest.param(
        STATE_POLICY, "create_issue", {}, {"create_issue._rate_hour": 4}, "allow", "", "", id="rate-limit-under"
    ),
    pytest.param(
        STATE_POLICY, "create_issue", {}, {"create_issue._rate_hour": 5}, "allow", "", "", id="rate-limit-at-limit-lte"
    ),
    pytest.param(
        STATE_POLICY,
        "create_issue",
        {},
        {"create_issue._rate_hour": 6},
        "deny",
        "hourly issue limit",
        "Rate limit of 5 per hour reached. Try again later.",
        id="rate-limit-over-default-message",
    ),
    pytest.param(
        STATE_POLICY,
        "create_pr",
        {},
        {"create_pr._rate_hour": 4},
        "deny",
        "hourly pr limit",
        "Hourly limit of 3 new pull requests reached",
        id="rate-limit-over-custom-message",
    ),
    pytest.param(
        STATE_POLICY,
        "create_pr",
        {},
        {"create_issue._rate_hour": 99},
        "allow",
        "",
        "",
        id="rate-limit-counters-scoped-per-tool",
    ),
    pytest.param(
        STATE_POLICY,
        "create_charge",
        {},
        {"create_charge.warmup": 1, "create_charge.daily_spend": 999_999},
        "allow",
        "",
        "",
        id="state-under-cap",
    ),
    pytest.param(
        STATE_POLICY,
        "create_charge",
        {},
        {"create_charge.warmup": 1, "create_charge.daily_spend": 1_000_000},
        "deny",
        "daily spend cap",
        "Daily spending cap reached",
        id="state-at-cap-lt",
    ),
    pytest.param(
        STATE_POLICY,
        "create_charge",
        {},
        {"create_charge.daily_spend": 5},
        "deny",
        "at least one prior call",
        'Denied by rule "at least one prior call"',
        id="state-missing-counter-reads-zero-gte",
    ),
    pytest.param(
        STATE_POLICY, "anything", {}, {"_global._rate_minute": 60}, "allow", "", "", id="wildcard-rate-limit-at-limit"
    ),
    pytest.param(
        STATE_POLICY,
        "anything",
        {},
        {"_global._rate_minute": 61},
        "deny",
        "global rate limit",
        "Rate limit of 60 per minute reached. Try again later.",
        id="wildcard-rate-limit-global-scope",
    ),
    pytest.param(
        STATE_POLICY,
        "anything",
        {},
        {"anything._rate_minute": 61, "*._rate_minute": 61},
        "allow",
        "",
        "",
        id="wildcard-counter-not-tool-scoped",
    ),
    pytest.param(
        STATE_POLICY,
        "create_issue",
        {},
        {"_global.calls": 101},
        "deny",
        "global budget",
        "Global budget exhausted",
        id="wildcard-state-global-scope",
    ),
    pytest.param(
        STATE_POLICY,
        "create_issue",
        {},
        {"create_issue._rate_hour": 6, "_global.calls": 101},
        "deny",
        "hourly issue limit",
        "Rate limit of 5 per hour reached. Try again later.",
        id="tool-counter-before-wildcard-counter",
    ),
]


def _check(decision: Decision, verdict: str, rule_name: str, message: str | None = None) -> None:
    assert decision.verdict == verdict
    assert decision.rule_name == rule_name
    if message is not None:
        assert decision.message == message
    if verdict == "allow":
        assert decision.rule is None
        assert decision.allowed
    else:
        assert not decision.allowed


@pytest.mark.parametrize(
    ("policy_text", "tool", "arguments", "counters", "verdict", "rule_name", "message"), ORDER_CASES
)
def test_evaluation_order(
    policy_text: str,
    tool: str,
    arguments: dict[str, Any],
    counters: dict[str, float],
    verdict: str,
    rule_name: str,
    message: str,
) -> None:
    _check(evaluate(_policy(policy_text), ToolCall(tool, arguments), counters), verdict, rule_name, message)


@pytest.mark.parametrize(("policy_text", "tool", "arguments", "counters", "verdict", "rule_name"), APPROVAL_CASES)
def test_require_approval(
    policy_text: str, tool: str, arguments: dict[str, Any], counters: dict[str, float], verdict: str, rule_name: str
) -> None:
    decision = evaluate(_policy(policy_text), ToolCall(tool, arguments), counters)
    _check(decision, verdict, rule_name)
    if verdict != "allow":
        assert decision.rule is not None
        assert decision.rule.name == rule_name


@pytest.mark.parametrize(
    ("policy_text", "tool", "arguments", "counters", "verdict", "rule_name", "message"), STATE_CASES
)
def test_state_conditions(
    policy_text: str,
    tool: str,
    arguments: dict[str, Any],
    counters: dict[str, float] | None,
    verdict: str,
    rule_name: str,
    message: str,
) -> None:
    _check(evaluate(_policy(policy_text), ToolCall(tool, arguments), counters), verdict, rule_name, message)


@pytest.mark.parametrize(
    ("tool", "rule_index", "path", "count", "counter", "window"),
    [
        pytest.param("create_issue", 0, "state.create_issue._rate_hour", 5, "_rate_hour", "hour", id="tool-5-per-hour"),
        pytest.param("create_pr", 0, "state.create_pr._rate_hour", 3, "_rate_hour", "hour", id="tool-3-per-hour"),
        pytest.param("*", 0, "state._global._rate_minute", 60, "_rate_minute", "minute", id="wildcard-60-per-minute"),
    ],
)
def test_rate_limit_desugars_to_lte_on_rate_counter(
    tool: str, rule_index: int, path: str, count: int, counter: str, window: str
) -> None:
    rule = _policy(STATE_POLICY).tools[tool].rules[rule_index]
    assert rule.action == "evaluate"
    assert rule.conditions == (Condition(path, "lte", count),)
    assert rule.state == CounterSpec(counter=counter, window=window, increment=1)


def test_deny_decision_carries_the_rule() -> None:
    policy = _policy(ORDER_POLICY)
    decision = evaluate(policy, ToolCall("delete_repository", {}), {})
    assert decision.rule is policy.tools["delete_repository"].rules[0]


@pytest.mark.parametrize(
    ("policy_text", "tool", "arguments", "counters"),
    [
        pytest.param(ORDER_POLICY, "create_issue", {"title": "t", "label": "spam"}, {}, id="deny"),
        pytest.param(ORDER_POLICY, "create_issue", {"title": "t", "label": "bug", "length": 1}, {}, id="allow"),
        pytest.param(APPROVAL_POLICY, "transfer", {"amount": 5000}, {}, id="require-approval"),
        pytest.param(STATE_POLICY, "create_issue", {}, {"create_issue._rate_hour": 6}, id="state"),
        pytest.param(HIDE_POLICY, "secret_tool", {}, {}, id="hidden"),
        pytest.param(DEFAULT_DENY_POLICY, "nope", {}, {}, id="default-deny"),
    ],
)
def test_evaluation_is_deterministic_and_pure(
    policy_text: str, tool: str, arguments: dict[str, Any], counters: dict[str, float]
) -> None:
    arguments_before = copy.deepcopy(arguments)
    counters_before = dict(counters)
    policy = _policy(policy_text)
    first = evaluate(policy, ToolCall(tool, arguments), counters)
    repeated = [evaluate(policy, ToolCall(tool, arguments), counters) for _ in range(5)]
    reparsed = evaluate(_policy(policy_text), ToolCall(tool, copy.deepcopy(arguments)), dict(counters))
    assert all(decision == first for decision in repeated)
    assert reparsed == first
    assert arguments == arguments_before
    assert counters == counters_before
