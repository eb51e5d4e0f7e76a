"""Review of #13 (approvers, quorum, signed votes): attacks by someone with write access to the
state dir (not to the policy, not to the approvers' private keys) that get a call run which the
approvers did not approve, through the real proxy and the real CLI. Each test states the promise
it holds the code to; each fails at 9f58be0."""

from __future__ import annotations

import json
import sqlite3

import pytest

from intercept.store.database import database_path
from intercept.store.timestamps import rfc3339
from tests.e2e.support import TOOL_UPSTREAM, Harness, call_tool, ok, pending_id, show
from tests.e2e.test_approvers_e2e import ARGS, People, policy, ran

EVIL = {"path": "payroll.db", "content": "attacker's content"}


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> People:
    return People(tmp_path_factory.mktemp("people"))


def sql(harness: Harness, statement: str, *params: object) -> None:
    """The attacker, with write access to the state dir."""
    with sqlite3.connect(database_path(harness.state_dir)) as db:
        db.execute(statement, params)


def both_owners_approve(harness: Harness, people: People, approval_id: str) -> None:
    for name in ("alice", "bob"):
        ok(people.vote(harness, "approve", approval_id, name, "-c", str(harness.policy)))


# -- what the approvers see is not what they sign -----------------------------------------------


def test_approvers_who_saw_one_call_do_not_authorize_another(harness: Harness, people: People) -> None:
    """The signature covers the record's fingerprint, which the approver cannot check against the
    arguments `approvals show` displays: the attacker moves the fingerprint of the call they want
    onto the request the approvers read as harmless."""
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    evil_id = pending_id(call_tool(proxy, 1, "write_file", EVIL))
    benign_id = pending_id(call_tool(proxy, 2, "write_file", ARGS))
    with sqlite3.connect(database_path(harness.state_dir)) as db:
        (evil_fingerprint,) = db.execute("SELECT fingerprint FROM approvals WHERE id = ?", (evil_id,)).fetchone()
        db.execute("DELETE FROM approval_history WHERE approval_id = ?", (evil_id,))
        db.execute("DELETE FROM approvals WHERE id = ?", (evil_id,))
        db.execute("UPDATE approvals SET fingerprint = ? WHERE id = ?", (evil_fingerprint, benign_id))

    shown = show(harness.state_dir, benign_id)
    assert shown["arguments"] == ARGS  # what alice and bob read, and approve
    both_owners_approve(harness, people, benign_id)

    call_tool(proxy, 3, "write_file", EVIL)
    assert harness.ran("write_file") == [], "the proxy ran a call no approver was shown"


# -- at most once -------------------------------------------------------------------------------


def test_a_consumed_once_approval_flipped_back_to_approved_does_not_run_again(harness: Harness, people: People) -> None:
    """`status` and `uses_left` are not covered by anything the proxy checks: the signed votes
    stay valid for the record's whole window, so `consumed` -> `approved` replays the call."""
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    both_owners_approve(harness, people, approval_id)
    assert ran(call_tool(proxy, 2, "write_file", ARGS))

    for request_id in (3, 4, 5):
        sql(harness, "UPDATE approvals SET status = 'approved', consumed_at = NULL WHERE id = ?", approval_id)
        call_tool(proxy, request_id, "write_file", ARGS)
    assert len(harness.ran("write_file")) == 1, "a once approval ran again after a one-column edit"


def test_a_once_approval_given_an_unreadable_scope_stays_once(harness: Harness, people: People) -> None:
    """The signed payload says `"once"` both for a NULL scope and for any scope that is not a
    JSON object (`"{}"`, `"x"`), but `take` treats every non-NULL scope as a window: once
    approved, `scope = '{}'` makes it usable without limit until it expires, no further edit."""
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    both_owners_approve(harness, people, approval_id)
    sql(harness, "UPDATE approvals SET scope = '{}' WHERE id = ?", approval_id)

    for request_id in (2, 3, 4):
        call_tool(proxy, request_id, "write_file", ARGS)
    assert len(harness.ran("write_file")) <= 1, "a once approval ran three times"


