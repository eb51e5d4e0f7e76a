"""Validation that helps: every problem with its file, line and column; "did you mean" for
misspelled keys, operators, actions, windows and path prefixes; one typo is one error; YAML 1.1
boolean words explained where they are met (`intercept validate` on files, text and `--json`, exit
codes: tests/e2e/test_validate_cli.py).
"""

from __future__ import annotations

import pytest

from intercept.policy import PolicyError, parse_policy
from intercept.policy.load import PolicyIssue, check_policy
from tests.support import BOOLEAN_ONLY, R0, position_of, rule


def problems(text: str) -> list[PolicyIssue]:
    return check_policy(text, "policy.yaml")[1]


def error_texts(text: str) -> list[str]:
    return [issue.text for issue in problems(text) if issue.severity == "error"]


# -- did you mean ----------------------------------------------------------------------------

SUGGESTION_CASES = [
    # keys, at every level
    pytest.param(
        rule("- name: r\n  acton: deny"), f'{R0}: unknown key "acton" (did you mean "action"?)', id="rule-key"
    ),
    pytest.param('versoin: "1"\n', 'unknown key "versoin" (did you mean "version"?)', id="top-level-key"),
    pytest.param(
        'version: "1"\ntools:\n  transfer:\n    rule: []\n',
        'tools.transfer: unknown key "rule" (did you mean "rules"?)',
        id="tool-key",
    ),
    pytest.param(
        rule("- name: r\n  conditions: [{path: args.x, op: in, vlaue: [1]}]"),
        f'{R0}.conditions[0]: unknown key "vlaue" (did you mean "value"?)',
        id="condition-key",
    ),
    pytest.param(
        rule(
            "- name: r\n  conditions: [{path: state.transfer.c, op: lte, value: 5}]\n  state: {counter: c, windw: day}"
        ),
        f'{R0}.state: unknown key "windw" (did you mean "window"?)',
        id="state-key",
    ),
    pytest.param(
        'version: "1"\napprovals: {timeot: 5m}\n',
        'approvals: unknown key "timeot" (did you mean "timeout"?)',
        id="approvals-key",
    ),
    # operators
    pytest.param(
        rule("- name: r\n  conditions: [{path: args.x, op: lte_, value: 5}]"),
        f'{R0}.conditions[0]: unknown operator "lte_" (did you mean "lte"?)',
        id="operator-lte_",
    ),
    pytest.param(
        rule("- name: r\n  conditions: [{path: args.x, op: notin, value: [1]}]"),
        f'{R0}.conditions[0]: unknown operator "notin" (did you mean "not_in"?)',
        id="operator-notin",
    ),
    pytest.param(
        rule("- name: r\n  conditions: [{path: args.x, op: Exists, value: true}]"),
        f'{R0}.conditions[0]: unknown operator "Exists" (did you mean "exists"?)',
        id="operator-case",
    ),
    # actions and other words
    pytest.param(
        'version: "1"\ndefault: alow\n',
        'default must be "allow" or "deny", got "alow" (did you mean "allow"?)',
        id="default-alow",
    ),
    pytest.param(
        rule("- name: r\n  action: require-approval"),
        f'{R0}: action must be "evaluate", "deny" or "require_approval", got "require-approval"'
        ' (did you mean "require_approval"?)',
        id="action",
    ),
    pytest.param(
        rule(
            "- name: r\n  conditions: [{path: state.transfer.c, op: lte, value: 5}]\n  state: {counter: c, window: days}"
        ),
        f'{R0}.state: window must be "minute", "hour", or "day", got "days" (did you mean "day"?)',
        id="state-window",
    ),
    # path prefixes
    pytest.param(
        rule("- name: r\n  conditions: [{path: arg.amount, op: lte, value: 5}]"),
        f'{R0}.conditions[0]: path must start with "args." or "state.", got "arg.amount" (did you mean "args.amount"?)',
        id="path-arg",
    ),
    pytest.param(
        rule("- name: r\n  conditions: [{path: stat.x, op: lte, value: 5}]"),
        f'{R0}.conditions[0]: path must start with "args." or "state.", got "stat.x" (did you mean "state.x"?)',
        id="path-stat",
    ),
    pytest.param(
        rule("- name: r\n  conditions: [{path: Args.x, op: eq, value: 5}]"),
        f'{R0}.conditions[0]: path must start with "args." or "state.", got "Args.x" (did you mean "args.x"?)',
        id="path-case",
    ),
    pytest.param(
        rule(
            "- name: r\n  conditions: [{path: state.transfer.c, op: lte, value: 5}]\n"
            "  state: {counter: c, window: day, increment_from: arg.amount}"
        ),
        f'{R0}.state: increment_from must start with "args.", got "arg.amount" (did you mean "args.amount"?)',
        id="increment_from-arg",
    ),
]


