"""The allowed-call fast paths never change what becomes of a message, differentially.

Three shortcuts on the per-call path are held to the slow paths they skip:

- `Interceptor._allowed_as_sent` (tried by `on_client_line` before `_on_message`): where it says
  True, the whole path says "forward unchanged" and records the same one allowed `tool_call`;
  where it says False it recorded nothing. Two interceptors over the same policy take the same
  messages, one as `on_client_line` does (fast path first), the other through `_on_message`
  only; their outcomes and records must agree message by message, over a table of adversarial
  envelopes, ids, params and tool names, for policies of every kind (rules, deny, approval, hide,
  default deny, counters, typed paths with schemas, `"*"` rules, agent conditions), and in the
  states that change a call's fate (a watched tools/list outstanding, a call waiting for the
  store, a policy swapped meanwhile, the name cache full).
- `jsonrpc.parse_client_lines`: whenever it returns values, each is what `parse_client_line`
  gives for its line (and no line is one `parse_client_line` refuses); lines built to pass the
  joined spelling check while one of them is not canonical get None.
- `events._link_records`: the bytes `audit.chain.link_lines` makes of `_render_lines`, and a log
  whose writes fail keeps what it could not write and writes it later the same way.

Real objects only (event log, approval gate, counters, store thread in tmp_path); nothing of the
proxy's own code is replaced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from intercept.approvals.gate import ApprovalGate, UpstreamServer
from intercept.audit.chain import ZERO_HEAD, link_lines, link_open
from intercept.audit.events import RETRY_FIRST_S, EventLog, _link_records, _render_lines, events_dir
from intercept.audit.hashing import ArgumentHasher
from intercept.counters.call_counters import AsyncCallCounters, CallCounters
from intercept.policy import Policy, parse_policy
from intercept.policy.agents import bind_agent
from intercept.proxy import jsonrpc
from intercept.proxy.interceptor import MAX_PLAIN_TOOLS, MAX_TOOL_NAME_CHARS, Interceptor
from intercept.proxy.outcomes import UNPARSED, ClientOutcome, Deciding, Hold, Rewritten
from intercept.proxy.relay import Relay, RelayOptions
from intercept.store.worker import StoreWorker
from tests.support import ROOT, MemoryPipe, typed_repr

HASHER = ArgumentHasher(b"k" * 32)
Message = dict[str, Any]

# Every policy allows `read` outright, so the fast path has something to take.
POLICIES: dict[str, str] = {
    "allow by rule": """\
version: "1"
tools:
  read: {rules: []}
  write:
    rules:
      - name: a path is needed
        conditions: [{path: args.path, op: exists, value: true}]
""",
    "deny rule": """\
version: "1"
tools:
  read: {rules: []}
  rm:
    rules:
      - name: never rm
        action: deny
  write:
    rules:
      - name: no sudo writes
        conditions: [{path: args.sudo, op: exists, value: false}]
""",
    "require approval": """\
version: "1"
tools:
  read: {rules: []}
  deploy:
    rules:
      - name: humans deploy
        action: require_approval
""",
    "hide": """\
version: "1"
hide: [secret, Read, "\\u00e9t\\u00e9"]
tools:
  read: {rules: []}
""",
    "hide everything": """\
version: "1"
hide: ["*"]
tools:
  read: {rules: []}
""",
    "default deny": """\
version: "1"
default: deny
tools:
  read: {rules: []}
  "lire_\\u00e9": {rules: []}
  write:
    rules:
      - name: a path is needed
        conditions: [{path: args.path, op: exists, value: true}]
""",
    "rate limit": """\
version: "1"
tools:
  read: {rules: []}
  search:
    rules:
      - name: search budget
        rate_limit: 2/hour
""",
    "rate limit on every tool": """\
version: "1"
tools:
  read: {rules: []}
  "*":
    rules:
      - name: overall budget
        rate_limit: 3/hour
""",
    "typed paths": """\
version: "1"
tools:
  read: {rules: []}
  resize:
    rules:
      - name: small sizes
        conditions: [{path: args.size, op: lt, value: 100}]
  push:
    loose_types: true
    rules:
      - name: no force push
        conditions: [{path: args.force, op: neq, value: true}]
""",
    "typed star rule": """\
version: "1"
tools:
  read: {rules: []}
  "*":
    rules:
      - name: no admin ports
        conditions: [{path: args.port, op: not_in, value: [22, 3389]}]
""",
    "untyped star rule": """\
version: "1"
tools:
  read: {rules: []}
  "*":
    rules:
      - name: no sudo anywhere
        conditions: [{path: args.sudo, op: exists, value: false}]
""",
    "agent conditions": """\
version: "1"
agents:
  alice: {roles: [senior]}
tools:
  read: {rules: []}
  deploy:
    rules:
      - name: seniors only
        conditions: [{path: agent.roles, op: contains, value: senior}]
  query:
    rules:
      - name: named agents query
        conditions: [{path: agent.name, op: exists, value: true}]
