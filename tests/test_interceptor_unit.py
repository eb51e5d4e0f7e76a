"""The interceptor in process: client lines in, what goes upstream or back out (no pipes, no processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.gate import ApprovalGate, UpstreamServer
from intercept.audit.events import EventLog
from intercept.audit.hashing import ArgumentHasher
from intercept.counters.call_counters import AsyncCallCounters, CallCounters
from intercept.policy import parse_policy
from intercept.proxy.interceptor import Hold, Interceptor, Rewritten
from intercept.proxy.reply_watch import MAX_CANCELLED, MAX_WATCHED
from intercept.store.worker import StoreWorker

POLICY = """\
version: "1"
hide: [open_port]
tools:
  push:
    rules:
      - name: no force push
        conditions: [{path: args.force, op: neq, value: true}]
  "*":
    rules:
      - name: no admin ports
        conditions: [{path: args.port, op: not_in, value: [22, 3389]}]
"""
SCHEMAS = {
    "push": {"type": "object", "properties": {"force": {"type": "boolean"}, "port": {"type": "integer"}}},
    "open_port": {"type": "object", "properties": {"port": {"type": "integer"}}},
}


@pytest.fixture
def interceptor(tmp_path: Path) -> Interceptor:
    hasher = ArgumentHasher(b"k" * 32)
    events = EventLog(tmp_path, "unit", hasher)
    store = StoreWorker()
    gate = ApprovalGate(tmp_path, UpstreamServer("unit", "name:unit", '["unit"]'), events, hasher, store)
    counters = AsyncCallCounters(CallCounters(tmp_path), store)
    return Interceptor(parse_policy(POLICY), "unit", events, gate, counters, store)


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def call(request_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    return line({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})


def answer(outcome: object) -> dict[str, Any]:
    assert isinstance(outcome, bytes) and outcome, outcome
    return json.loads(outcome)


def list_tools(interceptor: Interceptor) -> None:
    forwarded = interceptor.on_client_line(line({"jsonrpc": "2.0", "id": "l", "method": "tools/list"}))
    assert isinstance(forwarded, Rewritten)
    proxy_id = json.loads(forwarded.line)["id"]
    tools = [{"name": name, "inputSchema": schema} for name, schema in SCHEMAS.items()]
    reply = interceptor.on_upstream_line(line({"jsonrpc": "2.0", "id": proxy_id, "result": {"tools": tools}}))
    assert reply is not None and [t["name"] for t in json.loads(reply)["result"]["tools"]] == ["push"]  # hidden


def test_a_listed_schema_denies_a_coerced_type_and_allows_the_declared_one(interceptor: Interceptor) -> None:
    list_tools(interceptor)
    denied = answer(interceptor.on_client_line(call(1, "push", {"force": "yes"})))
    assert '"force" must be a boolean' in denied["result"]["content"][0]["text"]
    assert interceptor.on_client_line(call(2, "push", {"force": False, "port": 8080})) is None  # forwarded as sent
    assert '"port" must be an integer' in answer(interceptor.on_client_line(call(3, "push", {"port": "22"})))[
        "result"
    ]["content"][0]["text"]


def test_a_hidden_tool_is_hidden_before_any_type_check(interceptor: Interceptor) -> None:
    """The type check must not tell an agent that a hidden tool exists or what it takes."""
    list_tools(interceptor)
    text = answer(interceptor.on_client_line(call(1, "open_port", {"port": "x"})))["result"]["content"][0]["text"]
    assert "hidden by policy" in text and "integer" not in text


def test_without_a_listing_comparisons_of_other_kinds_are_not_trusted(interceptor: Interceptor) -> None:
    interceptor.listing = "done"  # the proxy's own listing came to nothing (see the bounded retry test)
    denied = answer(interceptor.on_client_line(call(1, "push", {"force": "yes"})))
    assert denied["result"]["isError"] is True
    assert interceptor.on_client_line(call(2, "push", {"force": False, "port": 8080})) is None


def test_unanswered_watched_requests_are_bounded(interceptor: Interceptor) -> None:
    for n in range(MAX_WATCHED + MAX_CANCELLED):
        outcome = interceptor.on_client_line(line({"jsonrpc": "2.0", "id": n, "method": "tools/list"}))
        assert isinstance(outcome, Rewritten)
    refused = answer(interceptor.on_client_line(line({"jsonrpc": "2.0", "id": "one more", "method": "tools/list"})))
    assert refused["error"]["code"] == -32600 and "too many requests" in refused["error"]["message"]
    batch = [{"jsonrpc": "2.0", "id": f"b{n}", "method": "tools/list"} for n in range(3)]
    refused = answer(interceptor.on_client_line(json.dumps(batch).encode()))
    assert refused["error"]["code"] == -32600 and "too many requests" in refused["error"]["message"]


def test_an_unlisted_session_lists_once_and_holds_until_the_answer(interceptor: Interceptor) -> None:
    released: list[bool] = []
    interceptor.on_listing_done = lambda: released.append(True)
    held = interceptor.on_client_line(call(2, "push", {"force": "yes"}))
    assert isinstance(held, Hold)
    request = json.loads(held.request)
    assert request["method"] == "tools/list" and request["id"].startswith("intercept-")
    tools = [{"name": name, "inputSchema": schema} for name, schema in SCHEMAS.items()]
    dropped = interceptor.on_upstream_line(line({"jsonrpc": "2.0", "id": request["id"], "result": {"tools": tools}}))
    assert dropped == b"" and released == [True]  # the proxy's own listing never reaches the client
    again = answer(interceptor.on_client_line(call(2, "push", {"force": "yes"})))
    assert '"force" must be a boolean' in again["result"]["content"][0]["text"]
    assert interceptor.listing == "done"


def test_a_failed_listing_is_tried_again_at_a_later_call_not_for_the_same_one(interceptor: Interceptor) -> None:
    """An error reply (e.g. to a `_meta` the client chose) must not leave the session strict for
    good, and the call whose listing failed, judged again once released, must not spend further
    attempts (a review found one odd call using up every attempt)."""
    interceptor.on_listing_done = lambda: None

    def fail_listing(held: object) -> None:
        assert isinstance(held, Hold)
        request_id = json.loads(held.request)["id"]
        error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32022, "message": "unsupported version"}}
        assert interceptor.on_upstream_line(line(error)) == b""

    fail_listing(interceptor.on_client_line(call(1, "push", {"force": "yes"})))
    judged = answer(interceptor.on_client_line(call(1, "push", {"force": "yes"})))  # the same line, released
    assert judged["result"]["isError"] is True  # judged strictly, no second listing for it
    held = interceptor.on_client_line(call(2, "push", {"force": "yes"}))  # a later call lists again
    assert isinstance(held, Hold)
    request_id = json.loads(held.request)["id"]
    tools = [{"name": name, "inputSchema": schema} for name, schema in SCHEMAS.items()]
    interceptor.on_upstream_line(line({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}}))
    again = answer(interceptor.on_client_line(call(2, "push", {"force": "yes"})))
    assert '"force" must be a boolean' in again["result"]["content"][0]["text"]


def test_a_tool_name_too_long_for_any_tool_is_refused_before_it_reaches_the_log(interceptor: Interceptor) -> None:
    from intercept.proxy.interceptor import MAX_TOOL_NAME_CHARS

    reply = json.loads(interceptor.on_client_line(call(1, "x" * (MAX_TOOL_NAME_CHARS + 1), {})))  # type: ignore[arg-type]
    assert reply["error"]["code"] == -32602 and "longer than" in reply["error"]["message"]
    assert not isinstance(interceptor.on_client_line(call(2, "x" * MAX_TOOL_NAME_CHARS, {})), bytes)  # not refused
