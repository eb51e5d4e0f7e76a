"""Spawning the upstream server so that neither it nor anything it starts outlives the proxy.

The upstream leads a new session, so it and everything it forks (a launcher such as `npx` or
`sh -c` runs the real server as its child) form one process group, which the proxy signals as a
whole. Two things make the group die with the proxy, even when the proxy is SIGKILLed: on Linux the
kernel kills the upstream itself (PR_SET_PDEATHSIG), and a supervisor (a `/bin/sh` reading a pipe
whose write end only the proxy holds) kills the group when that pipe closes, i.e. when the proxy
process ends, however it ends.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable

log = logging.getLogger("intercept")

_PR_SET_PDEATHSIG = 1
SUPERVISOR_NAME = "intercept-supervisor"  # its $0: how it shows in `ps`
# `read` returns at EOF, when the proxy is gone, or with "disarm" once the upstream has been reaped
# (its group id may then be reused: it must not be killed any more); kill -9 -PGID is understood by
# dash, bash and busybox.
_SUPERVISOR_SCRIPT = 'read x; [ "$x" = disarm ] || kill -9 -"$1"'


def _die_with_parent(parent: int) -> Callable[[], None]:
    def prepare() -> None:  # pragma: no cover - runs in the forked child
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the proxy died between fork and prctl
                os._exit(1)
        except (OSError, AttributeError):
            pass

    return prepare


def spawn_options() -> dict[str, object]:
    """Popen options: the child leads its own session and process group (so a terminal's signals go
    to the proxy only, which passes them on); on Linux the kernel kills it if the proxy dies."""
    options: dict[str, object] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _die_with_parent(os.getpid())
    return options


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group that the upstream `pid` leads, or to `pid` alone if there is
    no such group (the upstream left it). Call it only while `pid` is not yet reaped: until then
    neither the pid nor the group id can be reused."""
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError, AttributeError):  # AttributeError: no killpg here
        pass
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to send %s to the upstream (pid %d)", signal.Signals(sig).name, pid)


def start_supervisor(pgid: int) -> int | None:
    """Start the process that SIGKILLs group `pgid` once this process has ended; Linux only.

    Returns the write end of its pipe (None where there is no supervisor). It is never closed on
    purpose: the kernel closes it when the proxy ends, by any means, and the supervisor then kills
    the group (nothing happens if it is gone) and exits. Closing it earlier kills the group now.
    Never raises: without a supervisor the proxy works as before, only less thoroughly.
    """
    if not sys.platform.startswith("linux"):
        return None
    read_end = write_end = -1
    try:
        read_end, write_end = os.pipe()  # close-on-exec: no other child, the upstream included, gets it
        os.posix_spawn(
            "/bin/sh",
            ["sh", "-c", _SUPERVISOR_SCRIPT, SUPERVISOR_NAME, str(pgid)],
            {},  # nothing for the shell to read at start-up ($ENV, $BASH_ENV)
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                # not our stdout: the client must see it close when the proxy closes it
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,  # out of the terminal's reach: Ctrl-C must not take it with the proxy
        )
    except (OSError, NotImplementedError) as exc:
        log.warning("cannot start the process-group supervisor (%s): a killed proxy may leave processes behind", exc)
        if write_end >= 0:
            os.close(write_end)
        return None
    finally:
        if read_end >= 0:
            os.close(read_end)
    return write_end


def kill_rest_of_group(pgid: int) -> None:
    """SIGKILL what is left of the group of an upstream reaped a moment ago (its launcher's
    children). Only the group: the pid itself may already belong to another process."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        pass


def disarm_supervisor(write_end: int | None) -> None:
    """Tell the supervisor that the group is no longer ours to kill (the upstream was reaped and
    what was left of its group killed), and let it exit."""
    if write_end is None:
        return
    try:
        os.write(write_end, b"disarm\n")
    except OSError:
        pass
    finally:
        os.close(write_end)


def exit_status(returncode: int | None) -> int:
    """The proxy's exit status for a child's return code (signals as 128 + signal, like a shell)."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode
