"""Approvers, quorum and signed decisions through the real proxy and the real CLI: keys made with
`intercept approvers keygen`, votes cast with `intercept approvals approve|deny --as NAME`, the
call run only once the quorum has signed, and what an attacker with write access to the state
dir tries (a record flipped to approved by hand, a vote signed with their own key) refused by
the proxy before the call runs, recorded as `approval_tampered`. Escalation: a request nobody
decided in time becomes decidable by the escalation role, announced once however many proxies
watch it."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from intercept.audit.events import read_events
from intercept.store.database import database_path
from tests.e2e.support import (
    TOOL_UPSTREAM,
    Harness,
    ProxyProcess,
    base_env,
    call_tool,
    fixture_env,
    handshake,
    ok,
    one_line_error,
    pending_id,
    proxy_command,
    run_cli,
    show,
    text_of,
    wait_until,
)
from tests.webhook_receiver import webhook_receiver

ARGS = {"path": "release.txt", "content": "ship it"}
PASSPHRASE = "correct horse battery staple, twice"


class People:
    """Approvers with real keys under `<root>/config` (XDG_CONFIG_HOME): alice's encrypted (her
    passphrase in a 0600 file), the others' not."""

    def __init__(self, root: Path) -> None:
        self.env = base_env(XDG_CONFIG_HOME=str(root / "config"))
        self.passphrase_file = root / "alice.pass"
        self.passphrase_file.write_text(PASSPHRASE + "\n")
        self.passphrase_file.chmod(0o600)
        self.keys = {name: self.keygen(name) for name in ("alice", "bob", "carol", "dave", "mallory")}

    def keygen(self, name: str) -> str:
        protect = ["--passphrase-file", str(self.passphrase_file)] if name == "alice" else ["--no-passphrase"]
        out = ok(run_cli("approvers", "keygen", name, *protect, env=self.env))
        found = re.search(r'key: "(ed25519:[A-Za-z0-9+/=]+)"', out)
        assert found, out
        return found.group(1)

    def vote(self, harness: Harness, verb: str, approval_id: str, name: str, *extra: str) -> Any:
        unlock = ["--passphrase-file", str(self.passphrase_file)] if name == "alice" else []
        return run_cli(
            "approvals", verb, approval_id, "--as", name, "--state-dir", str(harness.state_dir), *unlock, *extra,
            env=self.env,
        )  # fmt: skip


def policy(people: People, rule_extra: str = "", approvals: str = "") -> str:
    keys = people.keys
    return f"""\
version: "1"
approvers:
  alice: {{roles: [owner], key: "{keys["alice"]}"}}
  bob:   {{roles: [owner], key: "{keys["bob"]}"}}
  carol: {{roles: [collaborator], key: "{keys["carol"]}"}}
  dave:  {{roles: [oncall], key: "{keys["dave"]}"}}
{approvals}
tools:
  write_file:
    rules:
      - name: two owners
        action: require_approval
        approvers: {{roles: [owner], quorum: 2}}
{rule_extra}"""


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> People:
    return People(tmp_path_factory.mktemp("people"))


def ran(reply: dict[str, Any]) -> bool:
    return "result" in reply and not reply["result"].get("isError")


def events_of(harness: Harness, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_events(harness.state_dir) if e["type"] == kind]


