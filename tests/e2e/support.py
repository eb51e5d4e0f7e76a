"""What the end-to-end tests share: the real proxy (`python -m intercept ... -- <server>`) and the
`intercept` CLI as subprocesses, around the fixture servers in fixtures/servers/ and npm's
@modelcontextprotocol/server-filesystem, driven over raw pipes (so a test controls the exact
bytes) or with the MCP SDK's client.

What ran upstream is read from the upstream's own record ($FIXTURE_EXEC_LOG of the Python
fixtures, $FIXTURE_RAW_LOG of raw_server.py, or the file a filesystem server edited), never from
the proxy's replies.

One definition of each helper, by section:

- where things are: the fixture servers as paths and as upstream commands, the npm install;
- wire constants: the denial prefix, the -32003 code, the SDK client's eras, a policy;
- the proxy as a process: `base_env`/`fixture_env`, `proxy_command`, `ProxyProcess` (every read
  has a timeout), `start_proxy`, and `Harness` (one test's policy, state dir and upstream records;
  stops every proxy it started; the `harness` fixture in tests/e2e/conftest.py);
- JSON-RPC messages, and reading what the proxy sends: `call`, `handshake`, `read_reply`,
  `call_tool`, `sync_collect`, `wait_for_started`, ...; asking and approving: `ask_and_approve`,
  `start_approved_call`;
- what the proxy answered: `pending_id`, `approval_id_of`, `denial_text`, `describe`, ...;
- what ran upstream: `exec_records`, `executions`, `executed_tools`, `raw_log_messages`;
- the SDK client on the proxy: `sdk_client`, `approval_required`;
- the CLI: `run_cli`, `ok`, `one_line_error`, `validate`, the approvals and events commands;
- time: `epoch`, `wait_until_past`, `wait_until`, `await_give_back`, `avoid_the_end_of_an_hour`;
- processes: `children_of`, `pid_alive`.

Helpers the in-process tests use as well live in tests/support.py (which starts no process) and
are imported from there.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError, StdioServerParameters

from tests.support import ROOT

# -- where things are ------------------------------------------------------------------------------

FIXTURES = ROOT / "fixtures"
SERVERS = FIXTURES / "servers"
RAW_SERVER = SERVERS / "raw_server.py"  # stdlib; records every line it receives in $FIXTURE_RAW_LOG
TOOL_SERVER = SERVERS / "tool_server.py"  # an MCPServer (both eras); records runs in $FIXTURE_EXEC_LOG
SCRIPTED_SERVER = SERVERS / "scripted_server.py"  # stdlib; tools that reject, fail, hold ($FIXTURE_EXEC_LOG)
TYPED_SERVER = SERVERS / "typed_server.py"  # an MCPServer with typed parameters ($FIXTURE_EXEC_LOG)
ERROR_CODE_SERVER = SERVERS / "error_code_server.py"  # stdlib; the JSON-RPC error asked for ($FIXTURE_EXEC_LOG)

RAW_UPSTREAM = [sys.executable, str(RAW_SERVER)]
TOOL_UPSTREAM = [sys.executable, str(TOOL_SERVER)]
SCRIPTED_UPSTREAM = [sys.executable, str(SCRIPTED_SERVER)]
TYPED_UPSTREAM = [sys.executable, str(TYPED_SERVER)]
ERROR_CODE_UPSTREAM = [sys.executable, str(ERROR_CODE_SERVER)]

# @modelcontextprotocol/server-filesystem, installed into .cache/npm by the `filesystem_server`
# fixture (tests/e2e/conftest.py) or by scripts/test.sh.
NPM_DIR = ROOT / ".cache" / "npm"
FILESYSTEM_PACKAGE = "@modelcontextprotocol/server-filesystem"
FILESYSTEM_BIN = "mcp-server-filesystem"

READ_TIMEOUT_S = 20.0  # one message from the proxy, a wait for stderr, a process's exit
CLI_TIMEOUT_S = 60.0  # one run of the `intercept` CLI

# -- wire constants and policies -------------------------------------------------------------------

MODES = ["legacy", "2026-07-28"]  # the SDK client's eras: handshake, and stateless
APPROVAL_REQUIRED = -32003
DENIED_PREFIX = "[INTERCEPT POLICY DENIED] "
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
APPROVAL_ID = re.compile(r"\bapr_[A-Za-z0-9_-]+")

WRITE_NEEDS_APPROVAL = """
version: "1"
tools:
  write_file:
    rules:
      - name: "writes need a human"
        action: require_approval
