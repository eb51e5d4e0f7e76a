"""Helpers that the in-process tests (tests/) and the end-to-end tests (tests/e2e/) both use.

Nothing here starts a process: spawning the proxy, raw JSON-RPC sessions and the CLI are in
tests/e2e/support.py, which imports from here. Store records made to measure are in
tests/store_support.py.

- `ROOT`: the checkout under test;
- the shared policy corpus beside the checkout (../shared/intercept-policies) and `needs_shared`;
- policy texts and the messages validation gives about them (test_policy_validation,
  test_validate_help, e2e/test_validate_cli);
- `ago`, an RFC 3339 time some seconds back; `without_marks`, argument text without the marks
  around secret-looking parts.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.highlight import BRACKETS
from intercept.store.timestamps import rfc3339

ROOT = Path(__file__).resolve().parents[1]

# -- the shared policy corpus --------------------------------------------------------------------

SHARED_POLICIES = ROOT.parent / "shared" / "intercept-policies"
SHARED_POLICY_FILES = sorted(SHARED_POLICIES.glob("*.yaml"))
# The Intercept policy corpus lives beside the checkout (../shared); a plain clone has none.
needs_shared = pytest.mark.skipif(
    not SHARED_POLICIES.is_dir(), reason=f"the Intercept policy corpus is not there: {SHARED_POLICIES} is missing"
)

# -- policy texts and what validation says about them ----------------------------------------------

R0 = "tools.transfer.rules[0]"  # the location of the first rule of `rule(...)`
BOOLEAN_ONLY = "only true and false are booleans in a policy"
NULL_TOOL = 'a tool entry must be a mapping, not null (write "rules: []" to allow the tool with no checks)'


def rule(body: str, tool: str = "transfer") -> str:
    """A policy whose tool `tool` has the rules `body` (a YAML list at column 7)."""
    indented = textwrap.indent(textwrap.dedent(body).strip("\n"), "      ")
    return f'version: "1"\ntools:\n  {tool}:\n    rules:\n{indented}\n'


def position_of(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """Line and column (1-based, as an editor shows them) of the nth `needle` in `text`."""
    index = -1
    for _ in range(nth):
        index = text.index(needle, index + 1)
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def loose_notice(tool: str) -> str:
    """The notice `loose_types: true` on `tool` gets."""
    return f"notice: tools.{tool}.loose_types: argument types of {tool} are not checked against the server's schema"


# -- time and text ---------------------------------------------------------------------------------


def ago(seconds: float, now_s: float | None = None) -> str:
    """RFC 3339 UTC of `seconds` before `now_s` (default: now)."""
    return rfc3339((time.time() if now_s is None else now_s) - seconds)


def without_marks(text: str) -> str:
    """Rendered arguments without the marks around secret-looking parts."""
    return text.replace(BRACKETS.open, "").replace(BRACKETS.close, "")


def typed_repr(value: object) -> str:
    """A parsed JSON value with its types visible (1, 1.0 and True differ), to compare parses."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key!r}:{typed_repr(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(typed_repr(item) for item in value) + "]"
    return f"{type(value).__name__}:{value!r}"


class MemoryPipe:
    """The write end of a pipe, kept in memory: what a relay under test writes to the upstream or
    the client (`Relay._child_stdin`, `Relay._out`)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def messages(self) -> list[Any]:
        """Every line written, parsed."""
        return [json.loads(line) for line in bytes(self.data).split(b"\n") if line]
