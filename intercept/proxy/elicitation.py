"""Asking the client's human to confirm a held call in-band (MCP elicitation), in both eras.

- Handshake era: when the client declared `capabilities.elicitation` in `initialize`, the proxy
  sends its own `elicitation/create` request (id `intercept-elicit-<n>`, in the proxy's reserved id
  space, so it never collides with the upstream's requests to the client) and waits for the
  client's answer, which is consumed here and never forwarded upstream.
- Stateless era (2026-07-28): there are no requests to the client. The call is answered with an
  `input_required` result carrying the `elicitation/create` input request and a `requestState` the
  proxy signs (HMAC-SHA256 under the state dir's hash key) binding the approval id, the tool and
  its arguments' hash, and an expiry. The client asks its human and retries the call with
  `inputResponses` and that state; the proxy verifies the state, strips both before forwarding
  (an upstream rejects state it did not issue) and applies the answer.

Either way the answer is `accept`, `decline` or `cancel`; the call handler turns it into the same
decision the CLI makes (`approvals.decisions`, channel `elicitation`, actor `client:<name>`).
Elicitation proves no identity: a client program can answer it for the model. It is a
confirmation, never an authority (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from intercept.approvals.redact import preview, redact
from intercept.policy.model import ONCE, ApprovalScope
from intercept.proxy.jsonrpc import ID_PREFIX
from intercept.safe_text import escape_unsafe

Message = dict[str, Any]
Answer = Literal["accept", "decline", "cancel"]
ELICIT_ID_PREFIX = f"{ID_PREFIX}elicit-"
STATE_PREFIX = "intercept1."  # our requestState; anything else belongs to the upstream
INPUT_KEY = "intercept_confirmation"
STATE_LIFETIME_S = 600.0
CLIENT_CAPABILITIES_META_KEY = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_META_KEY = "io.modelcontextprotocol/clientInfo"
CONFIRM_FIELD = "approve"
ANSWERS: frozenset[str] = frozenset({"accept", "decline", "cancel"})
PREVIEW_CHARS = 600


@dataclass(slots=True)
class ClientInfo:
    """What the client said of itself in `initialize` (handshake era). Recorded, never trusted:
    the client asserts it itself."""

    name: str = ""
    elicits: bool = False

    def read_initialize(self, params: Any) -> None:
        if not isinstance(params, dict):
            return
        info = params.get("clientInfo")
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            self.name = info["name"][:128]
        capabilities = params.get("capabilities")
        self.elicits = isinstance(capabilities, dict) and isinstance(capabilities.get("elicitation"), dict)


def stateless_client(params: Message) -> ClientInfo:
    """The client's name and elicitation capability from a stateless-era request's `_meta`."""
    meta = params.get("_meta")
    client = ClientInfo()
    if not isinstance(meta, dict):
        return client
    info = meta.get(CLIENT_INFO_META_KEY)
    if isinstance(info, dict) and isinstance(info.get("name"), str):
        client.name = info["name"][:128]
    capabilities = meta.get(CLIENT_CAPABILITIES_META_KEY)
    client.elicits = isinstance(capabilities, dict) and isinstance(capabilities.get("elicitation"), dict)
    return client


def confirmation_request(
    tool: str, server: str, rule: str, approval_id: str, arguments: dict[str, Any], scope: ApprovalScope = ONCE
) -> Message:
    """The `elicitation/create` params: what is asked, and a one-field form (flat primitive). The
    human is told what accepting allows: a scope beyond `once` (more runs, any arguments) says so."""
    # bidi overrides could reorder what the human reads; long enough to see what is confirmed
    shown = escape_unsafe(preview(redact(arguments), width=PREVIEW_CHARS))
    if scope == ONCE:
        question, title, accept = " to run once", f"Run {tool} once", "run this exact call once"
    else:
        allows = scope.describe()
        question, title, accept = f": {allows}", f"Allow {tool}: {allows}", f"allow {allows}"
    return {
        "message": (
            f"Allow {tool} on {server}{question}? Rule {rule!r} asks a human to confirm (approval {approval_id}). "
            f"Arguments: {shown}"
        ),
        "requestedSchema": {
            "type": "object",
            "properties": {
                CONFIRM_FIELD: {
                    "type": "boolean",
                    "title": title,
                    "description": f"Accept to {accept}; decline to refuse it.",
                    "default": True,
                }
            },
            "required": [CONFIRM_FIELD],
        },
    }


def answer_of(result: Any) -> Answer | None:
    """accept (only with the box ticked), decline or cancel from an elicitation result; None if it
    is not one."""
    if not isinstance(result, dict) or result.get("action") not in ANSWERS:
        return None
    action: Answer = result["action"]
    if action == "accept":
        content = result.get("content")
        if isinstance(content, dict) and CONFIRM_FIELD in content and content[CONFIRM_FIELD] is not True:
            return "decline"  # unticked, or anything but a plain true ("false", 0): not a yes
    return action


class HandshakeElicitor:
    """Our own `elicitation/create` requests to the client, and their answers."""

    def __init__(self, send: Callable[[Message], None]) -> None:
        self.send = send
        self._ids = itertools.count(1)
        # A random part: the upstream's own requests to the client share the id space, and one
        # that happened to use our id would have its answer taken for ours.
        self._prefix = f"{ELICIT_ID_PREFIX}{secrets.token_hex(4)}-"
        self._waiting: dict[str, asyncio.Future[Answer | None]] = {}

    async def ask(self, params: Message, timeout_s: float, stop: asyncio.Future[None] | None) -> Answer | None:
        """Send the request and wait for the answer; None after `timeout_s`, on `stop`, or for an
        error or a malformed answer."""
        request_id = f"{self._prefix}{next(self._ids)}"
        answered: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answered
        try:
            self.send({"jsonrpc": "2.0", "id": request_id, "method": "elicitation/create", "params": params})
            watched: set[asyncio.Future[Any]] = {answered}
            if stop is not None:
                watched.add(stop)
            done, _ = await asyncio.wait(watched, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            return answered.result() if answered in done else None
        finally:
            self._waiting.pop(request_id, None)
            if not answered.done():
                answered.cancel()
                # The client may still show the prompt: tell it the question is withdrawn.
                self.send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": {"requestId": request_id, "reason": "intercept stopped waiting for this answer"},
                    }
                )

    def owns(self, message: Message) -> bool:
        """A client response to one of our requests (never to be forwarded upstream)."""
        request_id = message.get("id")
        return "method" not in message and type(request_id) is str and request_id.startswith(self._prefix)

    def on_response(self, message: Message) -> None:
        answered = self._waiting.get(message["id"])
        if answered is not None and not answered.done():
            answered.set_result(answer_of(message.get("result")) if "result" in message else None)


class RequestStates:
    """Signed `requestState` values for stateless-era confirmations."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"intercept requestState\0" + key).digest()  # not the hash key itself
        self._clock = clock

    def _mac(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest()).decode().rstrip("=")

    def sign(self, approval_id: str, tool: str, args_hash: str) -> str:
        body = json.dumps([approval_id, tool, args_hash, int(self._clock() + STATE_LIFETIME_S)], separators=(",", ":"))
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{STATE_PREFIX}{payload}.{self._mac(payload.encode())}"

    def verify(self, state: str, tool: str, args_hash: str) -> str | None:
        """The approval id a valid, unexpired state of ours names for this very call, else None."""
        if not state.startswith(STATE_PREFIX):
            return None
        payload, dot, mac = state[len(STATE_PREFIX) :].rpartition(".")
        if not dot or not mac.isascii() or not hmac.compare_digest(mac, self._mac(payload.encode())):
            return None
        try:
            approval_id, signed_tool, signed_hash, expiry = json.loads(
                base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            )
        except (ValueError, TypeError):
            return None
        if signed_tool != tool or signed_hash != args_hash or not isinstance(expiry, int) or expiry < self._clock():
            return None
        return approval_id if isinstance(approval_id, str) else None


