"""The approval webhook's sender (`approvals.webhook_sender.WebhookChannel`) in-process, against a
real HTTP receiver on 127.0.0.1 (tests/webhook_receiver.py) and a real event log: what it records,
retries, the in-flight bound, the secret from the environment, and an exit that does not wait for
a receiver that never answers. Nothing of ours is patched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.webhook_sender import MAX_IN_FLIGHT, WebhookChannel, post_once
from intercept.audit.events import EventLog, read_events
from intercept.policy.model import ApprovalSettings, Policy, WebhookSettings
from intercept.store.approvals import ApprovalRecord
from tests.webhook_receiver import webhook_receiver

SECRET = "s3cret-webhook-signing-key"
SECRET_ENV = "INTERCEPT_TEST_WEBHOOK_SECRET"
NO_RETRY_WAIT = (0.0, 0.0)  # three attempts, back to back


def approval(n: int = 1) -> ApprovalRecord:
    return ApprovalRecord(
        id=f"apr_{n:032x}",
        fingerprint="f" * 64,
        server="files",
        tool="write_file",
        args_hash="h" * 32,
        args_redacted=json.dumps({"path": "a.txt", "password": "[REDACTED]"}),
        args_exact=json.dumps({"path": "a.txt", "password": "hunter2"}),
        rule="writes need a human",
        rule_digest="d" * 64,
        policy_revision="p" * 64,
        status="pending",
        timeout_s=3600.0,
        created_at="2026-11-30T12:00:00.000000Z",
        expires_at="2026-11-30T13:00:00.000000Z",
    )


def policy_with(url: str | None, timeout_s: float = 5.0, **hook: Any) -> Policy:
    webhook = (
        None if url is None else WebhookSettings(url=url, timeout_s=timeout_s, **({"secret_env": SECRET_ENV} | hook))
    )
    return Policy(approvals=ApprovalSettings(webhook=webhook, console_url="http://127.0.0.1:9111/"))


class WatchedEventLog(EventLog):
    """The real event log, which also hands each webhook_* record it writes to a test that awaits it."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir, "test-instance")
        self.webhook_records: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def emit(self, event_type: str, **fields: Any) -> None:
        super().emit(event_type, **fields)
        if event_type.startswith("webhook_"):
            self.webhook_records.put_nowait({"type": event_type, **fields})

    async def next_webhook_record(self, timeout_s: float = 20.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.webhook_records.get(), timeout_s)


def channel(tmp_path: Path, **options: Any) -> tuple[WebhookChannel, WatchedEventLog]:
    events = WatchedEventLog(tmp_path)
    sender = WebhookChannel(events, lambda verb, approval_id: f"intercept approvals {verb} {approval_id}", **options)
    return sender, events


def webhook_events(tmp_path: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(tmp_path) if e["type"].startswith("webhook_")]


@pytest.fixture(autouse=True)
def secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


async def test_a_request_is_posted_signed_and_recorded_on_the_loop(tmp_path: Path) -> None:
    sender, events = channel(tmp_path)
    with webhook_receiver(SECRET.encode()) as receiver:
        sender.approval_requested(approval(), policy_with(receiver.url))
        delivery = await _next(receiver)
        recorded = await events.next_webhook_record()  # recorded on this loop, before any close
        sender.close()
    assert delivery.verdict == "ok"
    assert delivery.path == "/hook"
    assert delivery.json()["approval_id"] == approval().id
    assert delivery.json()["approve_command"] == f"intercept approvals approve {approval().id}"
    assert "hunter2" not in delivery.body.decode()
    assert recorded == {"type": "webhook_sent", "approval_id": approval().id, "status": 200, "attempts": 1}
    assert [e["type"] for e in webhook_events(tmp_path)] == ["webhook_sent"]


@pytest.mark.parametrize(
    ("statuses", "event", "fields"),
    [
        ((500, 200), "webhook_sent", {"status": 200, "attempts": 2}),
        ((503, 502, 204), "webhook_sent", {"status": 204, "attempts": 3}),
        ((500,), "webhook_failed", {"status": 500, "attempts": 3}),
        ((404,), "webhook_failed", {"status": 404, "attempts": 3}),
        ((302,), "webhook_failed", {"status": 302, "attempts": 3}),  # redirects are not followed
    ],
    ids=["500-then-ok", "two-failures-then-ok", "500-always", "404-always", "redirect"],
)
async def test_failed_attempts_are_retried(
    tmp_path: Path, statuses: tuple[int, ...], event: str, fields: dict[str, Any]
) -> None:
    sender, events = channel(tmp_path, retry_delays_s=NO_RETRY_WAIT)
    with webhook_receiver(SECRET.encode(), statuses) as receiver:
        sender.approval_requested(approval(), policy_with(receiver.url))
        for _ in range(fields["attempts"]):
            assert (await _next(receiver)).verdict == "ok"  # each attempt signed afresh (or the same second)
        await events.next_webhook_record()
        sender.close()
    [recorded] = webhook_events(tmp_path)
    assert recorded["type"] == event
    assert {k: recorded[k] for k in fields} == fields
    if event == "webhook_failed":
        assert (recorded["tool"], recorded["server"]) == ("write_file", "files")


