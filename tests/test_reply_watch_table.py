"""Table tests for `ReplyWatch`, the requests whose upstream replies the proxy must see: proxy ids
out, client ids back, cancels, the eviction of cancelled entries by an injected clock, unparseable
replies and the upstream going away. Pure in process: no store, pipes or processes.

Cancel times are read from the monotonic clock by `cancel`; eviction takes `now_mono`, so each
row places `now_mono` relative to instants read around the cancels (the clock is never patched).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from intercept.proxy.jsonrpc import ID_PREFIX
from intercept.proxy.reply_watch import CANCELLED_TTL_S, DROP, MAX_CANCELLED, MAX_WATCHED, ReplyWatch, Watcher

Message = dict[str, Any]
GAP_S = 0.001  # how far apart the cancels of an eviction row are on the monotonic clock


def request(request_id: Any, method: str = "tools/call") -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {"name": "t", "arguments": {"a": 1}}}


def reply(local_id: Any, **body: Any) -> Message:
    return {"jsonrpc": "2.0", "id": local_id, **(body or {"result": {}})}


def ignore(message: Message) -> None:
    return None


def quiet() -> Watcher:
    return Watcher(ignore)


class Seen:
    """A watcher's view: every reply it was shown, and what it hands back (None: keep the reply)."""

    def __init__(self, replacement: Message | None = None) -> None:
        self.replies: list[Message] = []
        self.replacement = replacement

    def __call__(self, message: Message) -> Message | None:
        self.replies.append(message)
        return self.replacement


def past(instant: float) -> float:
    """Wait (on the clock, there is no event to await) until the monotonic clock is past `instant`;
    the eviction rows need cancels at distinct, known-ordered times."""
    now = time.monotonic()
    while now <= instant:
        now = time.monotonic()
    return now


# -- register and reply ----------------------------------------------------------------------------


def test_register_returns_the_request_under_a_fresh_proxy_id_and_leaves_the_clients_alone() -> None:
    watch = ReplyWatch()
    sent = request(7)
    first, second = watch.register(sent, quiet()), watch.register(request(8), quiet())
    assert sent == request(7)  # not changed in place: the client's message is what the engine judged
    assert first == {**sent, "id": first["id"]}
    assert first["id"].startswith(ID_PREFIX) and second["id"].startswith(ID_PREFIX) and first["id"] != second["id"]
    other_session = ReplyWatch().register(request(7), quiet())
    assert other_session["id"] != first["id"]  # proxy ids are not guessable from another session's
    assert watch.outstanding(7) and watch.outstanding(8) and not watch.outstanding(9)


@pytest.mark.parametrize("client_id", [7, 7.5, "seven", "", None, -1, 2**70])
def test_a_reply_goes_back_under_the_exact_client_id(client_id: Any) -> None:
    watch = ReplyWatch()
    forwarded = watch.register(request(client_id), quiet())
    back = watch.reply(reply(forwarded["id"], result={"content": [], "n": 1}))
    assert back == {"jsonrpc": "2.0", "id": client_id, "result": {"content": [], "n": 1}}
    assert type(back["id"]) is type(client_id)  # type: ignore[index]
    assert not watch.outstanding(client_id) and not watch.active


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        (None, {"jsonrpc": "2.0", "id": "c", "result": {"tools": [1, 2]}}),  # kept as the upstream sent it
        ({"id": "ignored", "result": {"tools": [1]}}, {"id": "c", "result": {"tools": [1]}}),  # under the client id
    ],
)
def test_the_watcher_sees_the_reply_under_the_proxy_id_and_may_replace_it(
    replacement: Message | None, expected: Message
) -> None:
    watch, seen = ReplyWatch(), Seen(replacement)
    forwarded = watch.register(request("c", "tools/list"), Watcher(seen))
    assert watch.reply(reply(forwarded["id"], result={"tools": [1, 2]})) == expected
    assert seen.replies == [reply(forwarded["id"], result={"tools": [1, 2]})]


@pytest.mark.parametrize(
    "upstream",
    [
        reply(1),  # an id the proxy did not make
        reply(f"{ID_PREFIX}00000000-1"),  # a proxy-looking id of no request here
        reply(None),
        {"jsonrpc": "2.0", "result": {}},  # no id at all
    ],
)
def test_a_reply_to_no_watched_request_is_not_ours_and_changes_nothing(upstream: Message) -> None:
    watch, seen = ReplyWatch(), Seen()
    watch.register(request(1), Watcher(seen))
    assert watch.reply(upstream) is None
    assert seen.replies == [] and watch.outstanding(1)


