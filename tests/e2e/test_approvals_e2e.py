"""Human approval end to end: the real proxy as a subprocess, decisions through the real `intercept approvals` CLI.

What ran upstream is always read from the fixture's own execution log, never from the proxy's replies.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from intercept.audit.hashing import ArgumentHasher, read_or_create_key
from tests.e2e.support import (
    APPROVAL_ID,
    DENIED_PREFIX,
    MODES,
    RAW_UPSTREAM,
    RFC3339_UTC,
    SCRIPTED_UPSTREAM,
    TOOL_UPSTREAM,
    Harness,
    ProxyProcess,
    approval_events,
    approval_required,
    approve,
    ask_and_approve,
    base_env,
    call,
    call_tool,
    cancel_message,
    deny,
    epoch,
    events,
    executed_tools,
    executions,
    handshake,
    history,
    list_all,
    ok,
    one_line_error,
    pending_id,
    raw_log_messages,
    read_reply,
    run_cli,
    sdk_client,
    show,
    start_approved_call,
    started_or_answered,
    sync_collect,
    wait_until_past,
)

# The SDK client in the stateless era needs a real MCPServer; the stdlib upstream starts much faster.
QUICK_UPSTREAM = {"legacy": SCRIPTED_UPSTREAM, "2026-07-28": TOOL_UPSTREAM}
SERVER = "files"
WRITE_RULE = "writes need a human"
WRITE_ON_DENY = "A human refused this write"


def policy_text(approvals: str = "", write_rule_extra: str = "") -> str:
    """write_file (with on_deny) and a few fixture tools need a human; everything else is allowed."""
    tools = "".join(
        f'  {tool}:\n    rules:\n      - name: "{tool} needs a human"\n        action: require_approval\n'
        for tool in ("fail", "crash", "exit", "reject", "slow", "stubborn")
    )
    return (
        'version: "1"\n'
        "tools:\n"
        "  write_file:\n"
        "    rules:\n"
        f'      - name: "{WRITE_RULE}"\n'
        "        action: require_approval\n"
        f'        on_deny: "{WRITE_ON_DENY}"\n'
        f"{write_rule_extra}"
        f"{tools}"
        f"{approvals}"
    )


@pytest.fixture
def harness(harness: Harness) -> Harness:
    """The conftest's harness with `policy_text()` written."""
    harness.write_policy(policy_text())
    return harness


