"""Argument types against declared schemas, strict evaluation, and the session's schema store (in process)."""

from __future__ import annotations

import asyncio
import textwrap
from enum import Enum
from typing import Any, Literal

import pytest
from mcp.server import MCPServer
from pydantic import BaseModel

from intercept.engine.arg_types import TypeCheck, TypedPath, declared_types, json_type, typed_paths
from intercept.engine.evaluate import decide
from intercept.policy import parse_policy
from intercept.proxy.tool_schemas import FINE, UNVOUCHED, ToolSchemas


class Options(BaseModel):
    target: str
    replicas: int = 1


class Color(Enum):
    red = "red"


def _sdk_schema() -> dict[str, Any]:
    """The inputSchema the Python SDK's MCPServer really publishes for a typed tool."""
    app = MCPServer("schemas")

    @app.tool()
    def deploy(
        options: Options,
        force: bool = False,
        port: int | None = None,
        to: list[str] = [],  # noqa: B006
        mode: Literal["a", "b"] = "a",
        color: Color = Color.red,
        maybe: Options | None = None,
        untyped=None,
        ratio: float = 1.0,
    ) -> str:
        return ""

    tools = asyncio.run(app.list_tools())
    schema = tools[0].input_schema if hasattr(tools[0], "input_schema") else tools[0].inputSchema
    return dict(schema)


SDK_SCHEMA = _sdk_schema()
# What @modelcontextprotocol/server-filesystem (zod) publishes for edit_file, abridged.
ZOD_SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "edits": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"oldText": {"type": "string"}, "newText": {"type": "string"}},
                "required": ["oldText", "newText"],
                "additionalProperties": False,
            },
        },
        "dryRun": {"type": "boolean", "default": False},
    },
    "required": ["path", "edits"],
    "additionalProperties": False,
    "$schema": "http://json-schema.org/draft-07/schema#",
}


def _check(schema: dict[str, Any], *paths: str) -> TypeCheck:
    return TypeCheck(schema, tuple(TypedPath(tuple(p.split(".")), True) for p in paths))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("x", "string"), (True, "boolean"), (1, "integer"), (5.0, "integer"), (5.5, "number"), (None, "null"),
     ([], "array"), ({}, "object")],
)
def test_json_types(value: Any, expected: str) -> None:
    assert json_type(value) == expected


@pytest.mark.parametrize(
    ("path", "arguments", "fragments"),
    [
        # Python SDK coercions that would let a value slip past a rule (force="yes" runs as True).
        *[("force", {"force": v}, ['"force"', "a boolean", f"{kind} was sent"])
          for v, kind in [("yes", "a string"), ("on", "a string"), (1, "an integer"), ("1", "a string"),
                          ("True", "a string"), ("t", "a string"), ("y", "a string"), ("true", "a string")]],
        *[("port", {"port": v}, ['"port"', "an integer (or null)", "a string was sent"])
          for v in ["22", "22.0", " 22", "+22", "022", "2_2"]],
        ("port", {"port": 22.5}, ['"port"', "a number was sent"]),
        ("options.target", {"options": '{"target": "prod"}'}, ['"options"', "an object", "a string was sent"]),
        ("options.target", {"options": {"target": 1}}, ['"options.target"', "a string", "an integer was sent"]),
        ("maybe.target", {"maybe": {"target": False}}, ['"maybe.target"', "a boolean was sent"]),
        ("to", {"to": '["ceo@corp.com"]'}, ['"to"', "an array", "a string was sent"]),
        ("to", {"to": ["a", 22]}, ['"to[]"', "a string", "an integer was sent"]),
        ("mode", {"mode": 1}, ['"mode"', "a string"]),
        ("color", {"color": 1}, ['"color"', "a string"]),
        ("ratio", {"ratio": "1.5"}, ['"ratio"', "a number"]),
    ],
)
def test_mismatched_types_are_named(path: str, arguments: dict[str, Any], fragments: list[str]) -> None:
    problem = _check(SDK_SCHEMA, path).judge(arguments)[0]
    for fragment in fragments:
        assert fragment in problem, problem


