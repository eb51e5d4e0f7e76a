"""Regressions for smaller holes found in review, each driven end to end through the real proxy:
terminal escapes in tool names, unkeyed argument hashes, fractional counter increments, servers
that derive the same name sharing approvals, `hide` leaking through an unreadable tools/list
reply, secrets in the upstream's argv, and nested batches."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    RAW_SERVER,
    RAW_UPSTREAM,
    ROOT,
    SCRIPTED_SERVER,
    SERVERS,
    WRITE_NEEDS_APPROVAL,
    ProxyProcess,
    ask_and_approve,
    call,
    call_tool,
    events,
    exec_records,
    fixture_env,
    handshake,
    list_all,
    ok,
    pending_id,
    proxy_command,
    raw_log_messages,
    run_cli,
    show,
    start_proxy,
)

UNREADABLE_LIST_SERVER = SERVERS / "unreadable_list_server.py"


def read_until_sync(proxy: ProxyProcess, marker: str) -> list[bytes]:
    """Every raw line the client receives up to and including the answer to a ping `marker`."""
    proxy.send({"jsonrpc": "2.0", "id": marker, "method": "ping"})
    lines: list[bytes] = []
    while True:
        line = proxy.read_raw()
        lines.append(line)
        if marker.encode() in line:
            message = json.loads(line)
            if message.get("id") == marker and "result" in message:
                return lines


# -- 1. terminal escapes in tool names -------------------------------------------------------

UNSAFE_TOOL_NAMES = [
    "\u001b[2J\u001b[H\r\nls -la /tmp",  # clear the screen, home the cursor, print a decoy
    "echo\u001b]0;title\u0007",  # ESC and BEL (an OSC sequence)
    "echo\rwrite_file",
    "echo\nwrite_file",
    "echo\u007f",
    "echo\u009b31m",  # C1 CSI
    "evil\u202etxt.exe",  # right-to-left override
]
ALLOW_ALL = 'version: "1"\ntools:\n  echo:\n    rules: []\n'
APPROVE_ALL = (
    'version: "1"\ntools:\n  "*":\n    rules:\n      - {name: "everything needs a human", action: require_approval}\n'
)


@pytest.mark.parametrize("policy_text", [ALLOW_ALL, APPROVE_ALL], ids=["allow-all", "approve-all"])
def test_tool_names_with_control_or_bidi_characters_are_refused_and_never_forwarded(
    tmp_path: Path, write_policy: Callable[[str], Path], policy_text: str
) -> None:
    proxy = start_proxy(tmp_path, write_policy(policy_text), RAW_UPSTREAM)
    try:
        for number, name in enumerate(UNSAFE_TOOL_NAMES, start=1):
            proxy.send(call(number, name, {"path": "/tmp/x"}))
            raw = proxy.read_raw()
            reply = json.loads(raw)
            assert reply["id"] == number and "error" in reply, (name, reply)
            assert reply["error"]["code"] == -32602, (name, reply)
            assert "control or bidirectional characters" in reply["error"]["message"]
            # The refusal itself carries none of the name's control characters back to the client.
            assert not any(byte < 0x20 for byte in raw.rstrip(b"\n")), raw
        proxy.sync()
        assert [m.get("method") for m in raw_log_messages(tmp_path / "raw.log")] == ["ping"]
        assert proxy.finish() == 0, proxy.stderr
    finally:
        proxy.stop()
    state = tmp_path / "state"
    if (state / "intercept.sqlite").exists():
        assert list_all(state) == []


# -- 2. keyed argument hashes ----------------------------------------------------------------

KEYED_POLICY = """
version: "1"
tools:
  login:
    rules:
      - {name: "logins need a human", action: require_approval}
  lookup:
    rules: []
