"""A real webhook receiver for the tests: a stdlib HTTP server on 127.0.0.1 (port 0) in a thread,
checking each delivery as USAGE.md tells receivers to (HMAC-SHA256 of `<timestamp>.<body>`,
timestamp within 5 minutes, the signature of a delivery it accepted before is a replay: 409),
answering the statuses a test scripts, and optionally holding every answer until the test releases it (a receiver that
never answers). Nothing of intercept's is used to check: the check is the receiver's own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLAY_WINDOW_S = 300
HOLD_LIMIT_S = 60.0  # a held answer is released by the test; this only ends a forgotten one


@dataclass(frozen=True)
class Delivery:
    """One POST as the receiver got it, and its verdict: "ok", "bad signature", "stale" or "replay"."""

    path: str
    headers: dict[str, str]
    body: bytes
    verdict: str

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """Serves until `close`; every POST lands in `deliveries` before it is answered (or held)."""

    def __init__(self, secret: bytes, statuses: tuple[int, ...] = (200,), hold: threading.Event | None = None) -> None:
        self.secret = secret
        self.statuses = list(statuses)  # answered in order; the last one repeats
        self.hold = hold
        self.deliveries: queue.Queue[Delivery] = queue.Queue()
        self.in_flight = 0
        self.max_in_flight = 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def verdict(self, headers: dict[str, str], body: bytes, now_s: float) -> str:
        """The documented check (USAGE.md, "Webhook")."""
        stamp = headers.get("X-Intercept-Timestamp", "")
        given = headers.get("X-Intercept-Signature", "")
        mac = hmac.new(self.secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given, "sha256=" + mac):
            return "bad signature"
        if not stamp.isdigit() or abs(now_s - int(stamp)) > REPLAY_WINDOW_S:
            return "stale"
        with self._lock:
            return "replay" if given in self._seen else "ok"

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        try:
            body = request.rfile.read(int(request.headers.get("Content-Length", "0")))
            headers = {name: value for name, value in request.headers.items()}
            verdict = self.verdict(headers, body, time.time())
            self.deliveries.put(Delivery(request.path, headers, body, verdict))
            if self.hold is not None:
                self.hold.wait(HOLD_LIMIT_S)
            answer = {"ok": status, "replay": 409}.get(verdict, 401)
            if 200 <= answer < 300:  # accepted: from now on, the same signature is a replay
                with self._lock:
                    self._seen[headers["X-Intercept-Signature"]] = int(headers["X-Intercept-Timestamp"])
            request.send_response(answer)
            request.send_header("Content-Length", "0")
            request.end_headers()
        finally:
            with self._lock:
                self.in_flight -= 1

    def next(self, timeout_s: float = 20.0) -> Delivery:
        """The next delivery (queue.Empty after `timeout_s`)."""
        return self.deliveries.get(timeout=timeout_s)

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def webhook_receiver(
    secret: bytes, statuses: tuple[int, ...] = (200,), hold: threading.Event | None = None
) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret, statuses, hold)
    try:
        yield receiver
    finally:
        receiver.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST `body` with `headers` as another sender would (a replay, a forgery); the status."""
    sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
    request = urllib.request.Request(url, data=body, headers=sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
