"""The console (and admin API) as a deciding channel where the policy names approvers with keys:
in-process through the real app, a real SQLite file, the real policy archive and real Ed25519
keys. Who may decide is the archived policy's; the console signs a vote only with the keys of
its `signing_keys` directory, and its tokens then derive from that directory's secret, so writing
(or reading) the state dir's `admin.key` buys nobody's signature."""

from __future__ import annotations

import dataclasses
import json
import time
import types
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from intercept.approvals import approver_keys
from intercept.approvals.vote_check import rule_scope_text
from intercept.audit.policy_archive import archive_policy
from intercept.console.app import ConsoleConfig, build_app
from intercept.console.auth import ADMIN_KEY_FILE, BoundAddress, admin_secret, person_token, private_dir_problem
from intercept.policy.load import parse_policy
from intercept.store.approvals import ApprovalStore
from intercept.store.database import connect
from intercept.store.votes import votes_of
from tests.store_support import approval_record, insert_record

ADDRESS = BoundAddress("127.0.0.1", 8000)


def policy_text(keys: dict[str, str]) -> str:
    return f"""version: "1"
approvers:
  alice: {{roles: [owner], key: "{keys["alice"]}"}}
  bob:   {{roles: [owner], key: "{keys["bob"]}"}}
tools:
  delete_repository:
    rules:
      - name: two owners
        action: require_approval
        approvers: {{roles: [owner], quorum: 2}}
"""


@pytest.fixture
def setup(tmp_path: Path) -> types.SimpleNamespace:
    """alice's and bob's unencrypted keys in a private signing-keys directory; one pending
    request under the two-owners rule, its policy archived as a proxy archives it."""
    signing = tmp_path / "signing"
    signing.mkdir(mode=0o700)
    keys = {name: approver_keys.generate_key(signing / f"{name}.key", None) for name in ("alice", "bob")}
    text = policy_text(keys)
    policy = parse_policy(text)
    rule = policy.tools["delete_repository"].rules[0]
    state = tmp_path / "state"
    record = dataclasses.replace(
        approval_record("apr_1", created_s=time.time(), args_exact=json.dumps({"repo": "acme/payments"})),
        tool="delete_repository",
        rule=rule.name,
        rule_digest=rule.digest,
        policy_revision=policy.digest,
        scope=rule_scope_text(rule),
    )
    insert_record(state, record)
    archive_policy(state, policy, text, tmp_path / "policy.yaml")
    return types.SimpleNamespace(state=state, signing=signing, policy=policy, rule=rule)


def console(setup: types.SimpleNamespace, *, signing: bool) -> TestClient:
    config = ConsoleConfig(setup.state, ADDRESS, signing_keys=setup.signing if signing else None)
    return TestClient(build_app(config), base_url=ADDRESS.base_url)


def post(client: TestClient, verb: str, token: str) -> tuple[int, str]:
    response = client.post(f"/api/approvals/apr_1/{verb}", json={}, headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.text


def status_of(state: Path) -> str:
    record = ApprovalStore(connect(state)).get("apr_1")
    assert record is not None
    return record.status


def test_a_person_who_is_no_approver_cannot_veto(setup: types.SimpleNamespace) -> None:
    client = console(setup, signing=False)
    status, text = post(client, "deny", person_token(admin_secret(setup.state), "mallory"))
    assert status == 403 and "mallory is not an approver" in text
    assert status_of(setup.state) == "pending"


def test_without_signing_keys_the_console_cannot_vote_for_a_signing_approver(setup: types.SimpleNamespace) -> None:
    client = console(setup, signing=False)
    status, text = post(client, "approve", person_token(admin_secret(setup.state), "alice"))
    assert status == 403 and "must be signed" in text
    assert votes_of(ApprovalStore(connect(setup.state)), "apr_1") == []


def test_with_signing_keys_one_owner_votes_and_the_quorum_waits(setup: types.SimpleNamespace) -> None:
    client = console(setup, signing=True)
    secret = admin_secret(setup.state, setup.signing)
    assert post(client, "approve", person_token(secret, "alice"))[0] == 200
    assert status_of(setup.state) == "pending"
    assert post(client, "approve", person_token(secret, "bob"))[0] == 200
    assert status_of(setup.state) == "approved"
    assert all(vote.signature for vote in votes_of(ApprovalStore(connect(setup.state)), "apr_1"))


def test_a_planted_admin_key_buys_no_signature(setup: types.SimpleNamespace) -> None:
    client = console(setup, signing=True)
    planted = b"\x07" * 32  # the attacker writes the state dir's admin.key and mints tokens
    (setup.state / ADMIN_KEY_FILE).write_bytes(planted)
    for name in ("alice", "bob"):
        assert post(client, "approve", person_token(planted, name))[0] == 401
    assert status_of(setup.state) == "pending"
    assert votes_of(ApprovalStore(connect(setup.state)), "apr_1") == []


def test_the_signing_keys_directory_must_be_private_and_outside_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    inside = state / "keys"
    inside.mkdir(mode=0o700)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert "must be yours and closed to others (chmod 700" in (private_dir_problem(open_dir, state) or "")
    assert "is inside the state dir" in (private_dir_problem(inside, state) or "")
    assert "No such file" in (private_dir_problem(tmp_path / "missing", state) or "")
    assert private_dir_problem(private, state) is None