def test_two_owners_sign_and_only_then_the_call_runs_once(harness: Harness, people: People) -> None:
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))

    refused = one_line_error(people.vote(harness, "approve", approval_id, "carol"))
    assert "carol may not decide approval" in refused and "needs role owner (carol has collaborator)" in refused
    refused = one_line_error(people.vote(harness, "approve", approval_id, "mallory"))
    assert "mallory is not an approver" in refused

    voted = ok(people.vote(harness, "approve", approval_id, "alice"))
    assert "1 of 2 approvals" in voted
    again = ok(people.vote(harness, "approve", approval_id, "alice"))
    assert "alice already voted approve" in again
    assert pending_id(call_tool(proxy, 2, "write_file", ARGS)) == approval_id  # one vote is not enough
    assert harness.ran("write_file") == []

    ok(people.vote(harness, "approve", approval_id, "bob"))
    assert ran(call_tool(proxy, 3, "write_file", ARGS))
    assert pending_id(call_tool(proxy, 4, "write_file", ARGS)) != approval_id  # once
    assert len(harness.ran("write_file")) == 1

    record = show(harness.state_dir, approval_id)
    assert [(v["actor"], v["decision"], v["signed"]) for v in record["votes"]] == [
        ("alice", "approve", True),
        ("bob", "approve", True),
    ]
    assert record["decided_by"] == "alice, bob"

    listed = ok(run_cli("approvers", "list", "--state-dir", str(harness.state_dir)))
    assert f"  alice            owner                    {people.keys['alice']}" in listed
    listed_json = json.loads(ok(run_cli("approvers", "list", "--json", "--state-dir", str(harness.state_dir))))
    assert [a["name"] for a in listed_json["approvers"]] == ["alice", "bob", "carol", "dave"]

    # The proof, offline: the decision and the run each left a receipt signed by the proxy key,
    # and both votes check against the keys of the archived policy.
    public = harness.root / "proxy.pub"
    public.write_text(ok(run_cli("audit", "public-key", "--state-dir", str(harness.state_dir))))
    proxy.close_stdin()
    proxy.wait()
    verified = ok(run_cli("audit", "verify", "--state-dir", str(harness.state_dir), "--public-key", str(public)))
    assert "2 receipts, 6 signed votes" in verified
    with sqlite3.connect(database_path(harness.state_dir)) as db:  # a later edit of bob's vote
        db.execute("UPDATE approval_votes SET decision = 'deny' WHERE actor = 'bob'")
    tampered = run_cli("audit", "verify", "--state-dir", str(harness.state_dir), "--public-key", str(public))
    assert tampered.returncode == 1
    assert (
        f"intercept.sqlite/approval_votes: {approval_id}: bob's vote signs another request, approver or decision "
        "than the one it is stored as" in tampered.stdout
    )


def test_one_owner_denying_vetoes(harness: Harness, people: People) -> None:
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    ok(people.vote(harness, "approve", approval_id, "alice"))
    ok(people.vote(harness, "deny", approval_id, "bob", "-c", str(harness.policy), "--reason", "not today"))
    reply = call_tool(proxy, 2, "write_file", ARGS)
    assert "not today" in text_of(reply) and harness.ran("write_file") == []


def test_a_key_that_is_not_the_approvers_is_refused_by_the_cli(harness: Harness, people: People) -> None:
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    mallory_key = Path(people.env["XDG_CONFIG_HOME"]) / "intercept" / "approvers" / "mallory.key"
    refused = one_line_error(people.vote(harness, "approve", approval_id, "bob", "--key", str(mallory_key)))
    assert "not bob's key in the policy" in refused
    assert show(harness.state_dir, approval_id)["votes"] == []


def test_a_record_flipped_to_approved_by_hand_is_refused_before_the_call_runs(harness: Harness, people: People) -> None:
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    ok(people.vote(harness, "approve", approval_id, "alice"))  # one real vote
    with sqlite3.connect(database_path(harness.state_dir)) as db:  # the attacker, with write access
        db.execute("UPDATE approvals SET status = 'approved', decided_by = 'alice, bob' WHERE id = ?", (approval_id,))

    reply = call_tool(proxy, 2, "write_file", ARGS)
    assert "failed the proxy's check (approved with 1 of the 2 approvals its rule needs)" in text_of(reply)
    assert harness.ran("write_file") == []
    proxy.wait_for_stderr(f"approval {approval_id} refused and voided")
    proxy.sync()
    tampered = events_of(harness, "approval_tampered")
    assert [(e["approval_id"], e["severity"]) for e in tampered] == [(approval_id, "critical")]
    assert show(harness.state_dir, approval_id)["status"] == "expired"
    assert pending_id(call_tool(proxy, 3, "write_file", ARGS)) != approval_id  # a retry asks anew


