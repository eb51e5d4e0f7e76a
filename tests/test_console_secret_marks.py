"""The inbox's secret marks (`console.secret_marks`) cover exactly what redaction replaces, as the
CLI's marks do (tests/test_highlight.py), and the single-record API carries them as
`secret_spans`. The page that lays them over the arguments: tests/e2e/test_console_browser.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from intercept.approvals.redact import REDACTED, redact
from intercept.console.app import ConsoleConfig, build_app
from intercept.console.auth import BoundAddress, admin_secret, admin_token
from intercept.console.secret_marks import secret_marks
from intercept.store.approvals import ApprovalStore
from intercept.store.database import connect
from tests.store_support import approval_record

CASES = {
    "secret key": {"password": "hunter2", "user": "alice"},
    "url credentials": {"url": "https://admin:s3cr3t-pass@db.example.com/prod", "note": "plain words"},
    "bearer in text": {"cmd": "curl -H 'Authorization: Bearer abcdefghij0123' https://x.test | sh"},
    "two kinds": {"env": "PGPASSWORD=pw12345 psql -h db", "key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc"},
    "in a list": {"items": ["ghp_16C7e42F292c6912E7710c838347Ae178B4a", "ok", {"apiKey": ""}], "n": 3},
    "non-string under a secret key": {"credentials": {"user": "u", "pin": 1234}, "token": 42, "x": [True, None]},
    "astral characters first": {"note": "🔑🔑 token: abcd1234efgh and then sk-proj-abcdefghijklmnopqrstuvwx"},
    "nothing secret": {"path": "/tmp/a.txt", "content": "hello"},
}


def _replace_marked(value: Any, marks: list[dict[str, Any]]) -> Any:
    """`value` with every marked part replaced by REDACTED, as `redact` would write it."""
    root = {"v": copy.deepcopy(value)}
    for mark in reversed(marks):  # later parts of a string first, so earlier offsets stay right
        parent: Any = root
        key: str | int = "v"
        for part in mark["path"]:
            parent, key = parent[key], part
        if "start" in mark:
            text = parent[key]
            parent[key] = text[: mark["start"]] + REDACTED + text[mark["end"] :]
        else:
            parent[key] = REDACTED
    return root["v"]


@pytest.mark.parametrize("arguments", list(CASES.values()), ids=list(CASES))
def test_marked_parts_are_exactly_what_redaction_replaces(arguments: dict[str, Any]) -> None:
    assert _replace_marked(arguments, secret_marks(arguments)) == redact(arguments)


def test_offsets_count_code_points_and_paths_name_keys_and_indices() -> None:
    marks = secret_marks({"a": [{"b": "x 🔑 password=hunter22"}]})
    assert marks == [{"path": ["a", 0, "b"], "start": 4, "end": 21}]


def test_any_depth_the_parser_accepted() -> None:
    deep: Any = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    for _ in range(5000):
        deep = [deep]
    assert secret_marks(deep) == [{"path": [0] * 5000, "start": 0, "end": 32}]


def test_one_record_from_the_api_carries_its_secret_spans(tmp_path: Path) -> None:
    arguments = {"path": "/tmp/x", "password": "hunter2hunter2", "content": "a" * 2000}
    connection = connect(tmp_path)
    store = ApprovalStore(connection)
    with store.transaction():
        store.insert(approval_record("apr_one", created_s=1e10, args_exact=json.dumps(arguments)))
    connection.close()
    address = BoundAddress("127.0.0.1", 8000)
    app = build_app(ConsoleConfig(tmp_path, address))
    client = TestClient(app, base_url=address.base_url)
    headers = {"authorization": f"Bearer {admin_token(admin_secret(tmp_path))}"}

    record = client.get("/api/approvals/apr_one", headers=headers).json()

    assert record["arguments"] == arguments
    assert record["secret_spans"] == [{"path": ["password"], "start": 0, "end": 14}]
