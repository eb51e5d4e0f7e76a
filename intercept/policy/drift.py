"""Where a policy and the real server disagree: tool names, `hide` entries and argument paths the
server does not offer. A policy naming `drop_tables` when the server offers `drop_table` validates
and protects nothing; this finds it when the server's tool list arrives. Pure: no I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from intercept.policy.model import WILDCARD, Policy

MismatchKind = Literal["tool", "hide", "argument"]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """`name` (a tool, a hide entry, or `tool: args.X`) is not offered; `closest` is the nearest
    real name, if any is near."""

    kind: MismatchKind
    name: str
    closest: str = ""

    def describe(self) -> str:
        what = {"tool": "tool", "hide": "hide entry", "argument": "argument path"}[self.kind]
        hint = f" (closest: {self.closest})" if self.closest else ""
        return f"policy {what} {self.name} matches nothing the server offers{hint}"


def _closest(name: str, offered: list[str]) -> str:
    found = difflib.get_close_matches(name, offered, n=1, cutoff=0.6)
    return found[0] if found else ""


def _properties(schema: Any) -> set[str] | None:
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    return set(properties) if isinstance(properties, Mapping) else None


def policy_mismatches(policy: Policy, tools: Mapping[str, Any]) -> list[Mismatch]:
    """Every policy name the server's tools (`name -> inputSchema`) do not have, in file order."""
    offered = sorted(tools)
    found: list[Mismatch] = []
    for name in policy.tools:
        if name != WILDCARD and name not in tools:
            found.append(Mismatch("tool", name, _closest(name, offered)))
    for name in sorted(policy.hide):
        if name != WILDCARD and name not in tools:
            found.append(Mismatch("hide", name, _closest(name, offered)))
    every_property = set().union(*(p for p in map(_properties, tools.values()) if p is not None)) if tools else set()
    for name, tool_policy in policy.tools.items():
        properties = every_property if name == WILDCARD else _properties(tools.get(name))
        if properties is None or (name != WILDCARD and name not in tools):
            continue  # a schema without properties says nothing; a missing tool is reported above
        seen: set[str] = set()
        for rule in tool_policy.rules:
            for condition in rule.conditions:
                if not condition.path.startswith("args."):
                    continue
                argument = condition.path[5:].split(".")[0]
                if argument not in properties and argument not in seen:
                    seen.add(argument)
                    found.append(Mismatch("argument", f"{name}: args.{argument}", _closest(argument, sorted(properties))))
    return found
