"""Process life: exit status, signals, stdin close, no orphans, start-up failures."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from intercept.proxy.child import SUPERVISOR_NAME
from tests.e2e.support import (
    RAW_SERVER,
    RAW_UPSTREAM,
    ProxyProcess,
    call,
    children_of,
    fixture_env,
    initialize_message,
    pid_alive,
    proxy_command,
    start_proxy,
)

POLICY = 'version: "1"\ntools: {}\n'
STUBBORN_UPSTREAM = (
    "import signal, sys\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    'print(\'{"jsonrpc":"2.0","method":"ready"}\', flush=True)\n'
    "while True:\n"
    "    signal.pause()\n"
)


def wait_for_exit(pid: int, timeout_s: float = 20.0) -> bool:
    """Block until a (not necessarily child) process exits, via a pidfd; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(fd)


@pytest.fixture
def policy(write_policy: Callable[[str], Path]) -> Path:
    return write_policy(POLICY)


def upstream_pid(proxy: ProxyProcess) -> int:
    """The proxy's child that is not the process-group supervisor."""
    (pid,) = [
        child
        for child in children_of(proxy.proc.pid)
        if SUPERVISOR_NAME.encode() not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
    return pid


def test_proxy_exits_with_the_upstream_status(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, RAW_UPSTREAM)
    try:
        proxy.send(call(1, "exit", {"code": 7}))
        assert proxy.wait() == 7
    finally:
        proxy.stop()


def test_closing_stdin_ends_upstream_and_proxy(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, RAW_UPSTREAM)
    try:
        proxy.sync()
        child = upstream_pid(proxy)
        proxy.close_stdin()
        assert proxy.wait() == 0
        assert not pid_alive(child)
    finally:
        proxy.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_is_forwarded_and_proxy_exits_after_upstream(tmp_path: Path, policy: Path, sig: signal.Signals) -> None:
    proxy = start_proxy(tmp_path, policy, RAW_UPSTREAM)
    try:
        proxy.sync()
        child = upstream_pid(proxy)
        proxy.proc.send_signal(sig)
        status = proxy.wait()
        assert status in (128 + sig, 1)  # killed by the signal, or Python's KeyboardInterrupt exit
        assert not pid_alive(child)
    finally:
        proxy.stop()


def test_upstream_ignoring_eof_and_sigterm_is_killed_after_grace(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, [sys.executable, "-c", STUBBORN_UPSTREAM], "--shutdown-grace", "0.3")
    try:
        assert proxy.read()["method"] == "ready"
        child = upstream_pid(proxy)
        proxy.close_stdin()
        assert proxy.wait() == 128 + signal.SIGKILL
        assert not pid_alive(child)
    finally:
        proxy.stop()


def test_killing_the_proxy_kills_the_upstream(tmp_path: Path, policy: Path) -> None:
    proxy = start_proxy(tmp_path, policy, [sys.executable, "-c", STUBBORN_UPSTREAM])
    try:
        assert proxy.read()["method"] == "ready"
        child = upstream_pid(proxy)
        proxy.proc.kill()
        proxy.wait()
        assert wait_for_exit(child)
    finally:
        proxy.stop()


def test_stdin_from_dev_null_ends_the_session(tmp_path: Path, policy: Path) -> None:
    # asyncio accepts /dev/null as a pipe but epoll cannot watch it: its end must still be seen.
    with open(os.devnull, "rb") as devnull:
        result = subprocess.run(
            proxy_command(policy, tmp_path / "state", RAW_UPSTREAM),
            stdin=devnull,
            capture_output=True,
            timeout=20,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""


def test_upstream_not_found_is_one_line_and_status_127(tmp_path: Path, policy: Path) -> None:
    result = subprocess.run(
        proxy_command(policy, tmp_path / "state", ["definitely-not-a-command-xyz"]),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 127
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "definitely-not-a-command-xyz" in lines[0]
    assert result.stdout == ""


def test_upstream_not_executable_is_status_126(tmp_path: Path, policy: Path) -> None:
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\n")
    result = subprocess.run(
        proxy_command(policy, tmp_path / "state", [str(script)]), capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 126
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "policy_text",
    [
        pytest.param(
            'version: "1"\ntools:\n  x:\n    rules:\n      - name: r\n        acton: deny\n', id="unknown-key"
        ),
        pytest.param("version: [unclosed\n", id="bad-yaml"),
        pytest.param('version: "1"\ntools:\n', id="cut-short"),
        pytest.param(None, id="missing-file"),
    ],
)
def test_invalid_policy_at_start_proxies_nothing(tmp_path: Path, policy_text: str | None) -> None:
    """The upstream starts while the policy loads (the first answer is faster so), but it is
    killed before it has received a byte: the client's initialize never reaches it."""
    policy = tmp_path / "policy.yaml"
    if policy_text is not None:
        policy.write_text(policy_text)
    raw_log = tmp_path / "raw.log"
    proxy = ProxyProcess(
        proxy_command(policy, tmp_path / "state", RAW_UPSTREAM),
        env=fixture_env(raw_log=raw_log),
    )
    try:
        proxy.send(initialize_message(1))
        assert proxy.wait() == 1
        assert proxy.stderr.startswith("intercept: ") and "nothing proxied: " in proxy.stderr
        assert len(proxy.stderr.strip().splitlines()) == 1
        assert not raw_log.exists() or raw_log.read_bytes() == b""
        with pytest.raises(EOFError):
            proxy.read()  # nothing answered either
    finally:
        proxy.stop()


def test_command_may_follow_options_without_double_dash(tmp_path: Path, policy: Path) -> None:
    command = [sys.executable, "-m", "intercept", "-c", str(policy), sys.executable, str(RAW_SERVER)]
    proxy = ProxyProcess(command)
    try:
        reply = proxy.request(call(1, "echo", {"text": "hi"}))
        assert reply["result"]["isError"] is False
        proxy.close_stdin()
        assert proxy.wait() == 0
    finally:
        proxy.stop()
