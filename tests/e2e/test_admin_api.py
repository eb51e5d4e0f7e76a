"""The admin API through a real uvicorn server on loopback: `intercept serve --addr 127.0.0.1:0`
(one process per module, its stderr parsed for the URLs), and the proxy's own `--enable-admin-api`.

Records are inserted with the real `ApprovalStore` into the real SQLite file, or made by the real
proxy around fixtures/servers/tool_server.py with fixtures/policies/demo.yaml (write_file needs a
human). "Nothing changed" is read from the database and the event files, never from the API's
own answers. Intercept's routes (`/api/pending/{id}`, `/api/approve/{id}`, `/api/deny/{id}`) and
ours (`/api/approvals/{id}[/approve|/deny]`) run the same table of cases.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
import pytest

from intercept.approvals.redact import redact
from intercept.audit.events import read_events
from intercept.console.app import MAX_BODY_BYTES, MAX_REASON_CHARS, ConsoleConfig, build_app
from intercept.console.auth import SESSION_COOKIE, BoundAddress
from intercept.store.approvals import ApprovalRecord, ApprovalStore
from intercept.store.database import connect
from tests.e2e.support import (
    FIXTURES,
    READ_TIMEOUT_S,
    TOOL_UPSTREAM,
    Harness,
    ProxyProcess,
    base_env,
    call_tool,
    exec_records,
    ok,
    one_line_error,
    pending_id,
    run_cli,
    text_of,
)
from tests.store_support import approval_record, insert_record

DEMO_POLICY = FIXTURES / "policies" / "demo.yaml"
SECRET = "hunter2-correct-horse"  # in the exact arguments only: `password=` makes redaction take it
ARGUMENTS = {"path": "/srv/report.txt", "content": f"password={SECRET} and the rest"}
CONSOLE_LINE = re.compile(r"console on (http://127\.0\.0\.1:(\d+))/ ")
LOGIN_LINE = re.compile(r"(http://\S+/login\?code=\S+)")
ADMIN_LINE = re.compile(r"admin API on (http://127\.0\.0\.1:\d+)")
HTTP_TIMEOUT_S = 10.0


# -- the server, tokens and records ----------------------------------------------------------------


@dataclass
class Served:
    """An `intercept serve` process, its URLs and its state dir's admin token."""

    process: ProxyProcess
    state_dir: Path
    base_url: str
    port: int
    login_url: str
    token: str

    def client(self) -> httpx.Client:
        return api_client(self.base_url)


def api_client(base_url: str) -> httpx.Client:
    """A client that keeps no cookies: each test sends the session cookie it means to."""
    jar = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_S, follow_redirects=False, cookies=jar)


def admin_token(state_dir: Path, *person: str) -> str:
    return ok(run_cli("admin", "token", "--state-dir", str(state_dir), *(("--as", *person) if person else ()))).strip()