@pytest.mark.parametrize(("text", "expected"), SUGGESTION_CASES)
def test_close_misspellings_get_a_suggestion(text: str, expected: str) -> None:
    assert error_texts(text) == [expected]


NO_SUGGESTION_CASES = [
    pytest.param(
        rule("- name: r\n  conditions: [{path: args.x, op: between, value: 5}]"),
        f'{R0}.conditions[0]: unknown operator "between"',
        "between",
        id="operator-far",
    ),
    pytest.param(
        rule("- name: r\n  conditions: [{path: args.x, op: gt, value: 5}]\n  colour: red"),
        f'{R0}: unknown key "colour" (expected one of: name, action, conditions, on_deny, state, rate_limit,'
        " approval_timeout, wait, via, on_timeout, scope, approvers, escalate_after, escalate_to, severity)",
        "colour",
        id="key-far",
    ),
    pytest.param(
        rule("- name: r\n  conditions: [{path: arguments.x, op: eq, value: 5}]"),
        f'{R0}.conditions[0]: path must start with "args." or "state.", got "arguments.x"',
        "arguments.x",
        id="path-far",
    ),
    pytest.param(
        rule(
            "- name: r\n  conditions: [{path: state.transfer.c, op: lte, value: 5}]\n"
            "  state: {counter: c, window: day, increment_from: stat.amount}"
        ),
        f'{R0}.state: increment_from must start with "args.", got "stat.amount"',
        "stat.amount",
        id="increment_from-never-state",
    ),
    pytest.param(
        'version: "1"\ndefault: block\n', 'default must be "allow" or "deny", got "block"', "block", id="default-far"
    ),
]


@pytest.mark.parametrize(("text", "expected", "word"), NO_SUGGESTION_CASES)
def test_far_words_get_no_suggestion_but_a_position(text: str, expected: str, word: str) -> None:
    [error] = problems(text)
    assert error.text == expected
    assert (error.line, error.column) == position_of(text, word)


# -- one typo, one error ---------------------------------------------------------------------

