"""Fixtures of the end-to-end tests: a raw proxy around the recording upstream, a `Harness` that
stops every proxy it started, and the installed @modelcontextprotocol/server-filesystem."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.support import (
    FILESYSTEM_BIN,
    FILESYSTEM_PACKAGE,
    NPM_DIR,
    RAW_UPSTREAM,
    Harness,
    ProxyProcess,
    fixture_env,
    proxy_command,
)

RAW_POLICY = """
version: "1"
hide: [secret]
tools:
  write_file:
    rules:
      - name: "no etc"
        conditions:
          - {path: args.path, op: regex, value: "^/etc/"}
        on_deny: "writes to /etc are blocked"
      - name: "block all writes"
        action: deny
  drop_table:
    rules:
      - name: "never drop"
        action: deny
"""
NPM_INSTALL_TIMEOUT_S = 300


@pytest.fixture
def raw_log(tmp_path: Path) -> Path:
    """Where the `raw_proxy` fixture's upstream records every line it receives."""
    return tmp_path / "upstream.log"


@pytest.fixture
def raw_proxy(tmp_path: Path, write_policy: Callable[[str], Path], raw_log: Path) -> Iterator[ProxyProcess]:
    """The proxy around the raw recording server, with RAW_POLICY."""
    policy = write_policy(RAW_POLICY)
    proxy = ProxyProcess(proxy_command(policy, tmp_path / "state", RAW_UPSTREAM), env=fixture_env(raw_log=raw_log))
    yield proxy
    proxy.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A `Harness` in tmp_path; every proxy it started is stopped afterwards."""
    found = Harness(tmp_path)
    yield found
    found.close()


@pytest.fixture(scope="session")
def filesystem_server() -> Path:
    """The package's real entry point (from its package.json `bin`), installing it if needed.

    No network means a failing test, not a skipped one: this is the check that intercept works
    with a server it did not write.
    """
    node = shutil.which("node")
    assert node, "node is required for the filesystem server test"
    if not (NPM_DIR / "node_modules" / ".bin" / FILESYSTEM_BIN).exists():
        npm = shutil.which("npm")
        assert npm, "npm is required to install the filesystem server"
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NPM_DIR), FILESYSTEM_PACKAGE],
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"npm install {FILESYSTEM_PACKAGE} failed:\n{result.stdout}\n{result.stderr}"
    package_dir = NPM_DIR / "node_modules" / FILESYSTEM_PACKAGE
    manifest = json.loads((package_dir / "package.json").read_text())
    bins = manifest["bin"]
    entry = package_dir / (bins if isinstance(bins, str) else bins[FILESYSTEM_BIN])
    assert entry.is_file(), f"{FILESYSTEM_PACKAGE} has no entry point at {entry}"
    return entry