def start_serve(state_dir: Path, user: int | None = None) -> Served:
    """`intercept serve` on a free loopback port; returns once it printed its URLs. With `user`, as
    that uid, without a passwd entry or USER/LOGNAME (as a container's user often is)."""
    command = [sys.executable, "-m", "intercept", "serve", "--state-dir", str(state_dir), "--addr", "127.0.0.1:0"]
    if user is not None:
        unset = [word for name in ("USER", "LOGNAME", "LNAME", "USERNAME") for word in ("-u", name)]
        command = ["env", *unset, "setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    process = ProxyProcess(command, env=base_env())
    process.wait_for_stderr("login?code=")
    console = CONSOLE_LINE.search(process.stderr)
    login = LOGIN_LINE.search(process.stderr)
    assert console and login, process.stderr
    return Served(process, state_dir, console.group(1), int(console.group(2)), login.group(1), admin_token(state_dir))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    found = start_serve(tmp_path_factory.mktemp("admin-api") / "state")
    yield found
    found.process.stop()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with served.client() as found:
        yield found


@pytest.fixture(scope="module")
def foreign_token(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The admin token of another state dir."""
    return admin_token(tmp_path_factory.mktemp("elsewhere") / "state")


def insert_pending(state_dir: Path, *, created_s: float | None = None, timeout_s: float = 3600.0) -> str:
    """A pending write_file request with ARGUMENTS, inserted with the real store; its id."""
    approval_id = f"apr_{secrets.token_hex(16)}"
    record = approval_record(
        approval_id,
        fingerprint=secrets.token_hex(32),
        created_s=time.time() if created_s is None else created_s,
        timeout_s=timeout_s,
        args_exact=json.dumps(ARGUMENTS),
    )
    record = replace(record, args_redacted=json.dumps(redact(ARGUMENTS)))
    insert_record(state_dir, record)
    return approval_id


def stored(state_dir: Path, approval_id: str) -> ApprovalRecord:
    """The record as the database has it."""
    connection = connect(state_dir)
    try:
        record = ApprovalStore(connection).get(approval_id)
    finally:
        connection.close()
    assert record is not None
    return record


def decided_events(state_dir: Path, approval_id: str) -> list[dict[str, Any]]:
    return [
        e for e in read_events(state_dir) if e.get("type") == "approval_decided" and e.get("approval_id") == approval_id
    ]


def unchanged(state_dir: Path, approval_id: str) -> None:
    """Still pending, undecided, no decision recorded."""
    record = stored(state_dir, approval_id)
    assert (record.status, record.decided_by, record.args_exact) == ("pending", None, json.dumps(ARGUMENTS))
    assert decided_events(state_dir, approval_id) == []


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Routes:
    """One family of routes: Intercept's or ours."""

    name: str
    one: str
    approve: str
    deny: str

    def decide(self, approve: bool, approval_id: str) -> str:
        return (self.approve if approve else self.deny).format(id=approval_id)


INTERCEPT = Routes("intercept", "/api/pending/{id}", "/api/approve/{id}", "/api/deny/{id}")
OURS = Routes("ours", "/api/approvals/{id}", "/api/approvals/{id}/approve", "/api/approvals/{id}/deny")
BOTH_ROUTES = pytest.mark.parametrize("routes", [INTERCEPT, OURS], ids=lambda r: r.name)


def log_in(client: httpx.Client, token: str) -> tuple[str, str]:
    """A console session opened by posting `token` to the login form: (cookie value, CSRF token)."""
    answer = client.post("/login", data={"token": token})
    assert answer.status_code == 303, answer.text
    session_id = answer.cookies.get(SESSION_COOKIE)
    assert session_id
    csrf = client.get("/api/session", headers={"Cookie": f"{SESSION_COOKIE}={session_id}"}).json()["csrf"]
    assert csrf
    return session_id, csrf


def cookie(session_id: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={session_id}"}


def raw_http(port: int, request: bytes, timeout_s: float = HTTP_TIMEOUT_S) -> bytes:
    """Send `request` as is on a new connection; the head of the answer (a timeout fails the test:
    the server kept waiting)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
        connection.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# -- starting --------------------------------------------------------------------------------------


def test_serve_prints_the_console_url_and_a_one_time_login_url(served: Served) -> None:
    lines = served.process.stderr.splitlines()
    assert any("http://" in line and "login" in line for line in lines), lines
    assert served.base_url.startswith("http://127.0.0.1:") and served.port > 0
    assert served.token not in served.process.stderr  # the token itself is never printed


def test_admin_token_is_a_private_file_and_a_bad_name_is_one_line(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    token = admin_token(state_dir)
    assert token == admin_token(state_dir)  # made once, then read
    assert (state_dir / "admin.key").stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"itp_alice\.[0-9a-f]{64}", admin_token(state_dir, "alice"))
    line = one_line_error(run_cli("admin", "token", "--state-dir", str(state_dir), "--as", "bad name"))
    assert "bad name" in line and "letters, digits" in line


# -- who may ask -----------------------------------------------------------------------------------

BAD_CREDENTIALS = {
    "no header": lambda served, foreign: {},
    "wrong token": lambda served, foreign: bearer("itk_" + "A" * 43),
    "forged person token": lambda served, foreign: bearer("itp_alice." + "0" * 64),
    "another state dir's token": lambda served, foreign: bearer(foreign),
    "basic scheme": lambda served, foreign: {"Authorization": f"Basic {served.token}"},
    "bare scheme": lambda served, foreign: {"Authorization": "Bearer"},
    "token and junk": lambda served, foreign: bearer(served.token + "x"),
    "non-ascii token": lambda served, foreign: {"Authorization": b"Bearer itk_\xe9"},
    "non-ascii person mac": lambda served, foreign: {"Authorization": b"Bearer itp_alice.\xe9"},
}


@BOTH_ROUTES
@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS), ids=list(BAD_CREDENTIALS))
def test_without_a_valid_credential_the_answer_is_401_and_nothing_changes(
    served: Served, client: httpx.Client, foreign_token: str, routes: Routes, credentials: str
) -> None:
    headers = BAD_CREDENTIALS[credentials](served, foreign_token)
    approval_id = insert_pending(served.state_dir)
    for method, path in [
        ("POST", routes.decide(True, approval_id)),
        ("POST", routes.decide(False, approval_id)),
        ("GET", routes.one.format(id=approval_id)),
        ("GET", "/api/pending"),
        ("GET", "/api/events"),
    ]:
        answer = client.request(method, path, headers=headers, json={"actor": "mallory"} if method == "POST" else None)
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert SECRET not in answer.text
    unchanged(served.state_dir, approval_id)


def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored(
    served: Served, client: httpx.Client
) -> None:
    answer = client.get("/api/pending", headers={"Authorization": f"bearer   {served.token}"})
    assert answer.status_code == 200, answer.text


@BOTH_ROUTES
def test_a_cookie_session_needs_the_csrf_token_to_change_anything(
    served: Served, client: httpx.Client, routes: Routes
) -> None:
    session_id, csrf = log_in(client, served.token)
    approval_id = insert_pending(served.state_dir)
    path = routes.decide(True, approval_id)
    for extra in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": csrf + "x"}):
        answer = client.post(path, headers={**cookie(session_id), **extra})
        assert answer.status_code == 403, (extra, answer.text)
    answer = client.post(path, headers={**cookie("not-a-session"), "X-CSRF-Token": csrf})
    assert answer.status_code == 401
    unchanged(served.state_dir, approval_id)
    assert (
        client.get(routes.one.format(id=approval_id), headers=cookie(session_id)).status_code == 200
    )  # reading needs none
    answer = client.post(path, headers={**cookie(session_id), "X-CSRF-Token": csrf}, json={"actor": "carol"})
    assert answer.status_code == 200, answer.text
    assert (stored(served.state_dir, approval_id).status, stored(served.state_dir, approval_id).decided_by) == (
        "approved",
        "carol",
    )
    [event] = decided_events(served.state_dir, approval_id)
    assert (event["channel"], event["actor"]) == ("console", "carol")


def test_the_login_link_works_once(tmp_path: Path) -> None:
    served = start_serve(tmp_path / "state")  # its own: a serve prints one login link
    try:
        with served.client() as client:
            first = client.get(served.login_url)
            assert first.status_code == 303 and first.headers["location"] == "/"
            set_cookie = first.headers["set-cookie"].lower()
            assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/" in set_cookie
            session_id = first.cookies[SESSION_COOKIE]
            session = client.get("/api/session", headers=cookie(session_id)).json()
            assert session["csrf"] and session["bound_to_person"] is False
            second = client.get(served.login_url)
            assert second.status_code == 401 and "set-cookie" not in second.headers
            assert client.get(served.login_url.replace("code=", "code=x")).status_code == 401
    finally:
        served.process.stop()


def test_the_login_form_takes_a_token_and_logout_needs_the_csrf_token(served: Served, client: httpx.Client) -> None:
    wrong = client.post("/login", data={"token": "itk_wrong"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    session_id, csrf = log_in(client, served.token)
    assert client.post("/logout", headers=cookie(session_id), data={"csrf": "wrong"}).status_code == 403
    assert client.get("/api/pending", headers=cookie(session_id)).status_code == 200
    out = client.post("/logout", headers=cookie(session_id), data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/api/pending", headers=cookie(session_id)).status_code == 401


CROSS_SITE = {
    "rebinding host": lambda port: {"Host": f"evil.example:{port}"},
    "host without port": lambda port: {"Host": "127.0.0.1"},
    "host on another port": lambda port: {"Host": f"127.0.0.1:{port + 1}"},
    "evil origin": lambda port: {"Origin": "http://evil.example"},
    "null origin": lambda port: {"Origin": "null"},
    "origin on another port": lambda port: {"Origin": f"http://localhost:{port + 1}"},
    "origin with https": lambda port: {"Origin": f"https://127.0.0.1:{port}"},
    "cross-site fetch": lambda port: {"Sec-Fetch-Site": "cross-site"},
}


@BOTH_ROUTES
@pytest.mark.parametrize("attack", list(CROSS_SITE), ids=list(CROSS_SITE))
def test_cross_site_and_rebound_requests_are_refused_even_with_a_valid_token(
    served: Served, client: httpx.Client, routes: Routes, attack: str
) -> None:
    headers = CROSS_SITE[attack](served.port)
    approval_id = insert_pending(served.state_dir)
    answer = client.post(routes.decide(True, approval_id), headers={**bearer(served.token), **headers})
    assert answer.status_code == 403, answer.text
    assert client.get(routes.one.format(id=approval_id), headers={**bearer(served.token), **headers}).status_code == 403
    assert client.post("/login", headers=headers, data={"token": served.token}).status_code == 403
    unchanged(served.state_dir, approval_id)


def test_the_loopback_names_of_the_bound_port_are_accepted(served: Served, client: httpx.Client) -> None:
    for host in (f"localhost:{served.port}", f"LOCALHOST:{served.port}", f"[::1]:{served.port}"):
        origin = f"http://{host.lower()}"
        answer = client.get("/api/pending", headers={**bearer(served.token), "Host": host, "Origin": origin})
        assert answer.status_code == 200, (host, answer.text)
    same_site = client.get("/api/pending", headers={**bearer(served.token), "Sec-Fetch-Site": "same-origin"})
    assert same_site.status_code == 200


def test_a_request_without_a_host_header_is_refused(served: Served) -> None:
    request = f"GET /api/pending HTTP/1.0\r\nAuthorization: Bearer {served.token}\r\n\r\n".encode()
    assert status_of(raw_http(served.port, request)) == 403


# -- what the routes answer ------------------------------------------------------------------------


@BOTH_ROUTES
def test_an_unknown_id_is_404(served: Served, client: httpx.Client, routes: Routes) -> None:
    unknown = f"apr_{secrets.token_hex(16)}"
    for method, path in [
        ("GET", routes.one.format(id=unknown)),
        ("POST", routes.decide(True, unknown)),
        ("POST", routes.decide(False, unknown)),
    ]:
        answer = client.request(method, path, headers=bearer(served.token))
        assert answer.status_code == 404, (path, answer.text)
        assert unknown in answer.json()["error"]
    assert decided_events(served.state_dir, unknown) == []


@BOTH_ROUTES
def test_a_conflicting_decision_is_409_with_the_current_state_and_no_exact_arguments(
    served: Served, client: httpx.Client, routes: Routes
) -> None:
    approval_id = insert_pending(served.state_dir)
    first = client.post(routes.decide(True, approval_id), headers=bearer(served.token), json={"actor": "alice"})
    assert first.status_code == 200, first.text
    conflict = client.post(routes.decide(False, approval_id), headers=bearer(served.token), json={"reason": "no"})
    assert conflict.status_code == 409, conflict.text
    approval = conflict.json()["approval"]
    assert (approval["id"], approval["status"], approval["decided_by"]) == (approval_id, "approved", "alice")
    assert approval["arguments_exact"] is False and SECRET not in conflict.text
    record = stored(served.state_dir, approval_id)
    assert (record.status, record.decided_by, record.reason) == ("approved", "alice", None)
    assert len(decided_events(served.state_dir, approval_id)) == 1


@BOTH_ROUTES
@pytest.mark.parametrize("approve", [True, False], ids=["approve", "deny"])
def test_an_expired_request_is_409_with_its_state(
    served: Served, client: httpx.Client, routes: Routes, approve: bool
) -> None:
    approval_id = insert_pending(served.state_dir, created_s=time.time() - 120, timeout_s=60)
    answer = client.post(routes.decide(approve, approval_id), headers=bearer(served.token))
    assert answer.status_code == 409, answer.text
    assert answer.json()["approval"]["status"] == "expired"
    assert stored(served.state_dir, approval_id).status == "expired"
    assert decided_events(served.state_dir, approval_id) == []


MALFORMED = {
    "not json": b"approve it",
    "a list": b'["actor", "alice"]',
    "a string": b'"alice"',
    "actor a number": b'{"actor": 7}',
    "actor empty": b'{"actor": "  "}',
    "actor with an escape": b'{"actor": "ali\\u001b[2Jce"}',
    "actor with a bidi override": b'{"actor": "ali\\u202ece"}',
    "actor too long": json.dumps({"actor": "a" * 129}).encode(),
    "reason a list": b'{"reason": ["x"]}',
    "huge reason": json.dumps({"reason": "r" * (MAX_REASON_CHARS + 1)}).encode(),
    "nested too deep": b"[" * 30000 + b"]" * 30000,
}


@BOTH_ROUTES
@pytest.mark.parametrize("body", list(MALFORMED), ids=list(MALFORMED))
def test_a_malformed_body_is_422_and_changes_nothing(
    served: Served, client: httpx.Client, routes: Routes, body: str
) -> None:
    approval_id = insert_pending(served.state_dir)
    answer = client.post(
        routes.decide(True, approval_id),
        headers={**bearer(served.token), "Content-Type": "application/json"},
        content=MALFORMED[body],
    )
    assert answer.status_code == 422, answer.text
    unchanged(served.state_dir, approval_id)


def test_a_body_over_the_limit_is_refused_while_it_streams_in(served: Served, client: httpx.Client) -> None:
    approval_id = insert_pending(served.state_dir)
    big = json.dumps({"reason": "r" * MAX_BODY_BYTES}).encode()

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to judge it by
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    for content in (big, chunks()):
        answer = client.post(INTERCEPT.decide(True, approval_id), headers=bearer(served.token), content=content)
        assert answer.status_code == 413, answer.text
    unchanged(served.state_dir, approval_id)


@pytest.mark.parametrize("path", ["/api/approvals/{id}/approve", "/login"])
def test_a_declared_body_over_the_limit_is_refused_before_it_arrives(served: Served, path: str) -> None:
    """A client that announces a huge body and sends nothing (slowloris, or a memory bomb) gets
    413 at once; the server neither waits for the body nor keeps it."""
    approval_id = insert_pending(served.state_dir)
    request = (
        f"POST {path.format(id=approval_id)} HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
        f"Authorization: Bearer {served.token}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {1 << 40}\r\nConnection: close\r\n\r\n"
    ).encode()
    assert status_of(raw_http(served.port, request)) == 413
    unchanged(served.state_dir, approval_id)


@pytest.mark.parametrize("path", ["/api/approvals/{id}/approve", "/login"])
def test_a_client_gone_before_its_body_arrived_leaves_no_traceback(
    served: Served, client: httpx.Client, path: str
) -> None:
    approval_id = insert_pending(served.state_dir)
    with socket.create_connection(("127.0.0.1", served.port), timeout=HTTP_TIMEOUT_S) as connection:
        connection.sendall(
            (
                f"POST {path.format(id=approval_id)} HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
                f"Authorization: Bearer {served.token}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                "Content-Length: 100\r\n\r\ntoken=itk_"
            ).encode()
        )
    assert client.get("/api/pending", headers=bearer(served.token)).status_code == 200
    with pytest.raises(TimeoutError):  # proving an absence takes a bounded wait
        served.process.wait_for_stderr("Traceback", timeout_s=1.0)
    unchanged(served.state_dir, approval_id)


@BOTH_ROUTES
@pytest.mark.parametrize("approve", [True, False], ids=["approve", "deny"])
def test_the_same_decision_twice_is_200_both_times_and_one_event(
    served: Served, client: httpx.Client, routes: Routes, approve: bool
) -> None:
    approval_id = insert_pending(served.state_dir)
    path = routes.decide(approve, approval_id)
    first = client.post(path, headers=bearer(served.token), json={"actor": "alice", "reason": "ok"})
    again = client.post(path, headers=bearer(served.token), json={"actor": "bob"})
    assert (first.status_code, again.status_code) == (200, 200), (first.text, again.text)
    assert (first.json()["changed"], again.json()["changed"]) == (True, False)
    status = "approved" if approve else "denied"
    for answer in (first, again):
        assert (answer.json()["status"], answer.json()["decided_by"]) == (status, "alice")
    record = stored(served.state_dir, approval_id)
    assert (record.status, record.decided_by, record.reason) == (status, "alice", "ok")
    events = client.get("/api/events", params={"type": "approval_decided"}, headers=bearer(served.token)).json()
    mine = [e for e in events["events"] if e["approval_id"] == approval_id]
    assert len(mine) == 1 and decided_events(served.state_dir, approval_id) == mine
    assert (mine[0]["decision"], mine[0]["actor"], mine[0]["channel"]) == (status, "alice", "api")
    assert all(e["type"] == "approval_decided" for e in events["events"])


@BOTH_ROUTES
def test_a_person_token_names_the_actor_whatever_the_body_says(
    served: Served, client: httpx.Client, routes: Routes
) -> None:
    alice = admin_token(served.state_dir, "alice")
    assert client.get("/api/session", headers=bearer(alice)).json() == {
        "actor": "alice",
        "bound_to_person": True,
        "csrf": None,
    }
    approval_id = insert_pending(served.state_dir)
    answer = client.post(
        routes.decide(False, approval_id), headers=bearer(alice), json={"actor": "mallory", "reason": "no"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["decided_by"] == "alice"
    assert stored(served.state_dir, approval_id).decided_by == "alice"
    [event] = decided_events(served.state_dir, approval_id)
    assert (event["actor"], event["decision"], event["reason"]) == ("alice", "denied", "no")
    # Logged in with it, the console session is alice's too.
    session_id, csrf = log_in(client, alice)
    second = insert_pending(served.state_dir)
    answer = client.post(
        routes.decide(True, second), headers={**cookie(session_id), "X-CSRF-Token": csrf}, json={"actor": "mallory"}
    )
    assert answer.status_code == 200 and stored(served.state_dir, second).decided_by == "alice"


def test_lists_carry_redacted_arguments_and_one_record_the_exact_ones(served: Served, client: httpx.Client) -> None:
    approval_id = insert_pending(served.state_dir)
    for path, params in [("/api/pending", {}), ("/api/approvals", {}), ("/api/approvals", {"status": "pending"})]:
        answer = client.get(path, params=params, headers=bearer(served.token))
        assert answer.status_code == 200
        found = answer.json() if path == "/api/pending" else answer.json()["approvals"]
        [mine] = [r for r in found if r["id"] == approval_id]
        assert mine["arguments_exact"] is False and "args_exact" not in mine
        assert mine["arguments"] == redact(ARGUMENTS)
        assert SECRET not in answer.text
    for routes in (INTERCEPT, OURS):
        one = client.get(routes.one.format(id=approval_id), headers=bearer(served.token)).json()
        assert one["arguments"] == ARGUMENTS and one["arguments_exact"] is True
        assert one["arguments_redacted"] == redact(ARGUMENTS)
        assert [h["event"] for h in one["history"]] == ["requested"]


def test_approvals_filter_by_status_tool_and_server(served: Served, client: httpx.Client) -> None:
    approval_id = insert_pending(served.state_dir)

    def ids(**params: str) -> set[str]:
        answer = client.get("/api/approvals", params=params, headers=bearer(served.token))
        assert answer.status_code == 200, answer.text
        return {r["id"] for r in answer.json()["approvals"]}

    assert approval_id in ids(status="pending", tool="write_file", server="files")
    assert approval_id in ids(status="approved,pending")
    assert approval_id not in ids(status="denied") | ids(tool="echo") | ids(server="other")
    answer = client.get("/api/approvals", params={"status": "bogus"}, headers=bearer(served.token))
    assert answer.status_code == 422


def test_json_answers_are_typed_and_carry_the_security_headers(served: Served, client: httpx.Client) -> None:
    for headers in (bearer(served.token), {}):
        answer = client.get("/api/pending", headers=headers)
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["cache-control"] == "no-store"
        assert "server" not in answer.headers


def test_the_pages_are_served_and_static_names_cannot_leave_the_folder(served: Served, client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/static/index.html").status_code == 200
    assert client.get("/login").status_code == 200
    for name in ("..%2Fapp.py", "..%2F..%2Fpyproject.toml", "%2Fetc%2Fpasswd", ".hidden.html", "app.py", "nothing.js"):
        assert client.get(f"/static/{name}").status_code == 404, name


def test_the_openapi_schema_lists_every_api_route(served: Served, client: httpx.Client, tmp_path: Path) -> None:
    schema = client.get("/api/openapi.json", headers=bearer(served.token)).json()
    documented = {(path, method.upper()) for path, item in schema["paths"].items() for method in item}
    app = build_app(ConsoleConfig(tmp_path, BoundAddress("127.0.0.1", 1)))
    served_routes = {
        (route.path, method)
        for route in app.routes
        if route.path.startswith("/api/")
        for method in (route.methods or ()) - {"HEAD"}
    }
    assert documented == served_routes


def read_stream_until(stream: Iterator[str], wanted: Any) -> list[str]:
    """Lines of an event stream up to the first `data:` line `wanted` accepts (each read bounded
    by the client's timeout)."""
    lines: list[str] = []
    for text in stream:
        lines.append(text)
        if text.startswith("data: ") and wanted(json.loads(text[len("data: ") :])):
            return lines
    raise AssertionError(f"the stream ended first: {lines}")


def test_the_event_stream_delivers_a_new_decision(served: Served) -> None:
    approval_id = insert_pending(served.state_dir)
    with served.client() as client, client.stream("GET", "/api/events/stream", headers=bearer(served.token)) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        stream_lines = stream.iter_lines()
        assert next(stream_lines) == ": connected"
        with served.client() as other:
            answer = other.post(OURS.decide(True, approval_id), headers=bearer(served.token), json={"actor": "sse"})
            assert answer.status_code == 200
        lines = read_stream_until(stream_lines, lambda event: event.get("approval_id") == approval_id)
    assert lines[-2] == "event: approval_decided"
    event = json.loads(lines[-1][len("data: ") :])
    assert (event["type"], event["actor"], event["channel"]) == ("approval_decided", "sse", "api")
    assert SECRET not in "\n".join(lines)


def test_events_since_a_time(served: Served, client: httpx.Client) -> None:
    approval_id = insert_pending(served.state_dir)
    client.post(OURS.decide(False, approval_id), headers=bearer(served.token))
    [event] = decided_events(served.state_dir, approval_id)
    later = client.get("/api/events", params={"since": event["ts"]}, headers=bearer(served.token)).json()["events"]
    assert all(e["ts"] > event["ts"] for e in later)
    earlier = client.get("/api/events", params={"since": "2000-01-01T00:00:00Z"}, headers=bearer(served.token)).json()
    assert event in earlier["events"]
    assert client.get("/api/events", params={"limit": "0"}, headers=bearer(served.token)).status_code == 422


def test_deleting_the_admin_key_revokes_tokens_sessions_and_open_streams(tmp_path: Path) -> None:
    served = start_serve(tmp_path / "state")
    try:
        with served.client() as client:
            alice = admin_token(served.state_dir, "alice")
            session_id, _ = log_in(client, served.token)
            with client.stream("GET", "/api/events/stream", headers=bearer(served.token)) as stream:
                stream_lines = stream.iter_lines()
                assert next(stream_lines) == ": connected"
                (served.state_dir / "admin.key").unlink()
                for headers in (bearer(served.token), bearer(alice), cookie(session_id)):
                    assert client.get("/api/pending", headers=headers).status_code == 401
                rest = list(stream_lines)  # the open stream ends
                assert not [text for text in rest if text.startswith("data:")], rest
            fresh = admin_token(served.state_dir)  # a new key, made by the CLI
            assert fresh != served.token
            assert client.get("/api/pending", headers=bearer(fresh)).status_code == 200
            assert client.get("/api/pending", headers=bearer(served.token)).status_code == 401
            assert client.get("/api/pending", headers=cookie(session_id)).status_code == 401
    finally:
        served.process.stop()


NO_PASSWD_UID = 54321


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run serve as a uid without a passwd entry")
def test_serve_runs_for_a_user_without_a_login_name() -> None:
    """A container's uid often has no passwd entry and no USER: the default actor must not need one."""
    root = Path(tempfile.mkdtemp(prefix="intercept-uid-"))  # pytest's tmp dirs are private to root
    try:
        state_dir = root / "state"
        state_dir.mkdir(mode=0o700)
        for path in (root, state_dir):
            os.chown(path, NO_PASSWD_UID, NO_PASSWD_UID)
        served = start_serve(state_dir, user=NO_PASSWD_UID)
        try:
            approval_id = insert_pending(state_dir)
            for path in state_dir.iterdir():  # made by this test's root: given to the server's user
                os.chown(path, NO_PASSWD_UID, NO_PASSWD_UID)
            with served.client() as client:
                answer = client.post(OURS.decide(True, approval_id), headers=bearer(served.token))
                assert answer.status_code == 200, answer.text
                assert answer.json()["decided_by"] == f"uid {NO_PASSWD_UID}"
        finally:
            served.process.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- inside the proxy ------------------------------------------------------------------------------


def start_proxy_with_api(harness: Harness, *extra: str) -> tuple[ProxyProcess, str, str]:
    """The proxy around tool_server with demo.yaml and `--enable-admin-api` on a free port, after
    the handshake: (proxy, base URL, admin token)."""
    harness.write_policy(DEMO_POLICY.read_text())
    proxy = harness.start(TOOL_UPSTREAM, "--enable-admin-api", "--admin-addr", "127.0.0.1:0", *extra)
    proxy.wait_for_stderr("admin API on http://")
    found = ADMIN_LINE.search(proxy.stderr)
    assert found, proxy.stderr
    return proxy, found.group(1), admin_token(harness.state_dir)


def test_in_proxy_api_approval_lets_the_retry_run_exactly_once(harness: Harness) -> None:
    proxy, base_url, token = start_proxy_with_api(harness)
    [line] = [line for line in proxy.stderr.splitlines() if "admin API on" in line]
    assert line == f"intercept: admin API on {base_url}"
    arguments = {"path": "/srv/notes.txt", "content": "hello"}
    approval_id = pending_id(call_tool(proxy, 1, "write_file", arguments))
    alice = admin_token(harness.state_dir, "alice")
    with api_client(base_url) as client:
        [listed] = client.get("/api/pending", headers=bearer(token)).json()
        assert (listed["id"], listed["tool"]) == (approval_id, "write_file")
        answer = client.post(f"/api/approve/{approval_id}", headers=bearer(alice), json={"actor": "mallory"})
        assert answer.status_code == 200 and answer.json()["decided_by"] == "alice"
    assert exec_records(harness.exec_log) == []
    ran = call_tool(proxy, 2, "write_file", arguments)
    assert "result" in ran and "wrote 5 bytes" in text_of(ran)
    again = call_tool(proxy, 3, "write_file", arguments)  # used up: a new request
    assert pending_id(again) != approval_id
    assert [r["tool"] for r in exec_records(harness.exec_log)] == ["write_file"]
    assert stored(harness.state_dir, approval_id).status == "consumed"
    [event] = decided_events(harness.state_dir, approval_id)
    assert (event["actor"], event["channel"]) == ("alice", "api")


def test_in_proxy_api_on_a_taken_port_leaves_the_proxy_proxying(harness: Harness) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        harness.write_policy(DEMO_POLICY.read_text())
        proxy = harness.start(TOOL_UPSTREAM, "--enable-admin-api", "--admin-addr", f"127.0.0.1:{port}")
        echoed = call_tool(proxy, 1, "echo", {"text": "still here"})
        assert text_of(echoed) == "still here"
        proxy.wait_for_stderr("admin API is off")
        [line] = [line for line in proxy.stderr.splitlines() if "admin API is off" in line]
        assert f"127.0.0.1:{port}" in line and "cannot listen" in line
        assert "admin API on" not in proxy.stderr
        assert proxy.finish() == 0


@pytest.mark.parametrize(
    "options",
    [
        ["--allow-remote", "--admin-addr", "127.0.0.1:0"],
        ["--admin-addr", "0.0.0.0:0"],
        ["--admin-addr", "[::]:0"],
        ["--admin-addr", "nonsense"],
    ],
    ids=["remote without tls", "any address without allow-remote", "ipv6 any", "bad address"],
)
@pytest.mark.parametrize("dashes", [True, False], ids=["fast path", "click"])
def test_the_proxy_refuses_an_unsafe_admin_address_in_one_line(
    tmp_path: Path, options: list[str], dashes: bool
) -> None:
    exec_log = tmp_path / "exec.log"
    command = [str(DEMO_POLICY), "--state-dir", str(tmp_path / "state"), "--enable-admin-api", *options]
    upstream = [*(["--"] if dashes else []), *TOOL_UPSTREAM]
    result = run_cli("-c", *command, *upstream, env=base_env(FIXTURE_EXEC_LOG=str(exec_log)))
    line = one_line_error(result)
    assert line.startswith("intercept: admin API: ")
    assert not exec_log.exists()


def test_help_lists_the_admin_api_options_in_their_own_group() -> None:
    for args in (["--help"], ["serve", "--help"]):
        text = ok(run_cli(*args))
        group = text[text.index("Admin API:") :]
        for option in ("--allow-remote", "--tls-cert", "--tls-key"):
            assert option in group, (args, text)
    proxy_help = ok(run_cli("--help"))
    assert "--enable-admin-api" in proxy_help[proxy_help.index("Admin API:") :]
    assert "--admin-addr" in proxy_help[proxy_help.index("Admin API:") :]


def test_the_proxy_exits_promptly_with_a_client_on_the_event_stream(harness: Harness) -> None:
    """Ending the proxy ends the event stream cleanly (the response completes) instead of leaving
    the admin thread to be abandoned after the proxy's wait for it."""
    proxy, base_url, token = start_proxy_with_api(harness)
    ended: list[str] = []
    connected = threading.Event()

    def listen() -> None:
        try:
            with api_client(base_url) as client:
                with client.stream("GET", "/api/events/stream", headers=bearer(token)) as stream:
                    lines = stream.iter_lines()
                    assert next(lines) == ": connected"
                    connected.set()
                    for _ in lines:
                        pass
            ended.append("clean end")
        except httpx.HTTPError as exc:
            ended.append(f"{type(exc).__name__}: {exc}")

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(READ_TIMEOUT_S)
    assert proxy.finish() == 0
    listener.join(READ_TIMEOUT_S)
    assert ended == ["clean end"]  # abandoned, the stream would break off mid-response