""",
}
SCHEMAS: dict[str, Any] = {
    "read": {"type": "object", "properties": {"path": {"type": "string"}, "port": {"type": "integer"}}},
    "resize": {"type": "object", "properties": {"size": {"type": "integer"}}},
    "push": {"type": "object", "properties": {"force": {"type": "boolean"}}},
    "search": {"type": "object", "properties": {"q": {"type": "string"}}},
}
PROXY_ID = re.compile(r"intercept-[0-9a-f]{8}-[0-9]+")
APPROVAL_ID = re.compile(r"apr_[0-9a-f]{32}")
TIME_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z")
NO_FAST_PATH = ("hide everything", "rate limit on every tool", "typed star rule")  # `read` never goes fast


def policy_of(name: str, agent: str | None = None) -> Policy:
    """A table policy, bound to `agent` as the session binds it."""
    return bind_agent(parse_policy(POLICIES[name]), agent)


# -- messages -----------------------------------------------------------------------------------


def call(request_id: Any, tool: str, arguments: Any = None, **params: Any) -> Message:
    """A tools/call; `arguments` None leaves them out, `params` adds (or, as None, drops) members."""
    body: Message = {"name": tool}
    if arguments is not None:
        body["arguments"] = arguments
    for key, value in params.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": body}


def envelope(**members: Any) -> Message:
    """An allowed call to `read` with envelope members added, replaced, or (as `...`) removed."""
    message = call(7, "read", {"path": "/tmp/a"})
    for key, value in members.items():
        if value is ...:
            message.pop(key, None)
        else:
            message[key] = value
    return message


def with_params(params: Any) -> Message:
    return {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": params}


IDS: list[Any] = [
    0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30,
    1.0, -0.0, 1.5, 1e300, "", "1", "l", "w", "intercept-", "intercept-1", "intercept-00000000-1", "Intercept-1",
    " intercept-1", "\u00e9", None, True, False, [1], {"id": 1}, [],
]  # fmt: skip
ARGUMENTS: list[Any] = [
    {}, {"path": "/tmp/a"}, {"sudo": True}, {"Sudo": True}, {"SUDO": 1}, {"path": "/tmp/\u00e9\u202e"},
    {"size": 5}, {"size": "5"}, {"size": 5.5}, {"size": True}, {"size": 500}, {"port": 22}, {"port": "22"},
    {"force": True}, {"force": "yes"}, {"force": False}, {"port": 8080}, {"port": "8080"}, {"port": 8080.5},
    {"port": [8080]}, {"port": None}, {"n": 2**70}, {"nested": {"a": [1, {"b": None}]}},
    {"path": "x", "Path": "y"}, {"q": "x" * 5000}, {"\u212a": 1, "k": 2},
]  # fmt: skip
NAMES: list[str] = [
    "read", "READ", "Read", "rEad", "read ", " read", "read\u00a0", "read\u200b", "re\u00adad", "", "*", "**",
    "x" * MAX_TOOL_NAME_CHARS, "x" * (MAX_TOOL_NAME_CHARS + 1), "r" * 5000, "read\x1b[2J", "read\n", "read\r",
    "read\t", "\x7f", "\x85read", "\u202eread", "\u2066read", "\u200eread", "\u061cread", "read\u2028", "read\u2029",
    "\ufeffread", "\U000e0001read", "\ue000read", "\u00e9t\u00e9", "e\u0301t\u00e9", "lire_\u00e9", "\u8aad\u3080",
    "\U0001f600", "secret", "SECRET", "rm", "RM", "write", "deploy", "search", "Search", "resize", "push", "query",
    "intercept-1", "tools/list",
]  # fmt: skip


def table() -> list[Any]:
    """Client messages to judge: plain calls of every name, then adversarial shapes around an
    allowed call (ids, envelope members, params members, arguments), then a few non-calls."""
    messages: list[Any] = [call(n, name, {"path": "/tmp/a"}) for n, name in enumerate(NAMES, 100)]
    messages += [call(n, "read", arguments) for n, arguments in enumerate(ARGUMENTS, 200)]
    messages += [call(n, tool, arguments) for n, (tool, arguments) in enumerate(
        [(t, a) for t in ("write", "resize", "push", "search", "deploy", "query", "rm", "other") for a in ARGUMENTS[:20]],
        300,
    )]  # fmt: skip
    messages += [call(request_id, "read", {"path": "/tmp/a"}) for request_id in IDS]
    messages += [envelope(id=...), envelope(jsonrpc=...), envelope(jsonrpc="1.0"), envelope(jsonrpc=None)]
    messages += [envelope(**{key: value}) for key, value in [
        ("Method", "ping"), ("ID", 99), ("Id", 99), ("Params", {}), ("PARAMS", None), ("JSONRPC", "2.0"),
        ("Jsonrpc", "2.0"), ("result", {}), ("error", {"code": 1}), ("foo", 1), ("method\u017f", 1),
        ("jsonrpc\u212a", 1), ("\u0130d", 1),
    ]]  # fmt: skip
    messages += [
        {"JSONRPC": "2.0", "id": 9, "method": "tools/call", "params": {"name": "read", "arguments": {}}},
        {"foo": "2.0", "id": 9, "method": "tools/call", "params": {"name": "read", "arguments": {}}},
        {"jsonrpc": "2.0", "ID": 9, "method": "tools/call", "params": {"name": "read", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "Params": {"name": "read", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "result": {"name": "read", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 9, "Method": "tools/call", "params": {"name": "read", "arguments": {}}},
        {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "read", "arguments": {}}},
        {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "read", "arguments": {}}, "foo": 1},
        {"id": 9, "method": "tools/call", "params": {"name": "read", "arguments": {}}},
        {"id": 9, "method": "tools/call", "params": {"name": "read", "arguments": {}}, "error": None},
    ]
    messages += [with_params(params) for params in [
        None, [], ["read", {}], "read", 1, {}, {"name": "read"}, {"arguments": {}},
        {"name": "read", "arguments": None}, {"name": "read", "arguments": []}, {"name": "read", "arguments": "{}"},
        {"name": "read", "arguments": 0}, {"name": "read", "arguments": {}, "_meta": {}},
        {"name": "read", "arguments": {}, "_meta": None}, {"name": "read", "arguments": {}, "_meta": "x"},
        {"name": "read", "arguments": {}, "_meta": {"progressToken": 1}},
        {"name": "read", "arguments": {}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
        {"name": "read", "arguments": {}, "_meta": {"name": "rm", "arguments": {"sudo": True}}},
        {"name": "read", "arguments": {}, "requestState": "x"}, {"name": "read", "arguments": {}, "requestState": {}},
        {"name": "read", "arguments": {}, "Name": "rm"}, {"name": "read", "arguments": {}, "NAME": "rm"},
        {"name": "read", "arguments": {}, "ARGUMENTS": {"sudo": 1}}, {"name": "read", "arguments": {}, "Arguments": {}},
        {"name": "read", "arguments": {}, "_Meta": {}}, {"name": "read", "arguments": {}, "_META": {}},
        {"name": "read", "arguments": {}, "foo": 1}, {"name": "read", "arguments": {}, "name\u017f": 1},
        {"name": "read", "arguments": {}, "_meta": {}, "foo": 1}, {"Name": "read", "arguments": {}},
        {"name": "read", "ARGUMENTS": {}}, {"name": "read", "_meta": {}, "requestState": "x"},
        {"name": 1, "arguments": {}}, {"name": None, "arguments": {}}, {"name": ["read"], "arguments": {}},
        {"name": "rm", "arguments": {}, "_meta": {}}, {"name": "read", "arguments": {"sudo": 1}, "_meta": {}},
    ]]  # fmt: skip
    messages += [
        {"jsonrpc": "2.0", "id": 10, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
        {"jsonrpc": "2.0", "id": 11, "method": "tools/call "},
        {"jsonrpc": "2.0", "id": 12, "method": "Tools/call", "params": {"name": "read", "arguments": {}}},
        [call(13, "read", {}), call(14, "read", {})],
        [call(15, "rm", {})],
        [],
        "tools/call",
        None,
    ]
    return messages


def fuzzed(seed: int, count: int) -> Iterator[Any]:
    """Random mixes of the table's parts: ids, names, arguments, params and envelope members."""
    rng = random.Random(seed)
    extra_params: list[tuple[str, Any]] = [
        ("_meta", {}), ("_meta", None), ("requestState", "s"), ("Name", "rm"), ("foo", 1), ("_Meta", {}),
    ]  # fmt: skip
    extra_members: list[tuple[str, Any]] = [("foo", 1), ("ID", 1), ("Method", "x"), ("result", {}), ("Params", {})]
    for _ in range(count):
        message = call(rng.choice(IDS), rng.choice(NAMES), rng.choice([*ARGUMENTS, None, [], "x"]))
        if rng.random() < 0.3:
            key, value = rng.choice(extra_params)
            message["params"][key] = value
        if rng.random() < 0.2:
            key, value = rng.choice(extra_members)
            message[key] = value
        if rng.random() < 0.1:
            del message[rng.choice(["jsonrpc", "id", "params"])]
        yield message


