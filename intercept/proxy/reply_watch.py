"""Requests whose replies the proxy must see: our own ids upstream, and what to do with the answer.

A watched request (a `tools/list` to filter, a call that took an approval or counters) goes
upstream under an id the proxy makes (`intercept-<session>-<n>`) and its reply comes back under
the client's id. So a client cannot steer another message's reply onto a watcher by reusing an
id, and ids the upstream would mangle (large numbers decoded as floats) cannot lose a reply.

A cancelled watched call is not given back at once: its tool may already be running. The
approval and counters return only when the upstream answers with an error, exits, or stays
silent for `cancel_settle_s`; a result arriving even later counts the call again.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from intercept.proxy import jsonrpc

Message = dict[str, Any]
ID_PREFIX = "intercept-"
GHOST_TTL_S = 600.0
MAX_GHOSTS = 1000
DROP: Message = {}  # a reply the client must not get (it cancelled that call)


@dataclass(slots=True)
class Watcher:
    """What to do with the upstream's reply to one request, or when it never comes."""

    on_reply: Callable[[Message], Message | None]
    give_back: Callable[[str], None] | None = None
    on_late_result: Callable[[Message], None] | None = None


@dataclass(slots=True)
class _Entry:
    client_id: Any
    watcher: Watcher
    cancelled_at: float | None = None
    given_back_at: float | None = None


class ReplyWatch:
    """The proxy's outstanding watched requests of one session."""

    def __init__(self, cancel_settle_s: float) -> None:
        self.cancel_settle_s = cancel_settle_s
        self._prefix = f"{ID_PREFIX}{secrets.token_hex(4)}-"
        self._numbers = itertools.count(1)
        self._entries: dict[str, _Entry] = {}
        self._by_client: dict[tuple[bool, Any], str] = {}

    @property
    def active(self) -> bool:
        return bool(self._entries)

    def outstanding(self, client_id: Any) -> bool:
        """A watched request with this client id is still waiting for its answer."""
        return bool(self._by_client) and jsonrpc.id_key(client_id) in self._by_client

    def register(self, message: Message, watcher: Watcher) -> Message:
        """The message to forward instead: the same request under a proxy id."""
        local_id = f"{self._prefix}{next(self._numbers)}"
        watched = {**message, "id": local_id}
        self._entries[local_id] = _Entry(message["id"], watcher)
        self._by_client[jsonrpc.id_key(message["id"])] = local_id
        return watched

    def unregister(self, message: Message) -> None:
        """Forget a request registered a moment ago that could not be forwarded after all."""
        local_id = message.get("id")
        entry = self._entries.pop(local_id, None) if isinstance(local_id, str) else None
        if entry is not None:
            self._forget_client(entry, local_id)

    def cancel(self, client_id: Any) -> str | None:
        """The proxy id to forward a client's cancel under, or None if that request is not watched."""
        local_id = self._by_client.get(jsonrpc.id_key(client_id))
        if local_id is None:
            return None
        entry = self._entries[local_id]
        if entry.cancelled_at is None:
            entry.cancelled_at = time.monotonic()
        return local_id

    def reply(self, message: Message) -> Message | None:
        """The reply to send the client (under its own id) if `message` answers a watched request."""
        local_id = message.get("id")
        entry = self._entries.pop(local_id, None) if isinstance(local_id, str) else None
        if entry is None:
            return None
        self._forget_client(entry, local_id)
        if entry.given_back_at is not None:
            if entry.watcher.on_late_result is not None and message.get("error") is None:
                entry.watcher.on_late_result(message)
            return DROP  # the client cancelled this call and may have reused its id since
        replaced = entry.watcher.on_reply(message)
        return {**(replaced or message), "id": entry.client_id}

    def reply_unparsed(self, line: bytes) -> bytes | None:
        """An upstream line we cannot parse that carries one of our ids: hand it back under the
        client's id (swapped in the bytes) and keep what the call took, as its outcome is unknown."""
        if self._prefix.encode() not in line:
            return None
        for local_id, entry in list(self._entries.items()):
            quoted = json.dumps(local_id).encode()
            if quoted in line:
                del self._entries[local_id]
                self._forget_client(entry, local_id)
                if entry.given_back_at is not None:
                    return b""
                return line.replace(quoted, json.dumps(entry.client_id).encode())
        return None

    def settle(self, now_mono: float | None = None) -> None:
        """Give back cancelled calls the upstream has not answered within the settle time."""
        now = time.monotonic() if now_mono is None else now_mono
        ghosts = [(e.given_back_at, i) for i, e in self._entries.items() if e.given_back_at is not None]
        expired = {i for at, i in ghosts if now - at > GHOST_TTL_S}
        expired.update(i for _, i in sorted(ghosts)[: max(0, len(ghosts) - MAX_GHOSTS)])
        for local_id in expired:
            del self._entries[local_id]
        for local_id, entry in list(self._entries.items()):
            if entry.given_back_at is not None:
                continue
            if entry.cancelled_at is not None and now - entry.cancelled_at >= self.cancel_settle_s:
                entry.given_back_at = now
                self._forget_client(entry, local_id)
                if entry.watcher.give_back is not None:
                    entry.watcher.give_back("the client cancelled the call and the upstream did not answer it")

    def abandon_all(self, why: str) -> None:
        """The upstream is gone: give back everything still outstanding."""
        entries, self._entries, self._by_client = self._entries, {}, {}
        for entry in entries.values():
            if entry.given_back_at is None and entry.watcher.give_back is not None:
                entry.watcher.give_back(why)

    def _forget_client(self, entry: _Entry, local_id: str) -> None:
        key = jsonrpc.id_key(entry.client_id)
        if self._by_client.get(key) == local_id:
            del self._by_client[key]
