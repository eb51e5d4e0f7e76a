"""Remove hidden tools from a `tools/list` response, keeping every other field as it was."""

from __future__ import annotations

from typing import Any

from intercept.policy.model import Policy


def without_hidden_tools(response: dict[str, Any], policy: Policy) -> dict[str, Any] | None:
    """The response minus hidden tools, or None when nothing is hidden from it."""
    result = response.get("result")
    if not policy.hide or not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return None
    tools = result["tools"]
    kept = [t for t in tools if not (isinstance(t, dict) and policy.hides(str(t.get("name"))))]
    if len(kept) == len(tools):
        return None
    return {**response, "result": {**result, "tools": kept}}
