"""The upstream's tool schemas for one session, read from the `tools/list` replies the client asked
for, and the type verdict for a call before the engine evaluates it.

Every `tools/list` reply is seen (all pages; a listing without a cursor starts afresh). After
`notifications/tools/list_changed` the client lists again and that listing replaces what was
read; until then the last listing stands (forgetting it would only weaken the checks to the
strict plan, and a tool result quoting the notification must not be able to do that). If the
client never lists, the interceptor lists once itself (`Interceptor._list_tools_and_hold`); a
tool missing from every listing has no known schema, and its calls are evaluated strictly
(`engine.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intercept.engine.arg_types import TypeCheck, TypedPath, loose, typed_paths
from intercept.engine.plan import rules_for
from intercept.policy.model import WILDCARD, Policy

MAX_TOOLS = 10_000  # an upstream listing more tools than this is not believed beyond it


@dataclass(frozen=True, slots=True)
class TypeVerdict:
    """`problem`: why the call is denied (empty if its types are fine); `strict`: evaluate strictly."""

    problem: str = ""
    strict: bool = False


FINE = TypeVerdict()
UNVOUCHED = TypeVerdict(strict=True)


class ToolSchemas:
    """What the upstream declared of each tool's input, and the prepared checks per policy."""

    def __init__(self) -> None:
        self._schemas: dict[str, dict[str, Any]] = {}
        self.ever_listed = False  # a tools/list reply with a tool list has arrived in this session
        self._checks: dict[str, tuple[Policy, TypeCheck | None]] = {}

    def listed(self, response: dict[str, Any], first_page: bool) -> None:
        """Read one `tools/list` reply; the first page of a listing replaces what was known."""
        result = response.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return
        self.ever_listed = True
        if first_page:
            self._schemas = {}
        for tool in tools[:MAX_TOOLS]:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                schema = tool.get("inputSchema")
                self._schemas[tool["name"]] = schema if isinstance(schema, dict) else {}
        self._checks = {}

    @property
    def tools(self) -> dict[str, dict[str, Any]]:
        """Every tool the listings so far named, with its inputSchema (`{}` when it had none)."""
        return self._schemas

    @staticmethod
    def typed(policy: Policy) -> tuple[frozenset[str], bool]:
        """The tools whose own rules read a typed path, and whether the `"*"` rules do (then every
        tool's do): the calls that need `verdict` at all."""
        own = frozenset(
            tool for tool, tool_policy in policy.tools.items() if tool != WILDCARD and typed_paths(tool_policy.rules)
        )
        wildcard = policy.tools.get(WILDCARD)
        return own, wildcard is not None and bool(typed_paths(wildcard.rules))

    def verdict(self, policy: Policy, tool: str, arguments: dict[str, Any]) -> TypeVerdict:
        """Deny a call whose argument types differ from the declared ones; ask for strict
        evaluation where the schema does not declare them."""
        known = self._checks.get(tool)
        if known is None or known[0] is not policy:
            known = (policy, self._prepare(policy, tool))
            if len(self._checks) < MAX_TOOLS:
                self._checks[tool] = known
        check = known[1]
        if check is None:
            return FINE
        if not check.schema:
            return UNVOUCHED
        problem, through_non_object = check.judge(arguments)
        if problem:
            return TypeVerdict(problem)
        return FINE if check.fully_declared and not through_non_object else UNVOUCHED

    def _prepare(self, policy: Policy, tool: str) -> TypeCheck | None:
        """None when types do not matter for `tool` (no rule reads a typed path, or loose_types);
        a check over an empty schema when the schema is unknown."""
        if loose(policy, tool):
            return None
        paths: tuple[TypedPath, ...] = typed_paths(rules_for(policy, tool))
        if not paths:
            return None
        return TypeCheck(self._schemas.get(tool) or {}, paths)
