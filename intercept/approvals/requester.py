"""Who asked for an approval, as its record and events keep it: the proxy's agent and the client.

`agent` is the proxy's `--agent` name (set by whoever writes the MCP client's config; it gives
roles through the policy's `agents` block). `client` is the name the MCP client gave itself in
`initialize` (`clientInfo.name`, or the stateless era's `_meta`): self-asserted, so it is shown to
approvers and never trusted for anything. Both are None when unknown.
"""

from __future__ import annotations

from typing import Any

from intercept.policy.model import MAX_AGENT_NAME_CHARS
from intercept.safe_text import escape_unsafe

CUT = "…"


def client_label(name: str | None) -> str | None:
    """The client's self-given name as recorded: None when it gave none, else at most
    MAX_AGENT_NAME_CHARS characters (a longer one cut, with `…`) with control and bidirectional
    characters written as visible escapes, so no reader of the record can be misled by it."""
    if not name:
        return None
    if len(name) > MAX_AGENT_NAME_CHARS:
        name = name[: MAX_AGENT_NAME_CHARS - 1] + CUT
    return escape_unsafe(name)


def requester_fields(agent: str | None, client: str | None) -> dict[str, Any]:
    """The `agent` and `client` fields of an approval event, each only when known."""
    fields: dict[str, Any] = {}
    if agent is not None:
        fields["agent"] = agent
    if client is not None:
        fields["client"] = client
    return fields
