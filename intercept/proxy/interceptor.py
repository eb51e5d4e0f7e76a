"""Decides what happens to each client line and inspects the upstream replies we asked to see.

It knows JSON-RPC messages and the policy, not bytes on pipes or processes: the relay feeds it
lines and writes what it returns. A client line yields `None` (forward it unchanged), `Rewritten`
(forward this line instead), or bytes to send back to the client instead (possibly empty:
nothing is sent and nothing forwarded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from intercept.approvals.gate import ApprovalGate, AskHuman, Forward
from intercept.audit.events import EventLog
from intercept.engine import Decision, ToolCall, evaluate
from intercept.engine.decision import ALLOW
from intercept.engine.evaluate import decide
from intercept.policy.drift import policy_mismatches
from intercept.policy.model import Policy
from intercept.proxy import jsonrpc
from intercept.proxy.approval_reply import approval_required_error
from intercept.proxy.counting import CallCounters, Reserved
from intercept.proxy.era import denied_result, is_stateless_request
from intercept.proxy.jsonrpc import ID_PREFIX
from intercept.proxy.outcomes import ClientOutcome, Hold, Rewritten
from intercept.proxy.reply_watch import DROP, ReplyWatch, Watcher
from intercept.proxy.tool_schemas import FINE, ToolSchemas
from intercept.proxy.tools_list import without_hidden_tools
from intercept.safe_text import escape_unsafe, has_unsafe_chars

log = logging.getLogger("intercept")

HEARTBEAT_INTERVAL_S = 60.0
# Error codes with which the upstream refuses a request before running anything: only these give
# an approval or counters back. Any other outcome (another error, a cancel, silence, an exit) may
# follow side effects, so what the call took stays taken.
ARGUMENT_TYPE_RULE = "(argument type)"
MAX_REPORTED_MISMATCHES = 200  # policy names reported as not offered, per session
MAX_OWN_LISTINGS = 20  # tools/list requests of the proxy's own per session (each may hold input a while)
NEVER_STARTED_CODES = frozenset({jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST, jsonrpc.METHOD_NOT_FOUND})
CALL_PARAM_KEYS = frozenset({"name", "arguments", "_meta"})
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
        counters: CallCounters,
        state_dir_hint: Path | None = None,
        on_heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self.server_name = server_name
        self.events = events
        self.gate = gate
        self.counters = counters
        self.state_dir_hint = state_dir_hint
        self.replies = ReplyWatch()
        self._debug = log.isEnabledFor(logging.DEBUG)  # read once: the allowed-call path stays lean
        self.schemas = ToolSchemas()
        self._reported_mismatches: set[tuple[str, str]] = set()
        self._typed: tuple[Policy | None, frozenset[str], bool] = (None, frozenset(), False)
        self.listing: ListingState = "not_needed_yet"
        self.on_listing_done: Callable[[], None] | None = None  # set by the relay, to release held lines
        self._own_listings = 0
        self._listing_failed_for: tuple[bool, Any] | None = None  # id key of the call whose listing failed
        self.on_heartbeat = on_heartbeat
        self._next_heartbeat_s = time.monotonic() + HEARTBEAT_INTERVAL_S

    # -- client -> upstream ----------------------------------------------------------------

    def on_client_line(self, line: bytes) -> ClientOutcome:
        try:
            message = jsonrpc.parse_client_line(line)
        except jsonrpc.RefusedLine as refused:
            if not line.strip():
                return b""  # a blank line: nothing to answer
            log.warning("refused a client line: %s", refused.message)
            return jsonrpc.error_response(None, refused.code, refused.message)
        if type(message) is list:
            return self._on_batch(message)
        refused_reason = jsonrpc.envelope_problem(message)
        if refused_reason:
            return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, refused_reason)
        method = message.get("method")
        if method == "tools/call":
            reply = self._decide_call(message, in_batch=False)
            if reply is None or type(reply) is Rewritten or type(reply) is Hold:
                return reply  # type: ignore[return-value]
            return jsonrpc.encode(reply) if reply else b""
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

    def _id_problem(self, request_id: Any) -> str:
        """Why a client request id cannot be accepted now, or ""."""
        if type(request_id) is str and request_id.startswith(ID_PREFIX):
            return f"Invalid Request: ids starting with {ID_PREFIX!r} are reserved by the proxy"
        if self.replies.outstanding(request_id):
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
            return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Invalid Request: too many requests awaiting an answer")
        if any(jsonrpc.envelope_problem(item) for item in items):  # a member that is not an object too
            return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Invalid Request: malformed batch member")
        for item in items:
            problem = (
                self._id_problem(item["id"]) if isinstance(item, dict) and "method" in item and "id" in item else ""
            )
            if problem:
                return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, problem)
        replies = [
            self._decide_call(item, in_batch=True)
            if isinstance(item, dict) and item.get("method") == "tools/call"
            else None
            for item in items
        ]
        if all(reply is None for reply in replies):
            for item in items:
                if isinstance(item, dict) and item.get("method") == "tools/call":
                    self._record(_call_of(item), "allowed")
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
        for item, reply in zip(items, replies, strict=True):
            if isinstance(reply, dict) and reply:
                answers.append(reply)
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
                local_id = self.replies.cancel(params["requestId"])
                if local_id is not None:
                    return {**item, "params": {**params, "requestId": local_id}}
        return item

    def _decide_call(self, message: Message, in_batch: bool) -> Message | Rewritten | Hold | None:
        """None to forward the call as sent, Rewritten to forward it under a proxy id, or the reply
        to the client ({} means drop silently). In a batch, allowed calls are recorded by the caller.

        This runs for every call, so the usual case (an allowed call that touches no counter)
        takes the fewest steps; every check still runs on it.
        """
        request_id = message.get("id")
        if in_batch and not jsonrpc.valid_id(request_id):  # single messages were checked on arrival
            return jsonrpc.error_message(
                None, jsonrpc.INVALID_REQUEST, "Invalid Request: id must be a string, number or null"
            )
        params = message.get("params")
        if not isinstance(params, dict):
            return jsonrpc.error_message(
                request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call params must be an object"
            )
        if not params.keys() <= CALL_PARAM_KEYS and jsonrpc.misspelled(params, CALL_PARAM_KEYS):
            return jsonrpc.error_message(
                request_id, jsonrpc.INVALID_PARAMS, "Invalid params: a member name in the wrong letter case"
            )
        name = params.get("name")
        if not isinstance(name, str) or not name:
            return jsonrpc.error_message(
                request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call needs a tool name"
            )
        if not name.isprintable() and has_unsafe_chars(name):
            return jsonrpc.error_message(
                request_id,
                jsonrpc.INVALID_PARAMS,
                "Invalid params: the tool name contains control or bidirectional characters; no tool has such a name",
            )
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        elif not isinstance(arguments, dict):
            return jsonrpc.error_message(
                request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call arguments must be an object"
            )
        if "id" not in message:
            log.warning("dropped tools/call %s sent as a notification (no id): never forwarded", name)
            return {}
        if type(request_id) is str or self.replies.active:  # else no id problem is possible
            id_problem = self._id_problem(request_id)
            if id_problem:
                return jsonrpc.error_message(request_id, jsonrpc.INVALID_REQUEST, id_problem)
        policy = self.policy  # one snapshot for the whole decision, even if a reload swaps it meanwhile
        typed = self._typed
        if typed[0] is not policy:  # (policy, tools whose rules read typed paths, "*" rules do)
            typed = self._typed = (policy, *self.schemas.typed(policy))
        types = FINE
        if (typed[2] or name in typed[1]) and _reaches_rules(policy, name):
            types = self.schemas.verdict(policy, name, arguments)
            if types.problem:
                return self._deny(request_id, ToolCall(name, arguments), types.problem, params, ARGUMENT_TYPE_RULE)
            if types.strict and not in_batch and self._may_list_tools(request_id):
                return self._list_tools_and_hold(request_id, params)
        if not policy.counted_tools or not policy.uses_counters(name):
            decision = decide(policy, name, arguments, None, types.strict)
            if decision is ALLOW:
                if not in_batch:
                    self.events.emit_tool_call(self.server_name, name, "allowed", arguments)
                if self._debug:
                    log.debug("allowed tool=%s", name)
                return None
            return self._settle_decision(policy, message, ToolCall(name, arguments), decision, in_batch, 0.0)
        call = ToolCall(name, arguments)
        if in_batch:
            return jsonrpc.error_message(
                request_id, jsonrpc.INVALID_REQUEST, f"{name} uses counters: send it on its own, not in a batch"
            )
        now_s = time.time()
        counter_values = self.counters.read(policy, name, now_s)
        if isinstance(counter_values, Decision):
            return self._deny(request_id, call, counter_values.message, params, counter_values.rule_name)
        decision = evaluate(policy, call, counter_values, types.strict)
        if decision.verdict != "allow":
            return self._settle_decision(policy, message, call, decision, in_batch, now_s)
        forward: Rewritten | None = None
        reserved = self.counters.reserve(policy, call, now_s)
        if isinstance(reserved, Decision):
            return self._deny(request_id, call, reserved.message, params, reserved.rule_name)
        if reserved.reservations:
            forward = self._watch_call(message, call, None, reserved)
        self._record(call, "allowed")
        return forward

    def _settle_decision(
        self, policy: Policy, message: Message, call: ToolCall, decision: Decision, in_batch: bool, now_s: float
    ) -> Message | Rewritten | None:
        """A call the policy did not simply allow: send it through the approval gate, or deny it."""
        request_id, params = message.get("id"), message["params"]
        if decision.verdict == "require_approval":
            if in_batch:
                self._record(call, "denied", decision.rule_name)
                return jsonrpc.error_message(
                    request_id,
                    jsonrpc.INVALID_REQUEST,
                    f"{call.name} needs approval: send it on its own, not in a batch",
                )
            return self._gate(policy, message, call, decision, now_s or time.time())
        return self._deny(request_id, call, decision.message, params, decision.rule_name)

    def _gate(
        self, policy: Policy, message: Message, call: ToolCall, decision: Decision, now_s: float
    ) -> Message | Rewritten:
        assert decision.rule is not None
        request_id, params = message["id"], message["params"]
        outcome = self.gate.check(policy, call, decision.rule, now_s)
        if isinstance(outcome, Forward):
            approval_id = outcome.approval.id
            reserved = self.counters.reserve(policy, call, now_s)
            if isinstance(reserved, Decision):
                self.gate.give_back(approval_id, call.arguments, now_s, f"refused by counters: {reserved.message}")
                return self._deny(request_id, call, reserved.message, params, reserved.rule_name)
            self._record(call, "allowed", decision.rule_name, approval_id=approval_id)
            return self._watch_call(message, call, approval_id, reserved)
        if isinstance(outcome, AskHuman):
            log.info("held tool=%s for approval %s (rule %s)", call.name, outcome.approval.id, decision.rule_name)
            self._record(call, "approval_required", decision.rule_name, approval_id=outcome.approval.id)
            return approval_required_error(request_id, outcome.approval, self.state_dir_hint)
        return self._deny(request_id, call, outcome.message, params, decision.rule_name)

    def _watch_call(
        self, message: Message, call: ToolCall, approval_id: str | None, reserved: Reserved
    ) -> Rewritten | Message:
        """Forward a call that took an approval or counters. They are given back only if the call
        provably never started: it could not be forwarded, or the upstream refused the request
        itself (NEVER_STARTED_CODES). A cancel, silence, an upstream exit, any other error and
        `isError: true` keep them taken: the tool may have acted."""

        def give_back(why: str) -> None:
            self.counters.give_back(reserved.reservations, why)
            if approval_id is not None:
                self.gate.give_back(approval_id, call.arguments, time.time(), why)

        def on_reply(reply: Message) -> None:
            code = _error_code(reply)
            if code in NEVER_STARTED_CODES:
                give_back(f"the upstream refused the request (error {code}): the tool did not start")

        return self._forward_watched(message, Watcher(on_reply), give_back)

    def _on_cancelled(self, message: Message) -> Rewritten | bytes | None:
        params = message.get("params")
        if not isinstance(params, dict) or not jsonrpc.valid_id(params.get("requestId")):
            return None
        if isinstance(params["requestId"], str) and params["requestId"].startswith(ID_PREFIX):
            return b""  # a cancel aimed at the proxy's own ids: never forwarded
        local_id = self.replies.cancel(params["requestId"])
        if local_id is None:
            return None
        return Rewritten(jsonrpc.encode({**message, "params": {**params, "requestId": local_id}}))

    def _deny(self, request_id: Any, call: ToolCall, message: str, params: Message, rule: str) -> Message:
        self._record(call, "denied", rule)
        log.info("denied tool=%s rule=%s", call.name, rule)
        return {"jsonrpc": "2.0", "id": request_id, "result": denied_result(message, is_stateless_request(params))}

    def _hash(self, arguments: dict[str, Any]) -> str:
        hasher = self.events.hasher
        return hasher.arguments(arguments) if hasher is not None else ""

    def _record(self, call: ToolCall, result: str, rule: str = "", **extra: Any) -> None:
        if not rule and not extra:
            self.events.emit_tool_call(self.server_name, call.name, result, call.arguments)
            return
        fields: dict[str, Any] = {"tool": call.name, "result": result, "args_hash": self._hash(call.arguments)}
        if rule:
            fields["rule"] = rule
        self.events.emit("tool_call", server=self.server_name, **fields, **extra)

    # -- upstream -> client ----------------------------------------------------------------

    @property
    def watching(self) -> bool:
        """True while some upstream reply must be inspected before it reaches the client."""
        return self.replies.active

    def on_upstream_line(self, line: bytes) -> bytes | None:
        """None to pass the line on unchanged, else its replacement."""
        message = jsonrpc.parse_trusted_line(line)
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
            return jsonrpc.encode_relayed(replaced)
        except (ValueError, RecursionError):
            log.error("could not re-encode an upstream reply; answered with an error instead")
            request_id = replaced.get("id") if isinstance(replaced, dict) else None
            return jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, "intercept could not relay this reply")

    def _on_upstream_message(self, message: Message) -> Message | None:
        if "method" in message or "id" not in message:
            return None
        return self.replies.reply(message)

    def on_upstream_gone(self) -> None:
        """The upstream exited: no reply we were waiting for will come. What the calls took stays
        taken: they may have run."""
        self.replies.forget_all()
        self.listing_finished()

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
                "policy_mismatch", server=self.server_name, kind=mismatch.kind, name=mismatch.name, closest=mismatch.closest
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
        if time.monotonic() >= self._next_heartbeat_s:
            self._next_heartbeat_s = time.monotonic() + HEARTBEAT_INTERVAL_S
            counters = self.counters.snapshot(time.time()) if self.policy.counted_tools else {}
            self.events.emit("heartbeat", server=self.server_name, counters=counters)
            if self.on_heartbeat is not None:
                self.on_heartbeat()
        self.events.flush()


def _is_tools_list(item: Any) -> bool:
    return isinstance(item, dict) and item.get("method") == "tools/list" and "id" in item


def _call_of(item: Message) -> ToolCall:
    params = item.get("params") or {}
    return ToolCall(str(params.get("name")), params.get("arguments") or {})


def _reaches_rules(policy: Policy, tool: str) -> bool:
    """Whether the engine would look at the tool's rules (not hidden, not denied by default), so
    a type check cannot tell an agent anything about a tool it may not use."""
    return not policy.hides(tool) and (policy.default != "deny" or tool in policy.tools)


def _error_code(reply: Message) -> int | None:
    """The JSON-RPC error code of a reply, or None for a result (or an error without an integer code)."""
    error = reply.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if type(code) is int else None