"""

# -- the proxy as a process ------------------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without a default state dir, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "INTERCEPT_STATE_DIR"}
    env.update(extra)
    return env


def fixture_env(*, exec_log: Path | None = None, raw_log: Path | None = None, **extra: str) -> dict[str, str]:
    """`base_env` telling the fixture upstreams where to record what they ran and received."""
    logs = {"FIXTURE_EXEC_LOG": exec_log, "FIXTURE_RAW_LOG": raw_log}
    return base_env(**{name: str(path) for name, path in logs.items() if path is not None}, **extra)


def proxy_command(policy: Path, state_dir: Path, upstream: list[str], *extra: str) -> list[str]:
    """`python -m intercept -c POLICY --state-dir STATE_DIR EXTRA... -- UPSTREAM...`."""
    return [sys.executable, "-m", "intercept", "-c", str(policy), "--state-dir", str(state_dir), *extra, "--", *upstream]


class ProxyProcess:
    """The proxy as a subprocess (run from this checkout) with raw pipes; stdout lines and stderr
    arrive through reader threads, so every read and wait has a timeout."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: list[bytes] = []
        self._stderr_changed = threading.Condition()
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._stderr_changed:
                self._stderr.append(line)
                self._stderr_changed.notify_all()

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def wait_for_stderr(self, fragment: str, count: int = 1, timeout_s: float = READ_TIMEOUT_S) -> None:
        """Block until `fragment` has appeared on `count` stderr lines."""
        self.wait_for_stderr_any((fragment,), count, timeout_s)

    def wait_for_stderr_any(self, fragments: tuple[str, ...], count: int = 1, timeout_s: float = READ_TIMEOUT_S) -> None:
        """Block until lines containing any of `fragments` have appeared `count` times on stderr."""

        def seen() -> bool:
            lines = [line.decode(errors="replace") for line in self._stderr]
            return sum(any(f in line for f in fragments) for line in lines) >= count

        with self._stderr_changed:
            if not self._stderr_changed.wait_for(seen, timeout=timeout_s):
                raise TimeoutError(f"none of {fragments!r} on stderr; stderr so far:\n{self.stderr}")

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: Any) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def read_raw(self, timeout_s: float = READ_TIMEOUT_S) -> bytes:
        """The next line on the proxy's stdout (queue.Empty after `timeout_s`; EOFError once it closed)."""
        line = self._lines.get(timeout=timeout_s)
        if line is None:
            raise EOFError(f"proxy closed stdout; stderr:\n{self.stderr}")
        return line

    def read(self, timeout_s: float = READ_TIMEOUT_S) -> Any:
        return json.loads(self.read_raw(timeout_s))

    def request(self, message: Any) -> Any:
        """Send `message` and return the next message (for exchanges where nothing else arrives)."""
        self.send(message)
        return self.read()

    def sync(self, marker: str = "sync") -> None:
        """Round-trip a request: once its answer is back, the upstream has seen every earlier line."""
        self.send({"jsonrpc": "2.0", "id": f"__{marker}", "method": "ping"})
        while True:
            answer = self.read()
            if isinstance(answer, dict) and answer.get("id") == f"__{marker}":
                return

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout_s: float = READ_TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout_s)

    def finish(self) -> int:
        """Close the client side and wait: the proxy flushes its events and exits; its status."""
        self.close_stdin()
        return self.wait()

    def stop(self) -> None:
        """SIGKILL the proxy if it still runs and close its pipes (always safe to call again)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=READ_TIMEOUT_S)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def start_proxy(tmp_path: Path, policy: Path, upstream: list[str], *extra: str) -> ProxyProcess:
    """The proxy around `upstream` with its state in tmp_path/state; the fixture upstreams record
    to tmp_path/exec.log and tmp_path/raw.log. The caller stops it."""
    env = fixture_env(exec_log=tmp_path / "exec.log", raw_log=tmp_path / "raw.log")
    return ProxyProcess(proxy_command(policy, tmp_path / "state", upstream, *extra), env=env)


@dataclass
class Harness:
    """One test's policy, state dir and upstream records under `root`; starts proxies on them and
    stops all it started (`close`). The paths may be changed before a proxy starts."""

    root: Path
    policy: Path = field(init=False)
    state_dir: Path = field(init=False)
    exec_log: Path = field(init=False)
    raw_log: Path = field(init=False)
    proxies: list[ProxyProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.policy = self.root / "policy.yaml"
        self.state_dir = self.root / "state"
        self.exec_log = self.root / "exec.log"
        self.raw_log = self.root / "raw.log"

    def write_policy(self, text: str) -> Path:
        self.policy.write_text(text)
        return self.policy

    def start(
        self,
        upstream: list[str],
        *extra: str,
        name: str | None = "fixture",
        handshake_first: bool = True,
        raw_log: Path | None = None,
    ) -> ProxyProcess:
        """The proxy around `upstream` (`--name name` unless None, then the `extra` options) with
        the handshake done unless `handshake_first` is False; raw_server records to `raw_log`
        instead of the harness's own when given."""
        proxy = ProxyProcess(
            proxy_command(self.policy, self.state_dir, upstream, *(("--name", name) if name else ()), *extra),
            env=fixture_env(exec_log=self.exec_log, raw_log=raw_log or self.raw_log),
        )
        self.proxies.append(proxy)
        if handshake_first:
            handshake(proxy)
        return proxy

    def exec_records(self) -> list[dict[str, Any]]:
        """Every record the upstream wrote to `exec_log`, in order."""
        return exec_records(self.exec_log)

    def ran(self, tool: str) -> list[dict[str, Any]]:
        """The arguments of every execution of `tool`, as the tool received them."""
        return [r["arguments"] for r in self.exec_records() if r["tool"] == tool]

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.stop()


# -- JSON-RPC messages -----------------------------------------------------------------------------


def call(request_id: Any, tool: str, arguments: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    """A tools/call request."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments or {}, **params},
    }


def initialize_message(request_id: Any = "init") -> dict[str, Any]:
    """The handshake-era initialize request."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "intercept-tests", "version": "1"},
        },
    }


def ping_message(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "ping"}


def cancel_message(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}


def line(message: Any) -> bytes:
    """A message as one line on the wire."""
    return json.dumps(message).encode() + b"\n"


# -- reading what the proxy sends ------------------------------------------------------------------


def is_reply(message: Any, request_id: Any) -> bool:
    return isinstance(message, dict) and message.get("id") == request_id and "method" not in message


def is_started(message: Any) -> bool:
    """The notifications/message a fixture tool sends when it has started ("started <id>"; an
    approved or counted call reaches the upstream under an id of the proxy's, so any id)."""
    return (
        isinstance(message, dict)
        and message.get("method") == "notifications/message"
        and str((message.get("params") or {}).get("data", "")).startswith("started ")
    )


def read_until(proxy: ProxyProcess, wanted: Callable[[Any], bool], timeout_s: float = READ_TIMEOUT_S) -> Any:
    """The next message `wanted` accepts; messages before it are skipped."""
    while True:
        message = proxy.read(timeout_s)
        if wanted(message):
            return message


def read_reply(proxy: ProxyProcess, request_id: Any) -> dict[str, Any]:
    """The reply to `request_id`, skipping everything else (notifications, other replies)."""
    return read_until(proxy, lambda message: is_reply(message, request_id))


def read_through_reply(proxy: ProxyProcess, request_id: Any) -> list[Any]:
    """Every message up to and including the reply to `request_id`, in arrival order."""
    seen: list[Any] = []
    while not seen or not is_reply(seen[-1], request_id):
        seen.append(proxy.read())
    return seen


def call_tool(proxy: ProxyProcess, request_id: Any, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """tools/call over the raw pipes; the reply to it."""
    proxy.send(call(request_id, tool, arguments))
    return read_reply(proxy, request_id)


def handshake(proxy: ProxyProcess, request_id: str = "init") -> None:
    """The handshake-era initialize exchange over raw pipes (the answer must be the first message)."""
    proxy.send(initialize_message(request_id))
    answer = proxy.read()
    assert is_reply(answer, request_id) and "result" in answer, answer
    proxy.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def list_tools(proxy: ProxyProcess, request_id: Any = "list") -> list[dict[str, Any]]:
    """tools/list, as an MCP client does before calling tools."""
    proxy.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {}})
    reply = read_reply(proxy, request_id)
    assert "result" in reply, reply
    return reply["result"]["tools"]


def sync_collect(proxy: ProxyProcess, marker: str = "sync", *, replies_only: bool = False) -> list[Any]:
    """A ping round trip; every message (or only every reply) that arrived before its answer. Once
    it is back, the upstream has read every earlier line and the proxy has answered every earlier
    call it answers itself."""
    ping_id = f"__{marker}"
    proxy.send(ping_message(ping_id))
    seen = read_through_reply(proxy, ping_id)[:-1]
    return [m for m in seen if "method" not in m] if replies_only else seen