"""


def sorted_json(arguments: dict[str, Any]) -> bytes:
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_argument_hashes_are_keyed_with_the_state_dirs_secret(
    tmp_path: Path, write_policy: Callable[[str], Path]
) -> None:
    """An unkeyed SHA-256 of `{"password":"<guess>","user":"admin"}` lets anyone reading the
    events confirm a guessed password; the hash must be keyed with the state dir's secret."""
    policy = write_policy(KEYED_POLICY)
    arguments = {"user": "admin", "password": "hunter2"}
    upstream = RAW_UPSTREAM
    first, second = start_proxy(tmp_path, policy, upstream), start_proxy(tmp_path, policy, upstream)
    try:
        approval_id = pending_id(call_tool(first, 1, "login", arguments))
        assert "result" in call_tool(first, 2, "lookup", arguments)
        assert "result" in call_tool(second, 1, "lookup", arguments)
        assert first.finish() == 0, first.stderr
        assert second.finish() == 0, second.stderr
    finally:
        first.stop()
        second.stop()

    state = tmp_path / "state"
    # The attack: hash a guess the way the old scheme did and compare.
    unkeyed = hashlib.sha256(sorted_json(arguments)).hexdigest()
    stored = show(state, approval_id)["args_hash"]
    assert stored != unkeyed, "args_hash is the unkeyed SHA-256: a guessed password can be confirmed"

    key_file = state / "hash.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    assert len(key) == 32
    keyed = hashlib.blake2b(sorted_json(arguments), key=key, digest_size=32).hexdigest()
    assert stored == keyed
    logged = events(state)
    hashed = [e for e in logged if "args_hash" in e]
    assert {(e["type"], e.get("tool")) for e in hashed} >= {("tool_call", "login"), ("tool_call", "lookup")}
    assert [e["args_hash"] for e in hashed] == [keyed] * len(hashed), hashed
    # Both proxies (two instances, one state dir) wrote that same keyed hash.
    assert len({e["instance"] for e in hashed if e["type"] == "tool_call" and e["tool"] == "lookup"}) == 2
    assert all(unkeyed not in json.dumps(e) for e in logged)


# -- 3. fractional increment_from ------------------------------------------------------------

SPEND_POLICY = """
version: "1"
tools:
  pay:
    rules:
      - name: "spend cap"
        conditions: [{path: state.pay.spend, op: lte, value: 3}]
        state: {counter: spend, window: day, increment_from: args.amount}
"""


def test_fractional_amounts_round_up_in_a_spend_cap(tmp_path: Path, write_policy: Callable[[str], Path]) -> None:
    proxy = start_proxy(tmp_path, write_policy(SPEND_POLICY), RAW_UPSTREAM)
    try:
        replies = [call_tool(proxy, number, "pay", {"amount": 0.99}) for number in range(1, 6)]
        assert [r["result"]["isError"] for r in replies] == [False, False, False, True, True], replies
        for reply in replies[3:]:
            assert "Rate limit exceeded" in reply["result"]["content"][0]["text"], reply
        proxy.sync()
        forwarded = [m for m in raw_log_messages(tmp_path / "raw.log") if m.get("method") == "tools/call"]
        assert len(forwarded) == 3, forwarded
    finally:
        proxy.stop()


# -- 4. servers deriving the same name -------------------------------------------------------

def two_servers(tmp_path: Path) -> None:
    """tmp_path/staging/server.py and tmp_path/prod/server.py: the same script in two places."""
    for where in ("staging", "prod"):
        (tmp_path / where).mkdir()
        shutil.copy(SCRIPTED_SERVER, tmp_path / where / "server.py")


def start_in(tmp_path: Path, policy: Path, server: str, exec_log: Path, *extra: str) -> ProxyProcess:
    """The proxy started in tmp_path (as a client would) on `python <server>`, a relative path."""
    env = fixture_env(exec_log=exec_log, PYTHONPATH=str(ROOT))  # -m intercept from this checkout
    command = proxy_command(policy, tmp_path / "state", [sys.executable, server], *extra)
    return ProxyProcess(["env", "-C", str(tmp_path), *command], env=env)


