"""The pure parts of in-band confirmation: signed request states (tampered, expired, for another
call, not ours), taking our state and answer out of a retried call, and reading answers."""

from __future__ import annotations

from typing import Any

import pytest

from intercept.proxy.elicitation import (
    INPUT_KEY,
    ClientInfo,
    HandshakeElicitor,
    RequestStates,
    answer_of,
    confirmation_request,
    stateless_client,
    take_in_band_answer,
)

KEY = b"k" * 32


def states(now: float = 1000.0) -> RequestStates:
    return RequestStates(KEY, clock=lambda: now)


def test_a_state_verifies_for_its_own_call_only() -> None:
    state = states().sign("apr_1", "write_file", "hash-a")
    assert states().verify(state, "write_file", "hash-a") == "apr_1"
    assert states().verify(state, "write_file", "hash-b") is None  # other arguments
    assert states().verify(state, "delete_file", "hash-a") is None  # other tool
    assert states(now=1000.0 + 601).verify(state, "write_file", "hash-a") is None  # expired
    assert RequestStates(b"x" * 32, clock=lambda: 1000.0).verify(state, "write_file", "hash-a") is None  # other key


@pytest.mark.parametrize(
    "forge",
    [
        lambda s: s[:-2] + ("AA" if not s.endswith("AA") else "BB"),  # MAC changed
        lambda s: s.replace("intercept1.", "intercept1.e", 1),  # payload changed
        lambda s: "intercept1.",  # empty
        lambda s: "intercept1.bm90LWpzb24.",  # no MAC
        lambda s: "upstream-state",  # not ours
        lambda s: s[:-1] + "é",  # a MAC that is not ASCII (compare_digest refuses to compare it)
    ],
)
def test_forged_states_are_refused(forge: Any) -> None:
    state = states().sign("apr_1", "write_file", "hash-a")
    assert states().verify(forge(state), "write_file", "hash-a") is None


def test_our_state_and_answer_are_taken_out_of_the_retry() -> None:
    state = states().sign("apr_1", "write_file", "h")
    params: dict[str, Any] = {
        "name": "write_file",
        "arguments": {},
        "requestState": state,
        "inputResponses": {INPUT_KEY: {"action": "accept", "content": {"approve": True}}},
    }
    taken = take_in_band_answer(params, states(), "write_file", lambda: "h")
    assert taken is not None and (taken.approval_id, taken.answer) == ("apr_1", "accept")
    assert params == {"name": "write_file", "arguments": {}}  # the upstream never sees them


def test_an_invalid_state_of_ours_is_taken_out_but_answers_nothing() -> None:
    params: dict[str, Any] = {"requestState": "intercept1.forged.mac", "inputResponses": {INPUT_KEY: {"action": "accept"}}}
    taken = take_in_band_answer(params, states(), "write_file", lambda: "h")
    assert taken is not None and taken.approval_id is None and taken.answer is None
    assert params == {}


def test_the_upstreams_own_state_is_left_alone() -> None:
    params: dict[str, Any] = {"requestState": "theirs", "inputResponses": {"q": {"action": "accept"}}}
    assert take_in_band_answer(params, states(), "write_file", lambda: "h") is None
    assert params == {"requestState": "theirs", "inputResponses": {"q": {"action": "accept"}}}


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"action": "accept", "content": {"approve": True}}, "accept"),
        ({"action": "accept"}, "accept"),
        ({"action": "accept", "content": {"approve": "false"}}, "decline"),  # anything but true is no yes
        ({"action": "accept", "content": {"approve": 1}}, "decline"),
        ({"action": "accept", "content": {"approve": None}}, "decline"),
        ({"action": "accept", "content": {"approve": False}}, "decline"),  # the box unticked
        ({"action": "decline"}, "decline"),
        ({"action": "cancel"}, "cancel"),
        ({"action": "yes"}, None),
        ("accept", None),
        (None, None),
    ],
)
def test_answers(result: Any, expected: str | None) -> None:
    assert answer_of(result) == expected


def test_client_capabilities_in_both_eras() -> None:
    client = ClientInfo()
    client.read_initialize({"clientInfo": {"name": "cc"}, "capabilities": {"elicitation": {}}})
    assert (client.name, client.elicits) == ("cc", True)
    client.read_initialize({"clientInfo": {"name": "cc"}, "capabilities": {}})
    assert client.elicits is False
    meta = {
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "sdk"},
    }
    found = stateless_client({"_meta": meta})
    assert (found.name, found.elicits) == ("sdk", True)
    assert stateless_client({}).elicits is False


def test_the_confirmation_shows_arguments_redacted_and_with_unsafe_characters_escaped() -> None:
    """The human confirms what the message shows: a bidirectional override chosen by the agent
    must not reorder it, and secrets stay out of it."""
    arguments = {"path": "notes\u202etxt.exe", "note": "\x9b2J", "api_key": "sk-live-abcdefghijklmnop"}
    message = confirmation_request("write_file", "fs", "confirm writes", "apr_1", arguments)["message"]
    assert "\u202e" not in message and "\x9b" not in message
    assert "notes\\u202etxt.exe" in message and "\\x9b2J" in message
    assert "sk-live" not in message


async def test_a_prompt_left_unanswered_is_withdrawn_and_answers_are_matched_by_our_ids() -> None:
    sent: list[dict[str, Any]] = []
    elicitor = HandshakeElicitor(sent.append)
    assert await elicitor.ask({"message": "?"}, timeout_s=0.01, stop=None) is None
    request, withdrawn = sent
    assert request["method"] == "elicitation/create"
    assert withdrawn == {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request["id"], "reason": "intercept stopped waiting for this answer"},
    }
    # An upstream's own request id that merely starts like ours is not taken for ours.
    assert not elicitor.owns({"jsonrpc": "2.0", "id": "intercept-elicit-1", "result": {"action": "accept"}})
    assert elicitor.owns({"jsonrpc": "2.0", "id": request["id"], "result": {"action": "accept"}})
