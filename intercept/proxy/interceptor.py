"""Decides what happens to each client line and inspects the upstream replies we asked to see.

It knows JSON-RPC messages and the policy, not bytes on pipes or processes: the relay feeds it
lines and writes what it returns. A client line yields `None` (forward it unchanged) or the bytes
to send back to the client instead (possibly empty: nothing is sent and nothing forwarded).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from intercept.engine import ToolCall, evaluate
from intercept.policy.model import Policy
from intercept.proxy import jsonrpc
from intercept.proxy.era import denied_result, is_stateless_request
from intercept.proxy.tools_list import without_hidden_tools

log = logging.getLogger("intercept")

ResponseWatcher = Callable[[dict[str, Any]], "dict[str, Any] | None"]

BATCH_REFUSED = (
    "Batch not forwarded: it contains a tools/call that policy did not allow as is; send the requests one at a time"
)


def arguments_hash(arguments: Any) -> str:
    """A short, stable hash of call arguments for logs (arguments themselves are never logged)."""
    blob = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Interceptor:
    """Per-session message handling between one client and one upstream."""

    def __init__(self, policy: Policy, server_name: str) -> None:
        self.policy = policy
        self.server_name = server_name
        self._watchers: dict[tuple[bool, Any], ResponseWatcher] = {}

    # -- client -> upstream ----------------------------------------------------------------

    def on_client_line(self, line: bytes) -> bytes | None:
        if not line.strip():
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
            reply = self._decide_call(message)
            return None if reply is None else (jsonrpc.encode(reply) if reply else b"")
        if method == "tools/list" and "id" in message:
            self._watch(message["id"], self._filter_tools_list)
        return None

    def _on_batch(self, items: list[Any]) -> bytes | None:
        replies: list[dict[str, Any] | None] = []
        refused = False
        for item in items:
            is_call = isinstance(item, dict) and item.get("method") == "tools/call"
            reply = self._decide_call(item) if is_call else None
            refused = refused or reply is not None
            replies.append(reply)
        if not refused:
            for item in items:
                if isinstance(item, dict) and item.get("method") == "tools/list" and "id" in item:
                    self._watch(item["id"], self._filter_tools_list)
            return None
        answers: list[dict[str, Any]] = []
        for item, reply in zip(items, replies, strict=True):
            if reply:
                answers.append(reply)
            elif isinstance(item, dict) and "method" in item and "id" in item:
                answers.append(_error(item.get("id"), jsonrpc.INVALID_REQUEST, BATCH_REFUSED))
        log.warning("refused a batch of %d messages containing a tools/call", len(items))
        return jsonrpc.encode(answers) if answers else b""

    def _decide_call(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """None to forward the call; else the reply to the client ({} means drop silently)."""
        request_id = message.get("id")
        if not jsonrpc.valid_id(request_id):
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
        decision = evaluate(self.policy, ToolCall(name, arguments))
        if decision.verdict == "allow":
            log.debug("allowed tool=%s args=%s", name, arguments_hash(arguments))
            return None
        if decision.verdict == "deny":
            log.info("denied tool=%s rule=%s args=%s", name, decision.rule_name, arguments_hash(arguments))
            result = denied_result(decision.message, is_stateless_request(params))
            return {"jsonrpc": "2.0", "id": request_id, "result": result}
        log.warning("tool=%s needs approval (rule %s) but approvals are not enabled: denied", name, decision.rule_name)
        message_text = f'Tool "{name}" requires human approval (rule "{decision.rule_name}"), which is not available'
        return {"jsonrpc": "2.0", "id": request_id, "result": denied_result(message_text, is_stateless_request(params))}

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

    def _on_upstream_message(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if "method" in message or "id" not in message or not jsonrpc.valid_id(message["id"]):
            return None
        watcher = self._watchers.pop(jsonrpc.id_key(message["id"]), None)
        return watcher(message) if watcher is not None else None

    def on_upstream_gone(self) -> None:
        """The upstream exited: no reply we were waiting for will come."""
        self._watchers.clear()

    def _filter_tools_list(self, response: dict[str, Any]) -> dict[str, Any] | None:
        return without_hidden_tools(response, self.policy)


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