@pytest.mark.parametrize(
    ("path", "arguments"),
    [
        ("force", {"force": True}),
        ("force", {}),  # missing: nothing to judge
        ("port", {"port": 22}),
        ("port", {"port": 22.0}),  # 22.0 is an integer (JSON Schema)
        ("port", {"port": None}),
        ("options.target", {"options": {"target": "prod"}}),
        ("maybe.target", {"maybe": None}),
        ("to", {"to": ["a", "b"]}),
        ("ratio", {"ratio": 2}),  # an integer is a number
        ("untyped", {"untyped": 3}),  # the schema says a string (its default), pydantic would coerce
    ][:-1],
)
def test_matching_types_pass(path: str, arguments: dict[str, Any]) -> None:
    assert _check(SDK_SCHEMA, path).judge(arguments)[0] == ""


def test_zod_schemas_are_read_too() -> None:
    check = _check(ZOD_SCHEMA, "path", "dryRun")
    assert check.fully_declared
    assert check.judge({"path": "/tmp/x", "dryRun": False}) == ("", False)
    assert '"dryRun" must be a boolean' in check.judge({"path": "/tmp/x", "dryRun": "false"})[0]
    assert '"path" must be a string' in check.judge({"path": ["/tmp/x"]})[0]


def test_refs_unions_and_loops() -> None:
    root = {
        "$defs": {"Loop": {"$ref": "#/$defs/Loop"}, "N": {"type": "number"}},
        "properties": {
            "loop": {"$ref": "#/$defs/Loop"},
            "remote": {"$ref": "https://example.invalid/schema"},
            "n": {"$ref": "#/$defs/N"},
            "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "listed": {"type": ["string", "null"]},
            "all": {"allOf": [{"type": "number"}, {"type": "integer"}]},
            "half": {"anyOf": [{"type": "string"}, {"description": "anything"}]},
        },
    }
    assert declared_types(root["properties"]["loop"], root) is None
    assert declared_types(root["properties"]["remote"], root) is None
    assert declared_types(root["properties"]["n"], root) == {"number"}
    assert declared_types(root["properties"]["either"], root) == {"string", "integer"}
    assert declared_types(root["properties"]["listed"], root) == {"string", "null"}
    assert declared_types(root["properties"]["all"], root) == {"integer"}  # number and integer: integer
    assert declared_types(root["properties"]["half"], root) is None  # one member says nothing
    check = _check(root, "loop", "half")
    assert not check.fully_declared
    assert check.judge({"loop": "x", "half": 1}) == ("", False)


def test_paths_that_matter() -> None:
    policy = parse_policy(
        textwrap.dedent(
            """\
            version: "1"
            tools:
              t:
                rules:
                  - name: r
                    conditions:
                      - {path: args.a, op: exists, value: true}
                      - {path: args.b.c, op: exists, value: true}
                      - {path: args.d, op: eq, value: 1}
                      - {path: state.t.n, op: lt, value: 3}
                    state: {counter: n, window: hour}
            """
        )
    )
    paths = typed_paths(policy.tools["t"].rules)
    assert paths == (TypedPath(("b", "c"), False), TypedPath(("d",), True))


STRICT_POLICY = parse_policy(
    textwrap.dedent(
        """\
        version: "1"
        tools:
          push:
            rules:
              - name: no force push
                conditions: [{path: args.force, op: neq, value: true}]
          open_port:
            rules:
              - name: no admin ports
                conditions: [{path: args.port, op: not_in, value: [22, 3389]}]
          deploy:
            rules:
              - name: prod needs a human
                action: require_approval
                conditions: [{path: args.options.target, op: eq, value: prod}]
          charge:
            rules:
              - name: big charges need a human
                action: require_approval
                conditions: [{path: args.amount, op: gt, value: 100}]
        """
    )
)


