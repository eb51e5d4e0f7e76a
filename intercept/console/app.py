"""The admin API and the web inbox as one Starlette app, for one state dir.

Routes (all under the checks of `console.auth`; `/api/openapi.json` documents them):
- Intercept's: `GET /api/pending`, `GET /api/pending/{id}`, `POST /api/approve/{id}`,
  `POST /api/deny/{id}` (body: optional `actor`, `reason`).
- Ours: `GET /api/approvals?status=&tool=&server=`, `GET /api/approvals/{id}`,
  `POST /api/approvals/{id}/approve|deny`, `GET /api/events?since=&type=&limit=`,
  `GET /api/events/stream` (server-sent events), `GET /api/status`, `GET /api/session`.
- The inbox: `/` and `/static/*` (no data in them: the page asks the API), `/login`, `/logout`.

Every decision goes through `approvals.decisions.decide`, so the API, the console and the CLI
make the same conditional change and write the same `approval_decided` event. Store work runs in
Starlette's thread pool (one connection per request), never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    FileResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from intercept.approvals.deciders import key_signer, policy_source
from intercept.approvals.decisions import Channel, Signer, decide, default_actor, rule_check
from intercept.approvals.highlight import safe_json
from intercept.approvals.record_json import full_record_json, record_json
from intercept.audit.events import EventFollower, EventLog, events_dir, read_events
from intercept.audit.receipts import Receipts
from intercept.audit.summary import summarise
from intercept.console.auth import (
    ADMIN_KEY_BYTES,
    CSRF_HEADER,
    SESSION_COOKIE,
    BoundAddress,
    Credential,
    Sessions,
    admin_secret,
    admin_secret_file,
    credential_of_token,
    cross_site_refusal,
)
from intercept.console.openapi import openapi_schema
from intercept.console.secret_marks import secret_marks
from intercept.safe_text import UNSAFE_CHARS
from intercept.store.approvals import STATUSES, ApprovalStore, DecisionConflict, DecisionRefused, UnknownApproval
from intercept.store.database import StoreUnavailable, connect
from intercept.store.votes import votes_of

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY_BYTES = 64 * 1024  # a decision's JSON body, the login and logout forms
MAX_FORM_FIELDS = 10
MAX_ACTOR_CHARS = 128
MAX_REASON_CHARS = 2000
DEFAULT_EVENTS_LIMIT = 200
MAX_EVENTS_LIMIT = 5000
SSE_KEEPALIVE_S = 15.0
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # no-referrer makes Chromium send `Origin: null` on our own form posts
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


class ApiError(Exception):
    """An error answer: status and one-line message (and the record, for a conflict)."""

    def __init__(self, status: int, message: str, approval: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.approval = approval


def _json(data: Any, status: int = 200) -> Response:
    """JSON with agent-chosen text written as escapes (`safe_json`): nothing reaches a page raw."""
    return Response(safe_json(data), status_code=status, media_type="application/json")


def _error(status: int, message: str, approval: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if approval is not None:
        body["approval"] = approval
    response = _json(body, status)
    if status == 401:
        response.headers["www-authenticate"] = 'Bearer realm="intercept"'
    return response


@dataclass
class ConsoleConfig:
    state_dir: Path
    address: BoundAddress
    default_actor: str = ""
    # Where the approvers' unencrypted signing keys (NAME.key) and this console's own secret
    # (console.key) are: the console signs votes only when given one (`serve --signing-keys`).
    signing_keys: Path | None = None


class _Guard:
    """ASGI middleware: the Host/Origin checks for every request and the security headers for
    every response (see `console.auth`)."""

    def __init__(self, app: ASGIApp, address: BoundAddress) -> None:
        self.app = app
        self.address = address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = cross_site_refusal(
            self.address, headers.get("host"), headers.get("origin"), headers.get("sec-fetch-site")
        )
        if refusal:
            await _error(403, refusal)(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _LockedEvents:
    """The console's event log, written from the thread pool's threads one at a time."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._lock = threading.Lock()

    def emit(self, event_type: str, **fields: Any) -> None:
        with self._lock:
            self._log.emit(event_type, **fields)


