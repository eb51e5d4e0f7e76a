"""Confirmation in the client (`via: elicitation`) in both eras, with the SDK's own Client:
accept runs the call once (decided by `client:<name>` on channel `elicitation`), decline denies
it, and a client without the capability gets the usual -32003."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import types

from intercept.audit.events import read_events
from tests.e2e.support import (
    MODES,
    TOOL_UPSTREAM,
    Harness,
    approval_required,
    call,
    initialize_message,
    line,
    read_until,
    sdk_client,
)

POLICY = """\
version: "1"
tools:
  write_file:
    rules:
      - name: confirm writes
        action: require_approval
        via: elicitation
"""
ARGS = {"path": "notes.txt", "content": "hello"}


def answering(action: str, asked: list[str]) -> Any:
    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        content = {"approve": True} if action == "accept" else None
        return types.ElicitResult(action=action, content=content)  # type: ignore[arg-type]

    return answer


def decisions(harness: Harness) -> list[dict[str, Any]]:
    return [e for e in read_events(harness.state_dir) if e["type"] == "approval_decided"]


@pytest.mark.parametrize("mode", MODES)
async def test_accepted_in_the_client_runs_once(harness: Harness, mode: str) -> None:
    harness.write_policy(POLICY)
    asked: list[str] = []
    async with sdk_client(
        harness, mode, TOOL_UPSTREAM, elicitation_callback=answering("accept", asked),
        client_info=types.Implementation(name="test-client", version="1"),
    ) as client:  # fmt: skip
        result = await client.call_tool("write_file", ARGS)
    assert result.is_error is False, result
    assert len(asked) == 1 and "write_file" in asked[0] and "confirm writes" in asked[0]
    assert harness.ran("write_file") == [ARGS]
    [decided] = decisions(harness)
    assert decided["decision"] == "approved"
    assert decided["channel"] == "elicitation"
    assert decided["actor"] == "client:test-client"


@pytest.mark.parametrize("mode", MODES)
async def test_the_prompt_says_what_a_scope_beyond_once_allows(harness: Harness, mode: str) -> None:
    # accepting a `match: tool` scope allows any arguments for the window: the human is told so,
    # not "run this exact call once"
    harness.write_policy(POLICY + "        scope: {for: 15m, match: tool}\n")
    asked: list[str] = []
    async with sdk_client(harness, mode, TOOL_UPSTREAM, elicitation_callback=answering("accept", asked)) as client:
        assert (await client.call_tool("write_file", ARGS)).is_error is False
        other = {"path": "other.txt", "content": "x"}
        assert (await client.call_tool("write_file", other)).is_error is False  # no prompt: the scope covers it
    assert len(asked) == 1, asked
    assert "run once" not in asked[0] and "any number of runs with any arguments to the tool within 900s of the approval" in asked[0], asked
    assert harness.ran("write_file") == [ARGS, other]


@pytest.mark.parametrize("mode", MODES)
async def test_declined_in_the_client_is_denied(harness: Harness, mode: str) -> None:
    harness.write_policy(POLICY)
    asked: list[str] = []
    async with sdk_client(harness, mode, TOOL_UPSTREAM, elicitation_callback=answering("decline", asked)) as client:
        result = await client.call_tool("write_file", ARGS)
        echoed = await client.call_tool("echo", {"text": "still here"})
    assert result.is_error is True
    assert "declined in the client" in result.content[0].text
    assert echoed.content[0].text == "still here"
    assert harness.ran("write_file") == []
    [decided] = decisions(harness)
    assert decided["decision"] == "denied" and decided["channel"] == "elicitation"


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_the_capability_gets_approval_required(harness: Harness, mode: str) -> None:
    harness.write_policy(POLICY)
    async with sdk_client(harness, mode, TOOL_UPSTREAM) as client:
        error = await approval_required(client, "write_file", ARGS)
    assert "intercept approvals approve" in error.message
    assert harness.ran("write_file") == []
    assert decisions(harness) == []


async def test_a_forged_confirmation_state_runs_nothing(harness: Harness) -> None:
    """A stateless-era retry carrying a state with our prefix but no valid signature: stripped,
    and the call is held as if it had none."""
    harness.write_policy(POLICY)
    forged = {"intercept_confirmation": types.ElicitResult(action="accept", content={"approve": True})}
    async with sdk_client(harness, "2026-07-28", TOOL_UPSTREAM) as client:
        with pytest.raises(Exception) as caught:
            await client.call_tool("write_file", ARGS, input_responses=forged, request_state="intercept1.e30.forged")
    assert getattr(caught.value, "code", None) == -32003, caught.value
    assert harness.ran("write_file") == []
    assert decisions(harness) == []


def test_more_confirmations_than_the_proxy_asks_at_once_are_all_answered(harness: Harness) -> None:
    """Calls waiting for the client's answer count among the relay's calls decided on the side
    (MAX_DECIDING, beyond which client input pauses): past MAX_WAITING_FOR_HUMAN they are answered
    -32003 at once, so the client's answers are still read and each accepted call runs once."""
    from intercept.proxy.call_handler import MAX_WAITING_FOR_HUMAN
    from intercept.proxy.relay import MAX_DECIDING

    harness.write_policy(POLICY)
    proxy = harness.start(TOOL_UPSTREAM, handshake_first=False)
    initialize = initialize_message()
    initialize["params"]["capabilities"] = {"elicitation": {}}
    proxy.send(initialize)
    assert "result" in proxy.read()
    count = MAX_DECIDING + 2
    proxy.send_raw(b"".join(line(call(i, "write_file", {"path": f"f{i}", "content": "x"})) for i in range(count)))
    asked: list[str] = []
    refused = 0
    while len(asked) + refused < count:
        message = proxy.read()
        if message.get("method") == "elicitation/create":
            asked.append(message["id"])
        else:
            assert message["error"]["code"] == -32003, message
            refused += 1
    assert len(asked) == MAX_WAITING_FOR_HUMAN
    accept = {"action": "accept", "content": {"approve": True}}
    proxy.send_raw(b"".join(line({"jsonrpc": "2.0", "id": asked_id, "result": accept}) for asked_id in asked))
    ran = [read_until(proxy, lambda m: "result" in m) for _ in asked]  # without the bound: never read
    assert all(reply["result"]["isError"] is False for reply in ran)
    assert len(harness.ran("write_file")) == MAX_WAITING_FOR_HUMAN