def test_servers_deriving_the_same_name_do_not_share_approvals(
    tmp_path: Path, write_policy: Callable[[str], Path]
) -> None:
    two_servers(tmp_path)
    policy = write_policy(WRITE_NEEDS_APPROVAL)
    state = tmp_path / "state"
    staging_log, prod_log = tmp_path / "staging.log", tmp_path / "prod.log"
    arguments = {"path": "/srv/app/config.yaml", "content": "debug: true"}
    staging = start_in(tmp_path, policy, "staging/server.py", staging_log)
    prod = start_in(tmp_path, policy, "prod/server.py", prod_log)
    try:
        handshake(staging)
        handshake(prod)
        staging_id = ask_and_approve(staging, state, 1, "write_file", arguments)

        prod_reply = call_tool(prod, 1, "write_file", arguments)
        prod_id = pending_id(prod_reply)
        assert prod_id != staging_id
        prod.sync()
        assert exec_records(prod_log) == []

        assert "result" in call_tool(staging, 2, "write_file", arguments)
        assert [r["arguments"] for r in exec_records(staging_log)] == [arguments]
        assert pending_id(call_tool(staging, 3, "write_file", arguments)) not in (staging_id, prod_id)
        assert [r["arguments"] for r in exec_records(staging_log)] == [arguments]
        assert exec_records(prod_log) == []
    finally:
        staging.stop()
        prod.stop()
    record = show(state, staging_id)
    assert record["server"] == "server"
    assert show(state, prod_id)["status"] == "pending"
    # The approver is shown which of the two servers asked: the path made absolute.
    assert record["command"] == [sys.executable, str(tmp_path / "staging" / "server.py")], record["command"]


def test_a_name_given_with_name_cannot_be_shared_by_another_command(
    tmp_path: Path, write_policy: Callable[[str], Path]
) -> None:
    two_servers(tmp_path)
    policy = write_policy(WRITE_NEEDS_APPROVAL)
    log = tmp_path / "exec.log"
    first = start_in(tmp_path, policy, "staging/server.py", log, "--name", "shared")
    proxies = [first]
    try:
        handshake(first)
        other = start_in(tmp_path, policy, "prod/server.py", log, "--name", "shared")
        proxies.append(other)
        assert other.wait() == 1, other.stderr
        lines = other.stderr.splitlines()
        assert len(lines) == 1 and "already used by a running proxy" in lines[0], other.stderr

        same = start_in(tmp_path, policy, "staging/server.py", log, "--name", "shared")
        proxies.append(same)
        handshake(same)
        same.sync()
        for proxy in (first, same):
            assert proxy.finish() == 0, proxy.stderr

        later = start_in(tmp_path, policy, "prod/server.py", log, "--name", "shared")
        proxies.append(later)
        handshake(later)
        assert "result" in call_tool(later, 1, "echo", {"text": "prod now"})
        assert [r["arguments"] for r in exec_records(log)] == [{"text": "prod now"}]
    finally:
        for proxy in proxies:
            proxy.stop()


# -- 5. hide with an unreadable tools/list reply ---------------------------------------------


@pytest.mark.parametrize("variant", ["latin1", "bigint"], ids=["raw-0xE9-byte", "5000-digit-integer"])
@pytest.mark.parametrize("hidden", [True, False], ids=["hide", "no-hide"])
def test_hide_fails_closed_on_an_unreadable_tools_list_reply(
    tmp_path: Path, write_policy: Callable[[str], Path], variant: str, hidden: bool
) -> None:
    text = 'version: "1"\n' + ("hide: [secret_tool]\n" if hidden else "") + "tools:\n  echo:\n    rules: []\n"
    proxy = start_proxy(tmp_path, write_policy(text), [sys.executable, str(UNREADABLE_LIST_SERVER), variant])
    try:
        handshake(proxy)
        proxy.send({"jsonrpc": "2.0", "id": 41, "method": "tools/list"})
        received = read_until_sync(proxy, "after-list")
        listing = [line for line in received if b'"after-list"' not in line]
        assert len(listing) == 1, received
        if hidden:
            assert all(b"secret_tool" not in line for line in received), received
            reply = json.loads(listing[0])
            assert reply["id"] == 41 and reply["error"]["code"] == -32603, reply
        else:
            assert b"secret_tool" in listing[0]
            assert b'"id":41' in listing[0].replace(b" ", b""), listing[0]
        # Whatever happened to the listing, the session goes on.
        assert call_tool(proxy, 42, "echo", {})["result"]["content"][0]["text"] == "ran echo"
    finally:
        proxy.stop()


# -- 6. secrets in the upstream's argv -------------------------------------------------------