def test_a_counted_scope_with_its_runs_left_erased_stays_counted(harness: Harness, people: People) -> None:
    """`uses_left IS NULL` passes `check_approval` (`record.uses_left is not None and ...`) and
    `_use` then counts nothing: `uses: 2` becomes unlimited within the window."""
    harness.write_policy(policy(people, "        scope: {uses: 2}\n"))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    both_owners_approve(harness, people, approval_id)
    sql(harness, "UPDATE approvals SET uses_left = NULL WHERE id = ?", approval_id)

    for request_id in (2, 3, 4, 5):
        call_tool(proxy, request_id, "write_file", ARGS)
    assert len(harness.ran("write_file")) <= 2, "uses: 2 ran more than twice"


# -- escalation ---------------------------------------------------------------------------------


def test_a_backdated_request_does_not_let_the_escalation_role_decide_early(harness: Harness, people: People) -> None:
    """`created_at` is read from the database, unsigned, both by the CLI (may dave vote?) and by
    the proxy (does dave's vote count?): backdating it makes oncall an approver at once."""
    harness.write_policy(
        policy(
            people, "        escalate_after: 1h\n        escalate_to: {roles: [oncall]}\n", "approvals: {timeout: 2h}"
        ).replace("quorum: 2", "quorum: 1")
    )
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    sql(harness, "UPDATE approvals SET created_at = ? WHERE id = ?", rfc3339(0.0), approval_id)

    people.vote(harness, "approve", approval_id, "dave", "-c", str(harness.policy))
    call_tool(proxy, 2, "write_file", ARGS)
    assert harness.ran("write_file") == [], "oncall decided a request that had waited seconds, not an hour"


# -- the CLI without -c -------------------------------------------------------------------------


def test_without_c_a_person_who_is_no_approver_cannot_veto(harness: Harness, people: People) -> None:
    """The promise: an unknown actor gets a one-line error and nothing changes. Without -c the
    CLI looks for the archived policy (`intercept.audit.policy_archive`, not in the tree), finds
    none, and casts an unchecked, unsigned vote with quorum 1: mallory's deny vetoes (denials are
    never re-checked by the proxy)."""
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    result = people.vote(harness, "deny", approval_id, "mallory", "--reason", "no")
    assert result.returncode == 1, result.stdout + result.stderr
    assert show(harness.state_dir, approval_id)["status"] == "pending"


def test_without_c_an_owners_vote_is_signed_and_waits_for_the_quorum(harness: Harness, people: People) -> None:
    """Same fallback: alice's approve is stored unsigned and decides a quorum-2 request alone;
    the proxy then voids it as tampering (a critical event for an honest approver)."""
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    people.vote(harness, "approve", approval_id, "alice")
    record = show(harness.state_dir, approval_id)
    assert record["status"] == "pending"
    assert [vote["signed"] for vote in record["votes"]] in ([], [True])
    reply = call_tool(proxy, 2, "write_file", ARGS)
    assert "failed the proxy's check" not in json.dumps(reply)


# -- no tracebacks ------------------------------------------------------------------------------


def test_an_unreadable_created_at_is_one_line_for_an_escalation_approver(harness: Harness, people: People) -> None:
    harness.write_policy(
        policy(
            people, "        escalate_after: 1h\n        escalate_to: {roles: [oncall]}\n", "approvals: {timeout: 2h}"
        )
    )
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    sql(harness, "UPDATE approvals SET created_at = '2026-13-99' WHERE id = ?", approval_id)
    result = people.vote(harness, "approve", approval_id, "dave", "-c", str(harness.policy))
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_an_unreadable_expiry_on_an_approved_record_refuses_the_call_in_one_line(
    harness: Harness, people: People
) -> None:
    harness.write_policy(policy(people))
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", ARGS))
    both_owners_approve(harness, people, approval_id)
    sql(harness, "UPDATE approvals SET expires_at = '9999' WHERE id = ?", approval_id)
    reply = call_tool(proxy, 2, "write_file", ARGS)
    assert harness.ran("write_file") == []
    assert "Traceback" not in proxy.stderr, proxy.stderr
    assert "error" in reply or reply["result"].get("isError"), reply
