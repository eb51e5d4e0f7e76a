"""Regressions for attacks found in review: case-folded keys, id reuse, cancel-and-retry, text
numbers, replies without a newline, lone surrogates, stubborn grandchildren, refused batches."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.support import (
    RAW_SERVER,
    RAW_UPSTREAM,
    SCRIPTED_UPSTREAM,
    TOOL_UPSTREAM,
    ProxyProcess,
    ask_and_approve,
    call,
    call_tool,
    cancel_message,
    executed_tools,
    executions,
    handshake,
    raw_log_messages,
    read_reply,
    show,
    start_approved_call,
    start_proxy,
)

POLICY = """
version: "1"
hide: [secret]
tools:
  write_file:
    rules:
      - name: "system paths need a human"
        action: require_approval
        conditions: [{path: args.path, op: regex, value: "^/etc/"}]
  create_charge:
    rules:
      - name: "big charges need a human"
        action: require_approval
        conditions: [{path: args.amount, op: gt, value: 50000}]
  slow:
    rules:
      - {name: "slow needs a human", action: require_approval}
  echo:
    rules:
      - {name: "echo needs a human", action: require_approval}
"""


@pytest.fixture
def policy(write_policy: Callable[[str], Path]) -> Path:
    return write_policy(POLICY)


def upstream_saw(tmp_path: Path) -> list[dict[str, object]]:
    """What the client's lines made the upstream receive (the proxy's own tools/list, sent to learn
    the schemas when the client did not list, is left out)."""
    seen = raw_log_messages(tmp_path / "raw.log")
    return [m for m in seen if not (m.get("method") == "tools/list" and str(m.get("id")).startswith("intercept-"))]


def hold_approved_slow_call(proxy: ProxyProcess, state_dir: Path, arguments: dict[str, object]) -> str:
    """Approve `slow(arguments)` and send it as id 2: the scripted upstream holds it unanswered."""
    handshake(proxy)
    return start_approved_call(proxy, state_dir, "slow", arguments)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "Method": "tools/call", "params": {"name": "secret"}}, -32600, id="Method"
        ),
        pytest.param(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "PARAMS": {"name": "secret"},
                "params": {"name": "echo"},
            },
            -32700,
            id="params-and-PARAMS",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x", "NAME": "secret"}},
            -32700,
            id="name-and-NAME",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "big", "Arguments": {"size": 1}}},
            -32602,
            id="Arguments",
        ),
        pytest.param(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "big", "arguments": {"\u017fize": 1, "size": 2}},
            },
            -32700,
            id="long-s-folds-to-s",
        ),
    ],
)
def test_keys_a_go_upstream_reads_case_insensitively_are_refused(
    tmp_path: Path, policy: Path, message: dict[str, object], code: int
) -> None:
    proxy = start_proxy(tmp_path, policy, RAW_UPSTREAM)
    try:
        reply = proxy.request(message)
        assert reply["error"]["code"] == code
        proxy.sync()
        assert [m.get("method") for m in upstream_saw(tmp_path)] == ["ping"]
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "arguments",
    [{"PATH": "/etc/passwd", "content": "x"}, {"\ufb01le": "x", "path": "/tmp/a"}, {"Path": "/tmp/ok"}],
    ids=["upper-case-decoy", "ligature-folds", "capitalised"],
)
def test_argument_key_matching_a_policy_path_only_up_to_case_is_denied(
    tmp_path: Path, write_policy: Callable[[str], Path], arguments: dict[str, str]
) -> None:
    """Python/TS servers ignore `PATH` and use their default; Go servers read it as `path`. Neither
    reading can be judged safely, so the call is refused."""
    policy = write_policy(
        'version: "1"\ntools:\n  write_file:\n    rules:\n      - name: "tmp only"\n'
        '        conditions: [{path: args.path, op: regex, value: "^/tmp/"}]\n'
        "      - name: file\n        conditions: [{path: args.file, op: exists, value: false}]\n",
        "case.yaml",
    )
    proxy = start_proxy(tmp_path, policy, RAW_UPSTREAM)
    try:
        reply = proxy.request(call(1, "write_file", arguments))
        assert reply["result"]["isError"] is True
        assert "only in letter case" in reply["result"]["content"][0]["text"]
        proxy.sync()
        assert [m.get("method") for m in upstream_saw(tmp_path)] == ["ping"]
    finally:
        proxy.stop()


def test_a_number_sent_as_text_never_skips_approval(tmp_path: Path, policy: Path) -> None:
    """The server would read "60000" as 60000: the proxy (which lists the tools itself here, as the
    client did not) denies the text against the declared number instead of comparing it."""
    proxy = start_proxy(tmp_path, policy, TOOL_UPSTREAM)
    try:
        handshake(proxy)
        text = call_tool(proxy, 1, "create_charge", {"amount": "60000"})["result"]["content"][0]["text"]
        assert '"amount" must be a number' in text
        assert "result" in call_tool(proxy, 2, "create_charge", {"amount": 10})
        assert [e["arguments"] for e in executions(tmp_path / "exec.log")] == [{"amount": 10.0, "currency": "usd"}]
    finally:
        proxy.stop()


def test_reusing_an_id_cannot_roll_back_an_approval_that_ran(tmp_path: Path, policy: Path) -> None:
    """`bogus/method` id 5 is answered with an error; it must not be taken as the approved call's answer."""
    proxy = start_proxy(tmp_path, policy, TOOL_UPSTREAM)
    try:
        handshake(proxy)
        arguments = {"text": "once"}
        approval_id = ask_and_approve(proxy, tmp_path / "state", 1, "echo", arguments)
        proxy.send_raw(
            json.dumps({"jsonrpc": "2.0", "id": 5, "method": "bogus/method"}).encode()
            + b"\n"
            + json.dumps(call(5, "echo", arguments)).encode()
            + b"\n"
        )
        answers = [proxy.read(), proxy.read()]
        assert sorted("error" in a for a in answers) == [False, True]
        assert all(a["id"] == 5 for a in answers)
        assert show(tmp_path / "state", approval_id)["status"] == "consumed"
        assert call_tool(proxy, 6, "echo", arguments)["error"]["code"] == -32003
        assert executed_tools(tmp_path / "exec.log") == ["echo"]
    finally:
        proxy.stop()


