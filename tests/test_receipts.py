"""Receipts (`audit.receipts`) and the checks `audit verify` runs on the database
(`audit.receipt_checks`), on a real SQLite file with real keys: a decision and a run each append
one signed receipt linked to the one before; an edited, removed, reordered or re-signed receipt,
and a vote whose signature or signed bytes were changed, are each found and named."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from intercept.approvals import approver_keys
from intercept.approvals.decisions import decide
from intercept.approvals.vote_check import rule_scope_text
from intercept.audit.events import EventLog, read_events
from intercept.audit.policy_archive import archive_policy
from intercept.audit.proxy_key import load_or_create
from intercept.audit.receipt_checks import check_database
from intercept.audit.receipts import GENESIS, Receipts, stored_receipts
from intercept.policy.load import parse_policy
from intercept.store.approvals import ApprovalStore
from intercept.store.database import connect, database_path
from intercept.store.votes import votes_of
from tests.store_support import approval_record, insert_record

KEYS = {name: Ed25519PrivateKey.generate() for name in ("alice", "bob")}


def policy_text() -> str:
    lines = "\n".join(
        f'  {name}: {{roles: [owner], key: "{approver_keys.public_line(key.public_key())}"}}'
        for name, key in KEYS.items()
    )
    return (
        f'version: "1"\napprovers:\n{lines}\ntools:\n  delete_repository:\n    rules:\n'
        "      - name: two owners\n        action: require_approval\n        approvers: {roles: [owner], quorum: 2}\n"
    )


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Two requests under a two-owners policy (archived), both approved by alice and bob, one run."""
    text = policy_text()
    policy = parse_policy(text)
    rule = policy.tools["delete_repository"].rules[0]
    archive_policy(tmp_path, policy, text, tmp_path / "policy.yaml")
    store = ApprovalStore(connect(tmp_path))
    receipts = Receipts(tmp_path)
    events = EventLog(tmp_path, "approvals-cli")  # the decisions' events name their receipts
    for approval_id in ("apr_1", "apr_2"):
        insert_record(
            tmp_path,
            dataclasses.replace(
                approval_record(approval_id, created_s=time.time(), args_exact=json.dumps({"repo": approval_id})),
                tool="delete_repository",
                rule=rule.name,
                rule_digest=rule.digest,
                policy_revision=policy.digest,
                scope=rule_scope_text(rule),
            ),
        )
        for name in ("alice", "bob"):
            decide(
                store, events, approval_id, approve=True, actor=name, reason=None, channel="cli",
                now_s=time.time(), policy_of=lambda record: policy,
                sign=lambda actor, payload: approver_keys.sign(KEYS[actor], payload), receipts=receipts,
            )  # fmt: skip
    with store.transaction():  # the proxy runs apr_1
        record = store.get("apr_1")
        assert record is not None
        assert receipts.append(store, "ran", record, votes_of(store, "apr_1"), time.time()).seq == 3
    events.close()
    return tmp_path


def breaks(state_dir: Path, public: Any = None) -> list[str]:
    key = public if public is not None else load_or_create(state_dir).public()
    return [str(finding) for finding in check_database(state_dir, key).findings if finding.broken]


def sql(state_dir: Path, statement: str, *params: object) -> None:
    with sqlite3.connect(database_path(state_dir)) as db:
        db.execute(statement, params)


def test_each_decision_and_run_has_a_receipt_linked_to_the_one_before(state: Path) -> None:
    receipts = stored_receipts(ApprovalStore(connect(state)))
    assert [(r.seq, r.approval_id, r.kind) for r in receipts] == [
        (1, "apr_1", "decided"),
        (2, "apr_2", "decided"),
        (3, "apr_1", "ran"),
    ]
    bodies = [json.loads(r.body) for r in receipts]
    assert bodies[0]["prev"] == GENESIS and bodies[1]["prev"] == receipts[0].hash
    assert [v["actor"] for v in bodies[0]["votes"]] == ["alice", "bob"] and all(
        v["signature"] for v in bodies[0]["votes"]
    )
    report = check_database(state, load_or_create(state).public())
    assert (report.findings, report.receipts, report.signed_votes) == ([], 3, 4 + 6)


def test_an_edited_receipt_is_found(state: Path) -> None:
    sql(state, "UPDATE receipts SET body = replace(body, 'apr_2', 'apr_9') WHERE seq = 2")
    assert breaks(state)[0] == (
        "intercept.sqlite/receipts:2: its hash is not the SHA-256 of its body: the body or the hash was edited"
    )


