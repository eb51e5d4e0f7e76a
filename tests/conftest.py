"""Shared fixtures: a raw proxy around the recording upstream, and policy files in tmp dirs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import RAW_SERVER, ProxyProcess, proxy_command

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


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def raw_log(tmp_path: Path) -> Path:
    return tmp_path / "upstream.log"


@pytest.fixture
def raw_proxy(tmp_path: Path, write_policy: Callable[[str], Path], raw_log: Path) -> Iterator[ProxyProcess]:
    """The proxy around the raw recording server, with RAW_POLICY."""
    policy = write_policy(RAW_POLICY)
    proxy = ProxyProcess(
        proxy_command(policy, tmp_path / "state", [sys.executable, str(RAW_SERVER)]),
        env={"FIXTURE_RAW_LOG": str(raw_log)},
    )
    yield proxy
    proxy.stop()