@pytest.mark.parametrize(
    ("tool", "arguments", "loose", "strict"),
    [
        ("push", {"force": "yes"}, "allow", "deny"),
        ("push", {"force": "true"}, "deny", "deny"),
        ("push", {"force": 1}, "allow", "deny"),
        ("push", {"force": False}, "allow", "allow"),
        ("push", {}, "deny", "deny"),  # a missing value fails neq (Intercept's semantics)
        ("open_port", {"port": "22"}, "deny", "deny"),  # Go's %v makes "22" equal 22
        ("open_port", {"port": "22.0"}, "allow", "deny"),
        ("open_port", {"port": " 22"}, "allow", "deny"),
        ("open_port", {"port": 22}, "deny", "deny"),
        ("open_port", {"port": 8080}, "allow", "allow"),
        ("deploy", {"options": '{"target": "prod"}'}, "allow", "require_approval"),
        ("deploy", {"options": {"target": "prod"}}, "require_approval", "require_approval"),
        ("deploy", {"options": {"target": "dev"}}, "allow", "allow"),
        ("charge", {"amount": "500"}, "require_approval", "require_approval"),
        ("charge", {"amount": 5}, "allow", "allow"),
    ],
)
def test_strict_evaluation_distrusts_comparisons_of_different_kinds(
    tool: str, arguments: dict[str, Any], loose: str, strict: str
) -> None:
    assert decide(STRICT_POLICY, tool, arguments).verdict == loose
    assert decide(STRICT_POLICY, tool, arguments, None, True).verdict == strict


def _listing(*tools: tuple[str, dict[str, Any]], cursor: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"tools": [{"name": n, "inputSchema": s} for n, s in tools]}
    if cursor:
        result["nextCursor"] = cursor
    return {"jsonrpc": "2.0", "id": 1, "result": result}


PUSH_SCHEMA = {"type": "object", "properties": {"force": {"type": "boolean"}}}


def test_schema_store_pages_changes_and_opt_out() -> None:
    schemas = ToolSchemas()
    assert schemas.verdict(STRICT_POLICY, "push", {"force": "yes"}) == UNVOUCHED  # never listed
    assert schemas.verdict(STRICT_POLICY, "unlisted", {"x": 1}) == FINE  # no rule reads its arguments
    schemas.listed(_listing(("other", {}), cursor="2"), first_page=True)
    schemas.listed(_listing(("push", PUSH_SCHEMA)), first_page=False)
    assert '"force" must be a boolean' in schemas.verdict(STRICT_POLICY, "push", {"force": "yes"}).problem
    assert schemas.verdict(STRICT_POLICY, "push", {"force": True}) == FINE
    schemas.listed(_listing(("other", {})), first_page=True)  # a new listing without push
    assert schemas.verdict(STRICT_POLICY, "push", {"force": "yes"}) == UNVOUCHED
    schemas.listed(_listing(("push", {"type": "object"})), first_page=True)  # force has no declared type
    assert schemas.verdict(STRICT_POLICY, "push", {"force": "yes"}) == UNVOUCHED

    loose = parse_policy(
        'version: "1"\ntools:\n  push:\n    loose_types: true\n    rules:\n'
        "      - name: no force push\n        conditions: [{path: args.force, op: neq, value: true}]\n"
    )
    schemas.listed(_listing(("push", PUSH_SCHEMA)), first_page=True)
    assert schemas.verdict(loose, "push", {"force": "yes"}) == FINE
    assert schemas.verdict(STRICT_POLICY, "push", {"force": "yes"}).problem  # a reload back re-checks


UNION_SCHEMA = {
    "type": "object",
    "properties": {
        "options": {"anyOf": [{"type": "object", "properties": {"target": {"type": "string"}}}, {"type": "string"}]},
        "name": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "plain": {"type": "string"},
    },
}


def test_a_value_a_rule_must_read_through_but_cannot_is_judged_strictly() -> None:
    """`options: Options | str` sent as a string: the schema allows it, but a rule on
    options.target cannot read it (the SDK parses JSON text into the object): strict plan."""
    check = _check(UNION_SCHEMA, "options.target")
    assert check.judge({"options": {"target": "prod"}}) == ("", False)
    assert check.judge({"options": "staging"}) == ("", True)
    assert "but null was sent" in check.judge({"options": None})[0]  # not declared nullable
    problem, _ = check.judge({"options": '{"target": "prod"}'})
    assert '"options" is text holding JSON an object' in problem


