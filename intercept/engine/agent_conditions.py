"""Conditions on who is asking (`agent.name`, `agent.roles`), judged once per (policy, agent).

The agent is fixed for the life of a proxy (`--agent`, bound to the policy by
`policy.agents.bind_agent`), so such a condition has the same answer for every call. The plan
builder (`engine.plan`) asks here once: a condition that holds is left out of the plan, one that
does not becomes a test that always fails, in its place (conditions are still tried in order).
A call pays nothing for them, and the allowed-call path is unchanged.
"""

from __future__ import annotations

from typing import Any

from intercept.engine.operators import condition_holds, condition_selects
from intercept.policy.model import Agent, Condition


def agent_value(agent: Agent, path: str) -> tuple[bool, Any]:
    """(found, value) at an agent path: the name (absent without `--agent`), or the list of roles
    (empty for an agent the `agents` block does not list, and without `--agent`)."""
    if path == "agent.name":
        return agent.name is not None, agent.name
    return True, list(agent.roles)


def agent_condition_holds(agent: Agent, condition: Condition, for_approval: bool) -> bool:
    """The condition's verdict for this agent, as `condition_holds` (evaluate rules) or
    `condition_selects` (require_approval rules) would give it for every call."""
    judge = condition_selects if for_approval else condition_holds
    return judge(condition, *agent_value(agent, condition.path))
