"""Orphans behind launchers: nothing the upstream starts outlives the proxy.

A launcher that forks instead of exec'ing (`sh -c 'server; true'`, `npx`) runs the real server as
its child, where the proxy's signals and the kernel's parent-death signal do not reach. The server
must end all the same, whether the proxy is told to stop (SIGTERM), loses its client (stdin
closes) or is SIGKILLed; and the supervisor that sees to the last case must not outlive the proxy.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from intercept.proxy.child import SUPERVISOR_NAME
from tests.e2e.support import (
    FILESYSTEM_BIN,
    NPM_DIR,
    RAW_SERVER,
    SERVERS,
    ProxyProcess,
    call,
    children_of,
    initialize_message,
    proxy_command,
)

POLICY = 'version: "1"\ntools: {}\n'
LINGERING_SERVER = SERVERS / "lingering_server.py"
SHUTDOWN_GRACE_S = "0.5"
GONE_TIMEOUT_S = 15.0
# The real filesystem server ends at stdin's EOF by itself. This preload gives it what keeps many
# servers alive past that (a timer, as a file watcher or a connection pool has), writes its pid and,
# like lingering_server.py, writes SIGTERM down before exiting; npx and npm (node too) are left alone.
KEEPALIVE_JS = """
if ((process.argv[1] || "").includes("mcp-server-filesystem")) {
  const fs = require("fs");
  fs.writeFileSync(process.env.FIXTURE_PID_FILE, String(process.pid));
  setInterval(() => {}, 1 << 30);
  process.on("SIGTERM", () => {
    fs.writeFileSync(process.env.FIXTURE_SIGNAL_LOG, "SIGTERM");
    process.exit(143);
  });
}
"""

class Watched:
    """Processes a test expects to end, held by pidfd (opened while they run, so a reused pid is
    never mistaken for them); teardown SIGKILLs whatever is left, so a failing test leaks nothing."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}

    def add(self, pids: list[int]) -> None:
        for pid in pids:
            self.fds[pid] = os.pidfd_open(pid)

    def survivors(self, timeout_s: float = GONE_TIMEOUT_S) -> list[int]:
        """Wait until every watched process has ended (a pidfd turns readable); those still running
        after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        running = dict(self.fds)
        while running and (left_s := deadline - time.monotonic()) > 0:
            ended, _, _ = select.select(list(running.values()), [], [], left_s)
            running = {pid: fd for pid, fd in running.items() if fd not in ended}
        return sorted(running)

    def kill_all(self) -> None:
        """SIGKILL what is left (before the proxy's pipes are closed: an orphan holding its stderr
        would block that)."""
        for fd in self.fds.values():
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(fd)
        self.fds.clear()


@pytest.fixture
def watched() -> Iterator[Watched]:
    processes = Watched()
    yield processes
    processes.kill_all()


@pytest.fixture
def policy(write_policy: Callable[[str], Path]) -> Path:
    return write_policy(POLICY)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = [int(child) for child in children.read_text().split()]
        except FileNotFoundError:  # a thread that has just ended (node has many)
            continue
        for child in pids:
            found += [child, *descendants(child)]
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def sigterm(proxy: ProxyProcess) -> None:
    proxy.proc.send_signal(signal.SIGTERM)


def stdin_closes(proxy: ProxyProcess) -> None:
    proxy.close_stdin()


def sigkill(proxy: ProxyProcess) -> None:
    proxy.proc.kill()


# How the proxy is shut down, and the signal the server then gets first: SIGTERM, which it may act
# on, when the proxy stops it (passing its own SIGTERM on, or after the grace that follows stdin's
# close); none it can see when the proxy is SIGKILLed (the supervisor SIGKILLs it).
SHUTDOWNS = [
    pytest.param(sigterm, "SIGTERM", id="SIGTERM"),
    pytest.param(stdin_closes, "SIGTERM", id="stdin-closes"),
    pytest.param(sigkill, None, id="SIGKILL"),
]


def shut_down_and_list_survivors(proxy: ProxyProcess, server: int, watched: Watched, shutdown: Callable) -> list[int]:
    """Shut the proxy down once `server` runs behind a launcher; what of its process tree is left."""
    tree = descendants(proxy.proc.pid)
    assert server in tree and server not in children_of(proxy.proc.pid), "the server should be a grandchild"
    watched.add(tree)
    shutdown(proxy)
    proxy.wait()
    return watched.survivors()


def signal_told(signal_log: Path) -> str | None:
    return signal_log.read_text() if signal_log.exists() else None


@pytest.mark.parametrize(("shutdown", "told"), SHUTDOWNS)
def test_server_behind_sh_dies_with_the_proxy(
    tmp_path: Path, policy: Path, watched: Watched, shutdown: Callable[[ProxyProcess], None], told: str | None
) -> None:
    pid_file, signal_log = tmp_path / "server.pid", tmp_path / "signal.log"
    launcher = ["sh", "-c", f"{shlex.quote(sys.executable)} {shlex.quote(str(LINGERING_SERVER))}; true"]
    proxy = ProxyProcess(
        proxy_command(policy, tmp_path / "state", launcher, "--shutdown-grace", SHUTDOWN_GRACE_S),
        env={"FIXTURE_PID_FILE": str(pid_file), "FIXTURE_SIGNAL_LOG": str(signal_log)},
    )
    try:
        proxy.sync()  # the server answered: it has written its pid
        server = int(pid_file.read_text())
        assert shut_down_and_list_survivors(proxy, server, watched, shutdown) == []
        assert signal_told(signal_log) == told
    finally:
        watched.kill_all()
        proxy.stop()


@pytest.mark.parametrize(("shutdown", "told"), SHUTDOWNS)
def test_server_behind_npx_dies_with_the_proxy(
    tmp_path: Path,
    policy: Path,
    watched: Watched,
    shutdown: Callable[[ProxyProcess], None],
    told: str | None,
    filesystem_server: Path,  # installs the package into NPM_DIR if needed
) -> None:
    npx = shutil.which("npx")
    assert npx, "npx is required for this test"
    preload = tmp_path / "keepalive.cjs"
    preload.write_text(KEEPALIVE_JS)
    root = tmp_path / "root"
    root.mkdir()
    pid_file, signal_log = tmp_path / "server.pid", tmp_path / "signal.log"
    upstream = [npx, "--offline", "--prefix", str(NPM_DIR), FILESYSTEM_BIN, str(root)]  # npx: npm exec -> sh -> node
    proxy = ProxyProcess(
        proxy_command(policy, tmp_path / "state", upstream, "--shutdown-grace", SHUTDOWN_GRACE_S),
        env={
            "FIXTURE_PID_FILE": str(pid_file),
            "FIXTURE_SIGNAL_LOG": str(signal_log),
            "NODE_OPTIONS": f'--require "{preload}"',
        },
    )
    try:
        assert proxy.request(initialize_message(1))["result"]["serverInfo"]["name"] == "secure-filesystem-server"
        server = int(pid_file.read_text())
        assert cmdline(server)[0] == "node"
        assert shut_down_and_list_survivors(proxy, server, watched, shutdown) == []
        assert signal_told(signal_log) == told
    finally:
        watched.kill_all()
        proxy.stop()


def test_exit_status_is_the_servers_and_no_supervisor_remains(tmp_path: Path, policy: Path, watched: Watched) -> None:
    launcher = ["sh", "-c", f"{shlex.quote(sys.executable)} {shlex.quote(str(RAW_SERVER))}"]
    proxy = ProxyProcess(proxy_command(policy, tmp_path / "state", launcher))
    try:
        proxy.sync()
        children = children_of(proxy.proc.pid)
        supervisors = [pid for pid in children if SUPERVISOR_NAME in cmdline(pid)]
        (upstream,) = set(children) - set(supervisors)
        assert [cmdline(pid)[-1] for pid in supervisors] == [str(upstream)]  # one, watching the upstream's group
        watched.add(supervisors)
        proxy.send(call(1, "exit", {"code": 3}))
        assert proxy.wait() == 3
        assert watched.survivors() == []
    finally:
        watched.kill_all()
        proxy.stop()


# -- the supervisor itself ------------------------------------------------------------------------


def _group_of_sleepers() -> subprocess.Popen[bytes]:
    """A process leading a new group, standing in for an upstream."""
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_the_supervisor_kills_the_group_when_its_pipe_closes_and_spares_it_once_disarmed() -> None:
    from intercept.proxy.child import disarm_supervisor, start_supervisor

    armed, disarmed = _group_of_sleepers(), _group_of_sleepers()
    try:
        write_end = start_supervisor(armed.pid)
        assert write_end is not None
        os.close(write_end)  # as when the proxy dies: the group is killed
        assert armed.wait(timeout=10) == -signal.SIGKILL

        write_end = start_supervisor(disarmed.pid)
        disarm_supervisor(write_end)  # the upstream was reaped: its group id may be reused
        with pytest.raises(subprocess.TimeoutExpired):
            disarmed.wait(timeout=1.0)  # bounded wait for something that must not happen
    finally:
        for process in (armed, disarmed):
            process.kill()
            process.wait()