def test_a_second_request_with_a_pending_watched_id_is_refused(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, SCRIPTED_UPSTREAM)
    try:
        hold_approved_slow_call(proxy, tmp_path / "state", {})
        reply = proxy.request({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert reply["error"]["code"] == -32600
    finally:
        proxy.stop()


def test_cancel_then_immediate_retry_does_not_run_twice(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, SCRIPTED_UPSTREAM)
    try:
        approval_id = hold_approved_slow_call(proxy, tmp_path / "state", {"job": "a"})
        proxy.send(cancel_message(2))
        retry = call_tool(proxy, 3, "slow", {"job": "a"})
        assert retry["error"]["code"] == -32003
        assert retry["error"]["data"]["approval_id"] != approval_id
        assert executed_tools(tmp_path / "exec.log") == ["slow"]
    finally:
        proxy.stop()


NO_NEWLINE_UPSTREAM = r"""
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("method") == "tools/call":
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {"content": [], "isError": False}}))
        sys.stdout.flush()
        break
    if "id" in message:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {}}) + "\n")
        sys.stdout.flush()
"""


def test_a_last_reply_without_newline_still_reaches_its_watcher(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, [sys.executable, "-c", NO_NEWLINE_UPSTREAM])
    try:
        approval_id = ask_and_approve(proxy, tmp_path / "state", 1, "echo", {"text": "x"})
        proxy.send(call(2, "echo", {"text": "x"}))
        assert read_reply(proxy, 2)["result"]["isError"] is False
        proxy.wait()
        assert show(tmp_path / "state", approval_id)["status"] == "consumed"
    finally:
        proxy.stop()


def test_lone_surrogate_is_refused_with_parse_error(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, RAW_UPSTREAM)
    try:
        proxy.send_raw(
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"t":"a\\ud800b"}}}\n'
        )
        assert proxy.read()["error"]["code"] == -32700
        proxy.sync()
        assert [m.get("method") for m in upstream_saw(tmp_path)] == ["ping"]
    finally:
        proxy.stop()


def test_a_grandchild_holding_stdout_does_not_keep_the_proxy_alive(tmp_path: Path, policy: Path) -> None:
    # The background sleep keeps the upstream's stdout open (its stderr goes nowhere, not to the test).
    upstream = ["bash", "-c", f"sleep 30 2>/dev/null & exec {sys.executable} {RAW_SERVER}"]
    proxy = start_proxy(tmp_path, policy, upstream, "--shutdown-grace", "0.3")
    try:
        proxy.sync()
        proxy.close_stdin()
        assert proxy.wait(timeout_s=15) == 0
    finally:
        proxy.stop()


def test_refused_batch_records_no_allowed_call(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, RAW_UPSTREAM)
    try:
        reply = proxy.request([call(1, "big", {"size": 1}), call(2, "secret")])  # type: ignore[arg-type]
        assert isinstance(reply, list)
        proxy.close_stdin()
        proxy.wait()
        lines = (tmp_path / "state" / "events").glob("*.jsonl")
        events = [json.loads(x) for path in lines for x in path.read_text().splitlines()]
        assert [(e["tool"], e["result"]) for e in events if e["type"] == "tool_call"] == [("secret", "denied")]
    finally:
        proxy.stop()