# -- one interceptor, and two side by side --------------------------------------------------------


class Side:
    """One interceptor as the session builds it, over a state dir of its own, and its records."""

    def __init__(self, state_dir: Path, policy: Policy) -> None:
        state_dir.mkdir()
        self.events = EventLog(state_dir, "diff", HASHER)
        self.worker = StoreWorker()
        gate = ApprovalGate(
            state_dir, UpstreamServer("diff", "name:diff", '["diff"]'), self.events, HASHER, self.worker
        )
        counters = AsyncCallCounters(CallCounters(state_dir), self.worker)
        self.interceptor = Interceptor(policy, "diff", self.events, gate, counters, self.worker)
        self._seen = 0  # bytes of the file already read by `new_calls`

    def new_calls(self) -> list[dict[str, Any]]:
        """The `tool_call` records written since the last look (after a flush)."""
        self.events.flush()
        if not self.events.path.exists():
            return []
        with self.events.path.open("rb") as file:
            file.seek(self._seen)
            data = file.read()
        self._seen += len(data)
        records = [json.loads(text) for text in data.split(b"\n") if text]
        keys = ("type", "tool", "result", "args_hash", "rule")
        return [{key: record.get(key) for key in keys} for record in records if record["type"] == "tool_call"]

    async def close(self) -> None:
        while self.worker.busy:
            await self.worker.drain(5)
        self.worker.close()
        self.events.close()


def _normalized(value: Any) -> Any:
    """A JSON value with the proxy's random ids (watched requests, approvals) and the times in it
    made comparable."""
    if isinstance(value, str):
        return TIME_STAMP.sub("<time>", APPROVAL_ID.sub("apr_*", PROXY_ID.sub("intercept-*", value)))
    if isinstance(value, list):
        return [_normalized(item) for item in value]
    if isinstance(value, dict):
        return {key: _normalized(item) for key, item in value.items()}
    return value


def _shape(outcome: ClientOutcome) -> tuple[str, Any]:
    """What the relay would do with an outcome, comparable across two interceptors."""
    if outcome is None:
        return ("forward as sent", None)
    if isinstance(outcome, Rewritten):
        return ("forward instead", _normalized(json.loads(outcome.line)))
    if isinstance(outcome, Hold):
        return ("hold", _normalized(json.loads(outcome.request)))
    assert isinstance(outcome, bytes), outcome
    return ("answer", [_normalized(json.loads(text)) for text in outcome.splitlines()])


