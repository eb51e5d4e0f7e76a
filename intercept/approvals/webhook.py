"""What the approval webhook sends (`approvals.notify.webhook`): the JSON body announcing a new
approval request, in the generic or the Slack format, and the headers that sign it. Pure: no I/O,
no clock reads (the time is passed in); `approvals.webhook_sender` moves the bytes.

A body carries only the record's redacted arguments (`args_redacted`), as a one-line preview cut
to MAX_PREVIEW_BYTES, never the exact ones: a webhook leaves the machine, and chat tools keep
messages forever. The signature is HMAC-SHA256 over `<timestamp>.<body>`, so a receiver can check
both the sender and the age of a delivery (USAGE.md shows a receiver that does).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from intercept.approvals.redact import preview
from intercept.policy.model import WebhookFormat
from intercept.safe_text import escape_unsafe
from intercept.store.approvals import ApprovalRecord

EVENT_TYPE = "approval_requested"
ESCALATED_EVENT_TYPE = "approval_escalated"  # the same request, once more, to its escalation roles
MAX_PREVIEW_BYTES = 2048  # the arguments preview, UTF-8 encoded
SLACK_MAX_SECTION_CHARS = 3000  # Slack refuses a section whose text is longer
TIMESTAMP_HEADER = "X-Intercept-Timestamp"
SIGNATURE_HEADER = "X-Intercept-Signature"
SIGNATURE_PREFIX = "sha256="
CUT = "…"


@dataclass(frozen=True, slots=True)
class ApproverCommands:
    """The CLI lines an approver runs for one request (they name `--state-dir` when it is not
    the default, as the -32003 message does)."""

    approve: str
    deny: str


def arguments_preview(args_redacted: str, max_bytes: int = MAX_PREVIEW_BYTES) -> str:
    """The redacted arguments as one line of at most `max_bytes` UTF-8 bytes, control and
    bidirectional characters escaped (a human reads it)."""
    try:
        line = preview(json.loads(args_redacted), width=max_bytes)
    except ValueError:  # never written so by the gate; shown as text, still bounded
        line = args_redacted
    return _cut_to_bytes(escape_unsafe(line), max_bytes)


def _cut_to_bytes(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    room = max_bytes - len(CUT.encode())
    return encoded[:room].decode(errors="ignore") + CUT  # `ignore` drops a character cut in half


def approval_link(console_url: str | None, approval_id: str) -> str | None:
    """Where the console shows this request: `<console_url>/approvals/<id>`, or None without a console."""
    if not console_url:
        return None
    parts = urlsplit(console_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/approvals/" + approval_id))


def generic_body(
    approval: ApprovalRecord, console_url: str | None, commands: ApproverCommands, escalated_to: list[str] | None = None
) -> dict[str, Any]:
    """The `generic` format: every field a receiver needs to route and show the request
    (`escalated_to`: the roles that may decide it now that nobody did in time)."""
    escalation = {} if escalated_to is None else {"escalated_to": escalated_to}
    return {
        "type": EVENT_TYPE if escalated_to is None else ESCALATED_EVENT_TYPE,
        **escalation,
        "approval_id": approval.id,
        "tool": approval.tool,
        "server": approval.server,
        "rule": approval.rule,
        "agent": approval.agent,
        "client": approval.client,
        "status": approval.status,
        "created_at": approval.created_at,
        "expires_at": approval.expires_at,
        "arguments_preview": arguments_preview(approval.args_redacted),
        "args_hash": approval.args_hash,
        "approving_allows": approval.approval_scope().describe(),
        "console_url": approval_link(console_url, approval.id),
        "approve_command": commands.approve,
        "deny_command": commands.deny,
    }


_SLACK_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")


def slack_escape(text: str) -> str:
    """`text` safe inside Slack mrkdwn: `&`, `<` and `>` escaped, so an agent-chosen value cannot
    make a link or a mention (`<!channel>`, `<https://evil|Approve here>`)."""
    return escape_unsafe(text).translate(_SLACK_ENTITIES)


def _slack_code_block(text: str, max_chars: int) -> str:
    """`text` escaped and cut to fit a code block of at most `max_chars`."""
    inner = slack_escape(text).replace("```", "`\u200b``")  # a fence inside would end the block
    room = max_chars - 6
    if len(inner) > room:
        inner = _PARTIAL_ENTITY.sub("", inner[: room - len(CUT)]) + CUT
    return f"```{inner}```"


def _slack_link(url: str) -> str:
    return quote(url, safe=":/?#[]@!$&'()*+,;=%-._~")  # `<`, `>`, `|` would end Slack's <url|label>


def _slack_requester(approval: ApprovalRecord) -> str:
    """`Agent: … (client: …)\n`, escaped, naming whichever is known; "" when neither is."""
    parts = []
    if approval.agent is not None:
        parts.append(f"Agent: {slack_escape(approval.agent)}")
    if approval.client is not None:
        client = slack_escape(approval.client)
        parts.append(f"(client: {client})" if parts else f"Client: {client}")
    return " ".join(parts) + "\n" if parts else ""


def slack_body(
    approval: ApprovalRecord, console_url: str | None, commands: ApproverCommands, escalated_to: list[str] | None = None
) -> dict[str, Any]:
    """The `slack` format: a message for a Slack incoming webhook (`text` for notifications,
    `blocks` for the message itself)."""
    tool, server, rule = slack_escape(approval.tool), slack_escape(approval.server), slack_escape(approval.rule)
    lead = "Approval required"
    if escalated_to is not None:
        lead = f"Escalated, nobody decided in time (now also role {slack_escape(' or '.join(escalated_to))}): approval required"
    approve, deny = slack_escape(commands.approve), slack_escape(commands.deny)
    link = approval_link(console_url, approval.id)
    asked_by = _slack_requester(approval)
    console = f"\nConsole: <{_slack_link(link)}|open approval {approval.id}>" if link else ""
    text = (
        f"{lead}: {tool} on {server} (rule: {rule}; id {approval.id}; expires {approval.expires_at})\n"
        f"Approve: `{approve}`\nDeny: `{deny}`{console}"
    )
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"*{lead}* for `{tool}` on `{server}`\n"
                f"Rule: {rule}\n{asked_by}Id: `{approval.id}` (expires {approval.expires_at})\n"
                f"Approving allows: {approval.approval_scope().describe()}",
            },
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _slack_code_block(arguments_preview(approval.args_redacted), SLACK_MAX_SECTION_CHARS),
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"Approve: `{approve}`\nDeny: `{deny}`{console}"}},
    ]
    return {"text": text, "blocks": blocks}


def request_body(
    approval: ApprovalRecord,
    form: WebhookFormat,
    console_url: str | None,
    commands: ApproverCommands,
    escalated_to: list[str] | None = None,
) -> bytes:
    """The exact bytes POSTed for a new (or escalated) request, compact UTF-8 JSON: these are what is signed."""
    body = (
        slack_body(approval, console_url, commands, escalated_to)
        if form == "slack"
        else generic_body(approval, console_url, commands, escalated_to)
    )
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def signed_headers(secret: bytes, body: bytes, now_s: float) -> Mapping[str, str]:
    """The headers of one delivery attempt at `now_s` (Unix seconds, whole)."""
    timestamp = int(now_s)
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }
