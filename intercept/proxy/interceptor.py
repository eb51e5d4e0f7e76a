"""JSON-RPC between one client and one upstream: what happens to each client line, and the
upstream replies the proxy asked to see.

It knows JSON-RPC messages (envelope, ids, batches, cancels, tools/list), not bytes on pipes or
processes: the relay feeds it lines and writes what it returns. A client line yields `None`
(forward it unchanged), `Rewritten` (forward this line instead), bytes to send back to the client
instead (possibly empty: nothing is sent and nothing forwarded), `Hold` or `Deciding` (see
`proxy.outcomes`). A `tools/call` is decided by the call handler (`proxy.call_handler`); its
outcome becomes one of these in `_carry_out`.

A call whose decision needs the state store (counters, approvals) is decided on the side while
later lines go on (`Deciding`, settled by `_decided`), bounded by its ticket's deadline, after
which it fails closed. A counted call goes on from its counters' outcome by callback; the gate's
longer path runs in a task (`CallHandler._run`). Until it is decided its id stays taken; a cancel for it ends it there (it is never
forwarded, what it took is given back, and nothing is answered).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from intercept.approvals.gate import ApprovalGate
from intercept.approvals.requester import client_label
from intercept.audit.events import EventLog
from intercept.counters.call_counters import AsyncCallCounters
from intercept.engine import ToolCall
from intercept.policy.drift import policy_mismatches
from intercept.policy.model import Policy
from intercept.proxy import jsonrpc
from intercept.proxy.call_handler import FORWARD, Answer, CallHandler, CallOutcome, FailMode, Forward, Ticket
from intercept.proxy.elicitation import HandshakeElicitor, take_in_band_answer
from intercept.proxy.era import is_stateless_request
from intercept.proxy.jsonrpc import ID_PREFIX
from intercept.proxy.outcomes import (
    INTERNAL_ERROR_TEXT,
    UNPARSED,
    ClientOutcome,
    Deciding,
    FastPathFault,
    Hold,
    Rewritten,
    Settled,
)
from intercept.proxy.reply_watch import DROP, ReplyWatch, Watcher
from intercept.proxy.tool_schemas import FINE, ToolSchemas, TypeVerdict
from intercept.proxy.tools_list import without_hidden_tools
from intercept.safe_text import escape_unsafe, has_unsafe_chars
from intercept.store.worker import STORE_WAIT_S, StoreWorker

log = logging.getLogger("intercept")

HEARTBEAT_INTERVAL_S = 60.0
ESCALATION_LOOK_S = 1.0  # how often requests past their rule's escalate_after are looked for
MAX_REPORTED_MISMATCHES = 200  # policy names reported as not offered, per session
MAX_OWN_LISTINGS = 20  # tools/list requests of the proxy's own per session (each may hold input a while)
MAX_TOOL_NAME_CHARS = 1024  # MCP asks for at most 128; longer ones only inflate the event log
CALL_PARAM_KEYS = frozenset({"name", "arguments", "_meta"})
MAX_PLAIN_TOOLS = 1024  # tool names remembered per policy by the fast path (agents choose names)
BATCH_REFUSED = (
    "Batch not forwarded: it contains a tools/call that policy did not allow as is; send the requests one at a time"
)
Message = dict[str, Any]


ListingState = Literal["not_needed_yet", "waiting", "done"]


class Interceptor:
    """Per-session message handling between one client and one upstream."""

    def __init__(
        self,
        policy: Policy,
        server_name: str,
        events: EventLog,
        gate: ApprovalGate,
        counters: AsyncCallCounters,
        store: StoreWorker,
        state_dir_hint: Path | None = None,
        on_heartbeat: Callable[[], None] | None = None,
        fail_mode: FailMode = "closed",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`monotonic` is the clock of store deadlines, cancelled-request eviction and heartbeats
        (tests pass their own)."""
        self.policy = policy
        self.server_name = server_name
        self.events = events
        self.counters = counters
        self.store = store
        self.calls = CallHandler(server_name, events, gate, counters, fail_mode, state_dir_hint)
        self.calls.forwarding_closed = self._forwarding_closed
        self.calls.policy_now = lambda: self.policy
        self.to_client: Callable[[bytes], None] = lambda data: None  # set by the relay
        self.calls.send_to_client = self._send_to_client
        self.calls.elicitor = HandshakeElicitor(self._send_to_client)
        self._waiting: dict[tuple[bool, Any], Ticket] = {}  # calls waiting for the store, by client id
        self.upstream_gone = False
        self.upstream_input_closed = False  # set by the relay when it closes the upstream's stdin
        self._monotonic = monotonic
        self.replies = ReplyWatch(monotonic)
        self.schemas = ToolSchemas()
        self._reported_mismatches: set[tuple[str, str]] = set()
        self._typed: tuple[Policy | None, frozenset[str], bool] = (None, frozenset(), False)
        self._plain_tools: tuple[Policy | None, dict[str, bool]] = (None, {})  # see `_plain_tool`
        self.listing: ListingState = "not_needed_yet"
        self.on_listing_done: Callable[[], None] | None = None  # set by the relay, to release held lines
        self._own_listings = 0
        self._listing_failed_for: tuple[bool, Any] | None = None  # id key of the call whose listing failed
        self.on_heartbeat = on_heartbeat
        self._next_heartbeat_s = monotonic() + HEARTBEAT_INTERVAL_S
        self._next_escalation_s = monotonic() + ESCALATION_LOOK_S

    # -- client -> upstream ----------------------------------------------------------------

    def on_client_line(self, line: bytes, message: Any = UNPARSED) -> ClientOutcome:
        """What becomes of one client line; `message` is its value when the caller parsed it
        already (`jsonrpc.parse_client_lines`)."""
        if message is UNPARSED:
            try:
                message = jsonrpc.parse_client_line(line)
            except jsonrpc.RefusedLine as refused:
                if not line.strip():
                    return b""  # a blank line: nothing to answer
                log.warning("refused a client line: %s", refused.message)
                return jsonrpc.error_response(None, refused.code, refused.message)
        if type(message) is dict and message.get("method") == "tools/call" and self._allowed_as_sent(message):
            return None
        return self._on_message(message)

    def _on_message(self, message: Any) -> ClientOutcome:
        """The whole path for one parsed client message (any the fast path did not take)."""
        if type(message) is list:
            return self._on_batch(message)
        refused_reason = jsonrpc.envelope_problem(message)
        if refused_reason:
            return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, refused_reason)
        method = message.get("method")
        if method == "tools/call":
            return self._on_call(message)
        if method is None and self.calls.elicitor is not None and self.calls.elicitor.owns(message):
            self.calls.elicitor.on_response(message)  # the answer to our elicitation: never forwarded
            return b""
        if method == "initialize":
            self.calls.client.read_initialize(message.get("params"))
            self.events.set_context(client=client_label(self.calls.client.name))  # self-given, escaped
        if "id" in message and method is not None:
            problem = self._id_problem(message["id"])
            if problem:
                return jsonrpc.error_response(message["id"], jsonrpc.INVALID_REQUEST, problem)
        if method == "tools/list" and "id" in message:
            forwarded = self._forward_watched(message, self._tools_list_watcher(message))
            return forwarded if isinstance(forwarded, Rewritten) else jsonrpc.encode(forwarded)
        if method == "notifications/cancelled":
            return self._on_cancelled(message)
        return None

    def allowed_as_sent(self, messages: list[Any]) -> int:
        """How many of `messages` (the parsed lines of a chunk), from the first on, the fast path
        forwards as sent (`_allowed_as_sent`, each recorded); the caller hands the rest to
        `on_client_line` one by one. An internal error raises FastPathFault with that message's
        index: the caller answers it with an internal error, as `on_client_line`'s caller does (it
        may have been recorded already, so it is neither judged again nor forwarded)."""
        taken = 0
        fast = self._allowed_as_sent
        try:
            for message in messages:
                if type(message) is not dict or message.get("method") != "tools/call" or not fast(message):
                    break
                taken += 1
        except Exception as exc:
            raise FastPathFault(taken) from exc
        return taken

    def _allowed_as_sent(self, message: Message) -> bool:
        """The usual call in the fewest steps: a single `tools/call` with only the plain members, a
        number or string id that needs no check (no watched or waiting request, not the proxy's
        prefix), arguments as an object, a tool `_plain_tool` vouches for, and a policy that allows
        it outright (`CallHandler.allowed_outright`: then it is recorded). True: forward it as
        sent. False says nothing: the whole path below decides the message from scratch, so this
        may only say yes where that path (`_on_message`) would forward it unchanged and record it
        allowed (`tests/test_call_fast_path.py` holds it to that)."""
        if len(message) != 4 or "jsonrpc" not in message or self._waiting or self.replies.entries:
            return False
        request_id = message.get("id")  # missing reads as None: neither a number nor a string
        id_type = type(request_id)
        if id_type is not int and (id_type is not str or request_id.startswith(ID_PREFIX)):
            return False
        params = message.get("params")
        if type(params) is not dict:
            return False  # the four members are now jsonrpc, method (the caller read it), id and params
        name = params.get("name")
        arguments = params.get("arguments")
        if type(name) is not str or type(arguments) is not dict:
            return False
        size = len(params)
        if size != 2 and (size != 3 or "_meta" not in params):
            return False  # params holds name, arguments and perhaps _meta: nothing misspelled
        policy = self.policy
        plain = self._plain_tools
        if plain[0] is not policy:
            plain = self._plain_tools = (policy, {})
        vouched = plain[1].get(name)
        if vouched is None:
            vouched = self._plain_tool(policy, name, plain[1])
        return vouched and self.calls.allowed_outright(name, arguments, policy)

    def _plain_tool(self, policy: Policy, name: str, known: dict[str, bool]) -> bool:
        """Whether calls of `name` may take the fast path under `policy`: a name `_read_call`
        accepts as it is (not empty, not too long, printable), no tool schema to check the
        arguments against (`_types`), no counter. Remembered per policy for MAX_PLAIN_TOOLS names."""
        typed = self._typed
        if typed[0] is not policy:
            typed = self._typed = (policy, *self.schemas.typed(policy))
        vouched = (
            0 < len(name) <= MAX_TOOL_NAME_CHARS
            and name.isprintable()
            and not (typed[2] or name in typed[1])
            and not (policy.counted_tools and policy.uses_counters(name))
        )
        if len(known) < MAX_PLAIN_TOOLS:
            known[name] = vouched
        return vouched

    def _id_problem(self, request_id: Any) -> str:
        """Why a client request id cannot be accepted now, or ""."""
        if type(request_id) is str and request_id.startswith(ID_PREFIX):
            return f"Invalid Request: ids starting with {ID_PREFIX!r} are reserved by the proxy"
        if self.replies.outstanding(request_id) or (self._waiting and jsonrpc.id_key(request_id) in self._waiting):
            return "Invalid Request: that id is still in use by a pending request"
        return ""

    def _forward_watched(
        self, message: Message, watcher: Watcher, give_back: Callable[[str], None] | None = None
    ) -> Rewritten | Message:
        """Register `message` under a proxy id and encode it; refuses it if it cannot be re-encoded
        (then `give_back` returns what the call took: it was never forwarded)."""
        if self.replies.full:
            if give_back is not None:
                give_back("too many requests awaiting an answer: not forwarded")
            return jsonrpc.error_message(
                message.get("id"), jsonrpc.INVALID_REQUEST, "Invalid Request: too many requests awaiting an answer"
            )
        watched = self.replies.register(message, watcher)
        try:
            return Rewritten(jsonrpc.encode(watched))
        except (ValueError, RecursionError):
            self.replies.unregister(watched)
            if give_back is not None:
                give_back("the request could not be forwarded")
            return jsonrpc.error_message(
                message.get("id"), jsonrpc.INVALID_REQUEST, "Invalid Request: cannot be forwarded"
            )

    def _on_batch(self, items: list[Any]) -> ClientOutcome:
        if self.replies.room() < sum(map(_is_tools_list, items)):
            return jsonrpc.error_response(
                None, jsonrpc.INVALID_REQUEST, "Invalid Request: too many requests awaiting an answer"
            )
        if any(jsonrpc.envelope_problem(item) for item in items):  # a member that is not an object too
            return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Invalid Request: malformed batch member")
        for item in items:
            problem = (
                self._id_problem(item["id"]) if isinstance(item, dict) and "method" in item and "id" in item else ""
            )
            if problem:
                return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, problem)
        outcomes = [self._batch_call(item) if _is_tools_call(item) else FORWARD for item in items]
        if all(outcome is FORWARD for outcome in outcomes):
            self.calls.forwarded_in_batch([_call_of(item) for item in items if _is_tools_call(item)])
            rewritten = [self._batch_member(item) for item in items]
            if all(new is old for new, old in zip(rewritten, items, strict=True)):
                return None
            try:
                return Rewritten(jsonrpc.encode(rewritten))
            except (ValueError, RecursionError):
                for new, old in zip(rewritten, items, strict=True):
                    if new is not old and _is_tools_list(old):
                        self.replies.unregister(new)
                return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Invalid Request: cannot be forwarded")
        answers: list[Message] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if type(outcome) is Answer and outcome.message:
                answers.append(outcome.message)
            elif isinstance(item, dict) and "method" in item and "id" in item:
                answers.append(jsonrpc.error_message(item.get("id"), jsonrpc.INVALID_REQUEST, BATCH_REFUSED))
        log.warning("refused a batch of %d messages containing a tools/call", len(items))
        return jsonrpc.encode(answers) if answers else b""

    def _batch_member(self, item: Any) -> Any:
        """A forwarded batch member as the upstream must see it: watched ids and cancels mapped."""
        if _is_tools_list(item):
            return self.replies.register(item, self._tools_list_watcher(item))
        if isinstance(item, dict) and item.get("method") == "notifications/cancelled":
            params = item.get("params")
            if isinstance(params, dict) and jsonrpc.valid_id(params.get("requestId")):
                self._cancel_waiting(params["requestId"])
                local_id = self.replies.cancel(params["requestId"])
                if local_id is not None:
                    return {**item, "params": {**params, "requestId": local_id}}
        return item

    # -- tools/call ----------------------------------------------------------------------
    # A call's JSON-RPC side is read here (params, id, the tool schemas it needs); the call
    # handler decides it; `_carry_out` turns its outcome into what the relay does.

    def _on_call(self, message: Message) -> ClientOutcome:
        """A tools/call sent on its own."""
        read = self._read_call(message, False)
        if type(read) is not tuple:
            return self._carry_out(message, read)
        request_id, name, arguments, params = read
        in_band = None
        if "requestState" in params:  # perhaps a retry answering our stateless-era confirmation
            in_band = take_in_band_answer(
                params, self.calls.states, name, lambda: self.calls.gate.hasher.arguments(arguments)
            )
        if type(request_id) is str or self.replies.active or self._waiting:  # else no id problem is possible
            id_problem = self._id_problem(request_id)
            if id_problem:
                return jsonrpc.error_response(request_id, jsonrpc.INVALID_REQUEST, id_problem)
        policy = self.policy  # one snapshot for the whole decision, even if a reload swaps it meanwhile
        typed = self._typed  # (policy, tools whose rules read typed paths, "*" rules do): most calls stop here
        types = (
            FINE
            if typed[0] is policy and not typed[2] and name not in typed[1]
            else self._types(policy, name, arguments)
        )
        if types.strict and not types.problem and self._may_list_tools(request_id):
            return self._list_tools_and_hold(request_id, params)
        outcome = self.calls.handle(request_id, name, arguments, params, policy, types, in_band)
        if outcome is FORWARD and in_band is None:  # the usual case
            return None
        return self._carry_out(message, outcome, rewrite=in_band is not None)

    def _batch_call(self, item: Message) -> Forward | Answer:
        """A tools/call inside a batch (its id was checked with the batch's)."""
        read = self._read_call(item, in_batch=True)
        if type(read) is not tuple:
            return read
        request_id, name, arguments, params = read
        policy = self.policy
        return self.calls.judge_in_batch(
            request_id, name, arguments, params, policy, self._types(policy, name, arguments)
        )

    def _read_call(
        self, message: Message, in_batch: bool
    ) -> tuple[Any, str, dict[str, Any], Message] | Forward | Answer:
        """(id, tool, arguments, params) of a well-formed call, or its answer: an error for a
        malformed one, nothing for one sent as a notification (never forwarded)."""
        request_id = message.get("id")
        if in_batch and not jsonrpc.valid_id(request_id):  # single messages were checked on arrival
            return _refused(None, jsonrpc.INVALID_REQUEST, "Invalid Request: id must be a string, number or null")
        params = message.get("params")
        if not isinstance(params, dict):
            return _refused(request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call params must be an object")
        if not params.keys() <= CALL_PARAM_KEYS and jsonrpc.misspelled(params, CALL_PARAM_KEYS):
            return _refused(
                request_id, jsonrpc.INVALID_PARAMS, "Invalid params: a member name in the wrong letter case"
            )
        name = params.get("name")
        if not isinstance(name, str) or not name:
            return _refused(request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call needs a tool name")
        if len(name) > MAX_TOOL_NAME_CHARS:  # names are written to the audit log as sent
            return _refused(
                request_id,
                jsonrpc.INVALID_PARAMS,
                f"Invalid params: the tool name is longer than {MAX_TOOL_NAME_CHARS} characters; no tool has such a name",
            )
        if not name.isprintable() and has_unsafe_chars(name):
            return _refused(
                request_id,
                jsonrpc.INVALID_PARAMS,
                "Invalid params: the tool name contains control or bidirectional characters; no tool has such a name",
            )
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        elif not isinstance(arguments, dict):
            return _refused(
                request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call arguments must be an object"
            )
        if "id" not in message:
            log.warning("dropped tools/call %s sent as a notification (no id): never forwarded", name)
            return NOTHING
        return request_id, name, arguments, params

    def _types(self, policy: Policy, name: str, arguments: dict[str, Any]) -> TypeVerdict:
        """How the call's argument types stand against the schemas the upstream declared."""
        typed = self._typed
        if typed[0] is not policy:  # (policy, tools whose rules read typed paths, "*" rules do)
            typed = self._typed = (policy, *self.schemas.typed(policy))
        if (typed[2] or name in typed[1]) and _reaches_rules(policy, name):
            return self.schemas.verdict(policy, name, arguments)
        return FINE

    def _carry_out(self, message: Message, outcome: CallOutcome, rewrite: bool = False) -> ClientOutcome:
        """The one place a call's outcome becomes what the relay does: forward as sent (None; as
        re-encoded with `rewrite`: our confirmation state was stripped), forward under a watched
        id (Rewritten), answer (bytes; empty: nothing), or decide on the side (Deciding)."""
        if type(outcome) is Forward:
            taken = outcome.taken
            if taken is None:
                return Rewritten(jsonrpc.encode(message)) if rewrite else None
            watched = self._forward_watched(message, Watcher(taken.on_reply), taken.give_back)
            if type(watched) is Rewritten:
                taken.forwarded()
                return watched
            return jsonrpc.encode(watched)  # refused (given back): never forwarded, never recorded allowed
        if type(outcome) is Answer:
            return jsonrpc.encode(outcome.message) if outcome.message else b""
        key = jsonrpc.id_key(message["id"])
        ticket = self._waiting[key] = Ticket(self._monotonic() + STORE_WAIT_S)
        if self.upstream_gone:  # waits ended already (`end_waits`): this call waits for no human either
            ticket.end_wait()
        deciding = Deciding()
        try:
            outcome.start(ticket, lambda result: self._decided(message, key, ticket, result, rewrite, deciding))  # type: ignore[union-attr]
        except Exception:  # a bug must cost one call: its id is free again, and it is answered
            if self._waiting.get(key) is ticket:
                del self._waiting[key]
            if deciding.done:
                return deciding.outcome
            return _internal_error(message["id"])
        return deciding.outcome if deciding.done else deciding  # decided at once (e.g. a bad increment): as any answer

    def _decided(
        self,
        message: Message,
        key: tuple[bool, Any],
        ticket: Ticket,
        result: Forward | Answer,
        rewrite: bool,
        deciding: Deciding,
    ) -> None:
        """A call decided on the side (its store work ran meanwhile and later lines went on):
        settle it in this step, so the relay forwards it before any later line is handled."""
        if self._waiting.get(key) is ticket:
            del self._waiting[key]
        # A task's end reaches us a turn of the loop later (`CallHandler._run`): the client may have
        # cancelled the call, or the upstream gone, after the decision checked. Then what the call
        # took goes back (it never started).
        try:
            if ticket.cancelled:  # the client expects no answer
                if type(result) is Forward and result.taken is not None:
                    result.taken.give_back("the client cancelled it before it was forwarded")
                settled: Settled = b""
            else:
                why = self._forwarding_closed() if type(result) is Forward else ""
                if why:
                    result = self.calls.not_forwarded(message["id"], message["params"]["name"], result.taken, why)  # type: ignore[union-attr]
                settled = self._carry_out(message, result, rewrite)  # type: ignore[assignment]
        except Exception:  # a bug must cost one call, never the session
            settled = _internal_error(message["id"])
        deciding.settle(settled)  # (Forward and Answer never come to Hold or Deciding)

    def _cancel_waiting(self, request_id: Any) -> bool:
        """End a call still waiting for the store: it will not be forwarded or answered."""
        ticket = self._waiting.pop(jsonrpc.id_key(request_id), None) if self._waiting else None
        if ticket is None:
            return False
        ticket.cancel()
        return True

    def end_waits(self) -> None:
        """Calls waiting for a human stop waiting (the client or the upstream is going away): each
        is answered as it would be without a decision."""
        for ticket in self._waiting.values():
            ticket.end_wait()

    def _send_to_client(self, message: Message) -> None:
        """A message of the proxy's own to the client (progress, elicitation requests)."""
        self.to_client(jsonrpc.encode(message))

    def _forwarding_closed(self) -> str:
        """Why a call decided now can no longer be forwarded, or ""."""
        if self.upstream_gone or self.upstream_input_closed:
            return "the upstream was gone (or its input closed) before it was forwarded"
        return ""

    def _on_cancelled(self, message: Message) -> Rewritten | bytes | None:
        params = message.get("params")
        if not isinstance(params, dict) or not jsonrpc.valid_id(params.get("requestId")):
            return None
        if isinstance(params["requestId"], str) and params["requestId"].startswith(ID_PREFIX):
            return b""  # a cancel aimed at the proxy's own ids: never forwarded
        if self._cancel_waiting(params["requestId"]):
            return b""  # the upstream never saw that call
        local_id = self.replies.cancel(params["requestId"])
        if local_id is None:
            return None
        return Rewritten(jsonrpc.encode({**message, "params": {**params, "requestId": local_id}}))

    # -- upstream -> client ----------------------------------------------------------------

    @property
    def watching(self) -> bool:
        """True while some upstream reply must be inspected before it reaches the client."""
        return self.replies.active

    def on_upstream_line(self, line: bytes) -> bytes | None:
        """None to pass the line on unchanged, else its replacement."""
        message, exact = jsonrpc.parse_trusted_line(line)
        replaced: Any = None
        if message is None:
            return self.replies.reply_unparsed(line)
        if isinstance(message, dict):
            replaced = self._on_upstream_message(message)
            if replaced is DROP:
                return b""
        elif isinstance(message, list):
            changed = [self._on_upstream_message(m) if isinstance(m, dict) else None for m in message]
            if any(c is not None for c in changed):
                replaced = [c if c is not None else m for c, m in zip(changed, message, strict=True) if c is not DROP]
                if not replaced:
                    return b""
        if replaced is None:
            return None
        try:
            return jsonrpc.encode_relayed(replaced, exact)
        except (ValueError, RecursionError):
            log.error("could not re-encode an upstream reply; answered with an error instead")
            request_id = replaced.get("id") if isinstance(replaced, dict) else None
            return jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, "intercept could not relay this reply")

    def _on_upstream_message(self, message: Message) -> Message | None:
        if "method" in message or "id" not in message:
            return None
        return self.replies.reply(message)

    def on_upstream_gone(self, how: str = "exited") -> bytes:
        """The upstream exited or closed its output: no reply we were waiting for will come. The
        error replies for the requests we watch; what their calls took stays taken (they may have
        run). Calls still waiting for the store will not be forwarded."""
        if self.upstream_gone:
            return b""
        self.upstream_gone = True
        self.end_waits()
        waiting = self.replies.forget_all()
        self.listing_finished()
        message = (
            f"the upstream server {how} before answering this request; it may have run, and an approval or "
            "counters it took stay used"
        )
        return b"".join(jsonrpc.error_response(client_id, jsonrpc.INTERNAL_ERROR, message) for client_id in waiting)

    def _may_list_tools(self, request_id: Any) -> bool:
        """Whether the proxy should list the tools itself before judging this call: the client
        never listed them, no listing of the proxy's is under way or has timed out, and no
        listing failed for this very call (its line is judged again once released: it must not
        spend every attempt). A client that sends a tools/call has sent its first request, so the
        server is past its start, whatever the handshake looked like."""
        return (
            self.listing == "not_needed_yet"
            and not self.schemas.ever_listed
            and self._own_listings < MAX_OWN_LISTINGS
            and jsonrpc.id_key(request_id) != self._listing_failed_for
        )

    def _list_tools_and_hold(self, request_id: Any, params: Message) -> Hold:
        """Ask the upstream for its tools (in the call's era: a stateless-era request carries the
        call's `_meta`) and hold the client's lines until the answer or the relay's bound. A
        listing answered with an error is tried again at a later call: one with a `_meta` the
        server refuses would have the call itself refused too, not run."""
        request: Message = {"jsonrpc": "2.0", "method": "tools/list"}
        if is_stateless_request(params):
            request["params"] = {"_meta": params["_meta"]}
        key = jsonrpc.id_key(request_id)

        def on_reply(response: Message) -> None:
            self._listed(response, first_page=True, last_page=True)  # later pages, if any, stay unknown
            failed = not self.schemas.ever_listed and self.listing == "waiting"
            self.listing_finished()
            if failed:  # an error or no tool list: a later call may try again
                self.listing, self._listing_failed_for = "not_needed_yet", key

        self.listing = "waiting"
        self._own_listings += 1
        log.info("listing the upstream's tools before judging argument types (the client did not list them)")
        return Hold(jsonrpc.encode(self.replies.register_own(request, Watcher(on_reply))))

    def listing_finished(self) -> None:
        """The proxy's own listing was answered, timed out, or the upstream went away: release
        the held lines (judged with the schemas if they came, strictly if not)."""
        if self.listing != "waiting":
            return
        self.listing = "done"
        if self.on_listing_done is not None:
            self.on_listing_done()

    def _listed(self, response: Message, first_page: bool, last_page: bool | None = None) -> None:
        """Keep the schemas of a tools/list reply; once a listing is complete, warn (once per name
        and session) about policy names the server does not offer. Never blocks a call."""
        self.schemas.listed(response, first_page)
        result = response.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            return
        if last_page is None:
            last_page = not result.get("nextCursor")
        if not last_page:
            return
        for mismatch in policy_mismatches(self.policy, self.schemas.tools):
            key = (mismatch.kind, mismatch.name)
            if key in self._reported_mismatches or len(self._reported_mismatches) >= MAX_REPORTED_MISMATCHES:
                continue
            self._reported_mismatches.add(key)
            log.warning("%s", escape_unsafe(mismatch.describe()))
            self.events.emit(
                "policy_mismatch",
                server=self.server_name,
                kind=mismatch.kind,
                name=mismatch.name,
                closest=mismatch.closest,
            )

    def _tools_list_watcher(self, request: Message) -> Watcher:
        """Read the tool schemas from the reply (a request without a cursor starts a new listing)
        and filter hidden tools out; with `hide` set, an unreadable reply is refused rather than
        passed on with the hidden tools in it."""
        params = request.get("params")
        first_page = not (isinstance(params, dict) and params.get("cursor") is not None)

        def on_reply(response: Message) -> Message | None:
            self._listed(response, first_page)
            return without_hidden_tools(response, self.policy)

        unreadable = "intercept could not read the upstream's tools/list reply, so it cannot hide tools from it"
        return Watcher(on_reply, unreadable if self.policy.hide else "")

    def tick(self) -> None:
        """Periodic housekeeping from the relay: forget old cancelled calls, flush events, heartbeat."""
        self.replies.evict_cancelled()
        if self._monotonic() >= self._next_escalation_s:
            self._next_escalation_s = self._monotonic() + ESCALATION_LOOK_S
            self.calls.gate.escalate(self.policy)
        if self._monotonic() >= self._next_heartbeat_s:
            self._next_heartbeat_s = self._monotonic() + HEARTBEAT_INTERVAL_S
            if self.policy.counted_tools:
                self.counters.snapshot(time.time(), then=self._heartbeat)  # read on the store thread
            else:
                self._heartbeat({})
        self.events.flush()

    def _heartbeat(self, counters: dict[str, int]) -> None:
        self.events.emit("heartbeat", server=self.server_name, counters=counters)
        if self.on_heartbeat is not None:
            self.on_heartbeat()

    @property
    def deciding(self) -> bool:
        """Some call is still waiting for the state store."""
        return bool(self._waiting)

    async def wind_down(self, timeout_s: float) -> None:
        """Before exit: let queued store work (give-backs) finish, within `timeout_s`."""
        await self.store.drain(timeout_s)


NOTHING = Answer({})  # a call sent as a notification: nothing is forwarded or answered


def _internal_error(request_id: Any) -> bytes:
    """The answer to a call a bug stopped while it was decided (logged with the error being handled)."""
    log.exception("internal error while deciding a tools/call; it was not forwarded")
    return jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, INTERNAL_ERROR_TEXT)


def _refused(request_id: Any, code: int, message: str) -> Answer:
    return Answer(jsonrpc.error_message(request_id, code, message))


def _is_tools_call(item: Any) -> bool:
    return isinstance(item, dict) and item.get("method") == "tools/call"


def _is_tools_list(item: Any) -> bool:
    return isinstance(item, dict) and item.get("method") == "tools/list" and "id" in item


def _call_of(item: Message) -> ToolCall:
    params = item.get("params") or {}
    return ToolCall(str(params.get("name")), params.get("arguments") or {})


def _reaches_rules(policy: Policy, tool: str) -> bool:
    """Whether the engine would look at the tool's rules (not hidden, not denied by default), so
    a type check cannot tell an agent anything about a tool it may not use."""
    return not policy.hides(tool) and (policy.default != "deny" or tool in policy.tools)