# -- asking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "explicit_state_dir", "state_dir_name"),
    [
        ("legacy", True, "state"),
        ("2026-07-28", True, "state"),
        ("legacy", False, "state"),
        ("legacy", True, "state dir's"),
    ],
    ids=["legacy", "2026-07-28", "state-dir-from-env", "state-dir-needing-quotes"],
)
async def test_approval_required_error_and_reuse_while_pending(
    harness: Harness, tmp_path: Path, mode: str, explicit_state_dir: bool, state_dir_name: str
) -> None:
    harness.state_dir = tmp_path / state_dir_name
    arguments = {"path": "notes/todo.txt", "content": "buy milk"}
    async with sdk_client(
        harness, mode, QUICK_UPSTREAM[mode], "--name", SERVER, explicit_state_dir=explicit_state_dir
    ) as client:
        before = time.time()
        first = await approval_required(client, "write_file", arguments)
        again = await approval_required(client, "write_file", arguments)

    approval_id = first.data["approval_id"]
    assert APPROVAL_ID.fullmatch(approval_id)
    assert approval_id in first.message
    # Quoted in full, naming the state dir whether it came from --state-dir or $INTERCEPT_STATE_DIR
    # (an approver's shell may not have the proxy's environment); only the built-in default is
    # left unnamed.
    command = f"intercept approvals approve {approval_id} --state-dir {shlex.quote(str(harness.state_dir.resolve()))}"
    assert f'"{command}"' in first.message
    assert first.data == {
        "type": "intercept/approval_required",
        "approval_id": approval_id,
        "tool": "write_file",
        "server": SERVER,
        "status": "pending",
        "expires_at": first.data["expires_at"],
        "retryable": True,
        "human_instructions": first.data["human_instructions"],
        "rule": WRITE_RULE,
    }
    assert RFC3339_UTC.match(first.data["expires_at"])
    assert before + 3600 - 5 < epoch(first.data["expires_at"]) <= time.time() + 3600  # the default timeout: 1h
    assert command in first.data["human_instructions"]

    # The identical retry while pending: the same request, counted, and nothing forwarded.
    assert again.data["approval_id"] == approval_id
    assert executions(harness.exec_log) == []
    record = show(harness.state_dir, approval_id)
    assert (record["status"], record["request_count"]) == ("pending", 2)
    assert approval_events(harness.state_dir) == [("approval_requested", approval_id), ("approval_reused", approval_id)]

    # The command in the message is the one that works (state dir from the message, or from the env).
    env = base_env() if explicit_state_dir else base_env(INTERCEPT_STATE_DIR=str(harness.state_dir))
    result = subprocess.run(
        [sys.executable, "-m", *shlex.split(command), "--actor", "tester"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert show(harness.state_dir, approval_id)["status"] == "approved"


@pytest.mark.parametrize("mode", MODES)
async def test_approved_call_runs_exactly_once(harness: Harness, mode: str) -> None:
    arguments = {"path": "/srv/report.txt", "content": "quarterly numbers"}
    async with sdk_client(harness, mode, TOOL_UPSTREAM, "--name", SERVER) as client:
        approval_id = (await approval_required(client, "write_file", arguments)).data["approval_id"]
        await approval_required(client, "write_file", arguments)
        assert executions(harness.exec_log) == []

        assert approval_id in approve(harness.state_dir, approval_id, "alice", "--reason", "quarter end")
        result = await client.call_tool("write_file", arguments)
        assert result.is_error is False
        assert result.content[0].text == "wrote 17 bytes to /srv/report.txt"
        assert executions(harness.exec_log) == [{"tool": "write_file", "arguments": arguments}]

        record = show(harness.state_dir, approval_id)
        assert record["status"] == "consumed"
        assert record["decided_by"] == "alice"
        assert history(record) == ["requested", "reused", "approved", "consumed"]

        # Used up: the identical call needs a new approval.
        retry = await approval_required(client, "write_file", arguments)
        new_id = retry.data["approval_id"]
        assert new_id != approval_id
        assert retry.data["status"] == "pending"
        assert executions(harness.exec_log) == [{"tool": "write_file", "arguments": arguments}]

    found = events(harness.state_dir)
    assert [(e["type"], e["approval_id"]) for e in found if e["type"].startswith("approval_")] == [
        ("approval_requested", approval_id),
        ("approval_reused", approval_id),
        ("approval_decided", approval_id),
        ("approval_consumed", approval_id),
        ("approval_requested", new_id),
    ]
    decided = next(e for e in found if e["type"] == "approval_decided")
    assert (decided["decision"], decided["actor"], decided["reason"]) == ("approved", "alice", "quarter end")
    expected_hash = ArgumentHasher(read_or_create_key(harness.state_dir)).arguments(arguments)
    carrying_hash = [e for e in found if e["type"] in ("approval_requested", "approval_reused", "tool_call")]
    assert len(carrying_hash) >= 3
    assert all(e["args_hash"] == expected_hash for e in carrying_hash)
    for event in found:
        assert "arguments" not in event
        assert "quarterly numbers" not in json.dumps(event)


async def test_approval_is_bound_to_the_arguments(harness: Harness) -> None:
    alpha = {"path": "a.txt", "content": "alpha"}
    beta = {"path": "a.txt", "content": "beta"}
    async with sdk_client(harness, "legacy", SCRIPTED_UPSTREAM, "--name", SERVER) as client:
        alpha_id = (await approval_required(client, "write_file", alpha)).data["approval_id"]
        approve(harness.state_dir, alpha_id)

        beta_error = await approval_required(client, "write_file", beta)
        beta_id = beta_error.data["approval_id"]
        assert beta_id != alpha_id
        assert executions(harness.exec_log) == []
        assert show(harness.state_dir, alpha_id)["status"] == "approved"
        assert show(harness.state_dir, beta_id)["status"] == "pending"

        # The same call with its keys in another order is the approved call.
        result = await client.call_tool("write_file", {"content": "alpha", "path": "a.txt"})
        assert result.is_error is False
    assert executions(harness.exec_log) == [{"tool": "write_file", "arguments": alpha}]
    assert show(harness.state_dir, alpha_id)["status"] == "consumed"
    assert show(harness.state_dir, beta_id)["status"] == "pending"


# -- human deny --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "lead"),
    [
        ("write_file", {"path": "x", "content": "y"}, WRITE_ON_DENY),
        ("fail", {"reason": "boom"}, "A human reviewer denied this call to fail"),
    ],
    ids=["rule-on-deny", "default-message"],
)
async def test_human_deny_refuses_identical_retries(
    harness: Harness, tool: str, arguments: dict[str, Any], lead: str
) -> None:
    async with sdk_client(harness, "legacy", SCRIPTED_UPSTREAM, "--name", SERVER) as client:
        approval_id = (await approval_required(client, tool, arguments)).data["approval_id"]
        assert approval_id in deny(harness.state_dir, approval_id, "alice", "not on a friday")
        for _ in range(2):
            result = await client.call_tool(tool, arguments)
            assert result.is_error is True
            text = result.content[0].text
            assert text.startswith(DENIED_PREFIX + lead), text
            assert "alice" in text
            assert "not on a friday" in text
        # The denial is bound to these arguments: other arguments ask again.
        other = await approval_required(client, tool, {**arguments, "extra": 1})
        assert other.data["approval_id"] != approval_id
    assert executions(harness.exec_log) == []
    record = show(harness.state_dir, approval_id)
    assert (record["status"], record["decided_by"], record["reason"]) == ("denied", "alice", "not on a friday")


# -- expiry ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("approvals", "rule_extra", "timeout_s", "approve_first", "decide_before_expiry"),
    [
        ("approvals:\n  timeout: 500ms\n", "", 0.5, True, False),
        ("approvals:\n  timeout: 500ms\n", "", 0.5, False, False),
        ("approvals:\n  timeout: 1h\n", "        approval_timeout: 1s\n", 1.0, False, True),
    ],
    ids=["pending-approve-old-then-retry", "pending-retry-then-approve-old", "approved-but-unused"],
)
async def test_expired_requests_need_a_new_approval(
    harness: Harness,
    approvals: str,
    rule_extra: str,
    timeout_s: float,
    approve_first: bool,
    decide_before_expiry: bool,
) -> None:
    harness.policy.write_text(policy_text(approvals, rule_extra))
    arguments = {"path": "late.txt", "content": "too late"}
    async with sdk_client(harness, "legacy", SCRIPTED_UPSTREAM, "--name", SERVER) as client:
        error = await approval_required(client, "write_file", arguments)
        old_id = error.data["approval_id"]
        record = show(harness.state_dir, old_id)
        assert record["timeout_s"] == timeout_s
        assert epoch(record["expires_at"]) - epoch(record["created_at"]) == pytest.approx(timeout_s, abs=0.001)
        expires_at = error.data["expires_at"]
        if decide_before_expiry:
            approve(harness.state_dir, old_id)
            expires_at = show(harness.state_dir, old_id)["expires_at"]  # usable for timeout_s from the approval
        wait_until_past(expires_at)

        if approve_first:
            line = one_line_error(run_cli("approvals", "approve", old_id, "--state-dir", str(harness.state_dir)))
            assert "expired" in line
        retry = await approval_required(client, "write_file", arguments)
        assert retry.data["approval_id"] != old_id
        line = one_line_error(run_cli("approvals", "approve", old_id, "--state-dir", str(harness.state_dir)))
        assert "expired" in line
    assert executions(harness.exec_log) == []
    assert show(harness.state_dir, old_id)["status"] == "expired"
    assert ("approval_expired", old_id) in approval_events(harness.state_dir)
    new_request = show(harness.state_dir, retry.data["approval_id"])
    # A fresh request was opened after the old one expired (it may itself be past its short timeout
    # by now: the approvals CLI expires stale records when it reads them).
    assert new_request["status"] in ("pending", "expired")
    assert epoch(new_request["created_at"]) >= epoch(expires_at)