class Pair:
    """A takes each message as `on_client_line` does (the fast path, then the whole path if it
    declined); B takes it through the whole path only. Both start from the same policy."""

    def __init__(self, tmp_path: Path, policy: Policy) -> None:
        self.a = Side(tmp_path / "a", policy)
        self.b = Side(tmp_path / "b", policy)
        self.fast = 0  # messages the fast path took
        self.held: list[tuple[Deciding, Deciding]] = []  # decisions left waiting for the store (`keep_waiting`)

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.a, self.b

    def set_policy(self, policy: Policy) -> None:
        self.a.interceptor.policy = policy
        self.b.interceptor.policy = policy

    async def send(self, message: Any, *, keep_waiting: bool = False) -> tuple[str, Any]:
        """Judge `message` on both (each a copy of its own, as each line is parsed on its own) and
        check they agree; returns the outcome's shape. With `keep_waiting`, a call that waits for
        the store is left waiting (see `settle`)."""
        mine, theirs = copy.deepcopy(message), copy.deepcopy(message)
        a, b = self.a.interceptor, self.b.interceptor
        fast = type(mine) is dict and mine.get("method") == "tools/call" and a._allowed_as_sent(mine)
        fast_calls = self.a.new_calls()
        outcome_b = b._on_message(theirs)
        if fast:
            self.fast += 1
            assert outcome_b is None, (message, outcome_b)  # the whole path forwards it as sent too
            calls_b = self.b.new_calls()
            assert fast_calls == calls_b, message
            [record] = fast_calls
            assert record["result"] == "allowed" and record["rule"] is None
            assert record["tool"] == mine["params"]["name"]
            assert record["args_hash"] == HASHER.arguments(mine["params"]["arguments"])
            return _shape(None)
        assert fast_calls == [], (message, fast_calls)  # declined: nothing recorded
        outcome_a = a._on_message(mine)
        if isinstance(outcome_a, Deciding) or isinstance(outcome_b, Deciding):
            assert isinstance(outcome_a, Deciding) and isinstance(outcome_b, Deciding), (message, outcome_a)
            if keep_waiting:
                self.held.append((outcome_a, outcome_b))
                return ("deciding", None)
            outcome_a, outcome_b = await outcome_a.wait(), await outcome_b.wait()
        shape = _shape(outcome_a)
        assert shape == _shape(outcome_b), message
        assert self.a.new_calls() == self.b.new_calls(), message
        if shape[0] == "forward instead" and shape[1].get("method") == "tools/call":
            self.reply_to_calls(outcome_a, outcome_b)  # the upstream answers: nothing stays watched
        return shape

    def reply_to_calls(self, *outcomes: ClientOutcome) -> None:
        for side, outcome in zip(self.sides, outcomes, strict=True):
            assert isinstance(outcome, Rewritten)
            proxy_id = json.loads(outcome.line)["id"]
            reply = {"jsonrpc": "2.0", "id": proxy_id, "result": {"content": []}}
            assert side.interceptor.on_upstream_line(orjson.dumps(reply)) is not None

    async def settle(self) -> None:
        """Let the calls left waiting for the store be decided, each side's outcomes agreeing."""
        held, self.held = self.held, []
        for deciding_a, deciding_b in held:
            outcome_a, outcome_b = await deciding_a.wait(), await deciding_b.wait()
            assert _shape(outcome_a) == _shape(outcome_b)
            if isinstance(outcome_a, Rewritten):
                self.reply_to_calls(outcome_a, outcome_b)
        assert self.a.new_calls() == self.b.new_calls()

    async def list_tools(self, request_id: Any, *, answer: bool) -> list[Rewritten]:
        """A client tools/list through both (forwarded under a watched id); with `answer`, the
        upstream answers it with SCHEMAS."""
        request = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}
        forwarded: list[Rewritten] = []
        for side in self.sides:
            outcome = side.interceptor.on_client_line(orjson.dumps(request))
            assert isinstance(outcome, Rewritten)
            forwarded.append(outcome)
        if answer:
            self.answer_listing(forwarded)
        return forwarded

    def answer_listing(self, forwarded: list[Rewritten]) -> None:
        tools = [{"name": name, "inputSchema": schema} for name, schema in SCHEMAS.items()]
        for side, outcome in zip(self.sides, forwarded, strict=True):
            proxy_id = json.loads(outcome.line)["id"]
            reply = {"jsonrpc": "2.0", "id": proxy_id, "result": {"tools": tools}}
            assert side.interceptor.on_upstream_line(orjson.dumps(reply)) is not None


@pytest.fixture
async def pairs(tmp_path: Path) -> AsyncIterator[Callable[[Policy], Pair]]:
    made: list[Pair] = []

    def make(policy: Policy) -> Pair:
        directory = tmp_path / f"pair{len(made)}"
        directory.mkdir()
        made.append(Pair(directory, policy))
        return made[-1]

    yield make
    for pair in made:
        await pair.settle()
        for side in pair.sides:
            await side.close()


# -- the interceptor's fast path ------------------------------------------------------------------


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("state", ["fresh", "tools listed", "tools/list outstanding"])
async def test_the_fast_path_allows_only_what_the_whole_path_forwards_as_sent(
    pairs: Callable[[Policy], Pair], policy_name: str, state: str
) -> None:
    pair = pairs(policy_of(policy_name))
    listing: list[Rewritten] = []
    if state == "tools listed":
        await pair.list_tools("l", answer=True)
    elif state == "tools/list outstanding":
        listing = await pair.list_tools("l", answer=False)
    for message in [*table(), *fuzzed(len(policy_name) * 31 + len(state), 150)]:
        await pair.send(message)
    if state == "tools/list outstanding":
        assert pair.fast == 0  # a watched request is outstanding: every call takes the whole path
        pair.answer_listing(listing)
        await pair.send(call("l", "read", {}))  # the id is free again
        still_watching = pair.a.interceptor.watching  # the proxy's own listing for a typed call, unanswered
        assert pair.fast == (policy_name not in NO_FAST_PATH and not still_watching)
    elif policy_name not in NO_FAST_PATH:
        assert pair.fast > 20  # the fast path is reached: the comparison is not empty


async def test_an_outstanding_tools_list_id_is_refused_to_a_call_as_the_whole_path_refuses_it(
    pairs: Callable[[Policy], Pair],
) -> None:
    pair = pairs(policy_of("allow by rule"))
    listing = await pair.list_tools("w", answer=False)
    shape = await pair.send(call("w", "read", {}))
    assert shape[0] == "answer" and "still in use" in shape[1][0]["error"]["message"]
    for request_id in (1, "x", -5):
        assert await pair.send(call(request_id, "read", {})) == ("forward as sent", None)
    assert pair.fast == 0
    pair.answer_listing(listing)
    assert await pair.send(call("w", "read", {})) == ("forward as sent", None)
    assert pair.fast == 1


async def test_a_call_waiting_for_the_store_keeps_its_id_taken_and_others_judged_whole(
    pairs: Callable[[Policy], Pair],
) -> None:
    pair = pairs(policy_of("rate limit"))
    assert await pair.send(call(1, "search", {"q": "a"}), keep_waiting=True) == ("deciding", None)
    assert pair.a.interceptor.deciding and pair.b.interceptor.deciding
    for request_id in (1, 1.0, "1", 2):
        shape = await pair.send(call(request_id, "read", {}))
        if request_id == 1:
            assert shape[0] == "answer" and "still in use" in shape[1][0]["error"]["message"]
        else:
            assert shape == ("forward as sent", None)
    for message in table():
        await pair.send(message)
    assert pair.fast == 0  # every call was judged whole while one waited
    await pair.settle()
    assert await pair.send(call(1, "read", {})) == ("forward as sent", None)
    assert pair.fast == 1


