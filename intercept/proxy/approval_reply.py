"""The -32003 error that tells the agent (and the human reading its host) how to get approval."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from intercept.proxy.jsonrpc import APPROVAL_REQUIRED
from intercept.store.approvals import ApprovalRecord

APPROVAL_REQUIRED_TYPE = "intercept/approval_required"


def approvals_command(verb: str, approval_id: str, state_dir: Path | None) -> str:
    """The CLI line a human runs; names the state dir when it is not the default one."""
    command = f"intercept approvals {verb} {approval_id}"
    return command if state_dir is None else f"{command} --state-dir {shlex.quote(str(state_dir))}"


def approval_required_error(
    request_id: Any,
    record: ApprovalRecord,
    state_dir: Path | None,
    console_url: str | None = None,
    code: int = APPROVAL_REQUIRED,
) -> dict[str, Any]:
    """Many hosts show only `error.message`, so it alone carries the id and where the decision is
    made (the command, and the console when one is configured). A client that shows its own card
    for this error and retries decides nothing: the message says so (USAGE.md, Client notes)."""
    approve = approvals_command("approve", record.id, state_dir)
    deny = approvals_command("deny", record.id, state_dir)
    where = f'run "{approve}"' + (f" or decide at {console_url}" if console_url else "")
    message = (
        f"Approval required for {record.tool} (id {record.id}): a human must {where}, then retry the same call. "
        "Approving in the agent's own prompt does not approve it."
    )
    console = f" or open {console_url}" if console_url else ""
    instructions = (
        f'Run "{approve}" to allow this exact call once, or "{deny} --reason ..." to refuse it{console}. '
        f"Then the agent retries the identical call. The request expires at {record.expires_at}."
    )
    data = {
        "type": APPROVAL_REQUIRED_TYPE,
        "approval_id": record.id,
        "tool": record.tool,
        "server": record.server,
        "rule": record.rule,
        "status": record.status,
        "expires_at": record.expires_at,
        "retryable": True,
        "human_instructions": instructions,
    }
    if console_url:
        data["console_url"] = console_url
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message, "data": data}}
