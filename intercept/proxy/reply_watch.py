"""Requests whose replies the proxy must see: our own ids upstream, and what to do with the answer.

A watched request (a `tools/list` to read schemas from or filter, a call that took an approval or
counters) goes upstream under an id the proxy makes (`intercept-<session>-<n>`) and its reply
comes back under the client's id. So a client cannot steer another message's reply onto a watcher
by reusing an id, and ids the upstream would mangle (large numbers decoded as floats) cannot lose
a reply.

An entry is `waiting` until its reply comes, or `cancelled` once the client cancels it: the
client's id is free again at once, and a reply that still comes is dropped (the client may have
reused the id). Nothing is given back on a cancel, on silence or when the upstream goes away: the
tool may have run. Cancelled entries are kept for a while (bounded in time and number) only to
recognise and drop their late replies.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from intercept.proxy import jsonrpc
from intercept.proxy.jsonrpc import ID_PREFIX

Message = dict[str, Any]
CANCELLED_TTL_S = 600.0
MAX_CANCELLED = 1000
MAX_WATCHED = 10_000  # requests a client can leave unanswered (an upstream may drop some) before new ones are refused
DROP: Message = {}  # a reply the client must not get (it cancelled that call)
WatchState = Literal["waiting", "cancelled", "own"]  # own: the proxy's own request, never the client's


@dataclass(slots=True)
class Watcher:
    """What to do with the upstream's reply to one request: `on_reply` sees it (and may replace
    it) before it goes to the client; it also runs for the late reply of a cancelled request,
    whose result is then dropped."""

    on_reply: Callable[[Message], Message | None]
    unparsed_error: str = ""  # if set, an unparseable reply becomes a JSON-RPC error saying this


@dataclass(slots=True)
class _Entry:
    client_id: Any
    watcher: Watcher
    state: WatchState = "waiting"
    cancelled_at: float = 0.0


class ReplyWatch:
    """The proxy's outstanding watched requests of one session."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic  # when a cancel happened, for eviction (tests pass their own clock)
        self._prefix = f"{ID_PREFIX}{secrets.token_hex(4)}-"
        # `"id": "<prefix><n>"` in the bytes of a line that cannot be parsed (group 1: the id)
        self._id_member = re.compile(rb'"id"\s*:\s*"(' + re.escape(self._prefix.encode()) + rb'[0-9]+)"')
        self._numbers = itertools.count(1)
        self.entries: dict[str, _Entry] = {}  # by proxy id; empty when nothing is watched (read per call: no property)
        self._by_client: dict[tuple[bool, Any], str] = {}

    @property
    def active(self) -> bool:
        return bool(self.entries)

    @property
    def full(self) -> bool:
        """No further watched request is accepted until some are answered or evicted."""
        return self.room() <= 0

    def room(self) -> int:
        """How many more watched requests are accepted now."""
        return MAX_WATCHED + MAX_CANCELLED - len(self.entries)

    def outstanding(self, client_id: Any) -> bool:
        """A watched request with this client id is still waiting for its answer."""
        return bool(self._by_client) and jsonrpc.id_key(client_id) in self._by_client

    def register(self, message: Message, watcher: Watcher) -> Message:
        """The message to forward instead: the same request under a proxy id."""
        local_id = f"{self._prefix}{next(self._numbers)}"
        watched = {**message, "id": local_id}
        self.entries[local_id] = _Entry(message["id"], watcher)
        self._by_client[jsonrpc.id_key(message["id"])] = local_id
        return watched

    def register_own(self, message: Message, watcher: Watcher) -> Message:
        """A request of the proxy's own (no client id): its reply goes to `watcher`, never to the client."""
        local_id = f"{self._prefix}{next(self._numbers)}"
        self.entries[local_id] = _Entry(None, watcher, "own")
        return {**message, "id": local_id}

    def unregister(self, message: Message) -> None:
        """Forget a request registered a moment ago that could not be forwarded after all."""
        local_id = message.get("id")
        entry = self.entries.pop(local_id, None) if isinstance(local_id, str) else None
        if entry is not None:
            self._forget_client(entry, local_id)

    def cancel(self, client_id: Any) -> str | None:
        """The proxy id to forward a client's cancel under, or None if that request is not watched.
        The client's id is free from now on; the request's late reply will be dropped."""
        local_id = self._by_client.get(jsonrpc.id_key(client_id))
        if local_id is None:
            return None
        entry = self.entries[local_id]
        entry.state, entry.cancelled_at = "cancelled", self._monotonic()
        self._forget_client(entry, local_id)
        return local_id

    def reply(self, message: Message) -> Message | None:
        """The reply to send the client (under its own id) if `message` answers a watched request;
        DROP if that request was cancelled."""
        local_id = message.get("id")
        entry = self.entries.pop(local_id, None) if isinstance(local_id, str) else None
        if entry is None:
            return None
        self._forget_client(entry, local_id)
        replaced = entry.watcher.on_reply(message)
        if entry.state != "waiting":
            return DROP
        return {**(replaced or message), "id": entry.client_id}

    def reply_unparsed(self, line: bytes) -> bytes | None:
        """An upstream line we cannot parse that carries one of our ids as its `"id"` member: the
        line to send the client (framed), or None if it answers no watched request. It goes back
        under the client's id (swapped in the bytes, at that member only), or as the watcher's
        `unparsed_error`; it is dropped (b"") if the request was cancelled. What the call took
        stays taken: its outcome is unknown. The first such member counts (a JSON-RPC reply's
        own id comes before its result in every encoder we know of)."""
        if self._prefix.encode() not in line:
            return None
        for match in self._id_member.finditer(line):
            local_id = match.group(1).decode()
            entry = self.entries.pop(local_id, None)
            if entry is None:
                continue
            self._forget_client(entry, local_id)
            if entry.state != "waiting":
                return b""
            if entry.watcher.unparsed_error:
                return jsonrpc.error_response(entry.client_id, jsonrpc.INTERNAL_ERROR, entry.watcher.unparsed_error)
            start, end = match.span(1)
            return line[: start - 1] + json.dumps(entry.client_id).encode() + line[end + 1 :] + b"\n"
        return None

    def evict_cancelled(self, now_mono: float | None = None) -> None:
        """Forget cancelled requests older than CANCELLED_TTL_S, and the oldest beyond MAX_CANCELLED."""
        now = self._monotonic() if now_mono is None else now_mono
        cancelled = sorted((e.cancelled_at, i) for i, e in self.entries.items() if e.state == "cancelled")
        evicted = {i for at, i in cancelled if now - at > CANCELLED_TTL_S}
        evicted.update(i for _, i in cancelled[: max(0, len(cancelled) - MAX_CANCELLED)])
        for local_id in evicted:
            del self.entries[local_id]

    def forget_all(self) -> list[Any]:
        """The upstream is gone: no reply will come. Returns the client ids still waiting for one
        (their requests are answered with an error). Nothing is given back: the tools may have run."""
        waiting = [entry.client_id for entry in self.entries.values() if entry.state == "waiting"]
        self.entries, self._by_client = {}, {}
        return waiting

    def _forget_client(self, entry: _Entry, local_id: str) -> None:
        if entry.state == "own":
            return
        key = jsonrpc.id_key(entry.client_id)
        if self._by_client.get(key) == local_id:
            del self._by_client[key]