# -- giving back: only when the call provably never started ------------------------------------


@pytest.mark.parametrize("code", [-32700, -32600, -32601])
def test_an_upstream_refusing_the_request_itself_gives_the_approval_back(harness: Harness, code: int) -> None:
    """Parse error, invalid request and method not found: the server never reached a tool."""
    arguments = {"why": "upstream says no", "code": code}
    proxy = harness.start(SCRIPTED_UPSTREAM, name="scripted")
    try:
        approval_id = ask_and_approve(proxy, harness.state_dir, 1, "reject", arguments)
        reply = call_tool(proxy, 2, "reject", arguments)
        assert reply["error"] == {"code": code, "message": "rejected before running"}

        record = show(harness.state_dir, approval_id)
        assert record["status"] == "approved"
        assert history(record) == ["requested", "approved", "consumed", "given_back"]
        assert ("approval_given_back", approval_id) in approval_events(harness.state_dir)

        # Still usable: the identical retry is forwarded again, without a new request.
        assert "error" in call_tool(proxy, 3, "reject", arguments)
        assert executed_tools(harness.exec_log) == ["reject", "reject"]
        assert [r["id"] for r in list_all(harness.state_dir)] == [approval_id]
    finally:
        proxy.stop()


@pytest.mark.parametrize("code", [-32000, -32602, -32603, -32003])
def test_any_other_error_keeps_the_approval_consumed(harness: Harness, code: int) -> None:
    """A handler can act and then fail (even with invalid params): the approval is spent."""
    arguments = {"why": "acted, then failed", "code": code}
    proxy = harness.start(SCRIPTED_UPSTREAM, name="scripted")
    try:
        approval_id = ask_and_approve(proxy, harness.state_dir, 1, "reject", arguments)
        assert call_tool(proxy, 2, "reject", arguments)["error"]["code"] == code
        retry = pending_id(call_tool(proxy, 3, "reject", arguments))
        assert retry != approval_id
        assert executed_tools(harness.exec_log) == ["reject"]
        record = show(harness.state_dir, approval_id)
        assert record["status"] == "consumed"
        assert history(record) == ["requested", "approved", "consumed"]
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("upstream", "tool", "code"),
    [(RAW_UPSTREAM, "exit", 0), (TOOL_UPSTREAM, "crash", 3)],
    ids=["raw-server-exit", "tool-server-crash"],
)
def test_upstream_death_keeps_the_approval_consumed(
    harness: Harness, upstream: list[str], tool: str, code: int
) -> None:
    """A server that exits mid-call may have acted first: a new session needs a new approval."""
    arguments = {"code": code}

    def forwarded() -> int:
        if tool == "crash":
            return len(executions(harness.exec_log))
        return sum(1 for m in raw_log_messages(harness.raw_log) if m.get("method") == "tools/call")

    first = harness.start(upstream, name="mortal")
    try:
        approval_id = pending_id(call_tool(first, 1, tool, arguments))
        assert forwarded() == 0
        approve(harness.state_dir, approval_id)
        first.send(call(2, tool, arguments))
        assert first.wait() == code  # the upstream died mid-call and the proxy with it
    finally:
        first.stop()
    assert forwarded() == 1
    record = show(harness.state_dir, approval_id)
    assert record["status"] == "consumed"
    assert history(record) == ["requested", "approved", "consumed"]

    second = harness.start(upstream, name="mortal")
    try:
        assert pending_id(call_tool(second, 3, tool, arguments)) != approval_id
    finally:
        second.stop()
    assert forwarded() == 1  # not forwarded again on the spent approval


