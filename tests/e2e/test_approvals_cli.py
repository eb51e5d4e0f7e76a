"""`intercept approvals` and `intercept events tail` as a human runs them, against records a real proxy made."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    APPROVAL_ID,
    RAW_UPSTREAM,
    WRITE_NEEDS_APPROVAL,
    ProxyProcess,
    approve,
    call_tool,
    deny,
    fixture_env,
    handshake,
    list_all,
    ok,
    one_line_error,
    pending_id,
    proxy_command,
    run_cli,
    show,
    wait_until_past,
)

POLICY = WRITE_NEEDS_APPROVAL
LABELS = ("pending", "approved", "denied", "consumed", "expired")


def arguments_for(label: str) -> dict[str, str]:
    return {"path": f"{label}.txt", "content": f"{label} content"}


@dataclass(frozen=True)
class Populated:
    state_dir: Path
    ids: dict[str, str]


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    """One record in every status, made by a proxy around the raw server and decided with the CLI."""
    root = tmp_path_factory.mktemp("approvals-cli")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    state_dir = root / "state"
    proxy = ProxyProcess(proxy_command(policy, state_dir, RAW_UPSTREAM, "--name", "files"))
    try:
        ids = {
            label: pending_id(call_tool(proxy, f"{label}-ask", "write_file", arguments_for(label))) for label in LABELS
        }
        assert pending_id(call_tool(proxy, "pending-again", "write_file", arguments_for("pending"))) == ids["pending"]
        approve(state_dir, ids["approved"], "alice", "--reason", "looks fine")
        deny(state_dir, ids["denied"], "bob", "not today")
        approve(state_dir, ids["consumed"], "carol")
        assert "result" in call_tool(proxy, "consumed-run", "write_file", arguments_for("consumed"))
        ok(run_cli("approvals", "expire", ids["expired"], "--state-dir", str(state_dir)))
    finally:
        proxy.stop()
    return Populated(state_dir, ids)


def snapshot(state_dir: Path) -> tuple[list[Any], list[Any], dict[str, bytes]]:
    """Every approval row, every history row and every event file, read without writing."""
    connection = sqlite3.connect(f"file:{state_dir / 'intercept.sqlite'}?mode=ro", uri=True)
    try:
        approvals = connection.execute("SELECT * FROM approvals ORDER BY id").fetchall()
        history = connection.execute("SELECT * FROM approval_history ORDER BY rowid").fetchall()
    finally:
        connection.close()
    event_files = {p.name: p.read_bytes() for p in sorted((state_dir / "events").glob("*.jsonl"))}
    return approvals, history, event_files


# -- reading -----------------------------------------------------------------------------------


def test_list_shows_pending_requests_as_a_table(populated: Populated) -> None:
    out = ok(run_cli("approvals", "list", "--state-dir", str(populated.state_dir)))
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "AGE", "SERVER", "TOOL", "RULE", "STATUS", "EXPIRES", "ARGUMENTS"]
    assert len(rows) == 1
    row = rows[0]
    assert row.startswith(populated.ids["pending"] + " ")
    for text in ("files", "write_file", "writes need a human", "pending", '{"path":"pending.txt"'):
        assert text in row
    assert len(APPROVAL_ID.findall(out)) == 1


def test_list_all_json_has_every_record(populated: Populated) -> None:
    records = {r["id"]: r for r in list_all(populated.state_dir)}
    assert {records[populated.ids[label]]["status"]: label for label in LABELS} == {label: label for label in LABELS}
    assert len(records) == len(LABELS)
    for label in LABELS:
        record = records[populated.ids[label]]
        assert record["arguments"] == arguments_for(label)
        assert "args_redacted" not in record
        assert (record["server"], record["tool"], record["rule"]) == ("files", "write_file", "writes need a human")
        assert len(record["args_hash"]) == len(record["fingerprint"]) == 64
    assert records[populated.ids["pending"]]["request_count"] == 2
    assert records[populated.ids["denied"]]["reason"] == "not today"


@pytest.mark.parametrize("status", LABELS)
def test_list_status_filter(populated: Populated, status: str) -> None:
    out = ok(run_cli("approvals", "list", "--status", status, "--json", "--state-dir", str(populated.state_dir)))
    assert [r["id"] for r in json.loads(out)] == [populated.ids[status]]


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("pending", [("requested", None, None), ("reused", None, None)]),
        ("approved", [("requested", None, None), ("approved", "alice", "looks fine")]),
        ("denied", [("requested", None, None), ("denied", "bob", "not today")]),
        ("consumed", [("requested", None, None), ("approved", "carol", None), ("consumed", None, None)]),
        ("expired", [("requested", None, None), ("expired", None, None)]),
    ],
    ids=LABELS,
)
def test_show_json_has_the_history(
    populated: Populated, label: str, expected: list[tuple[str, str | None, str | None]]
) -> None:
    record = show(populated.state_dir, populated.ids[label])
    assert record["id"] == populated.ids[label]
    assert record["status"] == label
    assert record["arguments"] == arguments_for(label)
    assert [(h["event"], h["actor"], h["detail"]) for h in record["history"]] == expected
    assert all(h["at"].endswith("Z") for h in record["history"])


def test_show_text(populated: Populated) -> None:
    out = ok(run_cli("approvals", "show", populated.ids["denied"], "--state-dir", str(populated.state_dir)))
    assert f"id: {populated.ids['denied']}" in out
    assert "status: denied" in out
    assert "reason: not today" in out
    assert '"content": "denied content"' in out
    assert "denied by bob: not today" in out


# -- refusals change nothing -------------------------------------------------------------------


REFUSALS = [
    ("approve", None, "no approval with id"),
    ("deny", None, "no approval with id"),
    ("show", None, "no approval with id"),
    ("expire", None, "no approval with id"),
    ("approve", "denied", "already denied by bob"),
    ("approve", "consumed", "already consumed"),
    ("approve", "expired", "already expired"),
    ("deny", "approved", "already approved"),
    ("deny", "consumed", "already consumed"),
    ("expire", "consumed", "already consumed"),
    ("expire", "denied", "already denied"),
]


@pytest.mark.parametrize(
    ("verb", "target", "fragment"), REFUSALS, ids=[f"{verb}-{target or 'unknown'}" for verb, target, _ in REFUSALS]
)
def test_refused_commands_exit_1_with_one_line_and_change_nothing(
    populated: Populated, verb: str, target: str | None, fragment: str
) -> None:
    approval_id = populated.ids[target] if target else "apr_doesnotexist000000000"
    before = snapshot(populated.state_dir)
    extra = ["--reason", "whatever"] if verb == "deny" else []
    line = one_line_error(run_cli("approvals", verb, approval_id, *extra, "--state-dir", str(populated.state_dir)))
    assert line.startswith("intercept: ")
    assert fragment in line
    assert approval_id in line
    assert snapshot(populated.state_dir) == before


@pytest.mark.parametrize(
    "args",
    [("list",), ("list", "--all", "--json"), ("show", "apr_x"), ("approve", "apr_x"), ("deny", "apr_x")],
    ids=["list", "list-all-json", "show", "approve", "deny"],
)
@pytest.mark.parametrize("database", ["missing", "garbage"])
def test_unusable_database_is_one_line_error(tmp_path: Path, args: tuple[str, ...], database: str) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    garbage = b"not a database, not at all\n" * 100
    if database == "garbage":
        (state_dir / "intercept.sqlite").write_bytes(garbage)
    line = one_line_error(run_cli("approvals", *args, "--state-dir", str(state_dir)))
    assert line.startswith("intercept: ")
    assert str(state_dir / "intercept.sqlite") in line
    if database == "missing":
        assert "no approval database" in line
        assert list(state_dir.iterdir()) == []  # nothing created
    else:
        assert (state_dir / "intercept.sqlite").read_bytes() == garbage


@pytest.mark.parametrize(("verb", "target"), [("approve", "approved"), ("deny", "denied")])
def test_the_same_decision_again_succeeds_and_changes_nothing(populated: Populated, verb: str, target: str) -> None:
    """Scripts and retried requests repeat decisions: the same one again is not an error."""
    approval_id = populated.ids[target]
    before = snapshot(populated.state_dir)
    out = ok(run_cli("approvals", verb, approval_id, "--state-dir", str(populated.state_dir)))
    assert out.startswith(f"Already {target}: approval {approval_id} is already {target} by ")
    assert snapshot(populated.state_dir) == before


def test_unknown_ids_name_the_state_dir_and_prefixes_resolve(populated: Populated) -> None:
    state_dir = str(populated.state_dir)
    line = one_line_error(run_cli("approvals", "show", "apr_doesnotexist", "--state-dir", state_dir))
    assert line == f"intercept: no approval with id apr_doesnotexist in {state_dir}"
    full = populated.ids["pending"]
    assert show(populated.state_dir, full[:12])["id"] == full  # a unique start of an id is enough
    ambiguous = one_line_error(run_cli("approvals", "show", "apr_", "--state-dir", state_dir))
    assert "is the start of several approvals" in ambiguous and full in ambiguous


def test_new_ids_have_no_dashes_or_underscores_after_the_prefix() -> None:
    from intercept.approvals.gate import new_approval_id

    for _ in range(200):
        approval_id = new_approval_id()
        assert approval_id.startswith("apr_") and approval_id[4:].isalnum() and len(approval_id) == 36


def test_expire_all_stale_reports_what_it_expired(tmp_path: Path) -> None:
    """Opening the store already expires stale records; the command must still say which."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace('version: "1"\n', 'version: "1"\napprovals:\n  timeout: 1s\n'))
    state_dir = tmp_path / "state"
    proxy = ProxyProcess(proxy_command(policy, state_dir, RAW_UPSTREAM, "--name", "files"))
    try:
        stale = pending_id(call_tool(proxy, 1, "write_file", arguments_for("x")))
    finally:
        proxy.stop()
    with sqlite3.connect(state_dir / "intercept.sqlite") as db:  # read directly: the CLI would expire it
        (expires_at,) = db.execute("SELECT expires_at FROM approvals WHERE id = ?", (stale,)).fetchone()
    wait_until_past(expires_at)
    out = ok(run_cli("approvals", "expire", "--all-stale", "--state-dir", str(state_dir)))
    assert out == f"Expired 1 approval request(s):\n  {stale}\n"
    assert ok(run_cli("approvals", "expire", "--all-stale", "--state-dir", str(state_dir))) == "Nothing to expire.\n"