def test_a_vote_forged_with_the_attackers_own_key_is_refused(harness: Harness, people: People) -> None:
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    ok(people.vote(harness, "approve", approval_id, "alice"))
    # The attacker copies alice's vote row as bob's and re-signs nothing (they hold no owner's key).
    with sqlite3.connect(database_path(harness.state_dir)) as db:
        db.execute(
            "INSERT INTO approval_votes SELECT approval_id, 'bob', decision, decided_at, channel, reason, "
            "request_expires_at, approvers_digest, signature, payload FROM approval_votes WHERE actor = 'alice'"
        )
        db.execute("UPDATE approvals SET status = 'approved' WHERE id = ?", (approval_id,))
    reply = call_tool(proxy, 2, "write_file", ARGS)
    assert "bob's vote is not signed by bob's key in the policy" in text_of(reply)
    assert harness.ran("write_file") == []


def test_a_request_nobody_decided_escalates_once_across_proxies(harness: Harness, people: People) -> None:
    secret = "whsec-escalation-e2e"
    with webhook_receiver(secret.encode()) as receiver:
        approvals = f'approvals:\n  notify:\n    webhook:\n      url: "{receiver.url}"\n      secret_env: HOOK_SECRET'
        harness.write_policy(
            policy(people, "        escalate_after: 2s\n        escalate_to: {roles: [oncall]}\n", approvals).replace(
                "quorum: 2", "quorum: 1"
            )
        )
        proxies = []
        for _ in range(2):
            proxy = ProxyProcess(
                proxy_command(harness.policy, harness.state_dir, TOOL_UPSTREAM, "--name", "files"),
                env=fixture_env(exec_log=harness.exec_log, HOOK_SECRET=secret),
            )
            harness.proxies.append(proxy)
            handshake(proxy)
            proxies.append(proxy)
        approval_id = pending_id(call_tool(proxies[0], 1, "write_file", ARGS))
        assert receiver.next().json()["type"] == "approval_requested"
        early = one_line_error(people.vote(harness, "approve", approval_id, "dave"))
        assert "only once it escalates" in early

        escalated = receiver.next(timeout_s=30)
        body = escalated.json()
        assert (body["type"], body["approval_id"], body["escalated_to"], escalated.verdict) == (
            "approval_escalated",
            approval_id,
            ["oncall"],
            "ok",
        )
        assert wait_until(lambda: len(events_of(harness, "approval_escalated")) >= 1, 10)
        for proxy in proxies:  # both proxies looked at least once more after it escalated
            proxy.sync()
        ok(people.vote(harness, "approve", approval_id, "dave"))
        assert ran(call_tool(proxies[1], 2, "write_file", ARGS))
        for proxy in proxies:
            proxy.close_stdin()
            proxy.wait()
        assert len(events_of(harness, "approval_escalated")) == 1
        assert receiver.deliveries.qsize() == 0  # announced once
        history = [h["event"] for h in show(harness.state_dir, approval_id)["history"]]
        assert history.count("escalated") == 1


def test_approvers_shown_edited_arguments_sign_those_and_the_real_call_is_refused(
    harness: Harness, people: People
) -> None:
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    evil = {"path": "/etc/passwd", "content": "pwned"}
    approval_id = pending_id(call_tool(proxy, 1, "write_file", evil))
    with sqlite3.connect(database_path(harness.state_dir)) as db:  # what the approvers will be shown
        db.execute(
            "UPDATE approvals SET args_exact = ? WHERE id = ?", ('{"path": "notes.txt", "content": "hi"}', approval_id)
        )
    for name in ("alice", "bob"):
        ok(people.vote(harness, "approve", approval_id, name))
    reply = call_tool(proxy, 2, "write_file", evil)
    assert "alice's vote is not signed by alice's key in the policy" in text_of(reply)
    assert harness.ran("write_file") == []


def test_approvers_list_needs_an_archived_policy(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    assert "no archived policy in" in one_line_error(
        run_cli("approvers", "list", "--state-dir", str(tmp_path / "state"))
    )
    assert "no state dir at" in one_line_error(run_cli("approvers", "list", "--state-dir", str(tmp_path / "missing")))
