"""Test helpers: spawn the real proxy around a fixture upstream and talk raw JSON-RPC to it."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
RAW_SERVER = FIXTURES / "servers" / "raw_server.py"
TOOL_SERVER = FIXTURES / "servers" / "tool_server.py"
READ_TIMEOUT_S = 20.0


def proxy_command(policy: Path, state_dir: Path, upstream: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "intercept",
        "-c",
        str(policy),
        "--state-dir",
        str(state_dir),
        *extra,
        "--",
        *upstream,
    ]


class ProxyProcess:
    """The proxy as a subprocess with raw pipes; stdout lines arrive through a reader thread."""

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
        line = self._lines.get(timeout=timeout_s)
        if line is None:
            raise EOFError(f"proxy closed stdout; stderr:\n{self.stderr}")
        return line

    def read(self, timeout_s: float = READ_TIMEOUT_S) -> Any:
        return json.loads(self.read_raw(timeout_s))

    def request(self, message: dict[str, Any]) -> Any:
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=READ_TIMEOUT_S)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def call(request_id: Any, tool: str, arguments: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments or {}, **params},
    }


def children_of(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
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