ONE_ERROR_CASES = [
    pytest.param(
        rule("- name: block\n  acton: deny"),
        [f'{R0}: unknown key "acton" (did you mean "action"?)'],
        id="acton-deny-is-not-an-evaluate-rule-without-conditions",
    ),
    pytest.param(
        rule("- name: r\n  conditons: [{path: args.x, op: eq, value: 1}]"),
        [f'{R0}: unknown key "conditons" (did you mean "conditions"?)'],
        id="conditons",
    ),
    pytest.param(
        rule("- nme: r\n  action: deny"),
        [f'{R0}: unknown key "nme" (did you mean "name"?)'],
        id="nme",
    ),
    pytest.param(
        rule(
            """
            - name: count
              conditions: [{path: args.x, op: exists, value: true}]
              stat: {counter: c, window: hour}
            - name: cap
              conditions: [{path: state.transfer.c, op: lte, value: 5}]
            """
        ),
        [f'{R0}: unknown key "stat" (did you mean "state"?)'],
        id="stat-block-still-defines-its-counter",
    ),
    pytest.param(
        rule(
            "- name: r\n  conditions: [{path: state.transfer.c, op: lte, value: 5}]\n  state: {countr: c, windw: hour}"
        ),
        [
            f'{R0}.state: unknown key "countr" (did you mean "counter"?)',
            f'{R0}.state: unknown key "windw" (did you mean "window"?)',
        ],
        id="state-keys",
    ),
    pytest.param(
        'versio: "1"\ntool: {}\n',
        ['unknown key "versio" (did you mean "version"?)', 'unknown key "tool" (did you mean "tools"?)'],
        id="top-level-keys",
    ),
    pytest.param(
        rule("- name: r\n  action: require_aproval\n  approval_timeout: 5m"),
        [
            f'{R0}: action must be "evaluate", "deny" or "require_approval", got "require_aproval"'
            ' (did you mean "require_approval"?)'
        ],
        id="bad-action-does-not-judge-approval_timeout",
    ),
    pytest.param(
        rule("- name: r\n  conditions: {path: args.x, op: eq, value: 1}"),
        [f"{R0}.conditions: conditions must be a list"],
        id="conditions-not-a-list-is-not-missing",
    ),
    pytest.param(
        rule(
            """
            - name: count
              conditions: [{path: args.x, op: exists, value: true}]
              state: hourly
            - name: cap
              conditions: [{path: state.transfer.hourly, op: lte, value: 5}]
            """
        ),
        [f"{R0}.state: state must be a mapping with counter and window"],
        id="unreadable-state-block",
    ),
    pytest.param(
        rule(
            "- name: r\n  conditions: [{path: state.transfer.c, op: lte, value: 5}]\n  state: {counter: '', window: hour}"
        ),
        [f"{R0}.state: counter must not be empty"],
        id="empty-counter",
    ),
    pytest.param(
        rule(
            """
            - name: limit
              rate_limit: 5/hours
            - name: cap
              conditions: [{path: state.transfer._rate_hour, op: lte, value: 5}]
            """
        ),
        [f'{R0}: rate_limit window must be "minute", "hour", or "day", got "hours" (did you mean "hour"?)'],
        id="rate_limit-window",
    ),
    pytest.param(
        'version: "1"\ntools:\n  transfer:\n  "*":\n    rules:\n'
        "      - {name: cap, conditions: [{path: state.transfer.c, op: lte, value: 5}]}\n",
        [
            'tools.transfer: a tool entry must be a mapping, not null (write "rules: []" to allow the tool with no checks)'
        ],
        id="null-tool-entry",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ONE_ERROR_CASES)
def test_one_mistake_is_one_error(text: str, expected: list[str]) -> None:
    assert error_texts(text) == expected


def test_a_misspelled_key_is_read_as_meant() -> None:
    """What the file would still be wrong about after fixing the typo is reported at once."""
    text = rule("- name: r\n  acton: deny\n  conditions: [{path: args.x, op: eq, value: 1}]")
    assert error_texts(text) == [
        f'{R0}: unknown key "acton" (did you mean "action"?)',
        f"{R0}: deny rules must not have conditions",
    ]


def test_an_operator_that_is_not_a_word_is_an_error_not_a_crash() -> None:
    text = rule("- name: r\n  conditions: [{path: args.x, op: [eq], value: 1}]")
    assert error_texts(text) == [f"""{R0}.conditions[0]: unknown operator "['eq']\""""]


# -- YAML 1.1 boolean words ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "meant"),
    [("yes", "true"), ("no", "false"), ("on", "true"), ("off", "false"), ("y", "true"), ("N", "false")],
)
def test_exists_yes_says_yes_is_a_string_and_what_to_write(word: str, meant: str) -> None:
    text = rule(f"- name: r\n  conditions: [{{path: args.x, op: exists, value: {word}}}]")
    assert error_texts(text) == [
        f'{R0}.conditions[0]: operator "exists" requires a boolean value'
        f" ({word} is a string here, not a boolean: {BOOLEAN_ONLY}; write {meant})"
    ]


def test_quoted_yes_for_exists_gets_no_yaml_explanation() -> None:
    """Quoted, a string was meant: Intercept's message alone, at the value."""
    text = rule('- name: r\n  conditions: [{path: args.x, op: exists, value: "yes"}]')
    [error] = problems(text)
    assert error.text == f'{R0}.conditions[0]: operator "exists" requires a boolean value'
    assert (error.line, error.column) == position_of(text, '"yes"')


def test_loose_types_yes_says_yes_is_a_string() -> None:
    text = 'version: "1"\ntools:\n  transfer:\n    loose_types: yes\n'
    assert error_texts(text) == [
        'tools.transfer.loose_types: must be true or false, got "yes"'
        f" (yes is a string here, not a boolean: {BOOLEAN_ONLY}; write true)"
    ]


