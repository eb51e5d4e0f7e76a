"""The rule means what it says: an argument of another JSON type than the tool declares is denied.

The upstream is a real `MCPServer` (fixtures/servers/typed_server.py) whose SDK coerces arguments
(pydantic, lax mode, after its own pre-parsing of JSON text): `"yes"`, `"on"`, `1`, `"1"`, `"True"`,
`"t"`, `"y"` become `true` for a `bool`; `"22.0"`, `" 22"`, `"+22"`, `"022"`, `"2_2"`, `"22 "`
become 22 for an `int`; a JSON string holding an object or a list becomes that object or list.
So a condition judged on the value as sent (`"yes" != true`) would let through a call the tool
runs as the very thing the rule forbids.

The proxy keeps each tool's `inputSchema` from the upstream's `tools/list` reply (the client lists
tools first, as MCP clients do) and denies a value, or a parent on a condition's path, whose JSON
type differs from the declared one, naming the parameter, the declared type and the received type.
`loose_types: true` on a tool opts out (the value is judged as sent). Without a schema (no
tools/list), a condition comparing values of different JSON types must not let the tool run.

What ran is read from the tool's own record of the arguments it received ($FIXTURE_EXEC_LOG).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.e2e.support import (
    DENIED_PREFIX,
    SERVERS,
    TYPED_UPSTREAM,
    Harness,
    ProxyProcess,
    approval_id_of,
    call_tool,
    denial_text,
    describe,
    handshake,
    list_tools,
    ping_message,
)

NO_FORCE_PUSH = "History is not rewritten here"
CLOSED_PORTS = "SSH and RDP stay closed"


def policy(loose: tuple[str, ...] = ()) -> str:
    """push: no force-push (evaluate); open_port: never 22 or 3389 (evaluate); deploy to prod and
    mail to the CEO need a human (require_approval). Tools in `loose` get `loose_types: true`."""

    def loose_line(tool: str) -> str:
        return "    loose_types: true\n" if tool in loose else ""

    return (
        'version: "1"\n'
        "tools:\n"
        "  push:\n"
        f"{loose_line('push')}"
        "    rules:\n"
        '      - name: "no force-push"\n'
        "        conditions:\n"
        "          - {path: args.force, op: neq, value: true}\n"
        f'        on_deny: "{NO_FORCE_PUSH}"\n'
        "  open_port:\n"
        f"{loose_line('open_port')}"
        "    rules:\n"
        '      - name: "no remote shells"\n'
        "        conditions:\n"
        "          - {path: args.port, op: not_in, value: [22, 3389]}\n"
        f'        on_deny: "{CLOSED_PORTS}"\n'
        "  deploy:\n"
        f"{loose_line('deploy')}"
        "    rules:\n"
        '      - name: "prod needs a human"\n'
        "        action: require_approval\n"
        "        conditions:\n"
        "          - {path: args.options.target, op: eq, value: prod}\n"
        "  send_mail:\n"
        f"{loose_line('send_mail')}"
        "    rules:\n"
        '      - name: "mail to the CEO needs a human"\n'
        "        action: require_approval\n"
        "        conditions:\n"
        '          - {path: args.to, op: contains, value: "ceo@corp.com"}\n'
    )


def start_listed(harness: Harness, text: str) -> ProxyProcess:
    """The proxy around the typed server, after the client has listed the tools."""
    harness.write_policy(text)
    proxy = harness.start(TYPED_UPSTREAM, name="typed")
    tools = {tool["name"]: tool for tool in list_tools(proxy)}
    assert {"push", "open_port", "deploy", "send_mail"} <= tools.keys()
    assert tools["push"]["inputSchema"]["properties"]["force"]["type"] == "boolean"
    assert tools["open_port"]["inputSchema"]["properties"]["port"]["type"] == "integer"
    assert tools["deploy"]["inputSchema"]["properties"]["options"] == {"$ref": "#/$defs/Options"}
    assert tools["send_mail"]["inputSchema"]["properties"]["to"]["type"] == "array"
    return proxy


def type_denial_problem(reply: dict[str, Any], parameter: str, declared: str, received: tuple[str, ...]) -> str:
    """ "" if `reply` is a policy denial naming the parameter, its declared type and one of the
    `received` type names; else what is wrong with it."""
    text = denial_text(reply)
    if text is None:
        return describe(reply)
    missing = [word for word in (parameter, declared) if word not in text]
    if not any(name in text for name in received):
        missing.append(" or ".join(received))
    return f"denied without naming {missing}: {text}" if missing else ""


def received_type(value: Any) -> tuple[str, ...]:
    """The JSON type name(s) a message may use for `value` (an integer is also a number)."""
    if isinstance(value, str):
        return ("string",)
    if isinstance(value, bool):
        return ("boolean",)
    if isinstance(value, int):
        return ("integer", "number")
    return ("number",)


# -- 1. booleans -----------------------------------------------------------------------------------

FORCE_VALUES: list[Any] = ["yes", "on", 1, "1", "True", "t", "y", "true"]


def test_a_boolean_sent_as_anything_else_is_denied(harness: Harness) -> None:
    proxy = start_listed(harness, policy())
    problems: dict[str, str] = {}
    for n, value in enumerate(FORCE_VALUES):
        reply = call_tool(proxy, n, "push", {"branch": "main", "force": value})
        problem = type_denial_problem(reply, "force", "boolean", received_type(value))
        if problem:
            problems[json.dumps(value)] = problem
    forced = harness.ran("push")
    assert not problems and not forced, (
        f"force-push ran {len(forced)} times ({forced}); answers that were not a type denial: {problems}"
    )

    # Real booleans are judged by the rule.
    assert denial_text(call_tool(proxy, "true", "push", {"branch": "main", "force": True})) == (
        DENIED_PREFIX + NO_FORCE_PUSH
    )
    assert call_tool(proxy, "false", "push", {"branch": "main", "force": False})["result"]["isError"] is False
    assert harness.ran("push") == [{"branch": "main", "force": False}]


# -- 2. integers -----------------------------------------------------------------------------------

PORT_TEXTS = ["22", "22.0", " 22", "+22", "022", "2_2", "22 "]


def test_an_integer_sent_as_text_is_denied(harness: Harness) -> None:
    proxy = start_listed(harness, policy())
    problems: dict[str, str] = {}
    for n, value in enumerate(PORT_TEXTS):
        reply = call_tool(proxy, n, "open_port", {"port": value})
        problem = type_denial_problem(reply, "port", "integer", ("string",))
        if problem:
            problems[json.dumps(value)] = problem
    opened = harness.ran("open_port")
    assert not problems and not opened, f"open_port ran as {opened}; answers that were not a type denial: {problems}"

    # 22.0 is an integer in JSON Schema: the type check lets it through and the rule itself denies it.
    assert denial_text(call_tool(proxy, "float", "open_port", {"port": 22.0})) == DENIED_PREFIX + CLOSED_PORTS
    assert denial_text(call_tool(proxy, "int", "open_port", {"port": 22})) == DENIED_PREFIX + CLOSED_PORTS
    assert call_tool(proxy, "web", "open_port", {"port": 8080})["result"]["isError"] is False
    assert harness.ran("open_port") == [{"port": 8080}]


# -- 3. objects ------------------------------------------------------------------------------------


def test_an_object_sent_as_json_text_is_denied(harness: Harness) -> None:
    proxy = start_listed(harness, policy())
    reply = call_tool(proxy, 1, "deploy", {"options": json.dumps({"target": "prod"})})
    problem = type_denial_problem(reply, "options", "object", ("string",))
    deployed = harness.ran("deploy")
    assert not problem and not deployed, f"deploy ran as {deployed} without approval; the answer: {problem}"

    assert approval_id_of(call_tool(proxy, 2, "deploy", {"options": {"target": "prod"}})) is not None
    assert call_tool(proxy, 3, "deploy", {"options": {"target": "staging"}})["result"]["isError"] is False
    assert harness.ran("deploy") == [{"options": {"target": "staging"}}]


# -- 4. arrays -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "to",
    ['["ceo@corp.com"]', '["ceo\\u0040corp.com"]'],
    ids=["plain", "escaped-at-sign"],
)
def test_an_array_sent_as_json_text_is_denied(harness: Harness, to: str) -> None:
    proxy = start_listed(harness, policy())
    reply = call_tool(proxy, 1, "send_mail", {"to": to, "body": "the numbers"})
    problem = type_denial_problem(reply, "to", "array", ("string",))
    sent = harness.ran("send_mail")
    assert not problem and not sent, f"send_mail ran as {sent} without approval; the answer: {problem}"

    assert approval_id_of(call_tool(proxy, 2, "send_mail", {"to": ["ceo@corp.com"], "body": "the numbers"}))
    assert call_tool(proxy, 3, "send_mail", {"to": ["team@corp.com"], "body": "hi"})["result"]["isError"] is False
    assert harness.ran("send_mail") == [{"to": ["team@corp.com"], "body": "hi"}]


# -- 5. the opt-out ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "as_run"),
    [
        ("push", {"branch": "main", "force": "yes"}, {"branch": "main", "force": True}),
        ("open_port", {"port": "+22"}, {"port": 22}),
        ("deploy", {"options": '{"target": "prod"}'}, {"options": {"target": "prod"}}),
    ],
    ids=["push-force-yes", "open-port-plus-22", "deploy-options-text"],
)
def test_loose_types_judges_the_value_as_sent(
    harness: Harness, tool: str, arguments: dict[str, Any], as_run: dict[str, Any]
) -> None:
    """Documents the opt-out, and what it costs: the server runs the coerced value."""
    proxy = start_listed(harness, policy(loose=(tool,)))
    reply = call_tool(proxy, 1, tool, arguments)
    assert reply["result"]["isError"] is False, describe(reply)
    assert harness.ran(tool) == [as_run]


# -- 6. no schema known ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("push", {"branch": "main", "force": "yes"}),
        ("open_port", {"port": "22.0"}),
        ("deploy", {"options": '{"target": "prod"}'}),
    ],
    ids=["push-force-yes", "open-port-22.0-text", "deploy-options-text"],
)
def test_without_tools_list_a_value_of_another_type_does_not_run(
    harness: Harness, tool: str, arguments: dict[str, Any]
) -> None:
    harness.write_policy(policy())
    proxy = harness.start(TYPED_UPSTREAM, name="typed")  # the client never sends tools/list
    reply = call_tool(proxy, 1, tool, arguments)
    ran = harness.ran(tool)
    assert not ran and (denial_text(reply) is not None or approval_id_of(reply) is not None), (
        f"{tool} ran as {ran} with the schema unknown; the answer: {describe(reply)}"
    )
    # Values of the rule's own type are still judged as usual.
    assert call_tool(proxy, 2, "push", {"branch": "main", "force": False})["result"]["isError"] is False
    assert harness.ran("push")[-1] == {"branch": "main", "force": False}


# -- 8. unions the SDK reads JSON text for -------------------------------------------------------

UNION_POLICY = (
    'version: "1"\n'
    "tools:\n"
    "  deploy_any:\n"
    "    rules:\n"
    '      - name: "prod needs a human"\n'
    "        action: require_approval\n"
    "        conditions:\n"
    "          - {path: args.options.target, op: eq, value: prod}\n"
    "  tag:\n"
    "    rules:\n"
    '      - name: "tags are lowercase words"\n'
    "        conditions:\n"
    "          - {path: args.name, op: regex, value: \"^[a-z]+$\"}\n"
)


def test_json_text_for_a_union_with_string_does_not_slip_past_a_rule(harness: Harness) -> None:
    """`options: Options | str` and `name: str | None` accept text, but the SDK parses text that
    is JSON (an object, `null`) into that value: the rule would judge text and the tool get an
    object or None."""
    harness.write_policy(UNION_POLICY)
    proxy = harness.start(TYPED_UPSTREAM, name="typed")
    list_tools(proxy)
    text = denial_text(call_tool(proxy, 1, "deploy_any", {"options": '{"target": "prod"}'}))
    assert text is not None and '"options" is text holding JSON an object' in text
    assert approval_id_of(call_tool(proxy, 2, "deploy_any", {"options": {"target": "prod"}})) is not None
    # A preset name is text the rule cannot read options.target through: it needs a human too.
    assert approval_id_of(call_tool(proxy, 3, "deploy_any", {"options": "prod"})) is not None
    text = denial_text(call_tool(proxy, 4, "tag", {"name": "null"}))
    assert text is not None and '"name" is text holding JSON null' in text
    assert denial_text(call_tool(proxy, 5, "tag", {"name": "release"})) is None
    assert harness.ran("deploy_any") == [] and [r["name"] for r in harness.ran("tag")] == ["release"]


# -- 9. a client that never lists: the proxy lists the tools itself --------------------------------

STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "no-lister", "version": "1"},
}


@pytest.mark.parametrize("era", ["handshake", "stateless"])
def test_a_client_that_never_lists_still_gets_the_schema_checked(harness: Harness, era: str) -> None:
    """The proxy sends its own tools/list (in the call's era) and holds the call until it is
    answered, so `"yes"` is judged against the declared boolean, not merely compared strictly;
    the proxy's listing never reaches the client, and the lines after the held call keep their order."""
    harness.write_policy(policy())
    proxy = harness.start(TYPED_UPSTREAM, name="typed", handshake_first=era == "handshake")
    meta = {"_meta": STATELESS_META} if era == "stateless" else {}

    def push(request_id: int, force: Any) -> dict[str, Any]:
        params = {"name": "push", "arguments": {"branch": "main", "force": force}, **meta}
        return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}

    proxy.send_raw(b"".join(json.dumps(m).encode() + b"\n" for m in (push(1, "yes"), push(2, False))))
    first, second = proxy.read(), proxy.read()
    assert (first["id"], second["id"]) == (1, 2)
    assert type_denial_problem(first, "force", "boolean", ("string",)) == ""
    assert second["result"]["isError"] is False
    assert harness.ran("push") == [{"branch": "main", "force": False}]
    assert "listing the upstream's tools" in proxy.stderr


