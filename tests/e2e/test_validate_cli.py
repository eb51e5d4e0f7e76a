"""`intercept validate` on real files: every problem with its file, line and column (text and
`--json`), exit codes, `loose_types` notices, the shared policy library (what the checks say:
tests/test_policy_validation.py and tests/test_validate_help.py)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.e2e.support import run_cli, validate
from tests.support import BOOLEAN_ONLY, NULL_TOOL, R0, SHARED_POLICIES, loose_notice, needs_shared, position_of, rule


def policy_text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


# -- file, line, column; --json (tests/test_validate_help.py checks the same problems in process) --

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
    result = run_cli("validate", "--help")
    assert result.returncode == 0
    assert "--json" in result.stdout
    assert "FILE:LINE:COLUMN" in result.stdout


# -- errors, loose_types notices, the shared policy library ------------------------------------

@needs_shared
@pytest.mark.parametrize("name", ["github.yaml", "stripe.yaml", "filesystem.yaml"])
def test_validate_command_accepts_shared_policy(name: str) -> None:
    result = validate(SHARED_POLICIES / name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Policy file is valid.\n"


def test_validate_command_reports_every_error_with_location(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: "1"
            default: block
            hide: [a, a]
            tools:
              create_issue:
                rules:
                  - name: r
                    acton: deny
                    conditions:
                      - {path: args.x, op: exists, value: true}
                      - {path: args.y, op: lte_, value: 3}
                  - name: limit
                    rate_limit: 5/week
            """
        )
    )
    result = validate(path)
    assert result.returncode == 1
    assert "Policy file is valid." not in result.stdout
    expected = [
        'default must be "allow" or "deny", got "block"',
        'hide: duplicate entry "a"',
        'tools.create_issue.rules[0]: unknown key "acton"',
        'tools.create_issue.rules[0].conditions[1]: unknown operator "lte_"',
        'tools.create_issue.rules[1]: rate_limit window must be "minute", "hour", or "day", got "week"',
    ]
    for message in expected:
        assert message in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("tools: [\n", "invalid YAML at line 2", id="invalid-yaml"),
        pytest.param('version: "1"\nversion: "1"\n', "duplicate key", id="duplicate-key"),
    ],
)
def test_validate_command_rejects_unparseable_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = validate(path)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Policy file is valid." not in result.stdout


def test_validate_command_notes_loose_types(tmp_path: Path) -> None:
    path = tmp_path / "loose.yaml"
    path.write_text(
        'version: "1"\ntools:\n  read_file:\n    rules: []\n  set_flag:\n    loose_types: true\n'
        "  resize:\n    loose_types: true\n    rules:\n      - {name: small, conditions: [{path: args.n, op: lte, value: 9}]}\n"
    )
    result = validate(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Policy file is valid.\n{loose_notice('set_flag')}\n{loose_notice('resize')}\n"


def test_validate_command_notes_loose_types_along_with_errors(tmp_path: Path) -> None:
    path = tmp_path / "loose-broken.yaml"
    path.write_text('version: "1"\ntools:\n  set_flag:\n    loose_types: true\n  transfer:\n')
    result = validate(path)
    assert result.returncode == 1
    assert f"tools.transfer: {NULL_TOOL}" in result.stderr
    assert result.stdout == f"{loose_notice('set_flag')}\n"