async def test_the_rate_limit_is_never_skipped(pairs: Callable[[Policy], Pair]) -> None:
    for policy_name, tool in (("rate limit", "search"), ("rate limit on every tool", "read")):
        pair = pairs(policy_of(policy_name))
        shapes = [(await pair.send(call(n, tool, {"q": "x"})))[0] for n in range(5)]
        budget = 2 if tool == "search" else 3
        assert shapes == ["forward instead"] * budget + ["answer"] * (5 - budget)
        assert pair.fast == 0


@pytest.mark.parametrize(
    ("first", "second", "tool", "arguments"),
    [
        pytest.param("allow by rule", "deny rule", "rm", {}, id="allowed, then denied"),
        pytest.param("allow by rule", "hide", "secret", {}, id="allowed, then hidden"),
        pytest.param("allow by rule", "hide everything", "read", {}, id="allowed, then everything hidden"),
        pytest.param("allow by rule", "default deny", "other", {}, id="allowed, then not listed"),
        pytest.param("allow by rule", "require approval", "deploy", {}, id="allowed, then approved"),
        pytest.param("allow by rule", "rate limit", "search", {"q": "x"}, id="allowed, then counted"),
        pytest.param("allow by rule", "rate limit on every tool", "other", {}, id="allowed, then counted by *"),
        pytest.param("allow by rule", "typed paths", "resize", {"size": 5.5}, id="allowed, then typed"),
        pytest.param("allow by rule", "typed star rule", "other", {"port": "22"}, id="allowed, then typed by *"),
        pytest.param("allow by rule", "untyped star rule", "other", {"sudo": 1}, id="allowed, then denied by *"),
        pytest.param("deny rule", "allow by rule", "rm", {}, id="denied, then allowed"),
    ],
)
async def test_a_swapped_policy_is_judged_afresh(
    pairs: Callable[[Policy], Pair], first: str, second: str, tool: str, arguments: Message
) -> None:
    """The fast path remembers tools per policy: nothing it learnt of a name under one policy may
    carry over to the next (nor back: the first policy comes back as the very same object)."""
    policy_one, policy_two = policy_of(first), policy_of(second)
    pair = pairs(policy_one)
    await pair.list_tools("l", answer=True)
    for round_number, policy in enumerate((policy_one, policy_two, policy_one, policy_two, policy_of(second))):
        pair.set_policy(policy)
        for n in range(3):
            await pair.send(call(round_number * 10 + n, tool, arguments))
            await pair.send(call(round_number * 10 + n + 5, "read", {}))
    assert pair.fast >= 5


async def test_agent_conditions_follow_the_agent_the_policy_is_bound_to(pairs: Callable[[Policy], Pair]) -> None:
    nobody, alice, bob = (policy_of("agent conditions", agent) for agent in (None, "alice", "bob"))
    pair = pairs(nobody)
    shapes: dict[str, list[str]] = {}
    for label, policy in (("nobody", nobody), ("alice", alice), ("bob", bob), ("nobody again", nobody)):
        pair.set_policy(policy)
        shapes[label] = [(await pair.send(call(n, tool, {})))[0] for n, tool in enumerate(("deploy", "query", "read"))]
    assert shapes["alice"] == ["forward as sent"] * 3
    assert shapes["bob"] == ["answer", "forward as sent", "forward as sent"]
    assert shapes["nobody"] == shapes["nobody again"] == ["answer", "answer", "forward as sent"]


@pytest.mark.parametrize("policy_name", ["deny rule", "rate limit", "typed paths", "default deny"])
async def test_names_beyond_the_cache_are_judged_as_the_first(
    pairs: Callable[[Policy], Pair], policy_name: str
) -> None:
    """Past MAX_PLAIN_TOOLS names, calls still take the fast path only where they may, however
    often a name comes back."""
    pair = pairs(policy_of(policy_name))
    await pair.list_tools("l", answer=True)
    for n in range(MAX_PLAIN_TOOLS + 5):
        await pair.send(call(n, f"tool{n}", {}))
    assert pair.fast == (MAX_PLAIN_TOOLS + 5 if policy_name != "default deny" else 0)
    late = [
        call(1, "rm", {}), call(2, "write", {"sudo": 1}), call(3, "read\x1b"), call(4, "x" * 2000, {}),
        call(5, "search", {"q": "x"}), call(6, "resize", {"size": 5.5}), call(7, "resize", {"size": "5"}),
        call(8, "other", {}), call(9, "", {}), call(10, "push", {"force": "yes"}),
    ]  # fmt: skip
    for message in [*late, *late, *late, *table(), *late]:
        await pair.send(message)
    pair.set_policy(policy_of("hide everything"))
    for n in range(MAX_PLAIN_TOOLS + 5, MAX_PLAIN_TOOLS + 10):
        assert (await pair.send(call(n, f"tool{n}", {})))[0] == "answer"


async def test_a_typed_tool_is_held_for_the_listing_on_both_paths(pairs: Callable[[Policy], Pair]) -> None:
    """No listing yet: a call whose rules read typed paths asks for the tools first."""
    pair = pairs(policy_of("typed paths"))
    shape = await pair.send(call(1, "resize", {"size": 5}))
    assert shape[0] == "hold" and shape[1]["method"] == "tools/list"
    assert pair.fast == 0


async def test_client_lines_judged_from_a_value_given_or_parsed_agree(pairs: Callable[[Policy], Pair]) -> None:
    """`on_client_line(line, message)` (the relay's batched parse) does what `on_client_line(line)` does."""
    pair = pairs(policy_of("untyped star rule"))
    await pair.list_tools("l", answer=True)
    for message in table():
        line = jsonrpc.encode(message)[:-1]
        try:
            given = jsonrpc.parse_client_line(line)
        except jsonrpc.RefusedLine:
            given = UNPARSED  # the relay gives no value for a line the parse refuses
        outcomes = [pair.a.interceptor.on_client_line(line, given), pair.b.interceptor.on_client_line(line)]
        outcomes = [await outcome.wait() if isinstance(outcome, Deciding) else outcome for outcome in outcomes]
        assert _shape(outcomes[0]) == _shape(outcomes[1]), message
        assert pair.a.new_calls() == pair.b.new_calls()
        for outcome in outcomes:
            if isinstance(outcome, Rewritten) and json.loads(outcome.line).get("method") == "tools/call":
                pair.reply_to_calls(*outcomes)
                break