def test_a_receipt_rehashed_after_an_edit_is_found_by_its_signature_and_the_next_link(state: Path) -> None:
    import hashlib

    row = sqlite3.connect(database_path(state)).execute("SELECT body FROM receipts WHERE seq = 2").fetchone()
    body = row[0].replace('"status":"approved"', '"status":"denied"')
    sql(state, "UPDATE receipts SET body = ?, hash = ? WHERE seq = 2", body, hashlib.sha256(body.encode()).hexdigest())
    found = breaks(state)
    assert "intercept.sqlite/receipts:2: its signature is not the proxy key's" in found
    assert any(line.startswith("intercept.sqlite/receipts:3: its prev is not the hash") for line in found)


def test_a_removed_receipt_is_found(state: Path) -> None:
    sql(state, "DELETE FROM receipts WHERE seq = 2")
    found = breaks(state)
    assert found[0] == "intercept.sqlite/receipts:3: receipts 2 to 2 are missing"


def test_a_receipt_signed_with_another_key_is_found(state: Path) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    assert all("its signature is not the proxy key's" in line for line in breaks(state, other))


def test_a_vote_whose_signature_was_changed_is_found_in_the_table(state: Path) -> None:
    forged = approver_keys.sign(Ed25519PrivateKey.generate(), b"anything")
    sql(state, "UPDATE approval_votes SET signature = ? WHERE approval_id = 'apr_2' AND actor = 'bob'", forged)
    assert "intercept.sqlite/approval_votes: apr_2: bob's vote is not signed by bob's key in its policy" in breaks(
        state
    )


def test_a_vote_stored_under_another_request_is_found(state: Path) -> None:
    sql(state, "DELETE FROM approval_votes WHERE approval_id = 'apr_2' AND actor = 'alice'")
    sql(
        state,
        "INSERT INTO approval_votes SELECT 'apr_2', actor, decision, decided_at, channel, reason, request_expires_at, "
        "approvers_digest, signature, payload FROM approval_votes WHERE approval_id = 'apr_1' AND actor = 'alice'",
    )
    assert (
        "intercept.sqlite/approval_votes: apr_2: alice's vote signs another request, approver or decision than the "
        "one it is stored as" in breaks(state)
    )


def test_without_a_database_there_is_nothing_to_check(tmp_path: Path) -> None:
    report = check_database(tmp_path, None)
    assert (report.findings, report.receipts) == ([], 0)


def test_checking_does_not_change_the_database(state: Path) -> None:
    before = database_path(state).read_bytes()
    check_database(state, load_or_create(state).public())
    assert database_path(state).read_bytes() == before


def test_the_newest_receipts_cut_off_are_missed_by_the_events_that_name_them(state: Path) -> None:
    decided = [e for e in read_events(state) if e["type"] == "approval_decided"]
    assert [(e["approval_id"], e["receipt_seq"]) for e in decided] == [("apr_1", 1), ("apr_2", 2)]
    sql(state, "DELETE FROM receipts WHERE seq >= 2")  # the chain alone still verifies: 1 is intact
    assert breaks(state) == [
        "intercept.sqlite/receipts:2: the approval_decided event of apr_2 names receipt 2, which is gone"
    ]


def test_a_receipt_replaced_under_its_seq_is_missed_by_its_event(state: Path) -> None:
    sql(state, "UPDATE receipts SET hash = ? WHERE seq = 1", "0" * 64)
    assert (
        "intercept.sqlite/receipts:1: the approval_decided event of apr_1 names receipt 1 with another hash"
        in breaks(state)
    )


# -- every receipt removed at once: the events that name them still see it (found in review) -------


def _named(state_dir: Path) -> list[int]:
    return [e["receipt_seq"] for e in read_events(state_dir) if "receipt_seq" in e]


def test_a_dropped_receipts_table_is_a_break_for_the_events_that_name_them(state: Path) -> None:
    assert _named(state) == [1, 2]  # sealed or not, the log names receipts 1 and 2
    with sqlite3.connect(database_path(state)) as db:
        db.execute("DROP TABLE receipts")  # every receipt gone at once
    assert breaks(state) != []


def test_a_deleted_database_is_a_break_for_the_events_that_name_them(state: Path) -> None:
    assert _named(state) == [1, 2]
    path = database_path(state)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert breaks(state) != []


def test_audit_verify_fails_when_the_database_is_deleted(state: Path) -> None:
    from click.testing import CliRunner

    from intercept.cmd.audit_verify import verify_command

    assert CliRunner().invoke(verify_command, ["--state-dir", str(state)]).exit_code == 0  # intact: ok
    path = database_path(state)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    result = CliRunner().invoke(verify_command, ["--state-dir", str(state)])
    assert result.exit_code == 1, result.output  # events name receipts 1 and 2, which are gone