def test_a_second_reply_under_the_same_proxy_id_is_not_ours() -> None:
    watch = ReplyWatch()
    forwarded = watch.register(request(1), quiet())
    assert watch.reply(reply(forwarded["id"])) is not None
    assert watch.reply(reply(forwarded["id"])) is None


def test_room_counts_every_entry_until_it_is_answered_or_forgotten() -> None:
    watch = ReplyWatch()
    empty = watch.room()
    assert empty == MAX_WATCHED + MAX_CANCELLED and not watch.full
    a, b = watch.register(request(1), quiet()), watch.register(request(2), quiet())
    watch.register_own({"jsonrpc": "2.0", "method": "tools/list"}, quiet())
    watch.cancel(2)
    assert watch.room() == empty - 3  # waiting, cancelled and own entries all take room
    watch.reply(reply(a["id"]))
    watch.reply(reply(b["id"]))  # the cancelled one's late reply
    assert watch.room() == empty - 1


def test_unregister_forgets_a_request_that_could_not_be_forwarded() -> None:
    watch, seen = ReplyWatch(), Seen()
    forwarded = watch.register(request(5), Watcher(seen))
    watch.unregister(forwarded)
    assert not watch.outstanding(5) and not watch.active
    assert watch.reply(reply(forwarded["id"])) is None and seen.replies == []
    watch.unregister(forwarded)  # a second time, or an unknown message: nothing happens
    watch.unregister({"id": 5})
    watch.unregister({})


def test_unregister_of_an_older_request_keeps_a_newer_one_under_the_same_client_id() -> None:
    watch = ReplyWatch()
    older = watch.register(request(5), quiet())
    newer = watch.register(request(5), quiet())  # only a batch with a repeated id gets here
    watch.unregister(older)
    assert watch.outstanding(5)
    assert watch.cancel(5) == newer["id"]


# -- cancels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cancelled", "same"), [(3, True), (3.0, True), ("3", False), (4, False), (None, False)])
def test_a_cancel_names_the_proxy_id_of_the_same_client_id(cancelled: Any, same: bool) -> None:
    watch = ReplyWatch()
    forwarded = watch.register(request(3), quiet())
    assert watch.cancel(cancelled) == (forwarded["id"] if same else None)
    assert watch.outstanding(3) is not same


def test_a_cancelled_requests_late_reply_is_dropped_after_its_watcher_saw_it() -> None:
    watch, seen = ReplyWatch(), Seen({"replaced": True})
    forwarded = watch.register(request(3), Watcher(seen))
    local_id = watch.cancel(3)
    assert local_id == forwarded["id"] and not watch.outstanding(3)
    reused = watch.register(request(3), quiet())  # the client may reuse the id at once
    assert watch.reply(reply(local_id, result={"late": True})) is DROP
    assert seen.replies == [reply(local_id, result={"late": True})]  # e.g. to give counters back on -32601
    assert watch.outstanding(3)  # the late reply did not free the reused id
    assert watch.reply(reply(reused["id"])) == reply(3)


def test_the_proxys_own_request_has_no_client_id_and_is_never_cancelled_or_answered() -> None:
    watch, seen = ReplyWatch(), Seen()
    own = watch.register_own({"jsonrpc": "2.0", "method": "tools/list"}, Watcher(seen))
    assert own["id"].startswith(ID_PREFIX) and own["method"] == "tools/list"
    assert not watch.outstanding(None) and watch.cancel(None) is None
    assert watch.forget_all() == [] and not watch.active
    own = watch.register_own({"jsonrpc": "2.0", "method": "tools/list"}, Watcher(seen))
    listed = reply(own["id"], result={"tools": []})
    assert watch.reply(listed) is DROP and seen.replies == [listed]


# -- evicting cancelled entries by an injected clock -----------------------------------------------