def test_an_upstream_that_never_answers_the_listing_releases_the_held_calls_after_the_bound(
    harness: Harness,
) -> None:
    harness.write_policy(policy())
    proxy = harness.start([sys.executable, str(SERVERS / "silent_list_server.py")], name="silent")
    proxy.send(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "push", "arguments": {"force": "yes"}}}
    )
    proxy.send(ping_message(2))
    first, second = proxy.read(), proxy.read()
    assert (first["id"], second["id"]) == (1, 2)  # held in order, then judged strictly
    assert denial_text(first) is not None and harness.ran("push") == []
    proxy.wait_for_stderr("did not answer the proxy's tools/list")


def test_a_listing_spoilt_by_an_early_call_is_tried_again_at_the_next_call(harness: Harness) -> None:
    """A call sent before `initialize` makes the proxy's listing fail (the SDK refuses it): the
    next call, after a proper handshake, must get its own listing, not strict judging for good."""
    harness.write_policy(policy())
    proxy = harness.start(TYPED_UPSTREAM, name="typed", handshake_first=False)
    early = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "open_port", "arguments": {"port": " 22"}}}
    proxy.send(early)
    assert proxy.read()["id"] == 1  # whatever the answer, the port stayed closed
    handshake(proxy)
    reply = call_tool(proxy, 2, "open_port", {"port": " 22"})
    assert type_denial_problem(reply, "port", "integer", ("string",)) == ""
    assert harness.ran("open_port") == []
