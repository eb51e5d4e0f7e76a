"""What the engine takes (a ToolCall) and what it returns (a Decision)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from intercept.policy.model import Rule

Verdict = Literal["allow", "deny", "require_approval"]

HIDDEN_RULE = "(hidden)"
DEFAULT_DENY_RULE = "(default deny)"


@dataclass(slots=True)  # not frozen: a frozen dataclass costs twice as much to build, once per call
class ToolCall:
    """One `tools/call`: the tool name and its (already validated) argument object. Read-only by
    convention."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one call; `rule` is the deciding rule when a policy rule decided."""

    verdict: Verdict
    rule_name: str = ""
    message: str = ""
    rule: Rule | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"


ALLOW = Decision("allow")
