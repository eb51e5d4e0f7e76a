"""The approval webhook end to end: the real proxy as a subprocess around a fixture upstream, with
a policy whose rule needs a human and whose webhook points at a real HTTP receiver on 127.0.0.1
(tests/webhook_receiver.py, which checks signatures and replays itself), the signing secret in
the proxy's environment. Also the receiver USAGE.md shows, run as written.

Orders are asserted, not durations: a receiver that never answers is released only after the
proxy has answered the call (and, in another step, exited).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.webhook import signed_headers
from intercept.audit.events import read_events
from tests.e2e.support import (
    READ_TIMEOUT_S,
    SCRIPTED_UPSTREAM,
    Harness,
    ProxyProcess,
    call,
    call_tool,
    fixture_env,
    handshake,
    pending_id,
    proxy_command,
    read_reply,
)
from tests.support import ROOT
from tests.webhook_receiver import post, webhook_receiver

SECRET = "whsec-e2e-Vq3TnL8yR2pX6kZ0"
SECRET_ENV = "INTERCEPT_WEBHOOK_SECRET"
SERVER = "files"
RULE = "writes need a human"
PASSWORD = "correct-horse-battery-staple"
API_KEY = "sk-proj-Zq8xV4nR2mT7wK1pL9sB3dF6"
SECRET_CALL = {"path": "notes/todo.txt", "password": PASSWORD, "content": f"deploy with {API_KEY}"}


def webhook_policy(url: str, timeout: str = "5s", form: str = "generic") -> str:
    return f"""
version: "1"
approvals:
  notify:
    webhook:
      url: "{url}"
      secret_env: {SECRET_ENV}
      timeout: {timeout}
      format: {form}
  console_url: http://127.0.0.1:9111/
tools:
  write_file:
    rules:
      - name: "{RULE}"
        action: require_approval