def test_expire_revokes_a_pending_request(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    state_dir = tmp_path / "state"
    proxy = ProxyProcess(proxy_command(policy, state_dir, RAW_UPSTREAM, "--name", "files"))
    try:
        first = pending_id(call_tool(proxy, 1, "write_file", arguments_for("x")))
        assert ok(run_cli("approvals", "expire", first, "--state-dir", str(state_dir))).startswith("Expired 1")
        second = pending_id(call_tool(proxy, 2, "write_file", arguments_for("x")))
    finally:
        proxy.stop()
    assert second != first
    assert show(state_dir, first)["status"] == "expired"
    line = one_line_error(run_cli("approvals", "approve", first, "--state-dir", str(state_dir)))
    assert "expired" in line


# -- secrets -----------------------------------------------------------------------------------

SECRETS = {
    "api_key": "k3y-Zq81-plain-words-here",
    "password": "hunter2-correct-horse",
    "token": "tok-7781-abcdefg",
    "note": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "nested": {"github": "ghp_16C7e42F292c6912E7710c838347Ae178B4a"},
}
SECRET_STRINGS = [
    "k3y-Zq81-plain-words-here",
    "hunter2-correct-horse",
    "tok-7781-abcdefg",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
]


def test_secrets_never_leave_the_proxy(tmp_path: Path) -> None:
    """Redacted in every view an approver or auditor gets, except `show` of an undecided request
    (exact, secrets marked; `--redact` hides them); erased from the store once spent; the upstream
    still gets the real call."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    state_dir = tmp_path / "state"
    raw_log = tmp_path / "raw.log"
    arguments = {"path": "deploy.env", **SECRETS}
    proxy = ProxyProcess(
        proxy_command(policy, state_dir, RAW_UPSTREAM, "--name", "files", "--log-level", "debug"),
        env=fixture_env(raw_log=raw_log),
    )
    outputs: list[str] = []

    def run(*args: str) -> str:
        result = run_cli(*args, "--state-dir", str(state_dir))
        outputs.extend([result.stdout, result.stderr])
        return ok(result)

    try:
        handshake(proxy)
        approval_id = pending_id(call_tool(proxy, 1, "write_file", arguments))
        assert pending_id(call_tool(proxy, 2, "write_file", arguments)) == approval_id
        run("approvals", "list")
        listed = json.loads(run("approvals", "list", "--all", "--json"))
        run("approvals", "show", approval_id, "--redact")
        redacted_json = json.loads(run("approvals", "show", approval_id, "--redact", "--json"))
        exact_text = ok(run_cli("approvals", "show", approval_id, "--state-dir", str(state_dir)))
        run("approvals", "approve", approval_id, "--actor", "alice")
        assert "result" in call_tool(proxy, 3, "write_file", arguments)
        shown = json.loads(run("approvals", "show", approval_id, "--json"))
        run("approvals", "list", "--all")
        run("events", "tail", "--json", "-n", "1000")
        run("events", "tail", "-n", "1000")
        proxy.close_stdin()
        assert proxy.wait() == 0
    finally:
        proxy.stop()

    assert shown["status"] == "consumed"
    redacted = {
        "path": "deploy.env",
        "api_key": "[REDACTED]",
        "password": "[REDACTED]",
        "token": "[REDACTED]",
        "note": "[REDACTED]",
        "nested": {"github": "[REDACTED]"},
    }
    assert listed[0]["arguments"] == redacted
    assert shown["arguments"] == shown["arguments_redacted"] == redacted
    assert shown["arguments_exact"] is False
    assert (redacted_json["arguments"], redacted_json["arguments_exact"]) == (redacted, False)
    # The approver saw the exact call while deciding, each secret marked.
    assert "arguments (exact; secret-looking parts marked):" in exact_text
    for secret in SECRET_STRINGS:
        assert f"⟦{secret}⟧" in exact_text

    places = {f"cli output {i}": text for i, text in enumerate(outputs)}
    places["proxy stderr"] = proxy.stderr
    for path in sorted((state_dir / "events").glob("*")):
        places[f"events {path.name}"] = path.read_text()
    for path in sorted(state_dir.glob("intercept.sqlite*")):
        places[path.name] = path.read_bytes().decode("latin-1")
    assert "intercept.sqlite" in places and len(places) > 10
    for secret in SECRET_STRINGS:
        for where, text in places.items():
            assert secret not in text, f"{secret!r} leaked into {where}"
    # The upstream got the call as sent: only the views are redacted.
    forwarded = [json.loads(line) for line in raw_log.read_bytes().splitlines()]
    assert [m["params"]["arguments"] for m in forwarded if m.get("method") == "tools/call"] == [arguments]