def _normalized_lines(pipe: MemoryPipe) -> list[Any]:
    return [_normalized(message) for message in pipe.messages()]


RELAYED_LINES: list[bytes] = [
    orjson.dumps(call(1, "read", {"path": "/tmp/a"})),
    orjson.dumps(call(2, "read", {"sudo": 1})),
    orjson.dumps(call(3, "rm", {})),
    orjson.dumps(call("intercept-1", "read", {})),
    b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"read","arguments":{},"Name":"rm"}}',
    b'{"jsonrpc":"2.0","id":5,"ID":6,"method":"tools/call","params":{"name":"read","arguments":{}}}',
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read","arguments":{}},"id":8}',
    b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"read","arguments":{}}} ',
    b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"r\\u0065ad","arguments":{}}}',
    b'{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"read","arguments":{"sudo":1,"Sudo":2}}}',
    orjson.dumps(call(12, "read\u202e", {})),
    orjson.dumps({"jsonrpc": "2.0", "id": "w", "method": "tools/list"}),
    orjson.dumps(call("w", "read", {})),
    orjson.dumps(call(13, "read", {})),
    b"",
    b"1,2",
    b"[3",
    orjson.dumps([call(14, "read", {}), call(15, "read", {})]),
    orjson.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "w"}}),
    orjson.dumps(call(16, "read", {})),
]


@pytest.mark.parametrize("cut", [1, 2, 3, len(RELAYED_LINES)])
async def test_a_relay_judges_lines_parsed_together_as_it_judges_them_one_by_one(
    pairs: Callable[[Policy], Pair], cut: int
) -> None:
    """Chunks of several lines (parsed at once when all are canonical) against the same lines
    sent one chunk each (each parsed alone): the same lines go upstream, the same answers back."""
    pair = pairs(policy_of("untyped star rule"))
    upstream, client = (MemoryPipe(), MemoryPipe()), (MemoryPipe(), MemoryPipe())
    relays = [Relay(side.interceptor, RelayOptions(command=["true"])) for side in pair.sides]
    for relay, to_upstream, to_client in zip(relays, upstream, client, strict=True):
        relay._child_stdin, relay._out = to_upstream, to_client  # type: ignore[assignment]
    for start in range(0, len(RELAYED_LINES), cut):
        relays[0].on_client_data(b"".join(line + b"\n" for line in RELAYED_LINES[start : start + cut]))
    for line in RELAYED_LINES:
        relays[1].on_client_data(line + b"\n")
    assert _normalized_lines(upstream[0]) == _normalized_lines(upstream[1])
    assert _normalized_lines(client[0]) == _normalized_lines(client[1])
    assert pair.a.new_calls() == pair.b.new_calls()
    assert len(upstream[0].messages()) >= 5 and len(client[0].messages()) >= 5


# -- parsing chunks of lines at once --------------------------------------------------------------


def _alone(line: bytes | None) -> str | None:
    """What `parse_client_line` makes of a line on its own: its value (typed) or None if refused."""
    if line is None:
        return None
    try:
        return typed_repr(jsonrpc.parse_client_line(line))
    except jsonrpc.RefusedLine:
        return None


CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","arguments":{"path":"/tmp/a"}}}'
PING = b'{"jsonrpc":"2.0","id":2,"method":"ping"}'
CANONICAL_CHUNKS: list[list[bytes]] = [
    [CALL, PING],
    [CALL, CALL, CALL],
    [b"1", b"2"],
    [b"0", b"-1", b"1.5", b"-0.0", b"1e-7", b"true", b"null", b'""', b"[]", b"{}"],
    [b'{"A":1}', b'{"a":1}'],  # keys equal up to case, but in different lines
    [b'{"a":{"B":1},"b":{"A":2}}', PING],
    [b'{"s":"\\u001f\\n\\t\\"\\\\"}', PING],
    [b'{"jsonrpc":"2.0","id":18446744073709551615,"method":"ping"}', PING],
    [b'{"jsonrpc":"2.0","id":-9223372036854775808,"method":"ping"}', PING],
    [b"[" * 200 + b"]" * 200, PING],
    [b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]', CALL],
    [b'"1,2"', b'"[3"'],
    [b'{"a":"1,2"}', b'{"b":"],["}'],
]
NOT_CANONICAL_CHUNKS: list[list[bytes | None]] = [
    [CALL, PING + b" "],
    [CALL, b" " + PING],
    [CALL, PING.replace(b",", b", ")],
    [CALL, PING + b"\r"],
    [CALL, b"\xef\xbb\xbf" + PING],
    [CALL, b""],
    [CALL, b"   "],
    [CALL, None],
    [None, CALL],
    [CALL, b'{"jsonrpc":"2.0","id":2,"method":"ping","id":3}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"ID":2,"method":"ping"}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","NAME":"rm","arguments":{}}}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":{"k":1,"K":2}}}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\xe2\x84\xaa":1,"k":2}}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\xc3\xa9"}}'],
    [CALL, b'{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}'],
    [CALL, b'{"jsonrpc":"2.0","id":-9223372036854775809,"method":"ping"}'],
    [CALL, b'{"jsonrpc":"2.0","id":1.0e0,"method":"ping"}'],
    [CALL, b'{"jsonrpc":"2.0","id":1E5,"method":"ping"}'],
    [CALL, b'{"jsonrpc":"2.0","id":10,"method":"ping"}'.replace(b"10", b"1e1")],
    [CALL, b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}'],
    [CALL, b'{"jsonrpc":"2.0","id":Infinity,"method":"ping"}'],
    [CALL, b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call"}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"method":"\\u0074ools/call"}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\\ud800"}}'],
    [CALL, b'{"jsonrpc":"2.0","id":1,"method":"ping"}{"id":2}'],
    [CALL, b"[" * 300 + b"]" * 300],
    # Pieces that are no JSON value alone but would join into one.
    [b"1,2", b"3"],
    [b"[3", b"4]"],
    [b"[", b"]"],
    [b'{"a":1', b'"b":2}'],
    [b'"a', b'b"'],
    [b'{"jsonrpc":"2.0","id":1', b'"method":"ping"}'],
    [CALL[:40], CALL[41:]],
    [b"1,", b"2"],
    [b"1", b",2"],
    [b"[1,2]", b"]"],
    [b"1 ", b"2"],
    [b"1\t", b"2"],
    [b"1", b"\t2"],
    [b"1", b"2\n"],
]


