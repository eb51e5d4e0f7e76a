"""Helpers for the approval tests: the approvals CLI as a subprocess, SDK and raw sessions, waits on time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError, StdioServerParameters

from tests.support import ROOT, ProxyProcess, call

MODES = ["legacy", "2026-07-28"]
APPROVAL_REQUIRED = -32003
DENIED_PREFIX = "[INTERCEPT POLICY DENIED] "
CLI_TIMEOUT_S = 30.0
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
APPROVAL_ID = re.compile(r"\bapr_[A-Za-z0-9_-]+")

# The scripted upstream (fixtures/servers/scripted_server.py), started as a script.
SCRIPTED_UPSTREAM = str(ROOT / "fixtures" / "servers" / "scripted_server.py")


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without a default state dir, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "INTERCEPT_STATE_DIR"}
    env.update(extra)
    return env


# -- the intercept CLI ---------------------------------------------------------------------


def intercept(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`intercept ARGS...` as a subprocess (never raises on a non-zero exit)."""
    return subprocess.run(
        [sys.executable, "-m", "intercept", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or base_env(),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts exit 1 with exactly one line on stderr (and nothing on stdout); returns that line."""
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def approve(state_dir: Path, approval_id: str, actor: str = "tester", *extra: str) -> str:
    return ok(intercept("approvals", "approve", approval_id, "--state-dir", str(state_dir), "--actor", actor, *extra))


def deny(state_dir: Path, approval_id: str, actor: str, reason: str) -> str:
    return ok(
        intercept("approvals", "deny", approval_id, "--state-dir", str(state_dir), "--actor", actor, "--reason", reason)
    )


def show(state_dir: Path, approval_id: str) -> dict[str, Any]:
    return json.loads(ok(intercept("approvals", "show", approval_id, "--json", "--state-dir", str(state_dir))))


def list_all(state_dir: Path) -> list[dict[str, Any]]:
    return json.loads(ok(intercept("approvals", "list", "--all", "--json", "--state-dir", str(state_dir))))


def events(state_dir: Path) -> list[dict[str, Any]]:
    out = ok(intercept("events", "tail", "--json", "-n", "100000", "--state-dir", str(state_dir)))
    return [json.loads(line) for line in out.splitlines()]


def approval_events(state_dir: Path) -> list[tuple[str, str]]:
    return [(e["type"], e["approval_id"]) for e in events(state_dir) if e["type"].startswith("approval_")]


def history(record: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in record["history"]]


# -- upstream records ----------------------------------------------------------------------


def executions(log: Path) -> list[dict[str, Any]]:
    """What ran upstream: tool and arguments (the request id is the proxy's for watched calls)."""
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [{"tool": r["tool"], "arguments": r["arguments"]} for r in records]


# -- time ----------------------------------------------------------------------------------


def epoch(rfc3339: str) -> float:
    assert RFC3339_UTC.match(rfc3339), rfc3339
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def wait_until_past(rfc3339: str, limit_s: float = 5.0) -> None:
    """Expiry is defined by the wall clock: wait (bounded) until it has passed `rfc3339`."""
    deadline = epoch(rfc3339)
    assert deadline - time.time() < limit_s, f"{rfc3339} is too far away for a test"
    while time.time() <= deadline:
        time.sleep(min(0.05, max(0.001, deadline - time.time() + 0.001)))


# -- SDK sessions --------------------------------------------------------------------------


@dataclass
class Session:
    """What a test needs to drive one proxy with the SDK client and check what it did."""

    policy: Path
    state_dir: Path
    exec_log: Path


def proxy_args(policy: Path, state_dir: Path | None, upstream: Iterable[str], *extra: str) -> list[str]:
    state = ["--state-dir", str(state_dir)] if state_dir is not None else []
    return ["-m", "intercept", "-c", str(policy), *state, *extra, "--", *upstream]


@asynccontextmanager
async def sdk_client(
    session: Session,
    mode: str,
    upstream: Iterable[str],
    *extra: str,
    explicit_state_dir: bool = True,
) -> AsyncIterator[Client]:
    """The SDK client on the proxy; without `explicit_state_dir` the state dir comes from the env."""
    env = base_env(FIXTURE_EXEC_LOG=str(session.exec_log))
    if not explicit_state_dir:
        env["INTERCEPT_STATE_DIR"] = str(session.state_dir)
    state_dir = session.state_dir if explicit_state_dir else None
    params = StdioServerParameters(
        command=sys.executable, args=proxy_args(session.policy, state_dir, upstream, *extra), env=env, cwd=str(ROOT)
    )
    async with Client(params, mode=mode) as client:
        yield client


async def approval_required(client: Client, tool: str, arguments: dict[str, Any]) -> MCPError:
    """Calls the tool and asserts the proxy answered -32003; returns the error."""
    with pytest.raises(MCPError) as caught:
        await client.call_tool(tool, arguments)
    assert caught.value.code == APPROVAL_REQUIRED, caught.value
    return caught.value


# -- raw sessions --------------------------------------------------------------------------


def handshake(proxy: ProxyProcess, request_id: str = "init") -> None:
    """The handshake-era initialize exchange over raw pipes."""
    proxy.send(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "approval-tests", "version": "1"},
            },
        }
    )
    answer = proxy.read()
    assert answer.get("id") == request_id and "result" in answer, answer
    proxy.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def read_reply(proxy: ProxyProcess, request_id: Any) -> dict[str, Any]:
    """The answer to `request_id`, skipping notifications the upstream sends meanwhile."""
    while True:
        message = proxy.read()
        if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
            return message


def raw_call(proxy: ProxyProcess, request_id: Any, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    proxy.send(call(request_id, tool, arguments))
    return read_reply(proxy, request_id)


def pending_id(reply: dict[str, Any]) -> str:
    """Asserts a raw reply is the -32003 error; returns its approval id."""
    assert "error" in reply, reply
    assert reply["error"]["code"] == APPROVAL_REQUIRED, reply
    return reply["error"]["data"]["approval_id"]


def wait_for_notification(proxy: ProxyProcess, text: str) -> None:
    """Read until the upstream's `notifications/message` with this data arrives."""
    while True:
        message = proxy.read()
        data = str(message["params"]["data"]) if message.get("method") == "notifications/message" else None
        # Approved calls reach the upstream under an id of the proxy's, so "started <id>" shows that id.
        if data is not None and (data == text or (text.startswith("started ") and data.startswith("started "))):
            return