ARGV_SECRETS = ["hunter2-Prod!", "3f9a1c7e55", "V3ryS3cret", "SECRETpw"]


def state_files_bytes(state: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in state.rglob("*") if p.is_file()}


def test_secrets_in_the_upstream_argv_are_never_stored_or_shown(
    tmp_path: Path, write_policy: Callable[[str], Path]
) -> None:
    upstream = [
        sys.executable,
        str(RAW_SERVER),
        "--db-password",
        "hunter2-Prod!",
        "--api-key",
        "3f9a1c7e55",
        "--x-key=V3ryS3cret",
        "-pSECRETpw",
    ]
    state = tmp_path / "state"
    proxy = start_proxy(tmp_path, write_policy(WRITE_NEEDS_APPROVAL), upstream)
    try:
        handshake(proxy)
        pending_id(call_tool(proxy, 1, "write_file", {"path": "/tmp/a"}))  # an approval record keeps the command
        assert "result" in call_tool(proxy, 2, "echo", {"text": "x"})
        proxy.sync()
        running = state_files_bytes(state)  # while it runs: the -wal file may hold fresh pages
        assert proxy.finish() == 0, proxy.stderr
    finally:
        proxy.stop()
    stopped = state_files_bytes(state)
    assert any(name.endswith(".sqlite") for name in stopped), sorted(stopped)
    assert any(name.endswith(".jsonl") for name in stopped), sorted(stopped)
    for files in (running, stopped):
        for name, data in files.items():
            for secret in ARGV_SECRETS:
                assert secret.encode() not in data, (secret, name)

    status_json = ok(run_cli("status", "--json", "--state-dir", str(state)))
    status_text = ok(run_cli("status", "--state-dir", str(state)))
    events_json = ok(run_cli("events", "tail", "--json", "-n", "1000", "--state-dir", str(state)))
    for shown in (status_json, status_text, events_json):
        for secret in ARGV_SECRETS:
            assert secret not in shown, (secret, shown)
        assert "--db-password" in shown and "--api-key" in shown and "--x-key=" in shown, shown


# -- 7. nested batches -----------------------------------------------------------------------

NESTED_BATCHES = [
    b'[[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file","arguments":{}}}]]',
    b'[1, {"jsonrpc":"2.0","id":2,"method":"ping"}]',
    b'[{"jsonrpc":"2.0","id":3,"method":"ping"}, [{"jsonrpc":"2.0","id":4,"method":"tools/call",'
    b'"params":{"name":"write_file","arguments":{}}}]]',
]
WRITE_DENIED = 'version: "1"\ntools:\n  write_file:\n    rules:\n      - {name: "no writes", action: deny}\n'


@pytest.mark.parametrize("policy_text", [WRITE_NEEDS_APPROVAL, WRITE_DENIED], ids=["approval", "deny"])
def test_batches_with_members_that_are_not_objects_are_refused(
    tmp_path: Path, write_policy: Callable[[str], Path], policy_text: str
) -> None:
    proxy = start_proxy(tmp_path, write_policy(policy_text), RAW_UPSTREAM)
    try:
        for number, line in enumerate(NESTED_BATCHES):
            proxy.send_raw(line + b"\n")
            marker = f"after-batch-{number}"
            replies = [json.loads(raw) for raw in read_until_sync(proxy, marker)[:-1]]
            assert len(replies) == 1, (line, replies)  # answered by the proxy, not by the upstream
            answers = replies[0] if isinstance(replies[0], list) else replies
            assert answers and all(a["error"]["code"] == -32600 for a in answers), (line, replies)
        assert [m.get("method") for m in raw_log_messages(tmp_path / "raw.log")] == ["ping"] * len(NESTED_BATCHES)
        # The same call on its own is held or denied by the policy, not forwarded either.
        alone = call_tool(proxy, 9, "write_file", {})
        assert alone.get("error", {}).get("code") == -32003 or alone["result"]["isError"] is True, alone
        proxy.sync()
        assert [m.get("method") for m in raw_log_messages(tmp_path / "raw.log")] == ["ping"] * (len(NESTED_BATCHES) + 1)
    finally:
        proxy.stop()
