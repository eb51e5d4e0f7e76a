"""In-process tables for the pieces under the relay: `ReplyWatch` (requests whose replies the proxy
must see) and `LineSplitter` (framing). No pipes or processes: a bug here shows up as a failed
assertion, not as a subprocess test's read timeout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from intercept.proxy.framing import LineSplitter
from intercept.proxy.reply_watch import CANCELLED_TTL_S, DROP, MAX_CANCELLED, ReplyWatch, Watcher

Message = dict[str, Any]


def request(request_id: Any) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "t"}}


def seen_by(sink: list[Message]) -> Watcher:
    return Watcher(lambda reply: sink.append(reply))  # type: ignore[func-returns-value]


# -- ReplyWatch ------------------------------------------------------------------------------------


def test_a_reply_comes_back_under_the_clients_id_and_the_watcher_sees_it() -> None:
    watch, seen = ReplyWatch(), []
    forwarded = watch.register(request(7), seen_by(seen))
    assert forwarded["id"] != 7 and watch.outstanding(7)
    back = watch.reply({"jsonrpc": "2.0", "id": forwarded["id"], "result": {"ok": True}})
    assert back == {"jsonrpc": "2.0", "id": 7, "result": {"ok": True}}
    assert [r["id"] for r in seen] == [forwarded["id"]] and not watch.outstanding(7) and not watch.active


@pytest.mark.parametrize(("sent", "other", "same"), [(1, 1.0, True), (1, "1", False), ("a", "a", True)])
def test_ids_match_as_json_rpc_says(sent: Any, other: Any, same: bool) -> None:
    watch = ReplyWatch()
    watch.register(request(sent), Watcher(lambda reply: None))
    assert watch.outstanding(other) is same


def test_a_cancelled_request_frees_its_id_and_its_late_reply_is_dropped_but_seen() -> None:
    watch, seen = ReplyWatch(), []
    forwarded = watch.register(request(3), seen_by(seen))
    local_id = watch.cancel(3)
    assert local_id == forwarded["id"] and not watch.outstanding(3)
    assert watch.cancel(3) is None  # a second cancel maps to nothing
    watch.register(request(3), Watcher(lambda reply: None))  # the id may be used again at once
    assert watch.reply({"jsonrpc": "2.0", "id": local_id, "result": {}}) is DROP
    assert len(seen) == 1 and watch.outstanding(3)


def test_a_reply_to_no_watched_request_is_not_ours() -> None:
    watch = ReplyWatch()
    assert watch.reply({"jsonrpc": "2.0", "id": 5, "result": {}}) is None
    assert watch.reply_unparsed(b'{"id": 5, garbage') is None


def test_an_unparseable_reply_goes_back_under_the_clients_id_or_as_the_watchers_error() -> None:
    watch = ReplyWatch()
    plain = watch.register(request("p"), Watcher(lambda reply: None))
    strict = watch.register(request("s"), Watcher(lambda reply: None, unparsed_error="cannot read it"))
    line = f'{{"id": {json.dumps(plain["id"])}, "result": NaN}}'.encode()
    assert watch.reply_unparsed(line) == b'{"id": "p", "result": NaN}\n'
    answer = json.loads(watch.reply_unparsed(f'{{"id": {json.dumps(strict["id"])}, x'.encode()) or b"")
    assert answer["id"] == "s" and answer["error"]["message"] == "cannot read it"


def test_the_proxys_own_request_never_reaches_the_client() -> None:
    watch, seen = ReplyWatch(), []
    own = watch.register_own({"jsonrpc": "2.0", "method": "tools/list"}, seen_by(seen))
    assert watch.reply({"jsonrpc": "2.0", "id": own["id"], "result": {"tools": []}}) is DROP and seen


def test_cancelled_entries_are_forgotten_after_their_time_or_beyond_their_number() -> None:
    watch = ReplyWatch()
    for n in range(MAX_CANCELLED + 5):
        watch.register(request(n), Watcher(lambda reply: None))
        watch.cancel(n)
    watch.evict_cancelled()
    assert watch.room() == ReplyWatch().room() - MAX_CANCELLED
    watch.evict_cancelled(now_mono=10**9 + CANCELLED_TTL_S)
    assert not watch.active


def test_when_the_upstream_is_gone_the_waiting_client_ids_are_returned_not_the_cancelled_ones() -> None:
    watch = ReplyWatch()
    watch.register(request(1), Watcher(lambda reply: None))
    watch.register(request(2), Watcher(lambda reply: None))
    watch.cancel(2)
    watch.register_own({"jsonrpc": "2.0", "method": "tools/list"}, Watcher(lambda reply: None))
    assert watch.forget_all() == [1] and not watch.active


# -- LineSplitter ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "lines", "tail"),
    [
        ([b"a\nb\n"], [b"a", b"b"], b""),
        ([b"a", b"b\nc"], [b"ab"], b"c"),
        ([b"\n\n"], [b"", b""], b""),
        ([b"x" * 3, b"\n"], [b"xxx"], b""),
    ],
)
def test_lines_are_split_across_chunks(chunks: list[bytes], lines: list[bytes], tail: bytes) -> None:
    splitter = LineSplitter()
    got: list[bytes | None] = []
    for chunk in chunks:
        got.extend(splitter.feed(chunk))
    assert got == lines and splitter.flush() == tail


def test_a_line_over_the_limit_becomes_none_and_the_next_one_is_intact() -> None:
    splitter = LineSplitter(max_line_bytes=4)
    got = splitter.feed(b"toolong") + splitter.feed(b"still\nok\n")
    assert got == [None, b"ok"]
