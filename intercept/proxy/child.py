"""Spawning the upstream server so that it never outlives the proxy."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the proxy died between fork and prctl
            os._exit(1)
    except (OSError, AttributeError):
        pass


def spawn_options() -> dict[str, object]:
    """Popen options: on Linux the kernel kills the child if the proxy dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        return {"preexec_fn": _die_with_parent}
    return {}


def exit_status(returncode: int | None) -> int:
    """The proxy's exit status for a child's return code (signals as 128 + signal, like a shell)."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode
