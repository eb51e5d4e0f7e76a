"""Table tests for the interceptor in process: a client line in, what the relay is told to do with
it (forward as sent, forward this instead, answer, hold, decide on the side); an upstream line in,
what the client gets.

Real objects only: a real SQLite file under tmp_path, the real store thread, approval gate, event
log and counters; nothing of the proxy's own code is replaced. No pipes or processes: a wrong
outcome is a failed assertion on one row. A call that waits for the store (`Deciding`) is awaited
here, as the relay would run it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.decision_watch import DecisionWatch
from intercept.approvals.gate import ApprovalGate, UpstreamServer
from intercept.audit.events import EventLog
from intercept.audit.hashing import ArgumentHasher
from intercept.counters.call_counters import AsyncCallCounters, CallCounters
from intercept.policy import Policy, parse_policy
from intercept.proxy.era import DENIED_PREFIX, PROTOCOL_VERSION_META_KEY
from intercept.proxy.interceptor import BATCH_REFUSED, MAX_TOOL_NAME_CHARS, Interceptor
from intercept.proxy.jsonrpc import ID_PREFIX
from intercept.proxy.outcomes import ClientOutcome, Deciding, Hold, Rewritten
from intercept.proxy.relay import Relay, RelayOptions
from intercept.proxy.reply_watch import CANCELLED_TTL_S, MAX_CANCELLED, MAX_WATCHED
from intercept.store.worker import STORE_WAIT_S, StoreWorker

POLICY = """\
version: "1"
hide: [secret]
tools:
  read: {rules: []}
  push:
    loose_types: true
    rules:
      - name: no force push
        conditions: [{path: args.force, op: neq, value: true}]
  deploy:
    rules:
      - name: humans deploy
        action: require_approval
  search:
    rules:
      - name: search budget
        rate_limit: 2/hour
  resize:
    rules:
      - name: small sizes
        conditions: [{path: args.size, op: lt, value: 100}]
