"""Validation that helps: every problem with its file, line and column; "did you mean" for
misspelled keys, operators, actions, windows and path prefixes; one typo is one error; YAML 1.1
boolean words explained where they are met; and `intercept validate` (text and `--json`, exit
codes) on real files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from intercept.policy import PolicyError, parse_policy
from intercept.policy.load import PolicyIssue, check_policy


def policy_text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def rule(body: str, tool: str = "transfer") -> str:
    """A policy whose tool `tool` has the rules `body` (a YAML list at column 7)."""
    indented = textwrap.indent(textwrap.dedent(body).strip("\n"), "      ")
    return f'version: "1"\ntools:\n  {tool}:\n    rules:\n{indented}\n'


def position_of(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """Line and column (1-based, as an editor shows them) of the nth `needle` in `text`."""
    index = -1
    for _ in range(nth):
        index = text.index(needle, index + 1)
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def problems(text: str) -> list[PolicyIssue]:
    return check_policy(text, "policy.yaml")[1]


def error_texts(text: str) -> list[str]:
    return [issue.text for issue in problems(text) if issue.severity == "error"]


def validate(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intercept", "validate", "-c", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


R0 = "tools.transfer.rules[0]"
BOOLEAN_ONLY = "only true and false are booleans in a policy"

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
        " approval_timeout)",
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


# -- intercept validate ----------------------------------------------------------------------

BROKEN = policy_text(
    """
    version: "1"
    default: alow
    tools:
      transfer:
        loose_types: true
        rules:
          - name: block
            acton: deny
          - name: cap
            conditions:
              - {path: arg.amount, op: lte, value: 100}
              - {path: args.confirm, op: exists, value: yes}
              - {path: args.force, op: neq, value: on}
    """
)


# (needle in BROKEN, location, message, severity), in the order found
BROKEN_PROBLEMS = [
    ("alow", "", 'default must be "allow" or "deny", got "alow" (did you mean "allow"?)', "error"),
    (
        "loose_types",
        "tools.transfer.loose_types",
        "argument types of transfer are not checked against the server's schema",
        "notice",
    ),
    ("acton", R0, 'unknown key "acton" (did you mean "action"?)', "error"),
    (
        "arg.amount",
        "tools.transfer.rules[1].conditions[0]",
        'path must start with "args." or "state.", got "arg.amount" (did you mean "args.amount"?)',
        "error",
    ),
    (
        "yes",
        "tools.transfer.rules[1].conditions[1]",
        f'operator "exists" requires a boolean value (yes is a string here, not a boolean: {BOOLEAN_ONLY}; write true)',
        "error",
    ),
    (
        "on}",
        "tools.transfer.rules[1].conditions[2]",
        f"value on is a string here, not the boolean true ({BOOLEAN_ONLY}): write true for the boolean,"
        ' or quote "on" to keep the string',
        "warning",
    ),
]


def test_validate_prints_file_line_column_location_and_message(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = validate(path)
    assert result.returncode == 1

    def line(needle: str, location: str, message: str, severity: str) -> str:
        where = ":".join(map(str, position_of(BROKEN, needle)))
        text = f"{location}: {message}" if location else message
        return f"{path}:{where}: {text}" if severity == "error" else f"{path}:{where}: {severity}: {text}"

    errors = [line(*problem) for problem in BROKEN_PROBLEMS if problem[3] == "error"]
    warnings = [line(*problem) for problem in BROKEN_PROBLEMS if problem[3] == "warning"]
    assert result.stderr.splitlines() == [f"Policy file {path} has 4 error(s):", *errors, *warnings]
    assert errors[:2] == [  # spelled out once
        f'{path}:2:10: default must be "allow" or "deny", got "alow" (did you mean "allow"?)',
        f'{path}:8:9: {R0}: unknown key "acton" (did you mean "action"?)',
    ]
    assert result.stdout == (
        "notice: tools.transfer.loose_types: argument types of transfer are not checked against the server's schema\n"
    )


def test_validate_json_lists_every_problem_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = validate(path, "--json")
    assert result.returncode == 1
    assert result.stderr == ""
    expected = []
    for needle, location, message, severity in BROKEN_PROBLEMS:
        line, column = position_of(BROKEN, needle)
        expected.append(
            {
                "file": str(path),
                "line": line,
                "column": column,
                "location": location,
                "message": message,
                "severity": severity,
            }
        )
    assert json.loads(result.stdout) == expected


@pytest.mark.parametrize(
    ("text", "severities", "status"),
    [
        pytest.param('version: "1"\ntools: {}\n', [], 0, id="clean"),
        pytest.param('version: "1"\ntools:\n  set_flag:\n    loose_types: true\n', ["notice"], 0, id="notice-only"),
        pytest.param(
            rule("- name: r\n  conditions: [{path: args.force, op: eq, value: yes}]"), ["warning"], 0, id="warning-only"
        ),
        pytest.param('version: "2"\n', ["error"], 1, id="error"),
    ],
)
def test_validate_json_exits_1_only_for_errors(tmp_path: Path, text: str, severities: list[str], status: int) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    result = validate(path, "--json")
    assert result.returncode == status, result.stderr
    assert [entry["severity"] for entry in json.loads(result.stdout)] == severities


def test_validate_json_names_a_missing_file_without_a_position(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    result = validate(path, "--json")
    assert result.returncode == 1
    [entry] = json.loads(result.stdout)
    assert entry["file"] == str(path)
    assert (entry["line"], entry["column"], entry["location"], entry["severity"]) == (None, None, "", "error")
    assert entry["message"].startswith("policy file not found: ")


def test_validate_text_output_of_a_valid_file_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(rule("- name: r\n  conditions: [{path: args.force, op: eq, value: yes}]"))
    result = validate(path)
    assert result.returncode == 0
    assert result.stdout == "Policy file is valid.\n"
    line, column = position_of(path.read_text(), "yes")
    assert result.stderr.startswith(f"{path}:{line}:{column}: warning: {R0}.conditions[0]: value yes is a string here")


def test_validate_help_describes_the_output() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "intercept", "validate", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "--json" in result.stdout
    assert "FILE:LINE:COLUMN" in result.stdout