"""


def start(harness: Harness, *extra: str, secret: str | None = SECRET) -> ProxyProcess:
    """The proxy around the scripted upstream, `--name files`, with the secret in its environment
    (or none), the handshake done."""
    env = fixture_env(exec_log=harness.exec_log, **{SECRET_ENV: secret or ""})  # empty counts as not set
    command = proxy_command(harness.policy, harness.state_dir, SCRIPTED_UPSTREAM, "--name", SERVER, *extra)
    proxy = ProxyProcess(command, env=env)
    harness.proxies.append(proxy)
    handshake(proxy)
    return proxy


def webhook_events(state_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(state_dir) if e["type"].startswith("webhook_")]


def assert_secret_nowhere(harness: Harness, proxy: ProxyProcess) -> None:
    """The signing secret is in no file of the state dir (events, database) and not on stderr."""
    assert SECRET not in proxy.stderr
    for path in harness.state_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_new_request_is_posted_once_signed_and_a_replay_is_refused(harness: Harness) -> None:
    with webhook_receiver(SECRET.encode()) as receiver:
        harness.write_policy(webhook_policy(receiver.url))
        proxy = start(harness)
        reply = call_tool(proxy, 1, "write_file", SECRET_CALL)
        approval_id = pending_id(reply)
        delivery = receiver.next()
        assert pending_id(call_tool(proxy, 2, "write_file", SECRET_CALL)) == approval_id  # reused: not posted again

        assert delivery.verdict == "ok"
        assert delivery.path == "/hook"
        assert delivery.headers["Content-Type"] == "application/json"
        body = delivery.json()
        assert {k: body[k] for k in ("type", "approval_id", "tool", "server", "rule", "status")} == {
            "type": "approval_requested",
            "approval_id": approval_id,
            "tool": "write_file",
            "server": SERVER,
            "rule": RULE,
            "status": "pending",
        }
        assert body["expires_at"] == reply["error"]["data"]["expires_at"]
        assert body["console_url"] == f"http://127.0.0.1:9111/approvals/{approval_id}"
        assert body["approve_command"] in reply["error"]["message"]  # the -32003's own command, --state-dir and all
        assert body["deny_command"].startswith(f"intercept approvals deny {approval_id} --state-dir ")
        assert "notes/todo.txt" in body["arguments_preview"]
        assert PASSWORD not in delivery.body.decode() and API_KEY not in delivery.body.decode()

        # What the receiver check documented in USAGE.md does with a replay and a forgery:
        assert post(receiver.url, delivery.body, delivery.headers) == 409
        assert post(receiver.url, delivery.body.replace(b"write_file", b"drop_table"), delivery.headers) == 401

        assert proxy.finish() == 0
        assert receiver.deliveries.qsize() == 2  # only the test's own two POSTs came after the proxy's one
    sent = webhook_events(harness.state_dir)
    assert [(e["type"], e["approval_id"], e["status"], e["attempts"]) for e in sent] == [
        ("webhook_sent", approval_id, 200, 1)
    ]
    assert_secret_nowhere(harness, proxy)


def test_a_failing_receiver_gets_three_attempts_then_webhook_failed(harness: Harness) -> None:
    with webhook_receiver(SECRET.encode(), statuses=(500,)) as receiver:
        harness.write_policy(webhook_policy(receiver.url + "?token=urlquerytoken"))
        proxy = start(harness)
        approval_id = pending_id(call_tool(proxy, 1, "write_file", {"path": "a.txt"}))
        attempts = [receiver.next() for _ in range(3)]
        proxy.wait_for_stderr("after 3 attempts")
        assert proxy.finish() == 0
    assert [a.verdict for a in attempts] == ["ok", "ok", "ok"]  # each retry signed anew: no replay
    assert len({a.headers["X-Intercept-Timestamp"] for a in attempts}) == 3
    assert {a.json()["approval_id"] for a in attempts} == {approval_id}
    [failed] = webhook_events(harness.state_dir)
    assert {k: failed[k] for k in ("type", "approval_id", "tool", "server", "status", "attempts")} == {
        "type": "webhook_failed",
        "approval_id": approval_id,
        "tool": "write_file",
        "server": SERVER,
        "status": 500,
        "attempts": 3,
    }
    warnings = [line for line in proxy.stderr.splitlines() if "approvals.notify.webhook" in line]
    assert len(warnings) == 3 and all("http://127.0.0.1:" in line for line in warnings)
    assert "urlquerytoken" not in proxy.stderr and "/hook" not in proxy.stderr
    assert_secret_nowhere(harness, proxy)


def test_a_hanging_receiver_delays_neither_the_call_nor_the_exit(harness: Harness) -> None:
    release = threading.Event()
    with webhook_receiver(SECRET.encode(), hold=release) as receiver:
        harness.write_policy(webhook_policy(receiver.url, timeout="5m"))
        proxy = start(harness)
        proxy.send(call(1, "write_file", {"path": "a.txt"}))
        approval_id = pending_id(read_reply(proxy, 1))  # answered while the receiver holds its answer
        assert not release.is_set()
        assert receiver.next().json()["approval_id"] == approval_id  # and the receiver did get it

        proxy.close_stdin()
        status = proxy.wait()  # exits while the receiver still holds its answer
        assert not release.is_set()
        release.set()
    assert status == 0
    assert "1 notification(s) unsent at exit were dropped" in proxy.stderr
    [dropped] = webhook_events(harness.state_dir)
    assert (dropped["type"], dropped["approval_id"], dropped["error"]) == (
        "webhook_failed",
        approval_id,
        "dropped at exit",
    )
    types = [e["type"] for e in read_events(harness.state_dir)]
    assert types.index("webhook_failed") < types.index("shutdown")


def test_the_secret_is_never_logged_or_recorded(harness: Harness) -> None:
    """At debug level, with a delivery that succeeds and one the receiver refuses."""
    with webhook_receiver(SECRET.encode(), statuses=(200, 401)) as receiver:
        harness.write_policy(webhook_policy(receiver.url, form="slack"))
        proxy = start(harness, "--log-level", "debug")
        pending_id(call_tool(proxy, 1, "write_file", {"path": "a.txt"}))
        pending_id(call_tool(proxy, 2, "write_file", {"path": "b.txt"}))
        for _ in range(2):
            receiver.next()
        proxy.wait_for_stderr("sent to")
        proxy.wait_for_stderr("failed (status 401)")
        assert proxy.finish() == 0
    assert_secret_nowhere(harness, proxy)
    assert SECRET not in json.dumps(read_events(harness.state_dir))


def test_a_missing_secret_variable_sends_nothing_and_says_so(harness: Harness) -> None:
    with webhook_receiver(SECRET.encode()) as receiver:
        harness.write_policy(webhook_policy(receiver.url))
        proxy = start(harness, secret=None)
        first = pending_id(call_tool(proxy, 1, "write_file", {"path": "a.txt"}))
        second = pending_id(call_tool(proxy, 2, "write_file", {"path": "b.txt"}))
        assert proxy.finish() == 0
        assert receiver.deliveries.empty()
    message = f"environment variable {SECRET_ENV} is not set; webhook notifications are off"
    assert proxy.stderr.count(message) == 1
    assert [(e["type"], e["approval_id"], e["attempts"]) for e in webhook_events(harness.state_dir)] == [
        ("webhook_failed", first, 0),
        ("webhook_failed", second, 0),
    ]


# -- the receiver USAGE.md shows ---------------------------------------------------------------


def documented_receiver() -> str:
    """The Python example of USAGE.md's Webhook section, as written there."""
    usage = (ROOT / "USAGE.md").read_text()
    section = usage[usage.index("### Webhook") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


@pytest.fixture
def usage_receiver(tmp_path: Path) -> Iterator[str]:
    """USAGE.md's receiver running on a free port; its URL."""
    script = tmp_path / "receiver.py"
    script.write_text(documented_receiver())
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={SECRET_ENV: SECRET, "PORT": "0"},
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # written once it listens
        port = re.fullmatch(r"listening on (\d+)\n", first)
        assert port, first
        yield f"http://127.0.0.1:{port.group(1)}/"
    finally:
        process.kill()
        process.wait(READ_TIMEOUT_S)


def test_the_documented_receiver_accepts_the_proxy_and_refuses_replays_and_forgeries(
    harness: Harness, usage_receiver: str
) -> None:
    harness.write_policy(webhook_policy(usage_receiver))
    proxy = start(harness)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", {"path": "a.txt"}))
    proxy.wait_for_stderr("sent to")
    assert proxy.finish() == 0
    [sent] = webhook_events(harness.state_dir)
    assert (sent["type"], sent["approval_id"], sent["status"]) == ("webhook_sent", approval_id, 204)

    body = b'{"type":"approval_requested","approval_id":"apr_1"}'
    now = time.time()
    headers = dict(signed_headers(SECRET.encode(), body, now))
    assert post(usage_receiver, body, headers) == 204
    assert post(usage_receiver, body, headers) == 409  # the same delivery again
    assert post(usage_receiver, body + b" ", headers) == 401  # another body
    assert post(usage_receiver, body, dict(signed_headers(b"not the secret", body, now))) == 401
    # Outside the 300 s window by 30 s, from the time of each request (a loaded machine took over
    # a second for the posts above, and `now + 301` then fell inside the window).
    assert post(usage_receiver, body, dict(signed_headers(SECRET.encode(), body, time.time() - 330))) == 401  # too old
    assert post(usage_receiver, body, dict(signed_headers(SECRET.encode(), body, time.time() + 330))) == 401  # too new