def cancelled_at_known_times(count: int) -> tuple[ReplyWatch, list[str], list[tuple[float, float]]]:
    """A watch with `count` requests (client ids 0..count-1) cancelled in order, GAP_S apart: their
    proxy ids and the (before, after) monotonic instants around each cancel."""
    watch = ReplyWatch()
    local_ids = [watch.register(request(n), quiet())["id"] for n in range(count)]
    times: list[tuple[float, float]] = []
    for n in range(count):
        before = past(times[-1][1] + GAP_S) if times else time.monotonic()
        watch.cancel(n)
        times.append((before, time.monotonic()))
    return watch, local_ids, times


def kept(watch: ReplyWatch, local_ids: list[str]) -> list[bool]:
    """Which cancelled entries are still known: a late reply to a kept one is dropped, to a forgotten
    one it is not recognised (this consumes the entries)."""
    return [watch.reply(reply(local_id)) is DROP for local_id in local_ids]


@pytest.mark.parametrize(
    ("now_from", "expected"),
    [
        (lambda t: t[0][0], [True, True, True]),  # at the first cancel
        (lambda t: t[0][0] + CANCELLED_TTL_S - GAP_S / 2, [True, True, True]),  # the first is under TTL old
        (lambda t: t[0][1] + CANCELLED_TTL_S + GAP_S / 2, [False, True, True]),  # the first is over TTL old
        (lambda t: t[1][1] + CANCELLED_TTL_S + GAP_S / 2, [False, False, True]),
        (lambda t: t[2][1] + CANCELLED_TTL_S + GAP_S / 2, [False, False, False]),
        (lambda t: t[2][1] + 10 * CANCELLED_TTL_S, [False, False, False]),
        (lambda t: t[0][0] - 10 * CANCELLED_TTL_S, [True, True, True]),  # a clock read earlier: nothing is old
    ],
    ids=["now", "under TTL after the first", "over TTL after the first", "past 2", "past all", "long after", "before"],
)
def test_cancelled_entries_are_forgotten_once_older_than_their_ttl(now_from: Any, expected: list[bool]) -> None:
    watch, local_ids, times = cancelled_at_known_times(3)
    watch.evict_cancelled(now_from(times))
    assert kept(watch, local_ids) == expected


def test_beyond_max_cancelled_the_oldest_cancelled_entries_are_forgotten() -> None:
    watch = ReplyWatch()
    local_ids = [watch.register(request(n), quiet())["id"] for n in range(MAX_CANCELLED + 2)]
    watch.cancel(0)
    watch.cancel(1)
    now = past(time.monotonic() + GAP_S)  # every later cancel is younger than these two
    for n in range(2, MAX_CANCELLED + 2):
        watch.cancel(n)
    watch.evict_cancelled(now)  # none is anywhere near its TTL
    assert watch.room() == MAX_WATCHED  # exactly MAX_CANCELLED are kept
    assert kept(watch, local_ids[:2]) == [False, False]
    assert all(kept(watch, local_ids[2:]))


def test_requests_still_waiting_and_the_proxys_own_are_never_evicted() -> None:
    watch = ReplyWatch()
    waiting = watch.register(request(1), quiet())
    own = watch.register_own({"jsonrpc": "2.0", "method": "tools/list"}, quiet())
    cancelled = watch.register(request(2), quiet())
    watch.cancel(2)
    watch.evict_cancelled(time.monotonic() + 100 * CANCELLED_TTL_S)
    assert watch.reply(reply(cancelled["id"])) is None  # evicted
    assert watch.outstanding(1) and watch.reply(reply(waiting["id"])) == reply(1)
    assert watch.reply(reply(own["id"])) is DROP


# -- unparseable replies ---------------------------------------------------------------------------


def unparsed(local_id: str, tail: str = '"result":{"x":NaN}}') -> bytes:
    return f'{{"jsonrpc":"2.0","id":{json.dumps(local_id)},{tail}'.encode()


@pytest.mark.parametrize(
    ("client_id", "client_id_json"),
    [(7, b"7"), ("a", b'"a"'), (1.5, b"1.5"), (None, b"null"), ("\u00e9", b'"\\u00e9"')],
)
def test_an_unparseable_reply_goes_back_with_the_client_id_swapped_into_its_bytes(
    client_id: Any, client_id_json: bytes
) -> None:
    watch, seen = ReplyWatch(), Seen()
    forwarded = watch.register(request(client_id), Watcher(seen))
    line = unparsed(forwarded["id"])
    assert watch.reply_unparsed(line) == b'{"jsonrpc":"2.0","id":' + client_id_json + b',"result":{"x":NaN}}\n'
    assert seen.replies == []  # the watcher cannot read it
    assert not watch.outstanding(client_id) and not watch.active
    assert watch.reply_unparsed(line) is None  # answered once