@pytest.mark.parametrize("lines", CANONICAL_CHUNKS)
def test_a_canonical_chunk_is_parsed_at_once_as_each_line_alone(lines: list[bytes]) -> None:
    values = jsonrpc.parse_client_lines(list(lines))
    assert values is not None
    assert [typed_repr(value) for value in values] == [_alone(line) for line in lines]


@pytest.mark.parametrize("lines", NOT_CANONICAL_CHUNKS)
def test_a_chunk_with_a_line_not_canonical_is_left_to_be_parsed_line_by_line(lines: list[bytes | None]) -> None:
    assert jsonrpc.parse_client_lines(list(lines)) is None


def _pieces(inner: bytes, rng: random.Random) -> list[bytes]:
    """`inner` cut at some of its commas (inside strings and nested values too)."""
    commas = [i for i, byte in enumerate(inner) if byte == ord(",")]
    cuts = sorted(rng.sample(commas, rng.randint(1, min(len(commas), 4)))) if commas else []
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(inner[start:cut])
        start = cut + 1
    pieces.append(inner[start:])
    return pieces


def test_lines_cut_anywhere_from_one_canonical_array_never_pass_unless_each_is_canonical() -> None:
    """Lines that join into exactly `dumps([...])` are the strongest try at the joined check: cut
    a canonical array's inside at random commas; whenever values come back, each line alone
    must parse to the same value."""
    rng = random.Random(7)
    values: list[Any] = [
        1, -2, 3.25, "a,b", "],[", '","', True, None, [], {}, [1, 2, [3, 4]], {"a": 1, "b": [1, {"c": ","}]},
        {"x": "y", "A": "b"}, orjson.loads(CALL), orjson.loads(PING), "\\", '"', 18446744073709551615,
    ]  # fmt: skip
    passed = 0
    for _ in range(3000):
        chosen = rng.sample(values, rng.randint(1, 6))
        inner = orjson.dumps(chosen)[1:-1]
        lines = _pieces(inner, rng)
        result = jsonrpc.parse_client_lines(list(lines))
        if result is None:
            continue
        passed += 1
        assert [typed_repr(value) for value in result] == [_alone(line) for line in lines], lines
    assert passed > 100  # cuts between values do pass: the check is not vacuous


def test_random_chunks_agree_with_parsing_each_line_alone() -> None:
    """Canonical lines with one spoiled now and then (a space, an escape, a repeated or recased
    key): a chunk either comes back as each line's value or not at all."""
    rng = random.Random(11)
    spoilers: list[Callable[[bytes], bytes]] = [
        lambda line: line + b" ",
        lambda line: line.replace(b":", b": ", 1),
        lambda line: line.replace(b'"id"', b'"\\u0069d"', 1),
        lambda line: line.replace(b'"id":', b'"ID":3,"id":', 1),
        lambda line: line.replace(b'"id":', b'"id":3,"id":', 1),
        lambda line: line.replace(b"2.0", b"2.00", 1),
        lambda line: line.replace(b"read", b"r\xc3\xa9ad", 1),
        lambda line: line[:-1],
        lambda line: line + b",",
    ]
    returned = 0
    for _ in range(2000):
        lines = [rng.choice([CALL, PING, b"1", b"{}", b'{"A":[true]}']) for _ in range(rng.randint(2, 5))]
        if rng.random() < 0.5:
            index = rng.randrange(len(lines))
            lines[index] = rng.choice(spoilers)(lines[index])
        result = jsonrpc.parse_client_lines(list(lines))
        alone = [_alone(line) for line in lines]
        if result is None:
            continue
        returned += 1
        assert None not in alone, lines
        assert [typed_repr(value) for value in result] == alone
    assert returned > 500


# -- rendering and linking event records in one step ----------------------------------------------


def _routine(stamp_ns: int, tool: str, arguments: Any, result: str = "allowed") -> tuple[int, str, str, Any]:
    """A routine call as `EventLog.routine_call` buffers it."""
    return (stamp_ns, _middle(tool), result, arguments)


def _middle(tool: str) -> str:
    """A routine record's fixed part between its time and its result, as `EventLog._escape` makes it."""
    return '","type":"tool_call","severity":"info","instance":"i","server":"s","tool":' + json.dumps(
        tool, ensure_ascii=False
    )[:-1] + '","result":"'  # fmt: skip


