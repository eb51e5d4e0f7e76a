"""The approval webhook's sender (`approvals.notify.webhook`): a `RequestListener` that POSTs each
new approval request, signed, to the configured URL. The I/O edge of `approvals.webhook`.

Why its own thread and event loop: the gate tells listeners on the proxy's event loop, in the path
of the call that opened the request, and a notification must never delay or fail that call
(the agent gets its -32003 at once, whatever the receiver does). So `approval_requested` only
hands the request over and returns; the sending is scheduled on a daemon thread with an event
loop of its own, started when a policy with a webhook is loaded, and each POST runs on a daemon thread of its
own (at most MAX_IN_FLIGHT; daemon: one stuck on a silent receiver never holds the proxy's exit)
with the stdlib's urllib (which honours `HTTPS_PROXY`/`NO_PROXY`, as httpx
would). Not httpx: its async stack took 2.8 ms of CPU per POST here against 0.33 ms, and every
millisecond a sender thread holds the GIL is one the proxy's event loop may wait (a -32003 answer
took 6 ms instead of 1 with a receiver that answers at once; `bench/humans.py`). At most MAX_IN_FLIGHT requests are in flight, MAX_WAITING more wait for a slot, and
beyond that a request is dropped. A failed attempt (transport error, non-2xx status, no answer
within the policy's `timeout`) is retried after each of RETRY_DELAYS_S; what finally happened is
recorded as `webhook_sent` or `webhook_failed`, on the proxy's event loop (the event log is the
loop's alone), or at `close` once that loop is gone. `close` gives unfinished requests
CLOSE_GRACE_S, so a receiver that never answers cannot hold the proxy's exit.

Logs name the receiver by scheme and host only: the URL's path and query often are its token
(Slack's are). The secret is never logged or recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from intercept.approvals.webhook import ApproverCommands, request_body, signed_headers
from intercept.audit.events import EventLog
from intercept.policy.model import Policy, WebhookSettings
from intercept.store.approvals import ApprovalRecord

log = logging.getLogger("intercept")

MAX_IN_FLIGHT = 10
MAX_WAITING = 1000  # requests waiting for an in-flight slot; more are dropped
# After the 1st and 2nd failed attempt: 3 attempts in all. At least 1 s, so a retry is signed with
# a later timestamp than the attempt before it and a receiver's replay check cannot mistake it for one.
RETRY_DELAYS_S = (1.0, 2.0)
DROP_LOG_INTERVAL_S = 10.0  # a receiver down for long: at most one log line this often about dropped requests
CLOSE_GRACE_S = 1.0  # what unfinished requests get at exit
SHUTDOWN_SLACK_S = 1.0  # beyond the grace, for the sender thread to stop
MAX_ERROR_CHARS = 200

CommandFor = Callable[[str, str], str]  # (verb, approval id) -> the CLI line an approver runs


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    """What became of one request's notification: an event type and its fields."""

    event: str  # webhook_sent | webhook_failed
    fields: dict[str, Any]


@dataclass(slots=True)
class _Delivery:
    """One request's notification, with the settings it was requested under."""

    approval: ApprovalRecord
    settings: WebhookSettings
    console_url: str | None
    secret: bytes
    escalated_to: list[str] | None = None  # an escalation's notice: the roles that may decide now
    attempts: int = field(default=0)