def test_secrets_in_the_upstream_command_stay_out_of_events_and_names(tmp_path: Path, policy: Path) -> None:
    token = "ghp_" + "A1b2C3d4" * 5
    upstream = [
        "env",
        f"GITHUB_PERSONAL_ACCESS_TOKEN={token}",
        sys.executable,
        str(RAW_SERVER),
        "postgresql://admin:S3cretPassw0rd@db/x",
    ]
    proxy = start_proxy(tmp_path, policy, upstream)
    try:
        reply = proxy.request(call(1, "echo", {"text": "x"}))
        assert token not in json.dumps(reply)
        proxy.close_stdin()
        proxy.wait()
    finally:
        proxy.stop()
    state = tmp_path / "state"
    for path in [*state.rglob("*"), *[p for p in [tmp_path / "state"] if p.exists()]]:
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and b"S3cretPassw0rd" not in data, path
    assert (state.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o077) == 0 for p in state.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (
            [
                "docker",
                "run",
                "-i",
                "--rm",
                "-e",
                "GITHUB_PERSONAL_ACCESS_TOKEN=ghp_x",
                "ghcr.io/github/github-mcp-server",
            ],
            "github-mcp-server",
        ),
        (["docker", "run", "-e", "TOKEN", "img/srv"], "srv"),
        (["npx", "-y", "@modelcontextprotocol/server-filesystem", "/tmp"], "server-filesystem"),
        (["uvx", "mcp-server-git@1.2"], "mcp-server-git"),
        (["python", "server.py", "postgresql://a:b@h/db"], "server"),
    ],
    ids=["docker-env-assignment", "docker-env-name", "npx-scoped", "uvx-versioned", "dsn-argument"],
)
def test_derived_server_name_never_takes_a_value(command: list[str], name: str) -> None:
    from intercept.proxy.server_name import derive_server_name

    assert derive_server_name(command) == name


def test_ids_in_the_proxys_namespace_are_refused(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, RAW_UPSTREAM)
    try:
        reply = proxy.request(
            {"jsonrpc": "2.0", "id": "intercept-00000000-1", "method": "tools/call", "params": {"name": "big"}}
        )
        assert reply["error"]["code"] == -32600
        reply = proxy.request([{"jsonrpc": "2.0", "id": "intercept-x-2", "method": "ping"}])  # type: ignore[arg-type]
        assert reply["error"]["code"] == -32600
        proxy.send(cancel_message("intercept-x-3"))
        proxy.sync()
        assert [m.get("method") for m in upstream_saw(tmp_path)] == ["ping"]
    finally:
        proxy.stop()


ODD_REPLY_UPSTREAM = r"""
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    if message.get("method") == "tools/call":
        request_id = json.dumps(message["id"])
        kind = message["params"]["name"]
        text = {"half": '"\\ud83d"', "nan": "NaN", "badutf8": '"\xff"'}[kind]
        sys.stdout.buffer.write(('{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":%s}],"isError":false}}\n'
                                 % (request_id, text)).encode("utf-8", "surrogateescape") if kind != "badutf8" else
                                ('{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"' % request_id).encode()
                                + b"\xff" + b'"}],"isError":false}}\n')
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {}}) + "\n")
    sys.stdout.flush()
"""


@pytest.mark.parametrize("kind", ["half", "nan", "badutf8"], ids=["lone-surrogate-escape", "nan", "invalid-utf8"])
def test_odd_replies_to_watched_calls_still_reach_the_client_under_its_id(
    tmp_path: Path, write_policy: Callable[[str], Path], kind: str
) -> None:
    policy = write_policy(
        'version: "1"\ntools:\n  "*":\n    rules:\n      - {name: budget, rate_limit: 100/hour}\n', "rl.yaml"
    )
    proxy = start_proxy(tmp_path, policy, [sys.executable, "-c", ODD_REPLY_UPSTREAM])
    try:
        proxy.send(call(7, kind))
        raw = proxy.read_raw()
        assert b'"id":7' in raw.replace(b" ", b"")
        assert b"intercept-" not in raw
        assert b"-32603" not in raw
    finally:
        proxy.stop()


def test_batch_cannot_reuse_the_id_of_a_pending_watched_call(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, SCRIPTED_UPSTREAM)
    try:
        hold_approved_slow_call(proxy, tmp_path / "state", {})
        reply = proxy.request([{"jsonrpc": "2.0", "id": 2, "method": "ping"}])  # type: ignore[arg-type]
        assert reply["error"]["code"] == -32600
    finally:
        proxy.stop()