@pytest.mark.parametrize(
    ("value", "parsed"), [("null", "null"), ("[1]", "an array"), ('{"a": 1}', "an object")]
)
def test_json_text_in_a_union_with_string_is_denied(value: str, parsed: str) -> None:
    """The Python SDK reads JSON text for any parameter not declared as a plain string:
    `"null"` reaches a `str | None` tool as None, past a regex on the text."""
    problem, _ = _check(UNION_SCHEMA, "name").judge({"name": value})
    assert f'"name" is text holding JSON {parsed}' in problem
    assert _check(UNION_SCHEMA, "plain").judge({"plain": value}) == ("", False)  # a plain string stays text
    assert _check(UNION_SCHEMA, "name").judge({"name": "nullable"}) == ("", False)
    assert _check(UNION_SCHEMA, "name").judge({"name": "true"}) == ("", False)  # the SDK keeps it as text


def test_strict_plan_reads_through_a_non_object_as_a_mismatch() -> None:
    policy = parse_policy(
        'version: "1"\ntools:\n  deploy:\n    rules:\n      - name: prod needs a human\n'
        "        action: require_approval\n        conditions: [{path: args.options.target, op: eq, value: prod}]\n"
        "      - name: target must be known\n        conditions: [{path: args.options.target, op: exists, value: true}]\n"
    )
    assert decide(policy, "deploy", {"options": "prod"}).verdict == "deny"
    assert decide(policy, "deploy", {"options": "prod"}, None, True).verdict == "deny"
    approval_only = parse_policy(
        'version: "1"\ntools:\n  deploy:\n    rules:\n      - name: prod needs a human\n'
        "        action: require_approval\n        conditions: [{path: args.options.target, op: eq, value: prod}]\n"
    )
    assert decide(approval_only, "deploy", {"options": "prod"}).verdict == "allow"
    assert decide(approval_only, "deploy", {"options": "prod"}, None, True).verdict == "require_approval"
    assert decide(approval_only, "deploy", {"options": None}, None, True).verdict == "allow"


def test_strict_in_lists_must_be_of_one_kind() -> None:
    policy = parse_policy(
        'version: "1"\ntools:\n  open_port:\n    rules:\n      - name: no admin ports\n'
        '        conditions: [{path: args.port, op: not_in, value: [22, "22", 3389]}]\n'
    )
    for port in ("22.0", " 22", 8080):
        assert decide(policy, "open_port", {"port": port}, None, True).verdict == "deny"


def test_strict_plan_judges_json_text_both_as_text_and_as_the_value_it_holds() -> None:
    """Without a declared type the server may parse JSON text (`Any` parameters, or a session
    whose schema is unknown): `["r\\u006d -rf /"]` must not pass a rule written for `rm`."""
    policy = parse_policy(
        'version: "1"\ntools:\n  run:\n    rules:\n      - name: rm needs a human\n'
        "        action: require_approval\n        conditions: [{path: args.command, op: regex, value: '\\brm\\b'}]\n"
        "  tag:\n    rules:\n      - name: lowercase words\n"
        "        conditions: [{path: args.name, op: regex, value: '^[a-z]+$'}]\n"
    )
    smuggled = '["r\\u006d -rf /"]'
    assert decide(policy, "run", {"command": smuggled}).verdict == "allow"  # as text, no `rm` in it
    assert decide(policy, "run", {"command": smuggled}, None, True).verdict == "require_approval"
    assert decide(policy, "run", {"command": "ls /"}, None, True).verdict == "allow"
    assert decide(policy, "tag", {"name": "null"}, None, True).verdict == "deny"  # read as None
    assert decide(policy, "tag", {"name": "nullable"}, None, True).verdict == "allow"


def test_json_text_too_deep_for_this_process_is_not_trusted() -> None:
    """A server on a newer Python parses deeper than this proxy can: such text is judged as a
    value of unknown kind (fails, or selects), and denied where a union admits text."""
    policy = parse_policy(
        'version: "1"\ntools:\n  run:\n    rules:\n      - name: no prod\n'
        "        conditions: [{path: args.target, op: neq, value: prod}]\n"
    )
    deep = '["prod", ' + "[" * 5000 + "]" * 5000 + "]"
    assert decide(policy, "run", {"target": deep}, None, True).verdict == "deny"
    assert decide(policy, "run", {"target": "[ -f /tmp/x ] && ls"}, None, True).verdict == "allow"  # not JSON
    problem, _ = _check(UNION_SCHEMA, "name").judge({"name": deep})
    assert "too deeply nested" in problem