async def test_tool_error_result_keeps_the_approval_consumed(harness: Harness) -> None:
    arguments = {"reason": "disk full"}
    async with sdk_client(harness, "legacy", TOOL_UPSTREAM, "--name", SERVER) as client:
        approval_id = (await approval_required(client, "fail", arguments)).data["approval_id"]
        approve(harness.state_dir, approval_id)
        result = await client.call_tool("fail", arguments)
        assert result.is_error is True
        assert not result.content[0].text.startswith(DENIED_PREFIX)
        assert show(harness.state_dir, approval_id)["status"] == "consumed"
        retry = await approval_required(client, "fail", arguments)
        assert retry.data["approval_id"] != approval_id
    assert executions(harness.exec_log) == [{"tool": "fail", "arguments": arguments}]
    assert "approval_given_back" not in [e["type"] for e in events(harness.state_dir)]


# -- cancellation (deterministic: the scripted upstream holds the call until the cancel arrives) --


def test_a_cancelled_call_keeps_its_approval_and_frees_its_id_at_once(harness: Harness) -> None:
    arguments = {"job": "reindex"}
    proxy = harness.start(SCRIPTED_UPSTREAM, name="scripted")
    try:
        approval_id = start_approved_call(proxy, harness.state_dir, "slow", arguments)
        proxy.send(cancel_message(2))
        assert sync_collect(proxy, replies_only=True) == []
        record = show(harness.state_dir, approval_id)
        assert record["status"] == "consumed"  # the tool may have run: nothing is given back, ever
        assert history(record) == ["requested", "approved", "consumed"]
        # The id is free at once, and the identical retry needs a new approval.
        proxy.send(call(2, "slow", arguments))
        answer = started_or_answered(proxy, 2)
        assert answer is not None and pending_id(answer) != approval_id
        assert executed_tools(harness.exec_log) == ["slow"]
    finally:
        proxy.stop()