def _open(record: dict[str, Any]) -> str:
    """A record as `EventLog.emit` buffers it: JSON without its closing brace."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)[:-1]


def _deep(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": value}
    return value


ITEMS: list[Any] = [
    _open({"ts": "2025-01-01T00:00:00.000000Z", "type": "startup", "server": "s"}),
    _routine(1_763_763_734_999_999_999, "read", {"path": "/tmp/a"}),
    _routine(1_763_763_735_000_000_001, "read", {}),
    _routine(1_763_763_735_000_999_001, "lire_\u00e9", {"q": "\u8aad\u3080 \U0001f600"}),
    _open({"ts": "2025-01-01T00:00:01.000000Z", "type": "tool_call", "tool": "\u00e9\ud800", "rule": "r\udfff"}),
    _routine(1_763_763_736_000_000_000, "x\ud800y", {"s": "\udc00"}),
    _routine(1_000_000_000_000_000_000, "read", {"n": 2**70}),
    _routine(999_999_999_999_999_999, "read", {"f": 1.5}),
    _routine(0, "read", {}),
    _routine(10**19, "read", []),
    _routine(1_763_763_736_000_000_000, "deep", _deep(5000)),
    _open({"ts": "2025", "type": "events_gap", "error": "\u202e\x1b[2J", "lost": 0}),
    _routine(1_763_763_736_000_000_000, "read", {"\u212a": 1, "k": 2}, "denied"),
]


@pytest.mark.parametrize("hasher", [HASHER, None], ids=["keyed hash", "no hasher"])
@pytest.mark.parametrize(("seq", "head"), [(0, ZERO_HEAD), (41, hashlib.sha256(b"x").hexdigest())])
def test_records_linked_as_rendered_are_the_bytes_of_rendering_then_linking(
    hasher: ArgumentHasher | None, seq: int, head: str
) -> None:
    for items in (ITEMS, ITEMS[::-1], ITEMS[1:4], ITEMS[:1], []):
        expected = link_lines(_render_lines(list(items), hasher), seq, head)
        assert _link_records(list(items), seq, head, hasher) == expected
        lines, last_seq, last_head = expected
        for offset, (linked, rendered) in enumerate(zip(lines, _render_lines(list(items), hasher), strict=True)):
            previous = head if offset == 0 else hashlib.sha256(lines[offset - 1]).hexdigest()
            assert linked == link_open(rendered, seq + offset + 1, previous)
        assert last_seq == seq + len(items)
        assert last_head == (hashlib.sha256(lines[-1]).hexdigest() if lines else head)


def _written(log: EventLog) -> list[bytes]:
    return log.path.read_bytes().split(b"\n")[:-1]


def _expected_chain(rendered: list[str], file_lines: list[bytes]) -> None:
    """The file is one chain from its start; each line is `link_open` of its record rendered as
    `EventLog` renders records (compact JSON, non-ASCII as is, lone surrogates escaped), and
    `rendered` (the buffered records, `_render_lines`) appears among them in order, whole."""
    previous, remaining = ZERO_HEAD, list(rendered)
    for seq, linked in enumerate(file_lines, 1):
        record = json.loads(linked)
        assert record.pop("seq") == seq and record.pop("prev") == previous
        assert linked == link_open(json.dumps(record, ensure_ascii=False, separators=(",", ":"))[:-1], seq, previous)
        if remaining and linked == link_open(remaining[0], seq, previous):
            remaining.pop(0)
        previous = hashlib.sha256(linked).hexdigest()
    assert remaining == []


def test_an_event_log_writes_the_bytes_of_rendering_then_linking(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "i", HASHER)
    log.emit("startup", server="s\u00e9\u202e", note="\U0001f600\x1b")
    log.set_context(client="c\u00e9\u202e")
    log.tool_call("s", "read", "approval_required", {"path": "\ud800"}, "r\u00e9", severity="notice")
    log.routine_call("s", "read", "allowed", {"path": "\u00e9"})
    log.tool_call("s", "rm", "denied", {"x": 1}, "never rm")
    log.routine_call("s", "x" * 300, "allowed", {"n": 2**70})
    buffered = list(log._buffer)
    log.flush()
    log.routine_call("s", "read", "allowed", {})
    buffered += log._buffer
    log.emit("shutdown", server="s", surrogate="\udc00")  # written with the buffered call before it
    log.close()
    _expected_chain(_render_lines(buffered, HASHER), _written(log))


def test_records_kept_through_an_outage_are_written_later_as_rendered(tmp_path: Path) -> None:
    now = [1000.0]
    log = EventLog(tmp_path, "i", HASHER, monotonic=lambda: now[0])
    log.routine_call("s", "read", "allowed", {})
    buffered = list(log._buffer)
    log.flush()
    directory = events_dir(tmp_path)
    moved = directory.with_name("events.moved")
    directory.rename(moved)
    directory.write_text("not a directory")  # every write fails, for root too
    for n in range(5):
        log.routine_call("s", f"tool{n}\u00e9", "allowed", {"n": n})
    log.tool_call("s", "rm", "denied", {}, "never rm")
    buffered += log._buffer
    log.flush()  # fails: all of them are kept
    assert log._buffer == [] and log._outage is not None and len(log._outage.unwritten) == 6
    log.routine_call("s", "late", "allowed", {"n": 99})
    buffered += log._buffer
    now[0] += RETRY_FIRST_S
    log.flush()  # fails again; the late one is kept too
    directory.unlink()
    moved.rename(directory)
    now[0] += 2 * RETRY_FIRST_S
    log.flush()
    log.close()
    lines = _written(log)
    assert [json.loads(line)["type"] for line in lines if b'"chain_checkpoint"' not in line] == [
        "tool_call", "events_gap", *["tool_call"] * 7,
    ]  # fmt: skip
    _expected_chain(_render_lines(buffered, HASHER), lines)


def test_records_a_write_cut_short_did_not_write_are_written_later_once(tmp_path: Path) -> None:
    """A file size limit lets the first buffered records through and cuts the next (as a full disk
    can): the ones written whole are not kept, the rest are written once, in order."""
    script = """
import resource, signal, sys
from pathlib import Path
from intercept.audit.events import EventLog
from intercept.audit.hashing import ArgumentHasher

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
clock = [0.0]
log = EventLog(Path(sys.argv[1]), "i", ArgumentHasher(b"k" * 32), monotonic=lambda: clock[0])
log.routine_call("s", "first", "allowed", {})
log.flush()
for n in range(10):
    log.routine_call("s", "read", "allowed", {"n": n, "pad": "x" * 100})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (log.path.stat().st_size + 1000, hard))
log.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
clock[0] += 1
log.flush()
log.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "File too large" in done.stderr
    records = []
    for line in (events_dir(tmp_path) / "i.jsonl").read_bytes().split(b"\n")[:-1]:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # the fragment the limit cut
    calls = [record["args_hash"] for record in records if record["type"] == "tool_call" and record["tool"] == "read"]
    assert calls == [HASHER.arguments({"n": n, "pad": "x" * 100}) for n in range(10)]
    assert [record["type"] for record in records].count("events_gap") == 1