"""
RESIZE_SCHEMA = {"type": "object", "properties": {"size": {"type": "integer"}}}
STATELESS_META = {PROTOCOL_VERSION_META_KEY: "2026-07-28"}  # a stateless-era request
HANDSHAKE_META = {PROTOCOL_VERSION_META_KEY: "2025-06-18"}  # an era with a handshake: no resultType
Message = dict[str, Any]


class Session:
    """One interceptor over a state dir, as the relay builds it, and what the tests read back."""

    def __init__(self, state_dir: Path, lag_s: float = 0.0) -> None:
        """`lag_s`: the interceptor's clock runs that far behind the real one (its store
        deadlines and cancel times are then that much earlier)."""
        hasher = ArgumentHasher(b"k" * 32)
        self.events = EventLog(state_dir, "table", hasher)
        self.worker = StoreWorker()
        server = UpstreamServer("table", "name:table", '["table"]')
        gate = ApprovalGate(state_dir, server, self.events, hasher, self.worker)
        self.counters = CallCounters(state_dir)
        self.policy: Policy = parse_policy(POLICY)
        self.clock_lag_s = lag_s
        self.interceptor = Interceptor(
            self.policy, "table", self.events, gate, AsyncCallCounters(self.counters, self.worker), self.worker,
            monotonic=lambda: time.monotonic() - self.clock_lag_s,
        )  # fmt: skip
        self.released = 0
        self.interceptor.on_listing_done = self._released

    def _released(self) -> None:
        self.released += 1

    def client(self, message: Any) -> ClientOutcome:
        return self.interceptor.on_client_line(line(message))

    def upstream(self, message: Any) -> bytes | None:
        return self.interceptor.on_upstream_line(line(message))

    async def decided(self, outcome: ClientOutcome) -> bytes | Rewritten | None:
        """The final outcome of a call that waits for the store."""
        assert isinstance(outcome, Deciding), outcome
        return await outcome.wait()

    async def drain_store(self) -> None:
        """Let the store work queued on the side (give-backs) finish."""
        while self.worker.busy:
            await self.worker.drain(5)

    async def searches(self) -> int:
        """How much of the search budget is taken now (read on the store thread, after settling)."""
        await self.drain_store()
        values = await self.worker.run(self.counters.values, self.policy, "search", time.time())
        return values["search._rate_hour"]


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    made = Session(tmp_path)
    yield made
    await made.drain_store()
    made.worker.close()


def line(message: Any) -> bytes:
    return message if isinstance(message, bytes) else json.dumps(message, separators=(",", ":")).encode()


def call(request_id: Any, tool: str, arguments: Any = None, **params: Any) -> Message:
    return {
        "jsonrpc": "2.0", "id": request_id, "method": "tools/call",
        "params": {"name": tool, **({} if arguments is None else {"arguments": arguments}), **params},
    }  # fmt: skip


def call_params(request_id: Any, params: Any) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def request(request_id: Any, method: str, **params: Any) -> Message:
    message: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params:
        message["params"] = params
    return message


def notification(method: str, **params: Any) -> Message:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def cancel(request_id: Any) -> Message:
    return notification("notifications/cancelled", requestId=request_id, reason="user")


def answer(outcome: object) -> Any:
    assert isinstance(outcome, bytes) and outcome, outcome
    assert outcome.endswith(b"\n") and outcome.count(b"\n") == 1  # one framed line
    return json.loads(outcome)


def forwarded(outcome: object) -> Any:
    assert isinstance(outcome, Rewritten), outcome
    assert outcome.line.endswith(b"\n") and outcome.line.count(b"\n") == 1
    return json.loads(outcome.line)


# -- what a row expects ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Error:
    """A JSON-RPC error answer under `id` whose message contains `says`."""

    code: int
    id: Any
    says: str = ""


@dataclass(frozen=True)
class Denied:
    """A policy denial: a tool result with isError true, the denial prefix, and `result_type` if set."""

    id: Any
    says: str
    result_type: str | None = None


FORWARDED = "forwarded as sent"  # None
NOTHING = "nothing sent, nothing forwarded"  # b""
Expected = Error | Denied | str


def check(outcome: object, expected: Expected) -> None:
    if expected == FORWARDED:
        assert outcome is None, outcome
    elif expected == NOTHING:
        assert outcome == b"", outcome
    elif isinstance(expected, Error):
        message = answer(outcome)
        assert message["id"] == expected.id and message["jsonrpc"] == "2.0" and "result" not in message
        assert message["error"]["code"] == expected.code, message
        assert expected.says in message["error"]["message"], message
    else:
        assert isinstance(expected, Denied)
        check_denied(answer(outcome), expected)


def check_denied(message: Message, expected: Denied) -> None:
    assert message["id"] == expected.id and "error" not in message
    result = message["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert text.startswith(DENIED_PREFIX) and expected.says in text, text
    assert result.get("resultType") == expected.result_type


# -- client side: one line, no state ---------------------------------------------------------------

LONG_NAME = "x" * (MAX_TOOL_NAME_CHARS + 1)
CLIENT_ROWS: list[tuple[str, Any, Expected]] = [
    ("an allowed call", call(1, "read", {}), FORWARDED),
    ("a tool no rule names (default allow)", call(2, "anything", {"x": 1}), FORWARDED),
    ("a call its rule allows", call(3, "push", {"force": False}), FORWARDED),
    ("arguments left out", call(4, "read"), FORWARDED),
    ("arguments null", call_params(5, {"name": "read", "arguments": None}), FORWARDED),
    ("a params member MCP may add later", call(6, "read", {}, task={"ttl": 5}), FORWARDED),
    ("a _meta member", call(7, "read", {}, _meta=STATELESS_META), FORWARDED),
    ("id null", call(None, "read", {}), FORWARDED),
    ("a string id", call("a", "read", {}), FORWARDED),
    ("a name exactly as long as allowed", call(8, "x" * MAX_TOOL_NAME_CHARS, {}), FORWARDED),
    ("a notification", notification("notifications/initialized"), FORWARDED),
    ("another request", request(9, "resources/list"), FORWARDED),
    ("a client's response to a server request", {"jsonrpc": "2.0", "id": "s1", "result": {}}, FORWARDED),
    ("a cancel for a request the proxy does not watch", cancel(99), FORWARDED),
    ("a cancel without a usable requestId", notification("notifications/cancelled", requestId=True), FORWARDED),
    ("params a string", call_params(10, "read"), Error(-32602, 10, "params must be an object")),
    ("params a list", call_params(11, ["read"]), Error(-32602, 11, "params must be an object")),
    ("params left out", {"jsonrpc": "2.0", "id": 12, "method": "tools/call"}, Error(-32602, 12, "must be an object")),
    ("no name", call_params(13, {"arguments": {}}), Error(-32602, 13, "needs a tool name")),
    ("an empty name", call(14, "", {}), Error(-32602, 14, "needs a tool name")),
    ("a name that is a number", call_params(15, {"name": 5}), Error(-32602, 15, "needs a tool name")),
    ("a name longer than any tool's", call(16, LONG_NAME, {}), Error(-32602, 16, f"longer than {MAX_TOOL_NAME_CHARS}")),
    ("a NUL in the name", call(17, "re\x00ad", {}), Error(-32602, 17, "control or bidirectional")),
    ("an ESC in the name", call(18, "read\x1b[2J", {}), Error(-32602, 18, "control or bidirectional")),
    ("a bidi override in the name", call(19, "read\u202e", {}), Error(-32602, 19, "control or bidirectional")),
    ("arguments a list", call(20, "read", [1]), Error(-32602, 20, "arguments must be an object")),
    ("arguments a string", call(21, "read", "{}"), Error(-32602, 21, "arguments must be an object")),
    ("a params member Name", call_params(22, {"Name": "read"}), Error(-32602, 22, "wrong letter case")),
    ("a params member Arguments", call_params(23, {"name": "read", "Arguments": {}}), Error(-32602, 23, "letter case")),
    ("a params member _Meta", call_params(24, {"name": "read", "_Meta": {}}), Error(-32602, 24, "wrong letter case")),
    ("name and NAME in one object", call_params(25, {"name": "read", "NAME": "push"}), Error(-32700, None, "case")),
    ("an envelope member Method", {"jsonrpc": "2.0", "id": 26, "Method": "tools/call"}, Error(-32600, None, "case")),
    ("an id that is true", call(True, "read", {}), Error(-32600, None, "id must be")),
    ("an id that is an object", call({"n": 1}, "read", {}), Error(-32600, None, "id must be")),
    ("a tools/call without an id", notification("tools/call", name="read", arguments={}), NOTHING),
    ("a denied tools/call without an id", notification("tools/call", name="secret"), NOTHING),
    ("a call under a proxy id", call(f"{ID_PREFIX}1", "read", {}), Error(-32600, f"{ID_PREFIX}1", "reserved")),
    ("another request under a proxy id", request(f"{ID_PREFIX}x", "ping"), Error(-32600, f"{ID_PREFIX}x", "reserved")),
    ("a tools/list, proxy id", request(f"{ID_PREFIX}2", "tools/list"), Error(-32600, f"{ID_PREFIX}2", "reserved")),
    ("a cancel aimed at a proxy id", cancel(f"{ID_PREFIX}3"), NOTHING),
    ("a call its rule denies", call(30, "push", {"force": True}), Denied(30, 'Denied by rule "no force push"')),
    (
        "a denied stateless-era call",
        call(31, "push", {"force": True}, _meta=STATELESS_META),
        Denied(31, "no force push", "complete"),
    ),
    ("a denied call of a handshake era", call(32, "push", {"force": True}, _meta=HANDSHAKE_META), Denied(32, "force")),
    ("a hidden tool", call(33, "secret", {}), Denied(33, 'Tool "secret" is hidden by policy')),
    ("a hidden tool, stateless era", call(34, "secret", _meta=STATELESS_META), Denied(34, "hidden", "complete")),
    ("not JSON", b'{"jsonrpc":"2.0",', Error(-32700, None, "Parse error")),
    ("a duplicate key", b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', Error(-32700, None, "duplicate key")),
    ("NaN", b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', Error(-32700, None, "NaN")),
    ("a byte order mark", b'\xef\xbb\xbf{"jsonrpc":"2.0","method":"ping"}', Error(-32700, None, "byte order mark")),
    ("not an object", b"5", Error(-32600, None, "not a JSON-RPC message")),
    ("a blank line", b"  \r", NOTHING),
    ("an empty line", b"", NOTHING),
]


@pytest.mark.parametrize(("sent", "expected"), [row[1:] for row in CLIENT_ROWS], ids=[row[0] for row in CLIENT_ROWS])
async def test_a_client_line_on_its_own(session: Session, sent: Any, expected: Expected) -> None:
    check(session.client(sent), expected)
    assert not session.interceptor.deciding and not session.interceptor.watching


async def test_a_trailing_carriage_return_is_read_as_the_line_without_it(session: Session) -> None:
    denied = line(call(1, "secret")) + b"\r"
    check(session.interceptor.on_client_line(denied), Denied(1, "hidden"))
    assert session.interceptor.on_client_line(line(call(2, "read")) + b"\r") is None


async def test_the_outcome_of_each_call_is_recorded_and_a_dropped_one_is_not(session: Session) -> None:
    session.client(call(1, "read", {}))
    session.client(call(2, "push", {"force": True}))
    session.client(notification("tools/call", name="read"))  # dropped before any decision
    session.client(call(3, "secret", {}))
    session.events.flush()
    records = [json.loads(text) for text in session.events.path.read_text().splitlines()]
    assert [(r["tool"], r["result"]) for r in records if r["type"] == "tool_call"] == [
        ("read", "allowed"), ("push", "denied"), ("secret", "denied")
    ]  # fmt: skip


# -- client side: ids in use, tools/list, cancels --------------------------------------------------


async def test_tools_list_goes_upstream_under_a_proxy_id_with_everything_else_kept(session: Session) -> None:
    sent = request("l", "tools/list", cursor="c1", _meta={"progressToken": 1})
    upstream = forwarded(session.client(sent))
    assert upstream["id"].startswith(ID_PREFIX) and upstream == {**sent, "id": upstream["id"]}
    other = forwarded(session.client(request("m", "tools/list")))
    assert other["id"] != upstream["id"]
    assert session.interceptor.watching and session.interceptor.replies.outstanding("l")


@pytest.mark.parametrize(
    ("reused", "expected"),
    [
        (call(7, "read", {}), Error(-32600, 7, "still in use")),
        (call(7.0, "read", {}), Error(-32600, 7.0, "still in use")),  # 7 and 7.0 are one id
        (request(7, "ping"), Error(-32600, 7, "still in use")),
        (request(7, "tools/list"), Error(-32600, 7, "still in use")),
        ([call(8, "read", {}), request(7, "ping")], Error(-32600, None, "still in use")),  # the whole batch
        (call("7", "read", {}), FORWARDED),  # "7" is another id
        (notification("notifications/progress", progressToken=7), FORWARDED),  # no id: nothing to collide
    ],
)
async def test_an_id_in_use_by_a_watched_request_is_refused_until_its_reply(
    session: Session, reused: Any, expected: Expected
) -> None:
    upstream = forwarded(session.client(request(7, "tools/list")))
    check(session.client(reused), expected)
    assert session.upstream({"jsonrpc": "2.0", "id": upstream["id"], "result": {"tools": []}}) is not None
    assert session.client(call(7, "read", {})) is None  # free again once answered


async def test_a_cancel_for_a_watched_request_goes_upstream_under_the_proxy_id(session: Session) -> None:
    upstream = forwarded(session.client(request(7, "tools/list")))
    sent_cancel = cancel(7)
    mapped = forwarded(session.client(sent_cancel))
    assert mapped == {**sent_cancel, "params": {"requestId": upstream["id"], "reason": "user"}}
    assert session.client(cancel(7)) is None  # a second cancel finds nothing watched: forwarded as sent
    assert session.client(call(7, "read", {})) is None  # the id is free at once
    late = session.upstream({"jsonrpc": "2.0", "id": upstream["id"], "result": {"tools": [{"name": "secret"}]}})
    assert late == b""  # the client may have reused the id: the late reply is dropped
    assert not session.interceptor.watching


async def test_a_cancelled_request_is_remembered_until_the_clock_says_it_is_old(session: Session) -> None:
    seven = forwarded(session.client(request(7, "tools/list")))
    eight = forwarded(session.client(request(8, "tools/list")))
    forwarded(session.client(cancel(7)))
    forwarded(session.client(cancel(8)))
    cancelled_by = time.monotonic()
    session.interceptor.replies.evict_cancelled(cancelled_by + CANCELLED_TTL_S / 2)
    assert session.upstream({"jsonrpc": "2.0", "id": seven["id"], "result": {"tools": []}}) == b""  # still dropped
    session.interceptor.replies.evict_cancelled(cancelled_by + CANCELLED_TTL_S + 1)
    assert not session.interceptor.watching
    late = {"jsonrpc": "2.0", "id": eight["id"], "result": {"tools": []}}
    assert session.upstream(late) is None  # forgotten: no longer recognised, it passes as the upstream sent it


# -- client side: argument types and the proxy's own tools/list ------------------------------------


@pytest.mark.parametrize(
    ("meta", "listing_params"),
    [(None, None), (STATELESS_META, {"_meta": STATELESS_META}), (HANDSHAKE_META, None)],
)
async def test_a_typed_rule_without_a_listing_holds_and_asks_for_the_tools(
    session: Session, meta: Message | None, listing_params: Message | None
) -> None:
    held = session.client(call(1, "resize", {"size": "5"}, **({"_meta": meta} if meta else {})))
    assert isinstance(held, Hold), held
    listing = json.loads(held.request)
    assert listing["id"].startswith(ID_PREFIX) and listing["method"] == "tools/list"
    assert listing.get("params") == listing_params
    assert session.released == 0 and session.interceptor.listing == "waiting"
    tools = [{"name": "resize", "inputSchema": RESIZE_SCHEMA}, {"name": "secret", "inputSchema": {}}]
    assert session.upstream({"jsonrpc": "2.0", "id": listing["id"], "result": {"tools": tools}}) == b""  # ours
    assert session.released == 1 and session.interceptor.listing == "done"
    check(session.client(call(1, "resize", {"size": "5"})), Denied(1, '"size" must be an integer'))
    assert session.client(call(2, "resize", {"size": 5})) is None
    check(session.client(call(3, "resize", {"size": 500})), Denied(3, "small sizes"))


async def test_tools_without_typed_rules_never_hold(session: Session) -> None:
    for n, tool in enumerate(["read", "push", "unknown"]):
        assert session.client(call(n, tool, {"size": "5", "force": "no"})) is None
    assert session.interceptor.listing == "not_needed_yet"


# -- batches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch",
    [
        [call(1, "read", {}), call(2, "push", {"force": False})],
        [call(1, "read", {}), notification("notifications/initialized"), request(2, "ping")],
        [call(1, "anything", {"x": 1}), cancel(42)],  # a cancel for nothing watched goes as sent
        [{"jsonrpc": "2.0", "id": "s1", "result": {}}],
    ],
    ids=["calls", "with a notification and a request", "with a cancel", "a response"],
)
async def test_a_batch_of_allowed_messages_is_forwarded_as_sent(session: Session, batch: list[Message]) -> None:
    assert session.client(batch) is None


def refused(request_id: Any) -> Error:
    return Error(-32600, request_id, BATCH_REFUSED)


BATCH_ROWS: list[tuple[str, list[Any], list[Expected]]] = [
    (
        "one call denied",
        [call(1, "read", {}), call(2, "push", {"force": True}), notification("notifications/initialized")],
        [refused(1), Denied(2, "no force push")],
    ),
    (
        "a hidden tool, stateless era",
        [call(1, "secret", _meta=STATELESS_META), request(2, "ping")],
        [Denied(1, "hidden", "complete"), refused(2)],
    ),
    (
        "a counted call",
        [call(1, "search", {"q": "x"}), call(2, "read", {})],
        [Error(-32600, 1, "uses counters: send it on its own"), refused(2)],
    ),
    (
        "a call that needs approval",
        [call(1, "read", {}), call(2, "deploy", {})],
        [refused(1), Error(-32600, 2, "needs approval: send it on its own")],
    ),
    (
        "a malformed call",
        [call_params(1, {"arguments": {}}), request(2, "tools/list")],
        [Error(-32602, 1, "needs a tool name"), refused(2)],
    ),
    ("a call without an id and another", [notification("tools/call", name="read"), call(2, "read")], [refused(2)]),
]


@pytest.mark.parametrize(("batch", "expected"), [row[1:] for row in BATCH_ROWS], ids=[row[0] for row in BATCH_ROWS])
async def test_a_batch_with_a_call_not_allowed_alone_is_refused_whole(
    session: Session, batch: list[Any], expected: list[Expected]
) -> None:
    answers = answer(session.client(batch))
    assert isinstance(answers, list) and len(answers) == len(expected)
    for message, wanted in zip(answers, expected, strict=True):
        if isinstance(wanted, Denied):
            check_denied(message, wanted)
        else:
            check(json.dumps(message).encode() + b"\n", wanted)
    assert not session.interceptor.watching  # its tools/list, if any, was never registered


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ([notification("tools/call", name="read")], NOTHING),  # refused, and nothing has an id to answer
        ([call(1, "read"), 5], Error(-32600, None, "malformed batch member")),
        ([call(1, "read"), {"jsonrpc": "2.0", "id": True, "method": "ping"}], Error(-32600, None, "malformed")),
        ([call(1, "read"), {"jsonrpc": "2.0", "Id": 2, "method": "ping"}], Error(-32600, None, "malformed")),
        ([call(f"{ID_PREFIX}9", "read")], Error(-32600, None, "reserved")),
        ([request(f"{ID_PREFIX}9", "tools/list")], Error(-32600, None, "reserved")),
    ],
    ids=["only a call without an id", "a number", "a bool id", "a member Id", "a proxy id", "a tools/list, proxy id"],
)
async def test_a_malformed_batch_gets_one_answer(session: Session, batch: list[Any], expected: Expected) -> None:
    check(session.client(batch), expected)
    assert not session.interceptor.watching


async def test_a_batch_with_tools_list_goes_upstream_mapped_and_its_reply_comes_back_filtered(session: Session) -> None:
    batch = [request("a", "tools/list"), call(1, "read", {}), notification("notifications/initialized")]
    upstream = forwarded(session.client(batch))
    proxy_id = upstream[0]["id"]
    assert proxy_id.startswith(ID_PREFIX) and upstream == [{**batch[0], "id": proxy_id}, *batch[1:]]
    tools = [{"name": "read"}, {"name": "secret"}]
    replies = [
        {"jsonrpc": "2.0", "id": 1, "result": {"content": []}},
        {"jsonrpc": "2.0", "id": proxy_id, "result": {"tools": tools, "nextCursor": "n"}},
    ]
    back = json.loads(session.upstream(replies) or b"null")
    filtered = {"jsonrpc": "2.0", "id": "a", "result": {"tools": [{"name": "read"}], "nextCursor": "n"}}
    assert back == [replies[0], filtered]


async def test_a_cancel_in_a_forwarded_batch_is_mapped_to_the_proxy_id(session: Session) -> None:
    watched = forwarded(session.client(request(7, "tools/list")))
    upstream = forwarded(session.client([cancel(7), call(8, "read", {})]))
    assert upstream[0]["params"] == {"requestId": watched["id"], "reason": "user"}
    assert upstream[1] == call(8, "read", {})
    assert session.upstream({"jsonrpc": "2.0", "id": watched["id"], "result": {"tools": []}}) == b""


# -- calls decided with the store (Deciding) -------------------------------------------------------


async def test_counted_calls_are_decided_on_the_side_and_watched_when_forwarded(session: Session) -> None:
    outcomes = [session.client(call(n, "search", {"q": str(n)})) for n in (1, 2, 3)]
    assert all(isinstance(o, Deciding) for o in outcomes) and session.interceptor.deciding
    check(session.client(call(1, "read", {})), Error(-32600, 1, "still in use"))  # while it waits
    assert session.client(call(4, "read", {})) is None  # later lines go on meanwhile
    first, second, third = [await session.decided(o) for o in outcomes]
    assert not session.interceptor.deciding
    for client_id, outcome in ((1, first), (2, second)):
        upstream = forwarded(outcome)  # it took a counter: its reply must be seen
        sent = call(client_id, "search", {"q": str(client_id)})
        assert upstream["id"].startswith(ID_PREFIX) and upstream == {**sent, "id": upstream["id"]}
    check(third, Denied(3, "Rate limit of 2 per hour reached"))
    assert await session.searches() == 2


async def test_a_call_that_needs_approval_is_answered_with_minus_32003(session: Session) -> None:
    message = answer(await session.decided(session.client(call(5, "deploy", {"env": "prod"}))))
    assert message["id"] == 5 and message["error"]["code"] == -32003
    assert message["error"]["data"]["tool"] == "deploy" and message["error"]["data"]["status"] == "pending"


async def test_a_cancel_for_a_call_waiting_for_the_store_ends_it_there(session: Session) -> None:
    deciding = session.client(call(5, "search", {}))
    assert isinstance(deciding, Deciding)
    assert session.client(cancel(5)) == b""  # the upstream never saw that call: nothing to forward
    assert not session.interceptor.deciding
    assert await session.decided(deciding) == b""  # never forwarded, never answered
    assert await session.searches() == 0  # what it took was given back
    assert session.client(call(5, "read", {})) is None  # and its id is free


async def test_a_cancel_in_a_batch_ends_a_call_waiting_for_the_store_too(session: Session) -> None:
    deciding = session.client(call(5, "search", {}))
    session.client([cancel(5), call(6, "read", {})])
    assert await session.decided(deciding) == b""
    assert await session.searches() == 0


async def test_a_call_decided_after_the_upstream_went_away_is_not_forwarded(session: Session) -> None:
    deciding = session.client(call(5, "search", {}))
    assert session.interceptor.on_upstream_gone() == b""  # nothing was watched yet
    check(await session.decided(deciding), Error(-32603, 5, "search was not forwarded"))
    assert await session.searches() == 0


async def test_a_counted_call_that_cannot_be_watched_is_refused_and_gives_back(session: Session) -> None:
    for n in range(MAX_WATCHED + MAX_CANCELLED):
        assert isinstance(session.client(request(n, "tools/list")), Rewritten)
    check(await session.decided(session.client(call("c", "search", {}))), Error(-32600, "c", "too many requests"))
    assert await session.searches() == 0
    session.events.flush()  # never forwarded: not recorded as allowed (it was, before it was refused)
    records = [json.loads(line) for line in session.events.path.read_text().splitlines()] if session.events.path.exists() else []
    assert [r for r in records if r["type"] == "tool_call" and r["tool"] == "search"] == []


async def test_a_counted_call_is_recorded_allowed_once_forwarded(session: Session) -> None:
    forwarded(await session.decided(session.client(call("c", "search", {}))))
    session.events.flush()
    records = [json.loads(line) for line in session.events.path.read_text().splitlines()]
    assert [(r["tool"], r["result"]) for r in records if r["type"] == "tool_call"] == [("search", "allowed")]


# -- upstream side ---------------------------------------------------------------------------------


async def test_a_tools_list_reply_comes_back_under_the_clients_id_without_hidden_tools(session: Session) -> None:
    upstream = forwarded(session.client(request(3, "tools/list")))
    tools = [{"name": "read", "inputSchema": {}}, {"name": "secret"}, {"name": "push", "x": [1, 2]}]
    reply = {"jsonrpc": "2.0", "id": upstream["id"], "result": {"tools": tools, "nextCursor": None, "_meta": {"k": 1}}}
    back = json.loads(session.upstream(reply) or b"null")
    assert back == {**reply, "id": 3, "result": {**reply["result"], "tools": [tools[0], tools[2]]}}
    assert not session.interceptor.watching


@pytest.mark.parametrize(
    "reply",
    [
        {"result": {"tools": [{"name": "read"}]}},  # nothing hidden in it
        {"error": {"code": -32601, "message": "Method not found"}},
    ],
)
async def test_a_tools_list_reply_with_nothing_to_hide_only_gets_its_id_back(session: Session, reply: Message) -> None:
    upstream = forwarded(session.client(request("x", "tools/list")))
    back = session.upstream({"jsonrpc": "2.0", "id": upstream["id"], **reply})
    assert back is not None and json.loads(back) == {"jsonrpc": "2.0", "id": "x", **reply}


@pytest.mark.parametrize(
    "sent",
    [
        {"jsonrpc": "2.0", "id": 1, "result": {"content": []}},  # the reply to a call forwarded as sent
        {"jsonrpc": "2.0", "id": f"{ID_PREFIX}nobody-1", "result": {}},  # no such watched request
        {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
        {"jsonrpc": "2.0", "id": 4, "method": "sampling/createMessage", "params": {}},  # a server request
        [{"jsonrpc": "2.0", "id": 1, "result": {}}, {"jsonrpc": "2.0", "id": 2, "result": {}}],
        b"not json at all",
        b'{"jsonrpc":"2.0","id":1,"result":NaN}',
    ],
)
async def test_an_upstream_line_the_proxy_does_not_watch_passes_unchanged(session: Session, sent: Any) -> None:
    forwarded(session.client(request("w", "tools/list")))  # something is watched meanwhile
    assert session.upstream(sent) is None
    assert session.interceptor.replies.outstanding("w")


@pytest.mark.parametrize(
    ("reply", "taken"),
    [
        ({"error": {"code": -32601, "message": "Method not found"}}, 0),  # refused before it ran
        ({"error": {"code": -32600, "message": "Invalid Request"}}, 0),
        ({"error": {"code": -32700, "message": "Parse error"}}, 0),
        ({"error": {"code": -32602, "message": "Invalid params"}}, 1),  # it may have run: stays taken
        ({"error": {"code": -32603, "message": "Internal error"}}, 1),
        ({"error": {"code": "-32601", "message": "a code that is not a number"}}, 1),
        ({"result": {"content": [], "isError": True}}, 1),
        ({"result": {"content": [{"type": "text", "text": "found"}]}}, 1),
    ],
)
async def test_the_reply_to_a_counted_call_gives_its_counters_back_only_if_it_never_ran(
    session: Session, reply: Message, taken: int
) -> None:
    upstream = forwarded(await session.decided(session.client(call(9, "search", {}))))
    assert await session.searches() == 1
    back = json.loads(session.upstream({"jsonrpc": "2.0", "id": upstream["id"], **reply}) or b"null")
    assert back == {"jsonrpc": "2.0", "id": 9, **reply}  # the client gets the reply as the upstream sent it
    assert await session.searches() == taken


async def test_the_late_reply_of_a_cancelled_counted_call_is_dropped_and_keeps_its_counters(session: Session) -> None:
    upstream = forwarded(await session.decided(session.client(call(9, "search", {}))))
    assert forwarded(session.client(cancel(9)))["params"]["requestId"] == upstream["id"]
    assert session.upstream({"jsonrpc": "2.0", "id": upstream["id"], "result": {"content": []}}) == b""
    assert await session.searches() == 1  # a cancel does not say the tool never ran


async def test_an_unparseable_reply_to_a_watched_request_goes_back_under_the_clients_id(session: Session) -> None:
    counted = forwarded(await session.decided(session.client(call("q", "search", {}))))
    listing = forwarded(session.client(request(3, "tools/list")))
    quoted = json.dumps(counted["id"])
    swapped = session.interceptor.on_upstream_line(f'{{"jsonrpc":"2.0","id":{quoted},"result":{{"x":NaN,'.encode())
    assert swapped == b'{"jsonrpc":"2.0","id":"q","result":{"x":NaN,\n'
    refused = session.interceptor.on_upstream_line(f'{{"id":{json.dumps(listing["id"])},"result":'.encode())
    check(refused, Error(-32603, 3, "could not read the upstream's tools/list reply"))  # hidden tools may be in it
    assert not session.interceptor.watching
    assert await session.searches() == 1  # its outcome is unknown: stays taken


async def test_when_the_upstream_is_gone_each_watched_request_is_answered_once(session: Session) -> None:
    counted = forwarded(await session.decided(session.client(call(1, "search", {}))))
    forwarded(session.client(request("l", "tools/list")))
    forwarded(session.client(request("c", "tools/list")))
    forwarded(session.client(cancel("c")))  # cancelled: the client expects no answer
    held = session.client(call(2, "resize", {"size": 5}))
    assert isinstance(held, Hold)
    gone = session.interceptor.on_upstream_gone("exited")
    answers = [json.loads(text) for text in gone.splitlines()]
    assert [(a["id"], a["error"]["code"]) for a in answers] == [(1, -32603), ("l", -32603)]
    assert "the upstream server exited before answering" in answers[0]["error"]["message"]
    assert session.released == 1  # the lines held for the proxy's own listing are let go
    assert session.interceptor.on_upstream_gone("closed its output") == b""  # only once
    assert not session.interceptor.watching
    assert session.upstream({"jsonrpc": "2.0", "id": counted["id"], "result": {}}) is None  # no longer ours
    assert await session.searches() == 1  # it may have run: stays taken


# -- the clock: store deadlines and eviction -------------------------------------------------


@pytest.mark.parametrize("tool", ["search", "deploy"])
async def test_a_call_whose_store_deadline_has_passed_fails_closed_with_the_reason(tmp_path: Path, tool: str) -> None:
    late = Session(tmp_path, lag_s=STORE_WAIT_S + 1)  # every deadline it sets is already past
    try:
        answer = json.loads(await late.decided(late.client(call(1, tool))) or b"null")
        text = answer["result"]["content"][0]["text"] if "result" in answer else answer["error"]["message"]
        assert "database is locked" in text and "deadline" in text, answer
        assert await late.searches() == 0  # nothing taken
    finally:
        await late.drain_store()
        late.worker.close()


async def test_housekeeping_forgets_a_cancelled_request_once_the_clock_says_it_is_old(session: Session) -> None:
    forwarded = session.client({"jsonrpc": "2.0", "id": "l", "method": "tools/list"})
    assert isinstance(forwarded, Rewritten)
    session.client({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "l"}})
    session.interceptor.tick()
    assert session.interceptor.watching  # kept: its late reply must still be recognised and dropped
    session.clock_lag_s = -(CANCELLED_TTL_S + 1)  # the clock jumps past the time cancelled requests are kept
    session.interceptor.tick()
    assert not session.interceptor.watching


# -- the relay around it ---------------------------------------------------------------------


async def test_a_relay_takes_an_interceptor_already_made(session: Session) -> None:
    """As bench/hot_path.py builds one (the proxy passes a function that makes it)."""
    relay = Relay(session.interceptor, RelayOptions(command=["true"]))
    assert relay.interceptor is session.interceptor


# -- waiting for a human ---------------------------------------------------------------------


def hold_deploy(session: Session, wait: str) -> None:
    """`deploy` held up to `wait` for a decision made elsewhere, wired as the session wires it."""
    with_wait = POLICY.replace('version: "1"\n', f'version: "1"\napprovals:\n  wait: {wait}\n', 1)
    session.interceptor.policy = parse_policy(with_wait)
    calls = session.interceptor.calls
    calls.watch = DecisionWatch(session.worker, calls.gate.read_statuses)


async def test_a_call_still_at_the_store_when_the_waits_end_never_starts_waiting(session: Session) -> None:
    """The client's EOF ends the waits while this call's gate check is still on the store thread:
    it must not start a wait of its own afterwards (a human could approve it after the EOF)."""
    hold_deploy(session, "60s")
    outcome = session.client(call(1, "deploy"))
    session.interceptor.end_waits()  # the client's EOF, before the gate has answered
    answer = json.loads(await asyncio.wait_for(session.decided(outcome), 10) or b"null")
    assert answer["error"]["code"] == -32003, answer


async def test_a_call_after_the_upstream_is_gone_waits_for_no_human(session: Session) -> None:
    hold_deploy(session, "60s")
    session.interceptor.on_upstream_gone()
    answer = json.loads(await asyncio.wait_for(session.decided(session.client(call(1, "deploy"))), 10) or b"null")
    assert answer["error"]["code"] == -32003, answer