class Console:
    """The routes' state: the state dir, the admin secret, this process's sessions."""

    def __init__(self, config: ConsoleConfig, sessions: Sessions | None = None) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.secret_file = admin_secret_file(config.state_dir, config.signing_keys)
        self.secret: bytes | None = admin_secret(config.state_dir, config.signing_keys)
        self.sessions = sessions or Sessions()
        self.default_actor = config.default_actor or default_actor()
        self.events = _LockedEvents(EventLog(config.state_dir, "console"))
        self.receipts = Receipts(config.state_dir)
        self.closing = threading.Event()  # set when the server stops: open event streams end

    # -- who is asking ---------------------------------------------------------------------

    def current_secret(self) -> bytes | None:
        """The admin secret as admin.key holds it now, read at every check (32 bytes), so deleting
        or replacing the file revokes every token, session and login link at once, without a
        restart; None while there is no usable key (nobody gets in until `intercept admin token`
        makes a new one)."""
        try:
            secret: bytes | None = self.secret_file.read_bytes()
        except OSError:
            secret = None
        if secret is not None and len(secret) != ADMIN_KEY_BYTES:
            secret = None
        if secret != self.secret:
            self.secret = secret
            self.sessions.revoke_all()  # they were opened with the old key
        return secret

    def credential(self, request: Request) -> Credential | None:
        """The Bearer token's credential when an Authorization header is sent (a bad one is not
        helped by a cookie), else the session cookie's."""
        secret = self.current_secret()
        if secret is None:
            return None
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            return credential_of_token(secret, token.strip()) if scheme.lower() == "bearer" else None
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        return None if session is None else Credential(session.person, "session")

    def require(self, request: Request, changes_state: bool) -> Credential:
        credential = self.credential(request)
        if credential is None:
            raise ApiError(401, "authentication required: send Authorization: Bearer <token> (intercept admin token)")
        if changes_state and credential.via == "session":
            session = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
            sent = request.headers.get(CSRF_HEADER, "")
            if session is None or not sent or not _same(sent, session.csrf):
                raise ApiError(403, "missing or wrong CSRF token (X-CSRF-Token)")
        return credential

    # -- the store -------------------------------------------------------------------------

    @contextmanager
    def store(self) -> Iterator[ApprovalStore]:
        """A connection for one request, with stale records expired first (as the CLI does)."""
        try:
            connection = connect(self.state_dir)
        except StoreUnavailable as exc:
            raise ApiError(503, f"approval store unavailable: {exc}") from None
        try:
            store = ApprovalStore(connection)
            expired: list[str] = []
            if store.has_stale(time.time()):  # a read first: most requests take no write lock at all
                with store.transaction():
                    expired = store.expire_stale(time.time())
            for approval_id in expired:
                self.events.emit("approval_expired", approval_id=approval_id)
            yield store
        except StoreUnavailable as exc:
            raise ApiError(503, f"approval store unavailable: {exc}") from None
        finally:
            connection.close()

    def list_approvals(
        self, statuses: tuple[str, ...] | None, tool: str | None, server: str | None
    ) -> list[dict[str, Any]]:
        now_s = time.time()
        with self.store() as store:
            records = store.list(statuses)
            check = rule_check(store, now_s)
        return [
            record_json(r, check.stale(r))
            for r in records
            if (tool is None or r.tool == tool) and (server is None or r.server == server)
        ]

    def one_approval(self, approval_id: str) -> dict[str, Any]:
        with self.store() as store:
            record = store.get(approval_id)
            if record is None:
                raise ApiError(404, f"no approval with id {approval_id}")
            stale = rule_check(store, time.time()).stale(record)
            data = full_record_json(record, stale, store.history(approval_id), votes_of(store, approval_id))
        data["secret_spans"] = secret_marks(data["arguments"])  # what the inbox marks (console.secret_marks)
        return data

    def decide(
        self, approval_id: str, approve: bool, credential: Credential, body: dict[str, Any], channel: Channel
    ) -> dict[str, Any]:
        actor = credential.person or body.get("actor") or self.default_actor
        with self.store() as store:
            try:
                decision = decide(
                    store,
                    self.events,
                    approval_id,
                    approve=approve,
                    actor=actor,
                    reason=body.get("reason"),
                    channel=channel,
                    now_s=time.time(),
                    policy_of=policy_source(self.state_dir),
                    receipts=self.receipts,
                    sign=self.signer(),
                )
            except UnknownApproval as exc:
                raise ApiError(404, str(exc)) from None
            except DecisionConflict as exc:
                stale = rule_check(store, time.time()).stale(exc.record)
                raise ApiError(409, str(exc), record_json(exc.record, stale)) from None
            except DecisionRefused as exc:  # not eligible, or no key the console can sign with
                raise ApiError(403, str(exc)) from None
            data = full_record_json(decision.record, False, store.history(approval_id), decision.votes)
        data["changed"] = decision.changed
        data["quorum"] = decision.quorum  # the approvals the request needs (its votes are in `votes`)
        return data

    def signer(self) -> Signer | None:
        """Signs with the keys in `signing_keys` (unencrypted: there is nobody to ask a
        passphrase); None without it: approvers with keys then decide with the CLI."""
        keys = self.config.signing_keys
        if keys is None:
            return None
        return key_signer(None, _no_passphrase, key_dir=keys)

    def status(self) -> dict[str, Any]:
        now_s = time.time()
        summary = summarise(read_events(self.state_dir), now_s)
        with self.store() as store:
            pending = len(store.list(("pending",)))
        alive = [i for i in summary.instances if not i.stopped]
        return {
            "proxies_alive": len(alive),
            "proxies": [{"server": i.server, "pid": i.pid, "last_seen": i.last_seen} for i in alive],
            "calls_last_hour": summary.calls_last_hour,
            "pending": pending,
        }