def send_call_and_cancel(proxy: ProxyProcess, request_id: Any, tool: str, arguments: dict[str, Any]) -> None:
    """A call and its cancel in one write: the upstream reads both at once."""
    proxy.send_raw(line(call(request_id, tool, arguments)) + line(cancel_message(request_id)))


def wait_for_started(proxy: ProxyProcess) -> None:
    """Read until a fixture tool announces it started (the call just sent reached the upstream)."""
    read_until(proxy, is_started)


def started_or_answered(proxy: ProxyProcess, request_id: Any) -> dict[str, Any] | None:
    """None once the upstream announces that the tool started (the call was forwarded), else the
    reply to `request_id` (the proxy answered it itself, or the upstream answered at once)."""
    message = read_until(proxy, lambda m: is_started(m) or is_reply(m, request_id))
    return None if is_started(message) else message


def ask_and_approve(proxy: ProxyProcess, state_dir: Path, request_id: Any, tool: str, arguments: dict[str, Any]) -> str:
    """Call `tool(arguments)`, assert the proxy held it for approval (-32003) and approve it with the
    CLI; the approval id. The identical call may then run once."""
    approval_id = pending_id(call_tool(proxy, request_id, tool, arguments))
    approve(state_dir, approval_id)
    return approval_id


def start_approved_call(proxy: ProxyProcess, state_dir: Path, tool: str, arguments: dict[str, Any]) -> str:
    """`ask_and_approve` as id 1, then the identical call as id 2, returning once the upstream
    announces it started (a fixture tool that holds it, such as scripted_server's `slow`, keeps it
    in flight); the approval id."""
    approval_id = ask_and_approve(proxy, state_dir, 1, tool, arguments)
    proxy.send(call(2, tool, arguments))
    wait_for_started(proxy)
    return approval_id


# -- what the proxy answered -----------------------------------------------------------------------


def pending_id(reply: dict[str, Any]) -> str:
    """Asserts a raw reply is the -32003 error; returns its approval id."""
    assert "error" in reply, reply
    assert reply["error"]["code"] == APPROVAL_REQUIRED, reply
    return reply["error"]["data"]["approval_id"]


def approval_id_of(reply: dict[str, Any]) -> str | None:
    """The approval id of a -32003 reply, else None."""
    error = reply.get("error")
    if isinstance(error, dict) and error.get("code") == APPROVAL_REQUIRED:
        return error["data"]["approval_id"]
    return None


def text_of(reply: dict[str, Any]) -> str:
    """The text of a result's first content item."""
    return reply["result"]["content"][0]["text"]


def denial_text(reply: dict[str, Any]) -> str | None:
    """The text of a policy denial (a result with isError true and the denial prefix), else None."""
    result = reply.get("result")
    if not isinstance(result, dict) or result.get("isError") is not True:
        return None
    content = result.get("content") or [{}]
    text = str(content[0].get("text", ""))
    return text if text.startswith(DENIED_PREFIX) else None


def is_denied(reply: dict[str, Any]) -> bool:
    return denial_text(reply) is not None


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


# -- what ran upstream -----------------------------------------------------------------------------


