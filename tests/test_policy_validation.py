"""Table-driven tests of policy validation: every message of Intercept's POLICY.md validation table
with its location, our stricter extras (unknown keys, duplicate keys, YAML 1.2 booleans, null tool
entries and rules, all errors at once, approval settings), the per-tool `loose_types` key, the
shared policy library (`intercept validate` on files: tests/e2e/test_validate_cli.py).
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from intercept.policy import Policy, PolicyError, parse_policy, policy_notices
from tests.support import NULL_TOOL, SHARED_POLICY_FILES, loose_notice, needs_shared

# -- helpers ---------------------------------------------------------------------------------


def rules(body: str, tool: str = "create_issue", header: str = "") -> str:
    """A policy with `body` (a YAML list of rules) as the rules of `tool`."""
    indented = textwrap.indent(textwrap.dedent(body).strip("\n"), "      ")
    return f'version: "1"\n{header}tools:\n  {tool}:\n    rules:\n{indented}\n'


def condition(cond: str) -> str:
    """A policy whose only rule has a valid condition followed by `cond` (so it sits at conditions[1])."""
    return rules(
        f"""
        - name: check
          conditions:
            - {{path: args.title, op: exists, value: true}}
            - {cond}
        """
    )


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    errors = raised.value.errors
    assert isinstance(errors, list)
    assert errors
    assert all(isinstance(error, str) for error in errors)
    return errors


R0 = "tools.create_issue.rules[0]"
C1 = f"{R0}.conditions[1]"


# -- Intercept's validation table ------------------------------------------------------------

INTERCEPT_TABLE_CASES = [
    # hide
    pytest.param('version: "1"\nhide: [ok, ""]\n', "hide[1]: entry must not be empty", id="hide-empty-entry"),
    pytest.param('version: "1"\nhide: ["   "]\n', "hide[0]: entry must not be empty", id="hide-blank-entry"),
    pytest.param('version: "1"\nhide: [a, b, a]\n', 'hide: duplicate entry "a"', id="hide-duplicate"),
    # version / default
    pytest.param('version: "2"\n', 'version must be "1", got "2"', id="version-wrong"),
    pytest.param("description: no version\n", 'version must be "1", got ""', id="version-missing"),
    pytest.param(
        'version: "1"\ndefault: block\n', 'default must be "allow" or "deny", got "block"', id="default-unknown"
    ),
    # rules
    pytest.param(rules("- action: deny"), f"{R0}: rule must have a name", id="rule-without-name"),
    pytest.param(rules('- name: ""\n  action: deny'), f"{R0}: rule must have a name", id="rule-empty-name"),
    pytest.param(
        rules("- name: r\n  action: allow"),
        f'{R0}: action must be "evaluate", "deny" or "require_approval", got "allow"',
        id="action-unknown",
    ),
    pytest.param(
        rules("- name: r\n  action: deny\n  conditions: [{path: args.x, op: eq, value: 1}]"),
        f"{R0}: deny rules must not have conditions",
        id="deny-with-conditions",
    ),
    pytest.param(
        rules("- name: r\n  action: evaluate\n  conditions: []"),
        f"{R0}: evaluate rules must have at least one condition",
        id="evaluate-empty-conditions",
    ),
    pytest.param(
        rules("- name: r\n  on_deny: no"),
        f"{R0}: evaluate rules must have at least one condition",
        id="evaluate-by-default-without-conditions",
    ),
    # conditions
    pytest.param(
        condition("{path: amount, op: lte, value: 5}"),
        f'{C1}: path must start with "args." or "state.", got "amount"',
        id="path-without-prefix",
    ),
    pytest.param(
        condition("{path: arguments.x, op: eq, value: 5}"),
        f'{C1}: path must start with "args." or "state.", got "arguments.x"',
        id="path-wrong-prefix",
    ),
    pytest.param(
        condition("{path: args.x, op: lte_, value: 5}"),
        f'{C1}: unknown operator "lte_" (did you mean "lte"?)',
        id="unknown-operator",
    ),
    pytest.param(
        condition("{path: args.x, op: EQ, value: 5}"),
        f'{C1}: unknown operator "EQ" (did you mean "eq"?)',
        id="operator-case-sensitive",
    ),
    pytest.param(condition("{path: args.x, value: 5}"), f'{C1}: unknown operator ""', id="operator-missing"),
    pytest.param(
        condition("{path: args.x, op: in, value: usd}"),
        f'{C1}: operator "in" requires a list value',
        id="in-needs-list",
    ),
    pytest.param(
        condition("{path: args.x, op: not_in, value: null}"),
        f'{C1}: operator "not_in" requires a list value',
        id="not_in-needs-list",
    ),
    pytest.param(
        condition('{path: args.x, op: lt, value: "100"}'),
        f'{C1}: operator "lt" requires a numeric value',
        id="lt-needs-number-not-string",
    ),
    pytest.param(
        condition("{path: args.x, op: lte, value: [1]}"),
        f'{C1}: operator "lte" requires a numeric value',
        id="lte-needs-number-not-list",
    ),
    pytest.param(
        condition("{path: args.x, op: lte, value: " + str(10**400) + "}"),
        f'{C1}: operator "lte" requires a numeric value',
        id="lte-integer-beyond-float-is-refused-not-a-crash",
    ),
    pytest.param(
        condition("{path: args.x, op: gt, value: true}"),
        f'{C1}: operator "gt" requires a numeric value',
        id="gt-boolean-is-not-numeric",
    ),
    pytest.param(
        condition("{path: args.x, op: gte}"), f'{C1}: operator "gte" requires a numeric value', id="gte-missing-value"
    ),
    pytest.param(
        condition('{path: args.x, op: exists, value: "true"}'),
        f'{C1}: operator "exists" requires a boolean value',
        id="exists-needs-boolean-not-string",
    ),
    pytest.param(
        condition("{path: args.x, op: exists, value: 1}"),
        f'{C1}: operator "exists" requires a boolean value',
        id="exists-needs-boolean-not-number",
    ),
    pytest.param(
        condition("{path: args.x, op: regex, value: 5}"), f"{C1}: regex value must be a string", id="regex-needs-string"
    ),
    pytest.param(
        condition("{path: args.x, op: regex, value: [a]}"),
        f"{C1}: regex value must be a string",
        id="regex-list-is-not-string",
    ),
    # state
    pytest.param(
        rules(
            """
            - name: r
              conditions: [{path: args.x, op: exists, value: true}]
              state: {counter: "", window: hour}
            """
        ),
        f"{R0}.state: counter must not be empty",
        id="state-counter-empty",
    ),
    pytest.param(
        rules(
            """
            - name: r
              conditions: [{path: args.x, op: exists, value: true}]
              state: {counter: c, window: week}
            """
        ),
        f'{R0}.state: window must be "minute", "hour", or "day", got "week"',
        id="state-window-unknown",
    ),
    pytest.param(
        rules(
            """
            - name: r
              conditions: [{path: args.x, op: exists, value: true}]
              state: {counter: c}
            """
        ),
        f'{R0}.state: window must be "minute", "hour", or "day", got ""',
        id="state-window-missing",
    ),
    pytest.param(
        rules(
            """
            - name: r
              conditions: [{path: args.x, op: exists, value: true}]
              state: {counter: c, window: day, increment_from: amount}
            """
        ),
        f'{R0}.state: increment_from must start with "args.", got "amount"',
        id="state-increment_from-prefix",
    ),
    pytest.param(
        rules(
            """
            - name: r
              conditions: [{path: state.create_issue.hourly_count, op: lte, value: 5}]
            """
        ),
        f"{R0}: condition references state.create_issue.hourly_count but no matching state block found",
        id="state-reference-without-state-block",
    ),
    pytest.param(
        rules(
            """
            - name: r
              conditions: [{path: state.create_issue.hourly, op: lte, value: 5}]
              state: {counter: daily, window: day}
            """
        ),
        f"{R0}: condition references state.create_issue.hourly but no matching state block found",
        id="state-reference-other-counter-name",
    ),
    pytest.param(
        rules(
            """
            - name: r
              conditions: [{path: state._global.calls, op: lte, value: 5}]
              state: {counter: calls, window: day}
            """
        ),
        f"{R0}: condition references state._global.calls but no matching state block found",
        id="state-reference-global-scope-needs-wildcard-rule",
    ),
    pytest.param(
        rules(
            """
            - name: a
              conditions: [{path: state.create_issue.c, op: lte, value: 5}]
              state: {counter: c, window: hour}
            - name: b
              conditions: [{path: state.create_issue.c, op: lte, value: 9}]
              state: {counter: c, window: day}
            """
        ),
        'tools.create_issue.rules[1]: duplicate state counter "c" (also used by rules[0])',
        id="state-duplicate-counter",
    ),
    # rate_limit
    pytest.param(
        rules("- name: r\n  rate_limit: 0/hour"),
        f'{R0}: rate_limit count must be a positive integer, got "0"',
        id="rate_limit-count-zero",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: -1/hour"),
        f'{R0}: rate_limit count must be a positive integer, got "-1"',
        id="rate_limit-count-negative",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: five/hour"),
        f'{R0}: rate_limit count must be a positive integer, got "five"',
        id="rate_limit-count-not-a-number",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: 1.5/hour"),
        f'{R0}: rate_limit count must be a positive integer, got "1.5"',
        id="rate_limit-count-fraction",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: 5/week"),
        f'{R0}: rate_limit window must be "minute", "hour", or "day", got "week"',
        id="rate_limit-window-unknown",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: 5/hours"),
        f'{R0}: rate_limit window must be "minute", "hour", or "day", got "hours" (did you mean "hour"?)',
        id="rate_limit-window-plural",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: 5"),
        f'{R0}: rate_limit must be in the format "N/window" (e.g. "5/hour"), got "5"',
        id="rate_limit-format",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: 5/hour\n  conditions: [{path: args.x, op: exists, value: true}]"),
        f"{R0}: rate_limit cannot be combined with conditions or state; use separate rules or the full syntax instead",
        id="rate_limit-with-conditions",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: 5/hour\n  state: {counter: c, window: hour}"),
        f"{R0}: rate_limit cannot be combined with conditions or state; use separate rules or the full syntax instead",
        id="rate_limit-with-state",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: 5/hour\n  action: deny"),
        f'{R0}: rate_limit cannot be used with action "deny"',
        id="rate_limit-with-deny",
    ),
    pytest.param(
        rules("- name: a\n  rate_limit: 5/hour\n- name: b\n  rate_limit: 100/hour"),
        'tools.create_issue.rules[1]: duplicate state counter "_rate_hour" (also used by rules[0])',
        id="rate_limit-same-window-twice",
    ),
    pytest.param(
        rules(
            "- name: a\n  conditions: [{path: args.x, op: exists, value: true}]\n  state: {counter: _rate_minute, window: minute}\n- name: b\n  rate_limit: 5/minute"
        ),
        'tools.create_issue.rules[1]: duplicate state counter "_rate_minute" (also used by rules[0])',
        id="rate_limit-collides-with-explicit-counter",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INTERCEPT_TABLE_CASES)
def test_intercept_validation_table(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_invalid_regex_is_reported_with_pattern_and_reason() -> None:
    errors = errors_of(condition('{path: args.x, op: regex, value: "feat/("}'))
    assert len(errors) == 1
    prefix = f'{C1}: invalid regex "feat/(": '
    assert errors[0].startswith(prefix)
    reason = errors[0][len(prefix) :]
    assert "missing" in reason
    # The reason is RE2's message as text, not a Python bytes repr such as b'missing ): feat/('.
    assert not reason.startswith(("b'", 'b"'))


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("(?<=x)y", id="lookbehind"),
        pytest.param(r"(a)\1", id="backreference"),
        pytest.param("[z-a]", id="bad-range"),
        pytest.param("*a", id="missing-argument-to-repetition"),
    ],
)
def test_regex_outside_re2_is_invalid(pattern: str) -> None:
    errors = errors_of(condition(f"{{path: args.x, op: regex, value: '{pattern}'}}"))
    assert len(errors) == 1
    assert errors[0].startswith(f'{C1}: invalid regex "')


def test_unknown_operator_location_names_rule_and_condition_index() -> None:
    text = rules(
        """
        - name: first
          action: deny
        - name: second
          conditions:
            - {path: args.a, op: eq, value: 1}
            - {path: args.b, op: eq, value: 2}
            - {path: args.c, op: lte_, value: 3}
        """,
        tool="merge_pr",
    )
    assert errors_of(text) == ['tools.merge_pr.rules[1].conditions[2]: unknown operator "lte_" (did you mean "lte"?)']


def test_an_error_in_a_rule_defining_a_counter_does_not_cascade() -> None:
    """Only the real problem is reported: rule b's counter reference is satisfied by rule a's state block."""
    text = rules(
        """
        - name: a
          conditions:
            - {path: state.create_issue.c, op: lte, value: 5}
            - {path: args.x, op: lte_, value: 1}
          state: {counter: c, window: hour}
        - name: b
          conditions: [{path: state.create_issue.c, op: lte, value: 9}]
        """
    )
    assert errors_of(text) == [f'{R0}.conditions[1]: unknown operator "lte_" (did you mean "lte"?)']


# -- policies that must load -----------------------------------------------------------------

VALID_CASES = [
    pytest.param('version: "1"\n', id="minimal"),
    pytest.param('version: "1"\ntools: {}\n', id="empty-tools"),
    pytest.param('version: "1"\ndefault: deny\ntools:\n  read_file:\n    rules: []\n', id="default-deny-rules-empty"),
    pytest.param('version: "1"\nhide: ["*"]\n', id="hide-star"),
    pytest.param(rules("- name: r\n  action: deny\n  conditions: []"), id="deny-with-empty-conditions"),
    pytest.param(rules("- name: r\n  rate_limit: 5/hour"), id="rate-limit"),
    pytest.param(
        rules("- name: a\n  rate_limit: 5/hour\n- name: b\n  rate_limit: 50/day"), id="rate-limits-different-windows"
    ),
    pytest.param(rules("- name: r\n  rate_limit: 60/minute", tool='"*"'), id="wildcard-rate-limit"),
    pytest.param(
        rules(
            """
            - name: global
              conditions: [{path: state._global.calls, op: lte, value: 60}]
              state: {counter: calls, window: minute}
            """,
            tool='"*"',
        ),
        id="wildcard-global-counter",
    ),
    pytest.param(
        rules(
            """
            - name: spend
              conditions: [{path: state.create_issue.spend, op: lt, value: 1000000}]
              state: {counter: spend, window: day, increment_from: args.amount, increment: 2}
            """
        ),
        id="state-increment_from",
    ),
    pytest.param(
        rules(
            """
            - name: every call
              action: require_approval
              approval_timeout: 15m
              on_deny: "needs a human"
            - name: big ones
              action: require_approval
              conditions: [{path: args.amount, op: gt, value: 100}]
            """,
            header="approvals:\n  timeout: 1h30m\n  dedupe_window: 90s\n",
        ),
        id="require-approval-with-timeouts",
    ),
    pytest.param(
        rules(
            """
            - name: every op
              conditions:
                - {path: args.a, op: eq, value: x}
                - {path: args.a, op: neq, value: 5.5}
                - {path: args.b, op: in, value: [1, "two"]}
                - {path: args.b, op: not_in, value: []}
                - {path: args.c, op: lt, value: 1}
                - {path: args.c, op: lte, value: 1.5}
                - {path: args.c, op: gt, value: -1}
                - {path: args.c, op: gte, value: 0}
                - {path: args.d, op: regex, value: "^feat/"}
                - {path: args.e, op: contains, value: test}
                - {path: args.f, op: exists, value: false}
            """
        ),
        id="every-operator",
    ),
]


@pytest.mark.parametrize("text", VALID_CASES)
def test_valid_policy_loads(text: str) -> None:
    assert isinstance(parse_policy(text), Policy)


# -- our stricter extras ---------------------------------------------------------------------

UNKNOWN_KEY_CASES = [
    pytest.param('version: "1"\ntool: {}\n', 'unknown key "tool"', id="top-level"),
    pytest.param(
        'version: "1"\ntools:\n  create_issue:\n    rule: []\n',
        'tools.create_issue: unknown key "rule"',
        id="tool-entry",
    ),
    pytest.param(
        rules("- name: r\n  acton: require_approval\n  conditions: [{path: args.x, op: exists, value: true}]"),
        f'{R0}: unknown key "acton"',
        id="rule-acton-typo",
    ),
    pytest.param(
        rules("- name: r\n  ondeny: nope\n  conditions: [{path: args.x, op: exists, value: true}]"),
        f'{R0}: unknown key "ondeny"',
        id="rule-ondeny-typo",
    ),
    pytest.param(condition("{path: args.x, op: eq, vale: 1, value: 1}"), f'{C1}: unknown key "vale"', id="condition"),
    pytest.param(
        rules(
            "- name: r\n  conditions: [{path: args.x, op: exists, value: true}]\n  state: {counter: c, window: hour, windw: day}"
        ),
        f'{R0}.state: unknown key "windw"',
        id="state",
    ),
    pytest.param('version: "1"\napprovals:\n  timeot: 5m\n', 'approvals: unknown key "timeot"', id="approvals"),
]


@pytest.mark.parametrize(("text", "expected_prefix"), UNKNOWN_KEY_CASES)
def test_unknown_keys_are_errors(text: str, expected_prefix: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].startswith(expected_prefix)


def test_acton_typo_is_one_error() -> None:
    """Read as the evaluate rule it would be without `action`, it would also lack conditions."""
    assert errors_of(rules("- name: block\n  acton: deny")) == [f'{R0}: unknown key "acton" (did you mean "action"?)']


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param('version: "1"\nversion: "1"\n', 2, id="top-level"),
        pytest.param('version: "1"\ntools:\n  t:\n    rules: []\n  t:\n    rules: []\n', 5, id="tool-twice"),
        pytest.param(rules("- name: r\n  action: evaluate\n  action: deny"), 7, id="rule-key-twice"),
        pytest.param(condition("{path: args.x, op: eq, value: 1, value: 2}"), 8, id="condition-key-twice"),
    ],
)
def test_duplicate_yaml_keys_are_errors(text: str, line: int) -> None:
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].startswith(f"invalid YAML at line {line}")
    assert "duplicate key" in errors[0]


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "ON"])
def test_yaml_11_booleans_are_not_booleans(word: str) -> None:
    meant = "true" if word.lower() in ("yes", "on", "y") else "false"
    assert errors_of(condition(f"{{path: args.x, op: exists, value: {word}}}")) == [
        f'{C1}: operator "exists" requires a boolean value ({word} is a string here, not a boolean:'
        f" only true and false are booleans in a policy; write {meant})"
    ]
    policy = parse_policy(condition(f"{{path: args.x, op: eq, value: {word}}}"))
    assert policy.tools["create_issue"].rules[0].conditions[1].value == word


@pytest.mark.parametrize("word", ["true", "false", "True", "FALSE"])
def test_yaml_12_booleans_are_booleans(word: str) -> None:
    policy = parse_policy(condition(f"{{path: args.x, op: exists, value: {word}}}"))
    assert policy.tools["create_issue"].rules[0].conditions[1].value is (word.lower() == "true")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param('version: "1"\ntools: [\n', 3, id="unclosed-flow-sequence"),
        pytest.param('version: "1"\ntools:\n  t:\n    rules:\n  - name: x\n   bad: indent\n', 5, id="bad-indentation"),
        pytest.param('version: "1\n', 2, id="unterminated-string"),
        pytest.param('version: "1"\ntools:\n\tt: {}\n', 3, id="tab-indent"),
    ],
)
def test_invalid_yaml_is_one_error_with_a_line_number(text: str, line: int) -> None:
    errors = errors_of(text)
    assert len(errors) == 1
    assert errors[0].startswith(f"invalid YAML at line {line}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("- a\n- b\n", "policy must be a YAML mapping with version and tools", id="list-document"),
        pytest.param("just text\n", "policy must be a YAML mapping with version and tools", id="scalar-document"),
    ],
)
def test_document_must_be_a_mapping(text: str, message: str) -> None:
    assert errors_of(text) == [message]


def test_all_errors_are_reported_at_once() -> None:
    text = textwrap.dedent(
        """\
        version: "2"
        hide: [a, a]
        tools:
          create_issue:
            rules:
              - name: r
                conditions:
                  - {path: args.x, op: lte_, value: 1}
        """
    )
    assert errors_of(text) == [
        'version must be "1", got "2"',
        'hide: duplicate entry "a"',
        'tools.create_issue.rules[0].conditions[0]: unknown operator "lte_" (did you mean "lte"?)',
    ]


def test_errors_across_tools_and_rules_are_all_reported() -> None:
    text = textwrap.dedent(
        """\
        version: "1"
        tools:
          a:
            rules:
              - name: r
                rate_limit: 5/week
              - action: deny
          b:
            rules:
              - name: s
                conditions:
                  - {path: x, op: eq, value: 1}
                  - {path: args.y, op: in, value: 1}
        """
    )
    assert sorted(errors_of(text)) == sorted(
        [
            'tools.a.rules[0]: rate_limit window must be "minute", "hour", or "day", got "week"',
            "tools.a.rules[1]: rule must have a name",
            'tools.b.rules[0].conditions[0]: path must start with "args." or "state.", got "x"',
            'tools.b.rules[0].conditions[1]: operator "in" requires a list value',
        ]
    )


def test_policy_error_message_names_source_and_counts() -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy('version: "2"\ndefault: no\n', source="p.yaml")
    assert len(raised.value.errors) == 2
    assert str(raised.value).startswith("p.yaml: ")
    assert "(and 1 more)" in str(raised.value)


# -- require_approval and approval settings --------------------------------------------------

APPROVAL_ERROR_CASES = [
    pytest.param(
        rules("- name: r\n  action: require_approval\n  rate_limit: 5/hour"),
        [f'{R0}: rate_limit cannot be used with action "require_approval"'],
        id="require_approval-with-rate_limit",
    ),
    pytest.param(
        rules(
            """
            - name: r
              action: require_approval
              conditions: [{path: state.create_issue.c, op: lte, value: 5}]
              state: {counter: c, window: hour}
            """
        ),
        [f"{R0}: require_approval rules must not have a state block"],
        id="require_approval-with-state",
    ),
    pytest.param(
        rules("- name: r\n  conditions: [{path: args.x, op: exists, value: true}]\n  approval_timeout: 5m"),
        [f'{R0}: approval_timeout is only valid with action "require_approval"'],
        id="approval_timeout-on-evaluate-rule",
    ),
    pytest.param(
        rules("- name: r\n  action: deny\n  approval_timeout: 5m"),
        [f'{R0}: approval_timeout is only valid with action "require_approval"'],
        id="approval_timeout-on-deny-rule",
    ),
    pytest.param(
        rules("- name: r\n  rate_limit: 5/hour\n  approval_timeout: 5m"),
        [f'{R0}: approval_timeout is only valid with action "require_approval"'],
        id="approval_timeout-on-rate-limit-rule",
    ),
]


@pytest.mark.parametrize(("text", "expected"), APPROVAL_ERROR_CASES)
def test_require_approval_restrictions(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


BAD_DURATIONS = [
    pytest.param('"abc"', id="word"),
    pytest.param('"10"', id="no-unit"),
    pytest.param("10", id="bare-number"),
    pytest.param('"5x"', id="unknown-unit"),
    pytest.param('"0s"', id="zero"),
    pytest.param('"-5m"', id="negative"),
    pytest.param('""', id="empty"),
    pytest.param("true", id="boolean"),
    pytest.param("[5m]", id="list"),
]


@pytest.mark.parametrize("duration", BAD_DURATIONS)
def test_bad_approvals_timeout_is_rejected(duration: str) -> None:
    errors = errors_of(f'version: "1"\napprovals:\n  timeout: {duration}\n')
    assert len(errors) == 1
    assert errors[0].startswith("approvals.timeout: ")


@pytest.mark.parametrize("duration", BAD_DURATIONS)
def test_bad_approvals_dedupe_window_is_rejected(duration: str) -> None:
    errors = errors_of(f'version: "1"\napprovals:\n  dedupe_window: {duration}\n')
    assert len(errors) == 1
    assert errors[0].startswith("approvals.dedupe_window: ")


@pytest.mark.parametrize("duration", BAD_DURATIONS)
def test_bad_rule_approval_timeout_is_rejected(duration: str) -> None:
    errors = errors_of(rules(f"- name: r\n  action: require_approval\n  approval_timeout: {duration}"))
    assert len(errors) == 1
    assert errors[0].startswith(f"{R0}.approval_timeout: ")


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        pytest.param("90s", 90.0, id="seconds"),
        pytest.param("15m", 900.0, id="minutes"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("2d", 172800.0, id="days"),
        pytest.param("500ms", 0.5, id="milliseconds"),
    ],
)
def test_good_durations_are_parsed(duration: str, seconds: float) -> None:
    policy = parse_policy(
        rules(
            f"- name: r\n  action: require_approval\n  approval_timeout: {duration}",
            header=f"approvals:\n  timeout: {duration}\n",
        )
    )
    assert policy.approvals.timeout_s == seconds
    assert policy.tools["create_issue"].rules[0].approval_timeout_s == seconds


# -- null tool entries and rules ------------------------------------------------------------

NULL_RULES = 'rules must be a list, not null (write "rules: []" to allow the tool with no checks)'

NULL_CASES = [
    pytest.param('version: "1"\ntools:\n  transfer:\n', [f"tools.transfer: {NULL_TOOL}"], id="tool-key-empty"),
    pytest.param('version: "1"\ntools: {transfer: null}\n', [f"tools.transfer: {NULL_TOOL}"], id="tool-null"),
    pytest.param('version: "1"\ntools:\n  transfer: ~\n', [f"tools.transfer: {NULL_TOOL}"], id="tool-tilde"),
    pytest.param('version: "1"\ntools:\n  "*":\n', [f"tools.*: {NULL_TOOL}"], id="wildcard-null"),
    pytest.param(
        'version: "1"\ndefault: deny\ntools:\n  transfer:\n  refund:\n    rules: []\n',
        [f"tools.transfer: {NULL_TOOL}"],
        id="tool-null-among-others",
    ),
    pytest.param(
        'version: "1"\ntools:\n  transfer:\n    rules:\n', [f"tools.transfer.rules: {NULL_RULES}"], id="rules-empty"
    ),
    pytest.param(
        'version: "1"\ntools: {transfer: {rules: null}}\n', [f"tools.transfer.rules: {NULL_RULES}"], id="rules-null"
    ),
    pytest.param(
        'version: "1"\ntools:\n  transfer:\n    loose_types: true\n    rules:\n',
        [f"tools.transfer.rules: {NULL_RULES}"],
        id="rules-null-with-loose_types",
    ),
]


@pytest.mark.parametrize(("text", "expected"), NULL_CASES)
def test_null_tool_entries_and_rules_are_errors(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


def test_half_written_file_cut_after_a_tool_key_is_invalid() -> None:
    """A writer caught after `  transfer:` must not leave a policy that allows transfer unchecked."""
    full = rules("- name: no transfers\n  action: deny", tool="transfer", header="default: allow\n")
    prefix = full[: full.index("  transfer:") + len("  transfer:")]
    assert errors_of(prefix) == [f"tools.transfer: {NULL_TOOL}"]
    assert parse_policy(full).tools["transfer"].rules[0].action == "deny"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('version: "1"\ntools:\n  transfer: {}\n', id="empty-mapping"),
        pytest.param('version: "1"\ntools:\n  transfer:\n    rules: []\n', id="empty-list"),
    ],
)
def test_explicitly_empty_tool_entries_still_load(text: str) -> None:
    assert parse_policy(text).tools["transfer"].rules == ()


# -- loose_types -----------------------------------------------------------------------------


def test_loose_types_defaults_to_false() -> None:
    policy = parse_policy(rules("- name: r\n  rate_limit: 5/hour"))
    assert policy.tools["create_issue"].loose_types is False
    assert policy_notices(policy) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('version: "1"\ntools:\n  create_issue:\n    loose_types: true\n', True, id="alone"),
        pytest.param('version: "1"\ntools:\n  create_issue: {loose_types: false}\n', False, id="false"),
        pytest.param(
            'version: "1"\ntools:\n  create_issue:\n    loose_types: true\n    rules:\n      - {name: r, rate_limit: 5/hour}\n',
            True,
            id="with-rules",
        ),
    ],
)
def test_loose_types_loads(text: str, expected: bool) -> None:
    policy = parse_policy(text)
    assert policy.tools["create_issue"].loose_types is expected
    assert policy_notices(policy) == ([loose_notice("create_issue")] if expected else [])


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(
            "yes",
            '"yes" (yes is a string here, not a boolean: only true and false are booleans in a policy; write true)',
            id="yaml-11-boolean-word",
        ),
        pytest.param('"true"', '"true"', id="quoted-true"),
        pytest.param("1", '"1"', id="number"),
        pytest.param("", "null", id="empty"),
        pytest.param("null", "null", id="null"),
        pytest.param("[true]", '"[True]"', id="list"),
    ],
)
def test_loose_types_must_be_a_boolean(value: str, shown: str) -> None:
    text = f'version: "1"\ntools:\n  create_issue:\n    loose_types: {value}\n    rules: []\n'
    assert errors_of(text) == [f"tools.create_issue.loose_types: must be true or false, got {shown}"]


@pytest.mark.parametrize("value", ["true", "false"])
def test_loose_types_on_the_wildcard_is_an_error(value: str) -> None:
    text = (
        f'version: "1"\ntools:\n  "*":\n    loose_types: {value}\n    rules:\n      - {{name: r, rate_limit: 5/hour}}\n'
    )
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    assert raised.value.errors == [
        'tools.*.loose_types: loose_types applies per tool; set it on each tool key, not on "*"'
    ]
    assert raised.value.notices == []


def test_loose_types_changes_the_policy_digest() -> None:
    base = 'version: "1"\ntools:\n  create_issue:\n    rules: []\n'
    strict = parse_policy(base)
    loose = parse_policy(base.replace("    rules: []\n", "    loose_types: true\n    rules: []\n"))
    explicit_false = parse_policy(base.replace("    rules: []\n", "    loose_types: false\n    rules: []\n"))
    assert loose.digest != strict.digest
    assert loose.digest != explicit_false.digest
    assert loose.tools["create_issue"].rules == strict.tools["create_issue"].rules


def test_loose_types_notices_are_kept_when_the_policy_is_invalid() -> None:
    text = 'version: "2"\ntools:\n  a: {loose_types: true}\n  b: {loose_types: false}\n  c: {loose_types: true}\n'
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    assert raised.value.errors == ['version must be "1", got "2"']
    assert raised.value.notices == [loose_notice("a"), loose_notice("c")]


# -- the shared policy library -------------------------------------------------------------------


@needs_shared
def test_shared_policy_library_has_53_files() -> None:
    assert len(SHARED_POLICY_FILES) == 53


@needs_shared
@pytest.mark.parametrize("path", SHARED_POLICY_FILES, ids=[path.name for path in SHARED_POLICY_FILES])
def test_shared_policy_loads(path: Path) -> None:
    assert isinstance(parse_policy(path.read_text(encoding="utf-8"), str(path)), Policy)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('version: "1"\ndefault: allow\ntools:\n', 'tools: tools must not be null (write "tools: {}" for none)'),
        ('version: "1"\nhide:\ntools: {}\n', 'hide: hide must not be null (write "hide: []" for none)'),
    ],
    ids=["tools", "hide"],
)
def test_a_file_cut_short_after_a_top_level_key_is_invalid(text: str, error: str) -> None:
    """Cut after `tools:` or `hide:`, a file would otherwise be a valid policy that checks nothing."""
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    assert raised.value.errors == [error]
    assert parse_policy('version: "1"\nhide: []\ntools: {}\n').tools == {}


# -- aliases: a document may not expand past MAX_EXPANDED_NODES or contain itself ----------------


def test_an_alias_bomb_is_refused_before_it_is_expanded() -> None:
    levels = ['a0: &a0 ["x"]'] + [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    text = 'version: "1"\n' + "\n".join(levels) + "\ntools: {}\n"
    started = time.monotonic()
    with pytest.raises(PolicyError, match="aliases expand the document beyond"):
        parse_policy(text)
    assert time.monotonic() - started < 2.0


def test_an_alias_inside_what_it_names_is_refused() -> None:
    with pytest.raises(PolicyError, match="refers to the node that contains it"):
        parse_policy('version: "1"\nloop: &l [*l]\ntools: {}\n')


def test_shared_conditions_through_an_anchor_still_load() -> None:
    text = """\
version: "1"
tools:
  write:
    rules:
      - name: a path
        conditions: &needs_path [{path: args.path, op: exists, value: true}]
  read:
    rules:
      - name: a path too
        conditions: *needs_path
"""
    policy = parse_policy(text)
    assert set(policy.tools) == {"write", "read"}
