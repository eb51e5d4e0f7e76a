"""Helpers for the at-most-once and argument-type tests: the real proxy around real upstreams,
driven over raw pipes so a test controls the exact bytes (and can put a call and its cancel into
one write).

What ran upstream is read from the upstream's own record ($FIXTURE_EXEC_LOG, or the file a
filesystem server edited), never from the proxy's replies.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.approval_support import APPROVAL_REQUIRED, DENIED_PREFIX, base_env, handshake
from tests.support import FIXTURES, ProxyProcess, call, proxy_command

SERVERS = FIXTURES / "servers"
TYPED_UPSTREAM = [sys.executable, str(SERVERS / "typed_server.py")]
ERROR_CODE_UPSTREAM = [sys.executable, str(SERVERS / "error_code_server.py")]
SCRIPTED_UPSTREAM = [sys.executable, str(SERVERS / "scripted_server.py")]

# How long a test gives a proxy to give back a cancelled call's approval or counters on its own
# (the proxy before the fix did so `--cancel-settle` seconds after the cancel, checked every
# 0.25 s; tests pass `--cancel-settle 0`, now a no-op). A proxy that keeps them costs the test
# this long, once per forwarded cancelled call: proving that something does not happen needs a
# bounded wait.
GIVE_BACK_WAIT_S = 1.0


@dataclass
class Harness:
    """One test's policy, state dir and upstream record; starts proxies and stops them all."""

    root: Path
    policy: Path = field(init=False)
    state_dir: Path = field(init=False)
    exec_log: Path = field(init=False)
    proxies: list[ProxyProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.policy = self.root / "policy.yaml"
        self.state_dir = self.root / "state"
        self.exec_log = self.root / "exec.log"

    def write_policy(self, text: str) -> Path:
        self.policy.write_text(text)
        return self.policy

    def start(
        self, upstream: list[str], *extra: str, name: str = "fixture", handshake_first: bool = True
    ) -> ProxyProcess:
        """The proxy around `upstream` (`--name name`, then `extra` options), handshake done."""
        proxy = ProxyProcess(
            proxy_command(self.policy, self.state_dir, upstream, "--name", name, *extra),
            env=base_env(FIXTURE_EXEC_LOG=str(self.exec_log)),
        )
        self.proxies.append(proxy)
        if handshake_first:
            handshake(proxy)
        return proxy

    def executions(self) -> list[dict[str, Any]]:
        """Every record the upstream wrote, in order."""
        if not self.exec_log.exists():
            return []
        return [json.loads(line) for line in self.exec_log.read_text().splitlines() if line.strip()]

    def ran(self, tool: str) -> list[dict[str, Any]]:
        """The arguments of every execution of `tool`, as the tool received them."""
        return [r["arguments"] for r in self.executions() if r["tool"] == tool]

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.stop()


# -- messages ----------------------------------------------------------------------------------


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def cancel_message(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}


def send_call_and_cancel(proxy: ProxyProcess, request_id: Any, tool: str, arguments: dict[str, Any]) -> None:
    """A call and its cancel in one write: the upstream reads both at once."""
    proxy.send_raw(line(call(request_id, tool, arguments)) + line(cancel_message(request_id)))


def is_reply(message: Any, request_id: Any) -> bool:
    return isinstance(message, dict) and message.get("id") == request_id and "method" not in message


def is_started(message: Any) -> bool:
    """The notifications/message a fixture tool sends when it has started ("started <...>")."""
    return (
        isinstance(message, dict)
        and message.get("method") == "notifications/message"
        and str((message.get("params") or {}).get("data", "")).startswith("started ")
    )


def read_reply(proxy: ProxyProcess, request_id: Any) -> dict[str, Any]:
    """The reply to `request_id`, skipping everything else."""
    while True:
        message = proxy.read()
        if is_reply(message, request_id):
            return message


def sync_collect(proxy: ProxyProcess, marker: str) -> list[Any]:
    """A ping round trip; returns every message that arrived before its answer. Once it is back,
    the upstream has read every earlier line and the proxy has answered every earlier call it
    answers itself."""
    ping_id = f"__{marker}"
    proxy.send({"jsonrpc": "2.0", "id": ping_id, "method": "ping"})
    seen: list[Any] = []
    while True:
        message = proxy.read()
        if is_reply(message, ping_id):
            return seen
        seen.append(message)


def started_or_answered(proxy: ProxyProcess, request_id: Any) -> dict[str, Any] | None:
    """None once the upstream announces that the tool started (the call was forwarded), else the
    reply to `request_id` (the proxy answered it itself, or the upstream answered at once)."""
    while True:
        message = proxy.read()
        if is_started(message):
            return None
        if is_reply(message, request_id):
            return message


def list_tools(proxy: ProxyProcess, request_id: Any = "list") -> list[dict[str, Any]]:
    """tools/list, as an MCP client does before calling tools."""
    proxy.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {}})
    reply = read_reply(proxy, request_id)
    assert "result" in reply, reply
    return reply["result"]["tools"]


def await_give_back(proxy: ProxyProcess, count: int, timeout_s: float = GIVE_BACK_WAIT_S) -> bool:
    """Wait (bounded) until the proxy has logged `count` give-backs ("... given back ...", or
    "rolled back" as the proxy before the fix said) on stderr. True if it did; False if it kept
    what the calls took for `timeout_s`."""
    try:
        proxy.wait_for_stderr_any(("given back", "rolled back"), count=count, timeout_s=timeout_s)
    except TimeoutError:
        return False
    return True


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `condition` (something another process writes, with no other signal) until it holds
    or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


# -- what the proxy answered -------------------------------------------------------------------


def approval_id_of(reply: dict[str, Any]) -> str | None:
    """The approval id of a -32003 reply, else None."""
    error = reply.get("error")
    if isinstance(error, dict) and error.get("code") == APPROVAL_REQUIRED:
        return error["data"]["approval_id"]
    return None


def denial_text(reply: dict[str, Any]) -> str | None:
    """The text of a policy denial (a result with isError true and the denial prefix), else None."""
    result = reply.get("result")
    if not isinstance(result, dict) or result.get("isError") is not True:
        return None
    content = result.get("content") or [{}]
    text = str(content[0].get("text", ""))
    return text if text.startswith(DENIED_PREFIX) else None


def describe(reply: dict[str, Any] | None) -> str:
    """A short account of a reply for assertion messages."""
    if reply is None:
        return "forwarded (the upstream started the tool)"
    if approval_id_of(reply):
        return f"-32003 approval required ({approval_id_of(reply)})"
    if "error" in reply:
        return f"JSON-RPC error {reply['error'].get('code')}: {reply['error'].get('message')}"
    text = denial_text(reply)
    if text is not None:
        return f"denied: {text}"
    return f"result: {json.dumps(reply.get('result'))[:200]}"