def exec_records(log: Path) -> list[dict[str, Any]]:
    """Every record a fixture upstream wrote to $FIXTURE_EXEC_LOG, in order ([] if none)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def executions(log: Path) -> list[dict[str, Any]]:
    """What ran upstream: tool and arguments (without the request id, the proxy's for watched calls)."""
    return [{"tool": r["tool"], "arguments": r["arguments"]} for r in exec_records(log)]


def executed_tools(log: Path) -> list[str]:
    """The names of the tools that ran upstream, in order."""
    return [r["tool"] for r in exec_records(log)]


def raw_log_messages(log: Path) -> list[Any]:
    """Every line raw_server received ($FIXTURE_RAW_LOG), parsed ([] if none)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


# -- the SDK client --------------------------------------------------------------------------------


@asynccontextmanager
async def sdk_client(
    harness: Harness,
    mode: str,
    upstream: Iterable[str],
    *extra: str,
    explicit_state_dir: bool = True,
    **client_options: Any,
) -> AsyncIterator[Client]:
    """The SDK client in era `mode` on a proxy around `upstream` with the harness's policy, state
    dir and exec log; without `explicit_state_dir` the state dir comes from the environment."""
    env = fixture_env(exec_log=harness.exec_log)
    if not explicit_state_dir:
        env["INTERCEPT_STATE_DIR"] = str(harness.state_dir)
    state = ["--state-dir", str(harness.state_dir)] if explicit_state_dir else []
    args = ["-m", "intercept", "-c", str(harness.policy), *state, *extra, "--", *upstream]
    params = StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(ROOT))
    async with Client(params, mode=mode, **client_options) as client:
        yield client


async def approval_required(client: Client, tool: str, arguments: dict[str, Any]) -> MCPError:
    """Calls the tool and asserts the proxy answered -32003; returns the error."""
    with pytest.raises(MCPError) as caught:
        await client.call_tool(tool, arguments)
    assert caught.value.code == APPROVAL_REQUIRED, caught.value
    return caught.value


# -- the intercept CLI -----------------------------------------------------------------------------


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout_s: float = CLI_TIMEOUT_S,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`intercept ARGS...` as a subprocess, importing this checkout from any `cwd` (never raises
    on a non-zero exit). `env` defaults to `base_env()`; `stdin`, when given, is all it reads
    (a passphrase piped to it)."""
    env = dict(env if env is not None else base_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "intercept", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout_s,
        check=False,
        input=stdin,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts exit 0; returns stdout."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts exit 1 with exactly one line on stderr (and nothing on stdout); returns that line."""
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def validate(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`intercept validate -c PATH EXTRA...`."""
    return run_cli("validate", "-c", str(path), *extra)


def approve(state_dir: Path, approval_id: str, actor: str = "tester", *extra: str) -> str:
    return ok(run_cli("approvals", "approve", approval_id, "--state-dir", str(state_dir), "--actor", actor, *extra))


def deny(state_dir: Path, approval_id: str, actor: str, reason: str) -> str:
    return ok(
        run_cli("approvals", "deny", approval_id, "--state-dir", str(state_dir), "--actor", actor, "--reason", reason)
    )


def show(state_dir: Path, approval_id: str) -> dict[str, Any]:
    """`approvals show --json`: the record."""
    return json.loads(ok(run_cli("approvals", "show", approval_id, "--json", "--state-dir", str(state_dir))))


def list_all(state_dir: Path) -> list[dict[str, Any]]:
    """`approvals list --all --json`: every record."""
    return json.loads(ok(run_cli("approvals", "list", "--all", "--json", "--state-dir", str(state_dir))))


def events(state_dir: Path) -> list[dict[str, Any]]:
    """`events tail --json`: every event."""
    out = ok(run_cli("events", "tail", "--json", "-n", "100000", "--state-dir", str(state_dir)))
    return [json.loads(line) for line in out.splitlines()]


def approval_events(state_dir: Path) -> list[tuple[str, str]]:
    return [(e["type"], e["approval_id"]) for e in events(state_dir) if e["type"].startswith("approval_")]


def history(record: dict[str, Any]) -> list[str]:
    """The events of an approval record's history, in order."""
    return [entry["event"] for entry in record["history"]]


# -- time ------------------------------------------------------------------------------------------

# How long a test gives a proxy to give back a cancelled call's approval or counters on its own
# (the proxy before the fix did so `--cancel-settle` seconds after the cancel, checked every
# 0.25 s; tests pass `--cancel-settle 0`, now a no-op). A proxy that keeps them costs the test
# this long, once per forwarded cancelled call: proving that something does not happen needs a
# bounded wait.
GIVE_BACK_WAIT_S = 1.0


def epoch(rfc3339: str) -> float:
    assert RFC3339_UTC.match(rfc3339), rfc3339
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def wait_until_past(rfc3339: str, limit_s: float = 5.0) -> None:
    """Expiry is defined by the wall clock: wait (bounded) until it has passed `rfc3339`."""
    deadline = epoch(rfc3339)
    assert deadline - time.time() < limit_s, f"{rfc3339} is too far away for a test"
    while time.time() <= deadline:
        time.sleep(min(0.05, max(0.001, deadline - time.time() + 0.001)))


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `condition` (something another process writes, with no other signal) until it holds
    or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def await_give_back(proxy: ProxyProcess, count: int, timeout_s: float = GIVE_BACK_WAIT_S) -> bool:
    """Wait (bounded) until the proxy has logged `count` give-backs ("... given back ...", or
    "rolled back" as the proxy before the fix said) on stderr. True if it did; False if it kept
    what the calls took for `timeout_s`."""
    try:
        proxy.wait_for_stderr_any(("given back", "rolled back"), count=count, timeout_s=timeout_s)
    except TimeoutError:
        return False
    return True


def avoid_the_end_of_an_hour() -> None:
    """Counters use the wall clock (hour windows): never start in the last 15 s of a UTC hour."""
    left = 3600 - time.time() % 3600
    if left < 15:
        time.sleep(left + 0.05)


# -- processes (Linux /proc) -----------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of a process."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"