def test_yes_compared_as_a_string_is_a_warning() -> None:
    text = rule(
        """
        - name: r
          conditions:
            - {path: args.force, op: neq, value: yes}
            - {path: args.mode, op: in, value: [on, "off", x, y]}
        """
    )
    issues = problems(text)
    assert [(issue.severity, issue.text, (issue.line, issue.column)) for issue in issues] == [
        (
            "warning",
            f"warning: {R0}.conditions[0]: value yes is a string here, not the boolean true ({BOOLEAN_ONLY}):"
            ' write true for the boolean, or quote "yes" to keep the string',
            position_of(text, "yes"),
        ),
        (
            "warning",
            f"warning: {R0}.conditions[1]: value on is a string here, not the boolean true ({BOOLEAN_ONLY}):"
            ' write true for the boolean, or quote "on" to keep the string',
            position_of(text, "on,"),
        ),
    ]
    policy = parse_policy(text)  # warnings do not make a policy invalid
    assert policy.tools["transfer"].rules[0].conditions[0].value == "yes"


# -- positions -------------------------------------------------------------------------------

POSITION_CASES = [
    pytest.param(rule("- name: r\n  acton: deny"), "acton", 1, id="unknown-key-at-the-key"),
    pytest.param(rule("- action: deny"), "action", 1, id="missing-name-at-the-rule"),
    pytest.param(rule("- name: r\n  conditions: [{path: args.x, op: lte_, value: 5}]"), "lte_", 1, id="operator-at-op"),
    pytest.param(rule("- name: r\n  conditions: [{path: args.x, op: gt, value: '5'}]"), "'5'", 1, id="value-at-value"),
    pytest.param(rule("- name: r\n  conditions: []"), "[]", 1, id="empty-conditions-at-the-list"),
    pytest.param('version: "1"\nhide: [a, b, a]\n', "a", 2, id="duplicate-hide-entry-at-the-second"),
    pytest.param('version: "2"\n', '"2"', 1, id="version-at-the-value"),
    pytest.param("description: x\n", "description", 1, id="missing-version-at-the-document"),
    pytest.param('version: "1"\ntools:\n', "tools", 1, id="null-tools-at-the-key"),
    pytest.param('version: "1"\nversion: "1"\n', "version", 2, id="duplicate-yaml-key-at-the-second"),
    pytest.param("- a\n", "-", 1, id="not-a-mapping-at-the-document"),
    pytest.param(
        rule("- name: a\n  conditions: [{path: state.transfer.c, op: lte, value: 5}]"),
        "state.transfer.c",
        1,
        id="counter-reference-at-the-path",
    ),
    pytest.param(
        'version: "1"\ntools:\n  t:\n    rules:\n      - {name: r, rate_limit: 5/hour}\n      - {name: s, rate_limit: 9/hour}\n',
        "9/hour",
        1,
        id="duplicate-counter-at-the-second-rate_limit",
    ),
]


@pytest.mark.parametrize(("text", "needle", "nth"), POSITION_CASES)
def test_errors_point_at_the_node_at_fault(text: str, needle: str, nth: int) -> None:
    errors = [issue for issue in problems(text) if issue.severity == "error"]
    assert len(errors) == 1
    assert (errors[0].line, errors[0].column) == position_of(text, needle, nth)


def test_a_yaml_syntax_error_has_the_position_of_its_message() -> None:
    [issue] = problems('version: "1"\ntools: [\n')
    assert (issue.line, issue.column) == (3, 1)
    assert issue.message.startswith("invalid YAML at line 3, column 1: ")


def test_policy_error_keeps_its_text_and_carries_positions() -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(rule("- name: r\n  acton: deny"), "p.yaml")
    assert str(raised.value) == f'p.yaml: {R0}: unknown key "acton" (did you mean "action"?)'
    assert raised.value.errors == [f'{R0}: unknown key "acton" (did you mean "action"?)']
    [issue] = raised.value.issues
    assert (issue.location, issue.line, issue.column) == (R0, *position_of(rule("- name: r\n  acton: deny"), "acton"))
    assert issue.located("p.yaml") == f'p.yaml:6:9: {R0}: unknown key "acton" (did you mean "action"?)'