async def test_a_refused_connection_is_a_failure_without_the_url_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with webhook_receiver(SECRET.encode()) as receiver:
        url = receiver.url + "/T000/B000/tokenpart?key=querytoken"
    # the receiver is gone: nothing listens on its port any more
    sender, events = channel(tmp_path, retry_delays_s=NO_RETRY_WAIT)
    with caplog.at_level(logging.INFO, logger="intercept"):
        sender.approval_requested(approval(), policy_with(url))
        await events.next_webhook_record()
        sender.close()
    [recorded] = webhook_events(tmp_path)
    assert recorded["type"] == "webhook_failed" and recorded["attempts"] == 3
    assert "Connection refused" in recorded["error"]
    logged = caplog.text + json.dumps(recorded)
    assert "tokenpart" not in logged and "querytoken" not in logged
    assert "http://127.0.0.1:" in caplog.text  # the receiver is named by scheme and host


async def test_no_webhook_means_nothing_at_all(tmp_path: Path) -> None:
    sender, _ = channel(tmp_path)
    sender.approval_requested(approval(), policy_with(None))
    assert sender._thread is None  # no thread, no httpx
    sender.close()
    assert webhook_events(tmp_path) == []


async def test_the_settings_of_each_request_apply(tmp_path: Path) -> None:
    """A reload that adds the webhook takes effect at the next request, one that removes it too."""
    sender, events = channel(tmp_path)
    with webhook_receiver(SECRET.encode()) as receiver:
        sender.approval_requested(approval(1), policy_with(None))
        sender.approval_requested(approval(2), policy_with(receiver.url))
        assert (await _next(receiver)).json()["approval_id"] == approval(2).id
        sender.approval_requested(approval(3), policy_with(None))
        await events.next_webhook_record()
        sender.close()
        assert receiver.deliveries.empty()
    assert [e["approval_id"] for e in webhook_events(tmp_path)] == [approval(2).id]


async def test_a_missing_secret_sends_nothing_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    sender, _ = channel(tmp_path)
    with webhook_receiver(SECRET.encode()) as receiver, caplog.at_level(logging.ERROR, logger="intercept"):
        sender.approval_requested(approval(1), policy_with(receiver.url))
        sender.approval_requested(approval(2), policy_with(receiver.url))
        sender.close()
        assert receiver.deliveries.empty()
    assert sender._thread is None  # never sent unsigned: nothing was started
    message = f"approvals.notify.webhook: environment variable {SECRET_ENV} is not set; webhook notifications are off"
    assert [r.getMessage() for r in caplog.records] == [message]
    recorded = webhook_events(tmp_path)
    assert [(e["type"], e["approval_id"], e["attempts"]) for e in recorded] == [
        ("webhook_failed", approval(1).id, 0),
        ("webhook_failed", approval(2).id, 0),
    ]
    assert recorded[0]["error"] == f"environment variable {SECRET_ENV} is not set"


async def test_a_literal_secret_signs_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    sender, _ = channel(tmp_path)
    with webhook_receiver(b"literal") as receiver:
        sender.approval_requested(approval(), policy_with(receiver.url, secret_env=None, secret="literal"))
        assert (await _next(receiver)).verdict == "ok"
        sender.close()


async def test_at_most_ten_in_flight_the_rest_wait(tmp_path: Path) -> None:
    release = threading.Event()
    sender, events = channel(tmp_path)
    with webhook_receiver(SECRET.encode(), hold=release) as receiver:
        for n in range(MAX_IN_FLIGHT + 2):
            sender.approval_requested(approval(n), policy_with(receiver.url, timeout_s=30))
        first = [await _next(receiver) for _ in range(MAX_IN_FLIGHT)]
        with pytest.raises(queue.Empty):  # what must not happen: an eleventh while ten are held
            receiver.next(timeout_s=0.3)
        release.set()
        rest = [await _next(receiver) for _ in range(2)]
        for _ in range(MAX_IN_FLIGHT + 2):
            await events.next_webhook_record()
        sender.close()
    assert receiver.max_in_flight == MAX_IN_FLIGHT
    assert len({d.json()["approval_id"] for d in first + rest}) == MAX_IN_FLIGHT + 2
    assert {e["type"] for e in webhook_events(tmp_path)} == {"webhook_sent"}


async def test_overflow_is_dropped_and_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    sender, events = channel(tmp_path, max_in_flight=1, max_waiting=1)
    with webhook_receiver(SECRET.encode(), hold=release) as receiver:
        for n in range(5):
            sender.approval_requested(approval(n), policy_with(receiver.url, timeout_s=30))
        await _next(receiver)
        for _ in range(3):  # the three beyond one in flight and one waiting
            await events.next_webhook_record()
        release.set()
        for _ in range(2):
            await events.next_webhook_record()
        sender.close()
    recorded = {e["approval_id"]: e for e in webhook_events(tmp_path)}
    for n in (2, 3, 4):
        assert recorded[approval(n).id]["type"] == "webhook_failed"
        assert recorded[approval(n).id]["error"] == "too many notifications waiting"
    assert [recorded[approval(n).id]["type"] for n in (0, 1)] == ["webhook_sent", "webhook_sent"]
    # One line for the three drops (a receiver down for long must not flood the client's log).
    assert caplog.text.count("not sent so far") == 1 and "1 not sent so far" in caplog.text


async def test_close_does_not_wait_for_a_receiver_that_never_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    sender, _ = channel(tmp_path)
    with webhook_receiver(SECRET.encode(), hold=release) as receiver:
        sender.approval_requested(approval(), policy_with(receiver.url, timeout_s=60))
        await _next(receiver)
        started = time.monotonic()
        sender.close()  # returns while the receiver still holds its answer
        assert not release.is_set()
        assert time.monotonic() - started < 3.0
    [recorded] = webhook_events(tmp_path)
    assert (recorded["type"], recorded["error"], recorded["attempts"]) == ("webhook_failed", "dropped at exit", 1)
    assert "1 notification(s) unsent at exit were dropped" in caplog.text


async def test_a_slow_receiver_times_out_per_attempt(tmp_path: Path) -> None:
    release = threading.Event()
    sender, events = channel(tmp_path, retry_delays_s=NO_RETRY_WAIT)
    with webhook_receiver(SECRET.encode(), hold=release) as receiver:
        sender.approval_requested(approval(), policy_with(receiver.url, timeout_s=0.2))
        for _ in range(3):
            await _next(receiver)
        await events.next_webhook_record()
        sender.close()
    [recorded] = webhook_events(tmp_path)
    assert (recorded["type"], recorded["error"], recorded["attempts"]) == ("webhook_failed", "no answer within 0.2s", 3)


def test_the_sockets_own_timeout_gives_the_same_reason_as_the_attempts_bound() -> None:
    """The attempt's bound and the socket's timeout are the same length; whichever fires first
    (it depends on the load), the recorded reason is the same."""
    release = threading.Event()
    with webhook_receiver(SECRET.encode(), hold=release) as receiver:
        try:
            assert post_once(receiver.url, b"{}", {"Content-Type": "application/json"}, 0.2) == (
                None, "no answer within 0.2s"
            )  # fmt: skip
        finally:
            release.set()


# -- waiting without blocking the event loop the outcomes are recorded on ------------------------


async def _next(receiver: Any, timeout_s: float = 20.0) -> Any:
    """The receiver's next delivery, waited for off the event loop (which records outcomes)."""
    return await asyncio.to_thread(receiver.next, timeout_s)


def test_a_redirect_is_an_answer_never_followed() -> None:
    """The signed body goes where the policy says, or nowhere: a 3xx is a failed attempt."""
    import http.server
    import threading

    from intercept.approvals.webhook_sender import post_once

    hits: list[str] = []

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, error = post_once(f"http://127.0.0.1:{server.server_address[1]}/hook", b"{}", {}, 5.0)
    finally:
        server.shutdown()
    assert (status, error) == (307, "")
    assert hits == ["/hook"]


async def test_a_receiver_that_trickles_its_answer_does_not_keep_the_post_open(tmp_path: Path) -> None:
    """A receiver that sends a header line now and then (each within the timeout), never finishing
    its answer, got each attempt timed out but kept the attempt's thread and connection for as
    long as it trickled: three threads and sockets per request, without bound. An attempt that
    times out now ends its connection, and its thread with it."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle(connection: socket.socket) -> None:
        with connection:
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.2):  # 100 header lines (http.client's limit) take 20 s
                try:
                    connection.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    sender, events = channel(tmp_path, retry_delays_s=NO_RETRY_WAIT)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        sender.approval_requested(approval(), policy_with(url, timeout_s=0.3))
        recorded = await events.next_webhook_record()
        assert (recorded["type"], recorded["error"]) == ("webhook_failed", "no answer within 0.3s")
        posts = [t for t in threading.enumerate() if t.name == "intercept-webhook-post"]
        for post in posts:
            await asyncio.to_thread(post.join, 5.0)
        assert not [post for post in posts if post.is_alive()]
    finally:
        sender.close()
        stop.set()
        listener.close()
