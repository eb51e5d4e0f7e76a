"""Decides what happens to each client line and inspects the upstream replies we asked to see.

It knows JSON-RPC messages and the policy, not bytes on pipes or processes: the relay feeds it
lines and writes what it returns. A client line yields `None` (forward it unchanged) or the bytes
to send back to the client instead (possibly empty: nothing is sent and nothing forwarded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intercept.approvals.fingerprint import arguments_hash
from intercept.approvals.gate import ApprovalGate, AskHuman, Forward
from intercept.audit.events import EventLog
from intercept.engine import Decision, ToolCall, evaluate
from intercept.policy.model import Policy
from intercept.proxy import jsonrpc
from intercept.proxy.approval_reply import approval_required_error
from intercept.proxy.counting import CallCounters, Reserved
from intercept.proxy.era import denied_result, is_stateless_request
from intercept.proxy.tools_list import without_hidden_tools

log = logging.getLogger("intercept")

HEARTBEAT_INTERVAL_S = 60.0
BATCH_REFUSED = (
    "Batch not forwarded: it contains a tools/call that policy did not allow as is; send the requests one at a time"
)
Message = dict[str, Any]


@dataclass(slots=True)
class ResponseWatcher:
    """What to do with the upstream's reply to one request, or if it never comes."""

    on_reply: Callable[[Message], Message | None]
    on_abandon: Callable[[str], None] | None = None
    on_late_reply: Callable[[Message], None] | None = None  # a reply after the client cancelled


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
    ) -> None:
        self.policy = policy
        self.server_name = server_name
        self.events = events
        self.gate = gate
        self.counters = counters
        self.state_dir_hint = state_dir_hint
        self._watchers: dict[tuple[bool, Any], ResponseWatcher] = {}
        self._next_heartbeat_s = time.monotonic() + HEARTBEAT_INTERVAL_S

    # -- client -> upstream ----------------------------------------------------------------

    def on_client_line(self, line: bytes) -> bytes | None:
        if not line or line.isspace():
            return b""
        try:
            message = jsonrpc.parse_client_line(line)
        except jsonrpc.RefusedLine as refused:
            log.warning("refused a client line: %s", refused.message)
            return jsonrpc.error_response(None, refused.code, refused.message)
        if isinstance(message, list):
            return self._on_batch(message)
        if not isinstance(message, dict):
            return jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Invalid Request: not a JSON-RPC message")
        if "id" in message and "method" in message and not jsonrpc.valid_id(message["id"]):
            return jsonrpc.error_response(
                None, jsonrpc.INVALID_REQUEST, "Invalid Request: id must be a string, number or null"
            )
        method = message.get("method")
        if method == "tools/call":
            reply = self._decide_call(message, in_batch=False)
            return None if reply is None else (jsonrpc.encode(reply) if reply else b"")
        if method == "tools/list" and "id" in message:
            self._watch(message["id"], ResponseWatcher(self._filter_tools_list))
        elif method == "notifications/cancelled":
            self._on_cancelled(message.get("params"))
        return None

    def _on_batch(self, items: list[Any]) -> bytes | None:
        replies = [
            self._decide_call(item, in_batch=True)
            if isinstance(item, dict) and item.get("method") == "tools/call"
            else None
            for item in items
        ]
        if all(reply is None for reply in replies):
            for item in items:
                if isinstance(item, dict) and item.get("method") == "tools/list" and "id" in item:
                    self._watch(item["id"], ResponseWatcher(self._filter_tools_list))
            return None
        answers: list[Message] = []
        for item, reply in zip(items, replies, strict=True):
            if reply:
                answers.append(reply)
            elif isinstance(item, dict) and "method" in item and "id" in item:
                answers.append(_error(item.get("id"), jsonrpc.INVALID_REQUEST, BATCH_REFUSED))
        log.warning("refused a batch of %d messages containing a tools/call", len(items))
        return jsonrpc.encode(answers) if answers else b""

    def _decide_call(self, message: Message, in_batch: bool) -> Message | None:
        """None to forward the call; else the reply to the client ({} means drop silently)."""
        request_id = message.get("id")
        if in_batch and not jsonrpc.valid_id(request_id):  # single messages were checked on arrival
            return _error(None, jsonrpc.INVALID_REQUEST, "Invalid Request: id must be a string, number or null")
        params = message.get("params")
        if not isinstance(params, dict):
            return _error(request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call params must be an object")
        name = params.get("name")
        if not isinstance(name, str) or not name:
            return _error(request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call needs a tool name")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return _error(request_id, jsonrpc.INVALID_PARAMS, "Invalid params: tools/call arguments must be an object")
        if "id" not in message:
            log.warning("dropped tools/call %s sent as a notification (no id): never forwarded", name)
            return {}
        call = ToolCall(name, arguments)
        policy = self.policy  # one snapshot for the whole decision, even if a reload swaps it meanwhile
        counted = policy.uses_counters(name)
        if in_batch and counted:
            return _error(
                request_id, jsonrpc.INVALID_REQUEST, f"{name} uses counters: send it on its own, not in a batch"
            )
        now_s = time.time() if counted else 0.0
        counter_values: dict[str, float] | Decision = self.counters.read(policy, name, now_s) if counted else {}
        if isinstance(counter_values, Decision):
            return self._deny(request_id, call, counter_values.message, params, counter_values.rule_name)
        decision = evaluate(policy, call, counter_values)
        if decision.verdict == "deny":
            return self._deny(request_id, call, decision.message, params, decision.rule_name)
        if decision.verdict == "require_approval":
            if in_batch:
                self._record(call, "denied", decision.rule_name)
                return _error(
                    request_id, jsonrpc.INVALID_REQUEST, f"{name} needs approval: send it on its own, not in a batch"
                )
            return self._gate(policy, request_id, call, decision, params, now_s or time.time())
        if counted:
            reserved = self.counters.reserve(policy, call, now_s)
            if isinstance(reserved, Decision):
                return self._deny(request_id, call, reserved.message, params, reserved.rule_name)
            if reserved.reservations:
                self._watch_forwarded(request_id, None, reserved)
        self._record(call, "allowed")
        return None

    def _gate(
        self, policy: Policy, request_id: Any, call: ToolCall, decision: Decision, params: Message, now_s: float
    ) -> Message | None:
        assert decision.rule is not None
        outcome = self.gate.check(policy, call, decision.rule, now_s)
        if isinstance(outcome, Forward):
            approval_id = outcome.approval.id
            reserved = self.counters.reserve(policy, call, now_s)
            if isinstance(reserved, Decision):
                self.gate.rollback(approval_id, now_s, f"refused by counters: {reserved.message}")
                return self._deny(request_id, call, reserved.message, params, reserved.rule_name)
            self._record(call, "allowed", decision.rule_name, approval_id=approval_id)
            self._watch_forwarded(request_id, approval_id, reserved)
            return None
        if isinstance(outcome, AskHuman):
            self._record(call, "approval_required", decision.rule_name, approval_id=outcome.approval.id)
            return approval_required_error(request_id, outcome.approval, self.state_dir_hint)
        return self._deny(request_id, call, outcome.message, params, decision.rule_name)

    def _watch_forwarded(self, request_id: Any, approval_id: str | None, reserved: Reserved) -> None:
        """Settle what a forwarded call took: a JSON-RPC error, death or cancel gives it back.

        A JSON-RPC error means the tool did not run; a result with `isError: true` means it did.
        """

        def give_back(why: str) -> None:
            now_s = time.time()
            self.counters.roll_back(reserved.reservations, why)
            if approval_id is not None:
                self.gate.rollback(approval_id, now_s, why)

        def on_reply(reply: Message) -> None:
            if _is_error_reply(reply):
                give_back("the upstream answered with an error")

        def on_late_reply(reply: Message) -> None:
            if not _is_error_reply(reply):  # the tool ran although the call was cancelled
                self.counters.retake(reserved.reservations)
                if approval_id is not None:
                    self.gate.reconsume(approval_id, time.time())

        self._watch(request_id, ResponseWatcher(on_reply, give_back, on_late_reply))

    def _deny(self, request_id: Any, call: ToolCall, message: str, params: Message, rule: str) -> Message:
        self._record(call, "denied", rule)
        log.info("denied tool=%s rule=%s", call.name, rule)
        return {"jsonrpc": "2.0", "id": request_id, "result": denied_result(message, is_stateless_request(params))}

    def _record(self, call: ToolCall, result: str, rule: str = "", **extra: Any) -> None:
        if not rule and not extra:
            self.events.emit_tool_call(self.server_name, call.name, result, arguments_hash(call.arguments))
            return
        fields: dict[str, Any] = {"tool": call.name, "result": result, "args_hash": arguments_hash(call.arguments)}
        if rule:
            fields["rule"] = rule
        self.events.emit("tool_call", server=self.server_name, **fields, **extra)

    def _on_cancelled(self, params: Any) -> None:
        if not isinstance(params, dict) or not jsonrpc.valid_id(params.get("requestId")):
            return
        key = jsonrpc.id_key(params["requestId"])
        watcher = self._watchers.get(key)
        if watcher is not None and watcher.on_abandon is not None:
            watcher.on_abandon("the client cancelled the call before an answer")
            late = watcher.on_late_reply
            # Keep watching: an upstream that ignores the cancel may still run the tool and answer.
            self._watchers[key] = ResponseWatcher(on_reply=lambda reply: late(reply) if late else None)

    # -- upstream -> client ----------------------------------------------------------------

    @property
    def watching(self) -> bool:
        """True while some upstream reply must be inspected before it reaches the client."""
        return bool(self._watchers)

    def _watch(self, request_id: Any, watcher: ResponseWatcher) -> None:
        self._watchers[jsonrpc.id_key(request_id)] = watcher

    def on_upstream_line(self, line: bytes) -> bytes | None:
        """None to pass the line on unchanged, else its replacement."""
        message = jsonrpc.parse_trusted_line(line)
        replaced: Any = None
        if isinstance(message, dict):
            replaced = self._on_upstream_message(message)
        elif isinstance(message, list):
            changed = [self._on_upstream_message(m) if isinstance(m, dict) else None for m in message]
            if any(c is not None for c in changed):
                replaced = [c if c is not None else m for c, m in zip(changed, message, strict=True)]
        if replaced is None:
            return None
        try:
            return jsonrpc.encode(replaced)
        except ValueError:  # NaN/Infinity in the upstream's reply: we cannot re-serialize it faithfully
            log.error("could not rewrite an upstream reply (non-finite number); refused it")
            request_id = message.get("id") if isinstance(message, dict) else None
            return jsonrpc.error_response(request_id, jsonrpc.INTERNAL_ERROR, "intercept could not filter this reply")

    def _on_upstream_message(self, message: Message) -> Message | None:
        if "method" in message or "id" not in message or not jsonrpc.valid_id(message["id"]):
            return None
        watcher = self._watchers.pop(jsonrpc.id_key(message["id"]), None)
        return watcher.on_reply(message) if watcher is not None else None

    def on_upstream_gone(self) -> None:
        """The upstream exited: no reply we were waiting for will come."""
        watchers, self._watchers = self._watchers, {}
        for watcher in watchers.values():
            if watcher.on_abandon is not None:
                watcher.on_abandon("the upstream exited before answering")

    def _filter_tools_list(self, response: Message) -> Message | None:
        return without_hidden_tools(response, self.policy)

    def tick(self) -> None:
        """Periodic housekeeping from the relay: flush buffered events, heartbeat every minute."""
        if time.monotonic() >= self._next_heartbeat_s:
            self._next_heartbeat_s = time.monotonic() + HEARTBEAT_INTERVAL_S
            has_counters = bool(self.policy.counted_tools)
            counters = self.counters.snapshot(time.time()) if has_counters else {}
            self.events.emit("heartbeat", server=self.server_name, counters=counters)
        self.events.flush()


def _is_error_reply(reply: Message) -> bool:
    return reply.get("error") is not None


def _error(request_id: Any, code: int, message: str) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
