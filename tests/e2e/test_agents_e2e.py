"""Who is asking, end to end: real proxies started with `--agent` (the fast command line and the
click one) on one state dir, decisions and displays through the real `intercept approvals` CLI.

What ran upstream is read from the fixture's own execution log, never from the proxy's replies.
"""

from __future__ import annotations

import sys
from typing import Any

from tests.e2e.support import (
    DENIED_PREFIX,
    SCRIPTED_UPSTREAM,
    Harness,
    ProxyProcess,
    approve,
    call_tool,
    denial_text,
    events,
    fixture_env,
    handshake,
    list_all,
    ok,
    pending_id,
    run_cli,
    show,
)

POLICY = """\
version: "1"
agents:
  ci-bot: {roles: [subordinate]}
  alice: {roles: [senior]}
  bob: {roles: [senior]}
tools:
  write_file:
    rules:
      - name: seniors only
        conditions: [{path: agent.roles, op: contains, value: senior}]
        on_deny: "Only a senior agent may ask to write"
      - name: writes need a human
        action: require_approval
"""
WRITE = {"path": "notes.txt", "content": "hi"}


def initialize_as(proxy: ProxyProcess, client_name: str) -> None:
    """The handshake, with the client naming itself `client_name`."""
    proxy.send(
        {
            "jsonrpc": "2.0",
            "id": "init",
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": client_name, "version": "1"},
            },
        }
    )
    assert "result" in proxy.read()
    proxy.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def start_click_path(harness: Harness, *options: str) -> ProxyProcess:
    """The proxy with no `--` before the command: the fast parser leaves it to click."""
    command = [sys.executable, "-m", "intercept", "-c", str(harness.policy), "--state-dir", str(harness.state_dir)]
    proxy = ProxyProcess([*command, *options, *SCRIPTED_UPSTREAM], env=fixture_env(exec_log=harness.exec_log))
    harness.proxies.append(proxy)
    handshake(proxy)
    return proxy


def test_a_subordinate_is_refused_before_asking_and_a_senior_asks(harness: Harness) -> None:
    """ci-bot's call is denied by the evaluate rule ahead of the approval rule: no request is
    made. alice's is held; the record and `approvals show` / `list` name her and her client; an
    approval runs her call once."""
    harness.write_policy(POLICY)
    ci_bot = harness.start(SCRIPTED_UPSTREAM, "--agent", "ci-bot")
    denied = call_tool(ci_bot, 1, "write_file", WRITE)
    assert denial_text(denied) == DENIED_PREFIX + "Only a senior agent may ask to write"
    alice = harness.start(SCRIPTED_UPSTREAM, "--agent", "alice")
    approval_id = pending_id(call_tool(alice, 1, "write_file", WRITE))
    assert [(r["id"], r["agent"], r["client"]) for r in list_all(harness.state_dir)] == [
        (approval_id, "alice", "intercept-tests")
    ]  # ci-bot's call left no record
    shown = ok(run_cli("approvals", "show", approval_id, "--state-dir", str(harness.state_dir)))
    assert "     agent: alice\n" in shown
    assert "    client: intercept-tests (as the client names itself)\n" in shown
    listing = ok(run_cli("approvals", "list", "--state-dir", str(harness.state_dir)))
    header, row = listing.splitlines()
    assert header.split()[5:7] == ["AGENT", "CLIENT"] and "alice" in row.split()
    requested = [e for e in events(harness.state_dir) if e["type"] == "approval_requested"]
    assert [(e["agent"], e["client"]) for e in requested] == [("alice", "intercept-tests")]
    approve(harness.state_dir, approval_id)
    assert "error" not in call_tool(alice, 2, "write_file", WRITE)
    assert harness.ran("write_file") == [WRITE]


def test_a_client_calling_itself_a_senior_agent_gets_no_roles(harness: Harness) -> None:
    """clientInfo.name is the client's own claim: it never gives roles, with or without --agent."""
    harness.write_policy(POLICY)
    for options in ((), ("--agent", "mallory")):
        proxy = harness.start(SCRIPTED_UPSTREAM, *options, handshake_first=False)
        initialize_as(proxy, "alice")
        assert "Only a senior agent" in (denial_text(call_tool(proxy, 1, "write_file", WRITE)) or "")
    assert list_all(harness.state_dir) == []
    assert harness.ran("write_file") == []


def test_an_approval_is_for_the_agent_that_asked(harness: Harness) -> None:
    """Two agents share a state dir: alice's approval does not run bob's identical call; bob's
    call opens its own request; alice's still runs once."""
    harness.write_policy(POLICY)
    alice = harness.start(SCRIPTED_UPSTREAM, "--agent", "alice")
    bob = harness.start(SCRIPTED_UPSTREAM, "--agent", "bob")
    alices = pending_id(call_tool(alice, 1, "write_file", WRITE))
    approve(harness.state_dir, alices)
    bobs = pending_id(call_tool(bob, 1, "write_file", WRITE))
    assert bobs != alices
    assert harness.ran("write_file") == []
    assert show(harness.state_dir, alices)["status"] == "approved"
    assert "error" not in call_tool(alice, 2, "write_file", WRITE)
    statuses: dict[str, Any] = {r["agent"]: r["status"] for r in list_all(harness.state_dir)}
    assert statuses == {"alice": "consumed", "bob": "pending"}
    assert harness.ran("write_file") == [WRITE]


def test_the_click_path_takes_agent_too(harness: Harness) -> None:
    harness.write_policy(POLICY)
    proxy = start_click_path(harness, "--agent", "bob")
    approval_id = pending_id(call_tool(proxy, 1, "write_file", WRITE))
    assert show(harness.state_dir, approval_id)["agent"] == "bob"
    subordinate = start_click_path(harness, "--agent", "ci-bot")
    assert denial_text(call_tool(subordinate, 1, "write_file", WRITE)) is not None


def test_a_bad_agent_name_starts_nothing(harness: Harness) -> None:
    harness.write_policy(POLICY)
    marker = harness.root / "started"
    for bad in ("", "al\x1bice"):
        result = run_cli(
            "-c", str(harness.policy), "--agent", bad, "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"
        )
        assert result.returncode == 2, result
        assert "--agent" in result.stderr
        assert "\x1b" not in result.stderr
    assert not marker.exists()