def test_a_late_reply_to_a_cancelled_call_is_dropped_and_the_approval_stays_spent(harness: Harness) -> None:
    """The upstream finished the tool despite the cancel (MCP lets it): the approval was used once,
    and its reply never reaches a client that may have reused the id."""
    arguments = {"job": "send newsletter"}
    proxy = harness.start(SCRIPTED_UPSTREAM, name="scripted")
    try:
        approval_id = start_approved_call(proxy, harness.state_dir, "stubborn", arguments)
        proxy.send(cancel_message(2))
        assert sync_collect(proxy, replies_only=True) == []  # "ran anyway" was answered upstream and dropped

        proxy.send(call(3, "stubborn", arguments))
        answer = started_or_answered(proxy, 3)
        assert answer is not None, "the identical retry was forwarded: one approval ran the tool twice"
        assert pending_id(answer) != approval_id
        assert executed_tools(harness.exec_log) == ["stubborn"]
        record = show(harness.state_dir, approval_id)
        assert record["status"] == "consumed"
        assert history(record) == ["requested", "approved", "consumed"]
    finally:
        proxy.stop()


# -- exactly once across processes ------------------------------------------------------------


def test_one_approval_runs_once_across_eight_proxies(harness: Harness) -> None:
    arguments = {"path": "race.txt", "content": "only once"}
    proxies = [harness.start(TOOL_UPSTREAM, name="race", handshake_first=False) for _ in range(8)]
    try:
        for proxy in proxies:
            handshake(proxy)
        approval_id = ask_and_approve(proxies[0], harness.state_dir, "ask", "write_file", arguments)

        start = threading.Barrier(len(proxies))

        def fire(proxy: ProxyProcess) -> None:
            start.wait()
            proxy.send(call("go", "write_file", arguments))

        threads = [threading.Thread(target=fire, args=(proxy,)) for proxy in proxies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        replies = [read_reply(proxy, "go") for proxy in proxies]
    finally:
        for proxy in proxies:
            proxy.stop()

    winners = [r for r in replies if "result" in r]
    losers = [r for r in replies if "error" in r]
    assert len(winners) == 1, replies
    assert winners[0]["result"]["isError"] is False
    assert len(losers) == 7
    new_ids = {pending_id(r) for r in losers}
    assert len(new_ids) == 1 and approval_id not in new_ids
    assert executions(harness.exec_log) == [{"tool": "write_file", "arguments": arguments}]
    assert show(harness.state_dir, approval_id)["status"] == "consumed"
    (new_id,) = new_ids
    assert show(harness.state_dir, new_id)["request_count"] == 7


# -- failing closed ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_unusable_store_refuses_approval_calls_and_keeps_serving(harness: Harness, mode: str) -> None:
    harness.state_dir.mkdir()
    database = harness.state_dir / "intercept.sqlite"
    garbage = b"this is not an SQLite database\n" * 200
    database.write_bytes(garbage)
    async with sdk_client(harness, mode, QUICK_UPSTREAM[mode], "--name", SERVER) as client:
        refused = await client.call_tool("write_file", {"path": "x", "content": "y"})
        allowed = await client.call_tool("echo", {"text": "still serving"})
        refused_again = await client.call_tool("write_file", {"path": "x", "content": "y"})
    for result in (refused, refused_again):
        assert result.is_error is True
        assert result.content[0].text.startswith(DENIED_PREFIX)
        assert "approval store is unavailable" in result.content[0].text
    assert allowed.is_error is False
    assert allowed.content[0].text == "still serving"
    assert executions(harness.exec_log) == [{"tool": "echo", "arguments": {"text": "still serving"}}]
    assert database.read_bytes() == garbage


def test_call_that_cannot_be_fingerprinted_is_refused(harness: Harness) -> None:
    proxy = harness.start(RAW_UPSTREAM, name=None, handshake_first=False)
    try:
        proxy.send_raw(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file",'
            b'"arguments":{"path":"x","size":9007199254740993}}}\n'
        )
        reply = read_reply(proxy, 1)
        proxy.sync()
    finally:
        proxy.stop()
    text = reply["result"]["content"][0]["text"]
    assert reply["result"]["isError"] is True
    assert text.startswith(DENIED_PREFIX + "Approval cannot be requested for write_file")
    assert b"tools/call" not in harness.raw_log.read_bytes()
    assert ok(run_cli("events", "tail", "--json", "--state-dir", str(harness.state_dir))).count("approval_") == 0