def _no_passphrase(actor: str) -> Callable[[], bytes]:
    """The console signs only with keys kept unencrypted under its own account."""

    def refuse() -> bytes:
        raise DecisionRefused(
            f"{actor}'s key is encrypted with a passphrase, which the console cannot ask for: decide with "
            f"`intercept approvals approve|deny ID --as {actor}`, or put a key made with --no-passphrase in the "
            "console's --signing-keys directory"
        )

    return refuse


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


async def _read_body(request: Request) -> bytes:
    """The body, refused (413) as soon as it is known to pass MAX_BODY_BYTES: by its Content-Length
    before a byte is read, else while it streams in. Nothing larger is held, and a client that
    announces a huge body and sends it slowly (or never) is not waited for."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
    received = bytearray()
    try:
        async for chunk in request.stream():
            received += chunk
            if len(received) > MAX_BODY_BYTES:
                raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
    except ClientDisconnect:  # gone before its body was in: no traceback on the proxy's stderr
        raise ApiError(400, "the client went away before its request body arrived") from None
    return bytes(received)


async def _form(request: Request) -> dict[str, str]:
    """A small url-encoded form (login, logout), read within MAX_BODY_BYTES and parsed here: the
    console needs no multipart library, and Starlette's parser would hold up to 1000 fields of
    1 MB each from anyone who can reach the port."""
    raw = await _read_body(request)
    try:
        pairs = urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise ApiError(422, f"a form of at most {MAX_FORM_FIELDS} fields") from None
    return dict(reversed(pairs))  # the first value of a repeated field


async def _body(request: Request) -> dict[str, Any]:
    """The optional JSON body of a decision: `actor` and `reason`, strings of bounded length."""
    raw = await _read_body(request)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(422, "the body must be a JSON object with optional string fields actor and reason") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object with optional string fields actor and reason")
    for key, limit in (("actor", MAX_ACTOR_CHARS), ("reason", MAX_REASON_CHARS)):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ApiError(422, f"{key} must be a non-empty string")
        if len(value) > limit:
            raise ApiError(422, f"{key} must be at most {limit} characters")
        if key == "actor" and UNSAFE_CHARS.search(value):
            raise ApiError(422, "actor must not contain control or bidirectional characters")
    return body


def _statuses(request: Request) -> tuple[str, ...] | None:
    raw = request.query_params.get("status")
    if raw is None or raw == "":
        return None
    statuses = tuple(s.strip() for s in raw.split(","))
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise ApiError(422, f"unknown status {unknown[0]!r}: one of {', '.join(STATUSES)}")
    return statuses


def _handler(console: Console, changes_state: bool, work: Callable[..., Any]) -> Callable[[Request], Any]:
    """An endpoint: authenticate, run `work(request, credential)` (a coroutine function), turn
    ApiError into its answer."""

    async def endpoint(request: Request) -> Response:
        try:
            credential = console.require(request, changes_state)
            result = await work(request, credential)
        except ApiError as exc:
            return _error(exc.status, str(exc), exc.approval)
        return result if isinstance(result, Response) else _json(result)

    return endpoint


def build_app(config: ConsoleConfig, sessions: Sessions | None = None) -> Starlette:
    """The app; raises SecretUnavailable when the admin secret cannot be had."""
    console = Console(config, sessions)

    async def pending(request: Request, _: Credential) -> Any:
        return await run_in_threadpool(console.list_approvals, ("pending",), None, None)

    async def approvals(request: Request, _: Credential) -> Any:
        params = request.query_params
        statuses = _statuses(request)
        found = await run_in_threadpool(console.list_approvals, statuses, params.get("tool"), params.get("server"))
        return {"approvals": found}

    async def one(request: Request, _: Credential) -> Any:
        return await run_in_threadpool(console.one_approval, request.path_params["approval_id"])

    def deciding(approve: bool) -> Callable[[Request, Credential], Any]:
        async def work(request: Request, credential: Credential) -> Any:
            body = await _body(request)
            channel: Channel = "console" if credential.via == "session" else "api"
            return await run_in_threadpool(
                console.decide, request.path_params["approval_id"], approve, credential, body, channel
            )

        return work

    async def events(request: Request, _: Credential) -> Any:
        params = request.query_params
        since, kind = params.get("since"), params.get("type")
        try:
            limit = int(params.get("limit", DEFAULT_EVENTS_LIMIT))
        except ValueError:
            raise ApiError(422, "limit must be an integer") from None
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            raise ApiError(422, f"limit must be between 1 and {MAX_EVENTS_LIMIT}")
        found = await run_in_threadpool(read_events, console.state_dir)
        chosen = [
            e
            for e in found
            if (since is None or str(e.get("ts", "")) > since) and (kind is None or e.get("type") == kind)
        ]
        return {"events": chosen[-limit:]}

    async def stream(request: Request, _: Credential) -> Any:
        return StreamingResponse(_event_stream(console, request), media_type="text/event-stream")

    async def status(request: Request, _: Credential) -> Any:
        return await run_in_threadpool(console.status)

    async def session(request: Request, credential: Credential) -> Any:
        found = console.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        return {
            "actor": credential.person or console.default_actor,
            "bound_to_person": credential.person is not None,
            "csrf": found.csrf if found is not None and credential.via == "session" else None,
        }

    async def schema(request: Request, _: Credential) -> Any:
        return openapi_schema()

    def api(path: str, work: Callable[..., Any], changes_state: bool = False) -> Route:
        return Route(path, _handler(console, changes_state, work), methods=["POST"] if changes_state else ["GET"])

    routes = [
        api("/api/pending", pending),
        api("/api/pending/{approval_id}", one),
        api("/api/approve/{approval_id}", deciding(True), changes_state=True),
        api("/api/deny/{approval_id}", deciding(False), changes_state=True),
        api("/api/approvals", approvals),
        api("/api/approvals/{approval_id}", one),
        api("/api/approvals/{approval_id}/approve", deciding(True), changes_state=True),
        api("/api/approvals/{approval_id}/deny", deciding(False), changes_state=True),
        api("/api/events", events),
        api("/api/events/stream", stream),
        api("/api/status", status),
        api("/api/session", session),
        api("/api/openapi.json", schema),
        # Endpoints are coroutine functions: Starlette runs any other callable in a thread and
        # would then be handed an un-awaited coroutine.
        Route("/", _index_page, methods=["GET"]),
        Route("/approvals/{approval_id}", _index_page, methods=["GET"]),  # the webhook's link to a request
        Route("/static/{name}", _static_file, methods=["GET"]),
        Route("/login", _login_page, methods=["GET"]),
        Route("/login", _login, methods=["POST"]),
        Route("/logout", _logout, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    app.state.closing = console.closing  # `console.server` sets it when it stops
    app.add_middleware(_Guard, address=config.address)  # type: ignore[arg-type]
    return app


_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


async def _static(name: str) -> Response:
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in _STATIC_TYPES or not path.is_file():
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(path, media_type=_STATIC_TYPES[path.suffix])


async def _index_page(request: Request) -> Response:
    return await _static("index.html")


async def _static_file(request: Request) -> Response:
    return await _static(request.path_params["name"])


def _session_response(console: Console, person: str | None, secure: bool) -> Response:
    session_id, _ = console.sessions.open(person)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict", secure=secure, path="/")
    return response


async def _login_page(request: Request) -> Response:
    """GET /login?code=…: the one-time URL; without a code, the form to paste a token."""
    console: Console = request.app.state.console
    code = request.query_params.get("code")
    if code is not None:
        if not console.sessions.use_login_code(code):
            return PlainTextResponse(
                "This login link was already used or has expired. Run `intercept serve` again, or log in with a "
                "token (intercept admin token) at /login.",
                status_code=401,
            )
        return _session_response(console, None, console.config.address.tls)
    return await _static("login.html")


async def _login(request: Request) -> Response:
    """POST /login with a form field `token` (the admin token or a person's)."""
    console: Console = request.app.state.console
    try:
        form = await _form(request)
    except ApiError as exc:
        return PlainTextResponse(str(exc), status_code=exc.status)
    token, secret = form.get("token"), console.current_secret()
    credential = credential_of_token(secret, token.strip()) if token is not None and secret is not None else None
    if credential is None:
        return PlainTextResponse("Wrong token. Run `intercept admin token` for yours.", status_code=401)
    return _session_response(console, credential.person, console.config.address.tls)


async def _logout(request: Request) -> Response:
    console: Console = request.app.state.console
    session_id = request.cookies.get(SESSION_COOKIE, "")
    session = console.sessions.get(session_id)
    try:
        form = await _form(request)
    except ApiError as exc:
        return PlainTextResponse(str(exc), status_code=exc.status)
    if session is None or not _same(str(form.get("csrf", "")), session.csrf):
        return PlainTextResponse("not logged in, or wrong CSRF token", status_code=403)
    console.sessions.close(session_id)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def _event_stream(console: Console, request: Request) -> AsyncIterator[bytes]:
    """New events as server-sent events (`event: <type>`, `data: <json>`), a comment every
    SSE_KEEPALIVE_S so proxies in between keep the connection. The stream ends when its credential
    stops holding (admin.key replaced, the session logged out or expired) and when the server
    stops (uvicorn would otherwise wait for it to end)."""
    follower = EventFollower(events_dir(console.state_dir))
    await run_in_threadpool(follower.start)
    yield b": connected\n\n"
    last_sent = time.monotonic()
    while not console.closing.is_set() and console.credential(request) is not None:
        if await request.is_disconnected():
            return
        found = await run_in_threadpool(follower.poll)
        for event in found:
            kind = "".join(ch for ch in str(event.get("type", "event")) if ch.isalnum() or ch == "_") or "event"
            yield f"event: {kind}\ndata: {safe_json(event)}\n\n".encode()
            last_sent = time.monotonic()
        if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
            yield b": keepalive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(0.1 if found else 0.25)