def input_required_result(params: Message, state: str) -> Message:
    """The stateless-era result asking the client to confirm and retry with `state`."""
    return {
        "resultType": "input_required",
        "inputRequests": {INPUT_KEY: {"method": "elicitation/create", "params": params}},
        "requestState": state,
    }


@dataclass(frozen=True, slots=True)
class InBandAnswer:
    """A stateless-era retry's answer to our confirmation: for `approval_id` (None: the state was
    ours but invalid, expired or for another call)."""

    approval_id: str | None
    answer: Answer | None


def take_in_band_answer(
    params: Message, states: RequestStates | None, tool: str, args_hash: Callable[[], str]
) -> InBandAnswer | None:
    """If the call carries our `requestState`, remove it and our `inputResponses` entry from
    `params` (in place: the upstream must never see them) and return the answer; None when the
    call carries no state of ours."""
    state = params.get("requestState")
    if not isinstance(state, str) or not state.startswith(STATE_PREFIX) or states is None:
        return None
    del params["requestState"]
    responses = params.get("inputResponses")
    response = None
    if isinstance(responses, dict):
        response = responses.pop(INPUT_KEY, None)
        if not responses:
            del params["inputResponses"]
    approval_id = states.verify(state, tool, args_hash())
    return InBandAnswer(approval_id, answer_of(response) if approval_id is not None else None)