def test_an_unparseable_reply_is_matched_to_its_own_proxy_id_not_a_prefix_of_it() -> None:
    watch = ReplyWatch()
    local_ids = [watch.register(request(n), quiet())["id"] for n in range(12)]
    assert local_ids[0] + "1" == local_ids[10]  # "...-1" is a prefix of "...-11"
    back = watch.reply_unparsed(unparsed(local_ids[10]))
    assert back is not None and back.startswith(b'{"jsonrpc":"2.0","id":10,')
    assert watch.outstanding(0) and not watch.outstanding(10)


def test_an_unparseable_reply_is_matched_by_its_id_not_by_another_proxy_id_in_its_body() -> None:
    """A reply to `second` whose result text is `first`'s proxy id (a tool echoing ids), made
    unparseable by a byte that is not UTF-8: it must go to `second`'s client with the text as it
    was, and `first` stays outstanding (matching any proxy id in the line consumed `first`,
    wrote its client id into the text and lost `second`'s answer)."""
    watch = ReplyWatch()
    first = watch.register(request("first"), quiet())
    second = watch.register(request("second"), quiet())
    body = f'"result":{{"content":[{{"type":"text","text":{json.dumps(first["id"])}}}]}},"x":"'.encode() + b'\xff"}'
    line = f'{{"jsonrpc":"2.0","id":{json.dumps(second["id"])},'.encode() + body
    back = watch.reply_unparsed(line)
    assert back == b'{"jsonrpc":"2.0","id":"second",' + body + b"\n"
    assert watch.outstanding("first") and not watch.outstanding("second")


def test_an_unparseable_reply_takes_the_watchers_error_when_it_has_one() -> None:
    watch = ReplyWatch()
    forwarded = watch.register(request("l", "tools/list"), Watcher(ignore, unparsed_error="cannot hide tools"))
    answer = json.loads(watch.reply_unparsed(unparsed(forwarded["id"])) or b"null")
    assert answer == {"jsonrpc": "2.0", "id": "l", "error": {"code": -32603, "message": "cannot hide tools"}}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":3,"result":NaN}', None),  # no proxy id in it
        (f'{{"id":"{ID_PREFIX}nobody-1",x'.encode(), None),  # a proxy id of no request here
        (b"", None),
    ],
)
def test_an_unparseable_line_without_a_watched_id_is_not_ours(line: bytes, expected: bytes | None) -> None:
    watch = ReplyWatch()
    watch.register(request(3), quiet())
    assert watch.reply_unparsed(line) is expected and watch.outstanding(3)


def test_an_unparseable_reply_to_a_cancelled_or_own_request_is_dropped() -> None:
    watch = ReplyWatch()
    cancelled = watch.register(request(1), quiet())
    watch.cancel(1)
    own = watch.register_own({"jsonrpc": "2.0", "method": "tools/list"}, quiet())
    assert watch.reply_unparsed(unparsed(cancelled["id"])) == b""
    assert watch.reply_unparsed(unparsed(own["id"])) == b""
    assert not watch.active


# -- the upstream goes away ------------------------------------------------------------------------


def test_forget_all_returns_the_waiting_client_ids_in_order_and_empties_the_watch() -> None:
    watch, seen = ReplyWatch(), Seen()
    sent = [watch.register(request(client_id), Watcher(seen)) for client_id in ("b", 1, None, "a")]
    watch.cancel(1)
    watch.register_own({"jsonrpc": "2.0", "method": "tools/list"}, Watcher(seen))
    assert watch.forget_all() == ["b", None, "a"]  # not the cancelled one, not the proxy's own
    assert not watch.active and watch.room() == MAX_WATCHED + MAX_CANCELLED
    assert not any(watch.outstanding(client_id) for client_id in ("b", 1, None, "a"))
    assert all(watch.reply(reply(message["id"])) is None for message in sent) and seen.replies == []
    assert watch.forget_all() == []
