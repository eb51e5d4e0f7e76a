"""What the approval webhook sends (`approvals.webhook`, pure): the body in both formats, the
signature, the bounded preview. A row a case; the record is made as the gate makes it (arguments
redacted with `approvals.redact`, the exact ones kept beside them), so a body that leaked
`args_exact` would show here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from typing import Any

import pytest

from intercept.approvals.redact import REDACTED, redact
from intercept.approvals.webhook import (
    MAX_PREVIEW_BYTES,
    SIGNATURE_HEADER,
    SLACK_MAX_SECTION_CHARS,
    TIMESTAMP_HEADER,
    ApproverCommands,
    approval_link,
    arguments_preview,
    generic_body,
    request_body,
    signature,
    signed_headers,
    slack_body,
)
from intercept.policy.model import WebhookFormat
from intercept.store.approvals import ApprovalRecord

PASSWORD = "correct-horse-battery-staple"
API_KEY = "sk-proj-Zq8xV4nR2mT7wK1pL9sB3dF6"
SECRET = b"webhook signing secret"
COMMANDS = ApproverCommands("intercept approvals approve apr_1", "intercept approvals deny apr_1")
CONSOLE = "http://127.0.0.1:9111/"


def record(arguments: dict[str, Any], tool: str = "write_file", rule: str = "writes need a human") -> ApprovalRecord:
    """A pending record as the gate writes it: redacted and exact arguments side by side."""
    return ApprovalRecord(
        id="apr_0123456789abcdef0123456789abcdef",
        fingerprint="f" * 64,
        server="files",
        tool=tool,
        args_hash="h" * 32,
        args_redacted=json.dumps(redact(arguments), ensure_ascii=False),
        args_exact=json.dumps(arguments, ensure_ascii=False),
        rule=rule,
        rule_digest="d" * 64,
        policy_revision="p" * 64,
        status="pending",
        timeout_s=3600.0,
        created_at="2026-11-30T12:00:00.000000Z",
        expires_at="2026-11-30T13:00:00.000000Z",
    )


SECRET_CALL = {"path": "notes/todo.txt", "password": PASSWORD, "content": API_KEY, "header": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("form", ["generic", "slack"])
def test_no_exact_argument_and_no_secret_leaves_in_a_body(form: WebhookFormat) -> None:
    body = request_body(record(SECRET_CALL), form, CONSOLE, COMMANDS)
    text = body.decode()
    assert PASSWORD not in text
    assert API_KEY not in text
    assert API_KEY[:12] not in text  # not even a cut piece of the key
    assert REDACTED in text
    assert "notes/todo.txt" in text  # the rest of the call is shown
    assert json.loads(body)  # valid JSON, UTF-8


def test_generic_body_fields() -> None:
    approval = record({"path": "a.txt", "content": "hi"})
    body = json.loads(request_body(approval, "generic", CONSOLE, COMMANDS))
    assert body == {
        "type": "approval_requested",
        "approval_id": approval.id,
        "tool": "write_file",
        "server": "files",
        "rule": "writes need a human",
        "agent": None,
        "client": None,
        "status": "pending",
        "created_at": approval.created_at,
        "expires_at": approval.expires_at,
        "arguments_preview": '{"path":"a.txt","content":"hi"}',
        "args_hash": approval.args_hash,
        "approving_allows": "one run of this exact call",
        "console_url": f"http://127.0.0.1:9111/approvals/{approval.id}",
        "approve_command": COMMANDS.approve,
        "deny_command": COMMANDS.deny,
    }


def test_the_body_says_what_approving_allows_for_a_scope() -> None:
    scope = '{"uses": null, "for_s": 900, "match": "tool"}'
    approval = replace(record({"path": "a.txt"}), scope=scope)
    allows = "any number of runs with any arguments to the tool within 900s of the approval"
    assert json.loads(request_body(approval, "generic", CONSOLE, COMMANDS))["approving_allows"] == allows
    assert allows in request_body(approval, "slack", CONSOLE, COMMANDS).decode()


@pytest.mark.parametrize(
    ("console_url", "link"),
    [
        (None, None),
        ("http://127.0.0.1:9111", "http://127.0.0.1:9111/approvals/apr_1"),
        ("http://127.0.0.1:9111/", "http://127.0.0.1:9111/approvals/apr_1"),
        ("https://ops.example/intercept/", "https://ops.example/intercept/approvals/apr_1"),
        ("https://ops.example/console?team=a", "https://ops.example/console/approvals/apr_1?team=a"),
    ],
    ids=["no-console", "bare-host", "trailing-slash", "under-a-path", "with-query"],
)
def test_console_link(console_url: str | None, link: str | None) -> None:
    assert approval_link(console_url, "apr_1") == link


def test_generic_body_without_console_has_null_link() -> None:
    assert generic_body(record({}), None, COMMANDS)["console_url"] is None


def test_slack_body_names_what_an_approver_needs() -> None:
    approval = record({"path": "a.txt"})
    body = json.loads(request_body(approval, "slack", CONSOLE, COMMANDS))
    assert set(body) == {"text", "blocks"}
    for needed in (
        "write_file",
        "files",
        "writes need a human",
        approval.id,
        approval.expires_at,
        COMMANDS.approve,
        COMMANDS.deny,
    ):
        assert needed in body["text"], needed
    assert f"<http://127.0.0.1:9111/approvals/{approval.id}|" in body["text"]
    assert all(block["type"] == "section" and block["text"]["type"] == "mrkdwn" for block in body["blocks"])
    assert '{"path":"a.txt"}' in body["blocks"][1]["text"]["text"]


def test_slack_body_without_console_has_no_link() -> None:
    body = slack_body(record({}), None, COMMANDS)
    assert "Console" not in body["text"] and "<http" not in json.dumps(body)


@pytest.mark.parametrize(
    ("arguments", "tool"),
    [
        ({"note": "<!channel> <https://evil.example|Approve here>"}, "write_file"),
        ({"note": "fine"}, "tool<!here>"),
    ],
    ids=["in-arguments", "in-tool-name"],
)
def test_slack_body_makes_no_link_or_mention_from_agent_text(arguments: dict[str, Any], tool: str) -> None:
    body = slack_body(record(arguments, tool=tool), None, COMMANDS)
    rendered = body["text"] + "".join(block["text"]["text"] for block in body["blocks"])
    assert "<!" not in rendered and "<https://evil" not in rendered
    assert "&lt;!" in rendered


def test_preview_escapes_what_could_redraw_a_screen() -> None:
    preview = arguments_preview(json.dumps({"cmd": "ls\u202e hs|lruc \x1b[2J"}))
    assert "\u202e" not in preview and "\x1b" not in preview
    assert "\\u202e" in preview


@pytest.mark.parametrize(
    ("arguments", "cut"),
    [
        ({f"key{i}": "x" * 10_000 for i in range(60)}, True),
        ({"items": [["é" * 300] * 50] * 50}, True),
        ({f"k{i}": "\u202e" * 150 for i in range(50)}, True),  # each escaped into 6 characters
        ({"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": "h" * 5000}}}}}}}}, False),  # redaction cut it
    ],
    ids=["many-long-strings", "multibyte-nested-lists", "escapes", "deep"],
)
def test_preview_is_bounded(arguments: dict[str, Any], cut: bool) -> None:
    approval = record(arguments)
    generic = generic_body(approval, CONSOLE, COMMANDS)
    assert len(generic["arguments_preview"].encode()) <= MAX_PREVIEW_BYTES
    assert generic["arguments_preview"].endswith("…") is cut
    assert len(request_body(approval, "generic", CONSOLE, COMMANDS)) < MAX_PREVIEW_BYTES + 1024
    for block in slack_body(approval, CONSOLE, COMMANDS)["blocks"]:
        assert len(block["text"]["text"]) <= SLACK_MAX_SECTION_CHARS


def test_slack_preview_full_of_escapes_stays_within_a_section() -> None:
    body = slack_body(record({f"k{i}": "<&>" * 60 for i in range(50)}), None, COMMANDS)
    code = body["blocks"][1]["text"]["text"]
    assert len(code) <= SLACK_MAX_SECTION_CHARS
    assert code.startswith("```") and code.endswith("…```")
    assert "&am…" not in code and "&l…" not in code  # never a cut entity


@pytest.mark.parametrize("form", ["generic", "slack"])
def test_signature_is_hmac_of_timestamp_dot_body(form: WebhookFormat) -> None:
    body = request_body(record(SECRET_CALL), form, CONSOLE, COMMANDS)
    headers = signed_headers(SECRET, body, 1_795_000_000.75)
    assert headers["Content-Type"] == "application/json"
    assert headers[TIMESTAMP_HEADER] == "1795000000"  # whole seconds
    expected = hmac.new(SECRET, b"1795000000." + body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert SECRET.decode() not in json.dumps(dict(headers)) + body.decode()


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        ({"timestamp": 1_795_000_001}, "another timestamp"),
        ({"body": b'{"approval_id":"apr_2"}'}, "another body"),
        ({"secret": b"another secret"}, "another secret"),
    ],
    ids=["timestamp", "body", "secret"],
)
def test_signature_changes_with_each_signed_part(changed: dict[str, Any], why: str) -> None:
    base = {"secret": SECRET, "timestamp": 1_795_000_000, "body": b'{"approval_id":"apr_1"}'}
    assert signature(**base) != signature(**{**base, **changed}), why
