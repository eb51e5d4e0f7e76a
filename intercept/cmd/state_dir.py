"""Where the state dir is by default (no click here: the proxy's fast start path uses it)."""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "INTERCEPT_STATE_DIR"


def builtin_state_dir() -> Path:
    """`~/.intercept/state`: where every command looks when nothing says otherwise."""
    return Path.home() / ".intercept" / "state"


def default_state_dir() -> Path:
    """`$INTERCEPT_STATE_DIR`, else `~/.intercept/state`."""
    configured = os.environ.get(STATE_DIR_ENV)
    return Path(configured).expanduser() if configured else builtin_state_dir()