def shown_url(url: str) -> str:
    """The receiver as logs name it: scheme and host (and port), no path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def failed(approval: ApprovalRecord, attempts: int, *, status: int | None = None, error: str = "") -> WebhookOutcome:
    reason: dict[str, Any] = {"status": status} if status is not None else {"error": error}
    return WebhookOutcome(
        "webhook_failed",
        {"approval_id": approval.id, "tool": approval.tool, "server": approval.server, **reason, "attempts": attempts},
    )


class WebhookChannel:
    """Tells the policy's webhook of every new approval request; the settings are read from the
    policy of each request, so a reload that adds, changes or removes the webhook takes effect at
    the next one."""

    def __init__(
        self,
        events: EventLog,
        command_for: CommandFor,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_waiting: int = MAX_WAITING,
        retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
        close_grace_s: float = CLOSE_GRACE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.command_for = command_for
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.retry_delays_s = retry_delays_s
        self.close_grace_s = close_grace_s
        self.clock = clock  # signs each attempt with the time it is sent
        self._closed = False
        self._secret_for: tuple[WebhookSettings, bytes | None] | None = None  # the last settings seen
        self._outcomes: deque[WebhookOutcome] = deque()  # from the sender thread, recorded on the proxy's loop
        self._proxy_loop: asyncio.AbstractEventLoop | None = None
        self._sender_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # The sender loop's own (touched only on the sender thread):
        self._jobs: dict[asyncio.Task[None], _Delivery] = {}
        self._dropped = 0  # requests not sent because too many waited (for the rate-limited log line)
        self._next_drop_log = 0.0
        self._slots: asyncio.Semaphore | None = None

    # -- on the proxy's event loop ------------------------------------------------------------------

    def approval_requested(self, approval: ApprovalRecord, policy: Policy) -> None:
        """Hand the request to the sender thread and return at once (nothing to do without a webhook)."""
        self._notify(approval, policy, None)

    def approval_escalated(self, approval: ApprovalRecord, policy: Policy, roles: list[str]) -> None:
        """The same request once more, saying which roles may decide it now."""
        self._notify(approval, policy, roles)

    def _notify(self, approval: ApprovalRecord, policy: Policy, escalated_to: list[str] | None) -> None:
        settings = policy.approvals.webhook
        if settings is None or self._closed:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: outcomes wait for `close`
            self._proxy_loop = asyncio.get_running_loop()
        secret = self._secret(settings)
        if secret is None:
            reason = f"environment variable {settings.secret_env} is not set"
            self._outcomes.append(failed(approval, 0, error=reason))
            self.record_outcomes()
            return
        delivery = _Delivery(approval, settings, policy.approvals.console_url, secret, escalated_to)
        self._sender().call_soon_threadsafe(self._accept, delivery)

    def warm_up(self, policy: Policy) -> None:
        """With a webhook configured, start the sender thread and its pool now (after the proxy's
        first answer), not inside the call that opens the first request."""
        if policy.approvals.webhook is not None and not self._closed:
            self._sender()

    def _secret(self, settings: WebhookSettings) -> bytes | None:
        """The signing secret: `$secret_env` when it is named, else the literal `secret`; None
        (said once per settings) when the variable is not set: nothing is ever sent unsigned."""
        if self._secret_for is not None and self._secret_for[0] == settings:
            return self._secret_for[1]
        if settings.secret_env is not None:
            value = os.environ.get(settings.secret_env, "")
            if not value:
                log.error(
                    "approvals.notify.webhook: environment variable %s is not set; webhook notifications are off",
                    settings.secret_env,
                )
        else:
            value = settings.secret or ""
        secret = value.encode() if value else None
        self._secret_for = (settings, secret)
        return secret

    def _sender(self) -> asyncio.AbstractEventLoop:
        """The sender thread's event loop, started at first use."""
        if self._sender_loop is None:
            loop = self._sender_loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._run_sender, args=(loop,), name="intercept-webhook", daemon=True
            )
            self._thread.start()
        return self._sender_loop

    def record_outcomes(self) -> None:
        """Record what the sender thread reported (on the proxy's loop, or at `close`)."""
        while self._outcomes:
            outcome = self._outcomes.popleft()
            self.events.emit(outcome.event, **outcome.fields)

    def close(self) -> None:
        """Give unfinished notifications CLOSE_GRACE_S, drop the rest, stop the thread, record
        every outcome. Called once, at the end of the session."""
        self._closed = True
        loop, thread = self._sender_loop, self._thread
        if loop is not None and thread is not None:
            try:
                done = asyncio.run_coroutine_threadsafe(self._shut_down(), loop)
                done.result(timeout=self.close_grace_s + SHUTDOWN_SLACK_S)
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=SHUTDOWN_SLACK_S)
            except (TimeoutError, RuntimeError) as exc:  # a daemon thread: it cannot hold the exit
                log.warning("approvals.notify.webhook: the sender did not stop in time (%s)", type(exc).__name__)
            self._sender_loop = self._thread = None
        self.record_outcomes()

    # -- on the sender thread -----------------------------------------------------------------------

    def _run_sender(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _report(self, outcome: WebhookOutcome) -> None:
        """Queue `outcome` for the event log, recorded on the proxy's loop while it runs."""
        self._outcomes.append(outcome)
        loop = self._proxy_loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: `close` records it
                loop.call_soon_threadsafe(self.record_outcomes)

    def _accept(self, delivery: _Delivery) -> None:
        if len(self._jobs) >= self.max_in_flight + self.max_waiting:
            self._dropped += 1
            now = time.monotonic()
            if now >= self._next_drop_log:  # one line per DROP_LOG_INTERVAL_S, not one per request
                self._next_drop_log = now + DROP_LOG_INTERVAL_S
                log.error(
                    "approvals.notify.webhook: %d notifications are waiting already; %d not sent so far "
                    "(each is recorded as webhook_failed)",
                    len(self._jobs),
                    self._dropped,
                )
            self._report(failed(delivery.approval, 0, error="too many notifications waiting"))
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._jobs[task] = delivery
        task.add_done_callback(self._jobs.pop)

    async def _deliver(self, delivery: _Delivery) -> None:
        assert self._slots is not None
        async with self._slots:
            try:
                outcome = await self._attempts(delivery)
            except Exception:  # a bug here must not leave the request unaccounted for
                log.exception("approvals.notify.webhook: notification of approval %s failed", delivery.approval.id)
                outcome = failed(delivery.approval, delivery.attempts, error="internal error")
        self._report(outcome)

    async def _attempts(self, delivery: _Delivery) -> WebhookOutcome:
        """POST until a 2xx answer or the attempts run out; re-signed at each attempt."""
        approval, settings = delivery.approval, delivery.settings
        commands = ApproverCommands(self.command_for("approve", approval.id), self.command_for("deny", approval.id))
        body = request_body(approval, settings.format, delivery.console_url, commands, delivery.escalated_to)
        total = len(self.retry_delays_s) + 1
        receiver = shown_url(settings.url)
        status: int | None = None
        error = ""
        for attempt in range(1, total + 1):
            delivery.attempts = attempt
            status, error = await self._post(settings, body, delivery.secret)
            if status is not None and 200 <= status < 300:
                log.info("approvals.notify.webhook: approval %s sent to %s (%d)", approval.id, receiver, status)
                return WebhookOutcome(
                    "webhook_sent", {"approval_id": approval.id, "status": status, "attempts": attempt}
                )
            why = f"status {status}" if status is not None else error
            if attempt < total:
                delay_s = self.retry_delays_s[attempt - 1]
                log.warning(
                    "approvals.notify.webhook: approval %s to %s failed (%s), attempt %d of %d; again in %gs",
                    approval.id,
                    receiver,
                    why,
                    attempt,
                    total,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
            else:
                log.error(
                    "approvals.notify.webhook: approval %s to %s failed (%s) after %d attempts; not sent",
                    approval.id,
                    receiver,
                    why,
                    total,
                )
        return failed(approval, total, status=status, error=error)

    async def _post(self, settings: WebhookSettings, body: bytes, secret: bytes) -> tuple[int | None, str]:
        """One attempt: the status, or None and why there is none. The answer's body is not read."""
        headers = signed_headers(secret, body, self.clock())
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[tuple[int | None, str]] = loop.create_future()

        connection = _Connection()

        def post() -> None:
            result = post_once(settings.url, body, headers, settings.timeout_s, connection)
            with contextlib.suppress(RuntimeError):  # the sender's loop is gone (exit): nobody waits
                loop.call_soon_threadsafe(lambda: answered.done() or answered.set_result(result))

        threading.Thread(target=post, name="intercept-webhook-post", daemon=True).start()
        try:
            async with asyncio.timeout(settings.timeout_s):  # the whole exchange, however slowly it trickles
                return await answered
        except TimeoutError:
            return None, no_answer_within(settings.timeout_s)
        finally:
            # A receiver trickling its answer (each byte within the socket's timeout) would hold
            # the thread and its connection long after the attempt is over, at every attempt.
            connection.end()

    async def _shut_down(self) -> None:
        """Wait at most `close_grace_s` for unfinished notifications and drop the rest (a POST thread
        still waiting on a silent receiver is a daemon: it ends with the process)."""
        jobs = dict(self._jobs)
        if jobs:
            _, late = await asyncio.wait(jobs, timeout=self.close_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if late:
                log.warning("approvals.notify.webhook: %d notification(s) unsent at exit were dropped", len(late))
            for task in late:
                self._report(failed(jobs[task].approval, jobs[task].attempts, error="dropped at exit"))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is the receiver's answer (non-2xx), never followed: the signed body stays where
    the policy sends it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Connection:
    """The sockets of one POST, so that another thread can end it (`end`): a shutdown of a
    duplicate of each (the same connection; also once TLS wraps the original) wakes a read
    blocked on it. The duplicates are closed when the POST is over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._ended = False

    def opened(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock.dup())
            if self._ended:
                self._end_locked()
        return sock

    def end(self) -> None:
        with self._lock:
            self._ended = True
            self._end_locked()

    def _end_locked(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._sockets.clear()

    def closed(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


_POSTING = threading.local()  # the `_Connection` of the POST on this thread


def _tracked(http_class: Any) -> Callable[..., http.client.HTTPConnection]:
    """`http_class` whose connections report their sockets to this thread's `_Connection`."""

    def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        made = http_class(*args, **kwargs)
        connection: _Connection | None = getattr(_POSTING, "connection", None)
        if connection is not None:
            create = made._create_connection
            made._create_connection = lambda *a, **k: connection.opened(create(*a, **k))
        return made

    return make


class _TrackedHTTP(urllib.request.HTTPHandler):
    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(_tracked(http_class), req, **kwargs)


class _TrackedHTTPS(urllib.request.HTTPSHandler):
    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(_tracked(http_class), req, **kwargs)


_OPENER = urllib.request.build_opener(_NoRedirects(), _TrackedHTTP(), _TrackedHTTPS())


def post_once(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float, connection: _Connection | None = None
) -> tuple[int | None, str]:
    """One POST on this thread: the answer's status (its body unread), or None and why there is
    none (the reason without the URL's path or query). `connection.end()` from another thread
    ends it early."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (http(s) only: validated)
    _POSTING.connection = connection
    try:
        return _open(request, timeout_s, url)
    finally:
        _POSTING.connection = None
        if connection is not None:
            connection.closed()


def _open(request: urllib.request.Request, timeout_s: float, url: str) -> tuple[int | None, str]:
    try:
        with _OPENER.open(request, timeout=timeout_s) as answer:
            return answer.status, ""
    except urllib.error.HTTPError as refused:
        refused.close()
        return refused.code, ""
    except urllib.error.URLError as exc:  # the transport's own error says more than urllib's wrapper
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return None, no_answer_within(timeout_s)
        return None, _describe(reason if isinstance(reason, Exception) else exc, url)
    except TimeoutError:  # the socket's timeout: the same reason as the attempt's own bound
        return None, no_answer_within(timeout_s)
    except Exception as exc:  # TLS, anything else: one line
        return None, _describe(exc, url)


def no_answer_within(timeout_s: float) -> str:
    """Why an attempt failed when the receiver did not answer in time, whichever timeout saw it."""
    return f"no answer within {timeout_s:g}s"


def _describe(exc: Exception, url: str) -> str:
    """An exception as one short line, without the URL's path or query (they may be its token)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    parts = urlsplit(url)
    for secret_part in (url, parts.path + ("?" + parts.query if parts.query else ""), parts.query, parts.path):
        if len(secret_part) > 1:
            text = text.replace(secret_part, "…")
    return text[:MAX_ERROR_CHARS]