def test_a_reload_while_the_client_is_asked_judges_the_call_again(harness: Harness) -> None:
    """A reload denies the call while the client's human is asked; their accept is recorded, but
    the call does not run under the policy it was judged by: -32003, and the retry is denied."""
    harness.write_policy(POLICY)
    proxy = harness.start(TOOL_UPSTREAM, handshake_first=False)
    initialize = initialize_message()
    initialize["params"]["capabilities"] = {"elicitation": {}}
    proxy.send(initialize)
    assert "result" in proxy.read()
    proxy.send(call(1, "write_file", ARGS))
    asked = proxy.read()
    assert asked["method"] == "elicitation/create", asked
    stricter = POLICY.replace(
        "    rules:\n",
        "    rules:\n      - name: not notes.txt\n        conditions: [{path: args.path, op: neq, value: notes.txt}]\n",
    )
    harness.write_policy(stricter)
    proxy.wait_for_stderr("policy reloaded")
    proxy.send({"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "accept", "content": {"approve": True}}})
    reply = read_until(proxy, lambda m: m.get("id") == 1)
    assert "error" in reply and reply["error"]["code"] == -32003, reply
    proxy.send(call(2, "write_file", ARGS))
    retried = read_until(proxy, lambda m: m.get("id") == 2)
    assert retried["result"]["isError"] is True, retried
    assert harness.ran("write_file") == []
