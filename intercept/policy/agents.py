"""Who is asking: the rules for agent and role names, and binding a policy to the proxy's agent.

A proxy is told its agent by whoever writes the MCP client's config (`--agent NAME`); the policy's
`agents` block gives names roles. The agent is fixed for the life of a proxy, so the policy in
force is bound to it once (`bind_agent`, at load and at every reload), and conditions on
`agent.name` and `agent.roles` are judged when the engine builds its plans, not per call. The
client's self-asserted `clientInfo.name` never names an agent here: it is recorded, not trusted.
"""

from __future__ import annotations

from dataclasses import replace

from intercept.policy.model import MAX_AGENT_NAME_CHARS, Agent, Policy
from intercept.safe_text import has_unsafe_chars


def name_problem(name: object, what: str = "an agent name") -> str | None:
    """Why `name` cannot be an agent (or role) name, or None: a non-empty string of at most
    MAX_AGENT_NAME_CHARS characters, without control or bidirectional characters (it is shown to
    approvers) and without surrounding spaces (two names that look alike must be one name)."""
    if not isinstance(name, str):
        return f"{what} must be a string"
    if not name:
        return f"{what} must not be empty"
    if len(name) > MAX_AGENT_NAME_CHARS:
        return f"{what} must be at most {MAX_AGENT_NAME_CHARS} characters"
    if has_unsafe_chars(name):
        return f"{what} must not contain control or bidirectional characters"
    if name != name.strip():
        return f"{what} must not start or end with spaces"
    return None


def bind_agent(policy: Policy, name: str | None) -> Policy:
    """`policy` as judged for the agent `name` (None: no `--agent`): its roles from the `agents`
    block, none for a name the block does not list. A new object, so plans built for another
    agent are never reused."""
    agent = Agent(name, policy.agents.get(name, ()) if name is not None else ())
    if agent == policy.agent:
        return policy
    return replace(policy, agent=agent)
