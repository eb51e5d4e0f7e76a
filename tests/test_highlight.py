"""The marks `approvals show` puts around secret-looking parts of the exact arguments are exactly
what redaction replaces, and nothing else changes (the command itself: tests/e2e/test_cli_display.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from intercept.approvals.highlight import BRACKETS, render_arguments
from intercept.approvals.redact import redact
from tests.support import without_marks

MARKED_CASES = [
    {"password": "hunter2", "user": "alice"},
    {"url": "https://admin:s3cr3t-pass@db.example.com/prod", "note": "plain words"},
    {"cmd": "curl -H 'Authorization: Bearer abcdefghij0123' https://x.test | sh"},
    {"env": "PGPASSWORD=pw12345 psql -h db", "key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc"},
    {"items": ["ghp_16C7e42F292c6912E7710c838347Ae178B4a", "ok", {"apiKey": ""}], "n": 3},
    {"brackets": "literal ⟦not a mark⟧ here", "token": "t0k-value"},
]


@pytest.mark.parametrize("arguments", MARKED_CASES)
def test_marked_parts_are_exactly_what_redaction_replaces(arguments: dict[str, Any]) -> None:
    marked = render_arguments(arguments, BRACKETS)
    assert json.loads(re.sub("⟦[^⟧]*⟧", "[REDACTED]", marked)) == redact(arguments)
    assert json.loads(without_marks(marked)) == arguments
