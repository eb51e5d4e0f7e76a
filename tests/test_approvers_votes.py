"""Who may decide, quorum, veto and signed votes (`approvals.decisions.decide` with a policy that
names approvers), and the proxy's own check of an approved record's votes (`vote_check`),
against a real SQLite file and real Ed25519 keys. The attacks are the ones a person with write
access to the state dir would try: flip a record to approved, add a vote signed by their own
key, copy a vote from another request, push an expiry out, raise the runs left."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from intercept.approvals import approver_keys
from intercept.approvals.decisions import DecisionConflict, NotEligible, decide
from intercept.approvals.vote_check import check_approval, rule_scope_text
from intercept.approvals.who_may_decide import CallFacts, arguments_sha256, decision_payload
from intercept.policy.load import parse_policy
from intercept.policy.model import Policy, Rule
from intercept.store.approvals import ApprovalStore, DecisionRefused
from intercept.store.database import connect
from intercept.store.timestamps import rfc3339
from intercept.store.votes import Vote, votes_of
from tests.store_support import approval_record, insert_record

ARGUMENTS = {"repo": "acme/payments", "confirm": True}
THE_CALL = CallFacts("files", "delete_repository", arguments_sha256(ARGUMENTS), None)
KEYS = {name: Ed25519PrivateKey.generate() for name in ("alice", "bob", "carol", "dave", "mallory")}


def line(name: str) -> str:
    return approver_keys.public_line(KEYS[name].public_key())


def policy_text(quorum: int = 2, extra: str = "", *, escalate: bool = False, scope: str = "once") -> str:
    escalation = "        escalate_after: 10m\n        escalate_to: {roles: [oncall]}\n" if escalate else ""
    escalation += f"        scope: {scope}\n"
    return f"""
version: "1"
approvers:
  alice: {{roles: [owner], key: "{line("alice")}"}}
  bob:   {{roles: [owner, oncall], key: "{line("bob")}"}}
  carol: {{roles: [collaborator], key: "{line("carol")}"}}
  dave:  {{roles: [oncall], key: "{line("dave")}"}}
{extra}
tools:
  delete_repository:
    rules:
      - name: two owners
        action: require_approval
        approvers: {{roles: [owner], quorum: {quorum}}}
{escalation}"""


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


def sign_as(actor: str, payload: bytes) -> str:
    return approver_keys.sign(KEYS[actor], payload)


class Desk:
    """A state dir with one pending request under `policy`, and decisions on it."""

    def __init__(self, tmp_path: Path, policy: Policy, created_s: float | None = None, approval_id: str = "apr_1"):
        self.policy = policy
        self.rule = policy.tools["delete_repository"].rules[0]
        self.created_s = time.time() if created_s is None else created_s
        record = dataclasses.replace(
            approval_record(approval_id, created_s=self.created_s, args_exact=json.dumps(ARGUMENTS)),
            tool="delete_repository",
            rule=self.rule.name,
            rule_digest=self.rule.digest,
            policy_revision=policy.digest,
            scope=rule_scope_text(self.rule),
        )
        insert_record(tmp_path, record)
        self.store = ApprovalStore(connect(tmp_path))
        self.events = Recorded()
        self.id = approval_id

    def vote(self, actor: str, approve: bool = True, *, at_s: float | None = None, sign: Any = sign_as) -> Any:
        return decide(
            self.store,
            self.events,
            self.id,
            approve=approve,
            actor=actor,
            reason=None,
            channel="cli",
            now_s=time.time() if at_s is None else at_s,
            policy_of=lambda record: self.policy,
            sign=sign,
        )

    def record(self) -> Any:
        return self.store.get(self.id)

    def check(self, policy: Policy | None = None, rule: Rule | None = None, call: CallFacts = THE_CALL) -> Any:
        """The proxy's check as it would run for `call` (by default the call the request is for)."""
        return check_approval(
            policy or self.policy, rule or self.rule, self.record(), votes_of(self.store, self.id), time.time(), call
        )


@pytest.fixture
def desk(tmp_path: Path) -> Desk:
    return Desk(tmp_path, parse_policy(policy_text()))


# -- who may decide ---------------------------------------------------------------------------


def test_two_owners_approve_it_one_vote_at_a_time(desk: Desk) -> None:
    first = desk.vote("alice")
    assert (first.changed, first.record.status, first.quorum) == (True, "pending", 2)
    assert [v.actor for v in first.votes] == ["alice"]
    second = desk.vote("bob")
    assert (second.record.status, second.record.decided_by) == ("approved", "alice, bob")
    assert [kind for kind, _ in desk.events.events] == ["approval_voted", "approval_decided"]
    assert desk.check() is None


def test_the_same_person_approving_twice_counts_once(desk: Desk) -> None:
    desk.vote("alice")
    again = desk.vote("alice")
    assert (again.changed, again.record.status) == (False, "pending")
    assert len(votes_of(desk.store, desk.id)) == 1


def test_a_vote_stands(desk: Desk) -> None:
    desk.vote("alice")
    with pytest.raises(DecisionConflict, match="a vote cannot be changed"):
        desk.vote("alice", approve=False)


def test_one_eligible_deny_vetoes_at_once(desk: Desk) -> None:
    desk.vote("alice")
    vetoed = desk.vote("bob", approve=False)
    assert (vetoed.record.status, vetoed.record.decided_by) == ("denied", "bob")
    assert [(v.actor, v.decision) for v in vetoed.votes] == [("alice", "approve"), ("bob", "deny")]


@pytest.mark.parametrize(
    ("actor", "message"),
    [
        ("carol", "carol may not decide approval apr_1: it needs role owner (carol has collaborator)"),
        ("mallory", "mallory is not an approver in the policy of approval apr_1 (approvers: alice, bob, carol, dave)"),
        ("dave", "dave may not decide approval apr_1: it needs role owner (dave has oncall)"),
    ],
)
def test_an_ineligible_or_unknown_actor_changes_nothing(desk: Desk, actor: str, message: str) -> None:
    with pytest.raises(NotEligible) as refused:
        desk.vote(actor, approve=False)
    assert str(refused.value).startswith(message)
    assert votes_of(desk.store, desk.id) == [] and desk.record().status == "pending"


def test_a_vote_signed_with_another_key_is_refused(desk: Desk) -> None:
    with pytest.raises(DecisionRefused, match="not alice's key in the policy"):
        desk.vote("alice", sign=lambda actor, payload: approver_keys.sign(KEYS["mallory"], payload))
    assert votes_of(desk.store, desk.id) == []


def test_a_signed_approver_cannot_vote_through_a_channel_that_cannot_sign(desk: Desk) -> None:
    with pytest.raises(DecisionRefused, match="must be signed"):
        desk.vote("alice", sign=None)


def test_escalation_roles_may_decide_once_the_request_waited(tmp_path: Path) -> None:
    created = time.time() - 3600 + 700  # created 700 s before now; the request expires in the hour
    desk = Desk(tmp_path, parse_policy(policy_text(quorum=1, escalate=True)), created_s=created)
    with pytest.raises(NotEligible, match="only once it escalates"):
        desk.vote("dave", at_s=created + 300)
    decided = desk.vote("dave", at_s=created + 601)
    assert decided.record.status == "approved"
    assert desk.check() is None


def test_without_an_approvers_block_anyone_decides_unsigned(tmp_path: Path) -> None:
    policy = parse_policy(
        'version: "1"\ntools:\n  delete_repository:\n    rules:\n      - name: r\n        action: require_approval\n'
    )
    desk = Desk(tmp_path, policy)
    decided = desk.vote("whoever", sign=None)
    assert decided.record.status == "approved" and decided.votes[0].signature is None
    assert desk.check() is None


# -- the proxy's check at consume time --------------------------------------------------------


def flip_to_approved(store: ApprovalStore, approval_id: str, by: str = "alice, bob") -> None:
    with store.transaction():
        store.connection.execute(
            "UPDATE approvals SET status = 'approved', decided_by = ?, decided_at = ? WHERE id = ?",
            (by, rfc3339(time.time()), approval_id),
        )


def forged_vote(desk: Desk, actor: str, key: str, **changes: Any) -> None:
    vote = Vote(
        approval_id=desk.id,
        actor=actor,
        decision="approve",
        decided_at=rfc3339(time.time()),
        channel="cli",
        reason=None,
        request_expires_at=desk.record().expires_at,
        approvers_digest=desk.policy.approvers_digest,
    )
    payload = decision_payload(desk.record(), vote, THE_CALL)
    vote = dataclasses.replace(vote, signature=approver_keys.sign(KEYS[key], payload))
    vote = dataclasses.replace(vote, **changes)
    with desk.store.transaction():
        desk.store.connection.execute(
            "INSERT INTO approval_votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", dataclasses.astuple(vote)
        )


def test_a_record_flipped_to_approved_by_hand_is_refused(desk: Desk) -> None:
    flip_to_approved(desk.store, desk.id)
    assert desk.check().reason == "approved with 0 of the 2 approvals its rule needs"


def test_a_flipped_record_with_one_real_vote_is_refused(desk: Desk) -> None:
    desk.vote("alice")
    flip_to_approved(desk.store, desk.id)
    assert "1 of the 2" in desk.check().reason


def test_a_vote_signed_by_a_key_not_in_the_policy_is_refused(desk: Desk) -> None:
    desk.vote("alice")
    forged_vote(desk, "bob", key="mallory")
    flip_to_approved(desk.store, desk.id)
    refusal = desk.check()
    assert refusal.tampered and refusal.reason == "bob's vote is not signed by bob's key in the policy"


def test_an_unsigned_vote_by_a_signing_approver_is_refused(desk: Desk) -> None:
    desk.vote("alice")
    forged_vote(desk, "bob", key="bob", signature=None)
    flip_to_approved(desk.store, desk.id)
    assert desk.check().reason == "an unsigned vote by bob, whose decisions must be signed"


def test_a_vote_by_someone_not_in_the_policy_is_refused(desk: Desk) -> None:
    desk.vote("alice")
    forged_vote(desk, "mallory", key="mallory")
    flip_to_approved(desk.store, desk.id)
    assert desk.check().reason == "a vote by mallory, who is not an approver in the policy"


def test_a_vote_copied_from_another_request_is_refused(tmp_path: Path) -> None:
    policy = parse_policy(policy_text())
    other = Desk(tmp_path, policy, approval_id="apr_other")
    other.vote("alice")
    other.vote("bob")
    desk = Desk(tmp_path, policy, approval_id="apr_1")
    with desk.store.transaction():
        desk.store.connection.execute(
            "INSERT INTO approval_votes SELECT 'apr_1', actor, decision, decided_at, channel, reason, "
            "request_expires_at, approvers_digest, signature, payload FROM approval_votes WHERE approval_id = 'apr_other'"
        )
    flip_to_approved(desk.store, desk.id)
    assert desk.check().reason == "alice's vote is not signed by alice's key in the policy"


def test_a_veto_deleted_and_the_record_flipped_is_refused_when_the_deny_is_kept(desk: Desk) -> None:
    desk.vote("alice")
    desk.vote("bob", approve=False)
    with desk.store.transaction():  # the attacker re-adds a yes in bob's name? they cannot sign it; flip only
        desk.store.connection.execute("UPDATE approvals SET status = 'approved' WHERE id = ?", (desk.id,))
    assert desk.check().reason == "approved although bob denied it"


def test_an_expiry_pushed_out_is_refused(desk: Desk) -> None:
    desk.vote("alice")
    desk.vote("bob")
    with desk.store.transaction():
        desk.store.connection.execute(
            "UPDATE approvals SET expires_at = ? WHERE id = ?", (rfc3339(time.time() + 30 * 86400), desk.id)
        )
    assert "later than its approval allows" in desk.check().reason


@pytest.mark.parametrize(("left", "reason"), [(5, "5 runs left"), (None, "None runs left"), (0, "0 runs left")])
def test_runs_left_changed_are_refused(tmp_path: Path, left: int | None, reason: str) -> None:
    desk = Desk(tmp_path, parse_policy(policy_text(scope="{uses: 2}")))
    desk.vote("alice")
    desk.vote("bob")
    assert desk.check() is None
    with desk.store.transaction():
        desk.store.connection.execute("UPDATE approvals SET uses_left = ? WHERE id = ?", (left, desk.id))
    assert desk.check().reason == f"{reason}, not what its rule allows (1 to 2)"


@pytest.mark.parametrize("scope", ["{}", "[]", "garbage", '{"uses": null, "for_s": 3600, "match": "call"}'])
def test_a_scope_changed_after_the_votes_is_refused(desk: Desk, scope: str) -> None:
    desk.vote("alice")
    desk.vote("bob")
    with desk.store.transaction():
        desk.store.connection.execute("UPDATE approvals SET scope = ? WHERE id = ?", (scope, desk.id))
    assert desk.check().reason.startswith(f"its scope {scope} is not its rule's (once)")


def test_a_backdated_request_does_not_let_the_escalation_role_decide_early(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parse_policy(policy_text(quorum=1, escalate=True)))
    with desk.store.transaction():  # the attacker makes the request look 20 minutes old
        desk.store.connection.execute(
            "UPDATE approvals SET created_at = ? WHERE id = ?", (rfc3339(desk.created_s - 1200), desk.id)
        )
    with pytest.raises(DecisionRefused, match="was created and expires 4800s apart, not its rule's 3600s"):
        desk.vote("dave")
    with desk.store.transaction():  # moving the expiry along keeps the difference, but not the signed expiry
        desk.store.connection.execute(
            "UPDATE approvals SET expires_at = ? WHERE id = ?", (rfc3339(desk.created_s - 1200 + 3600), desk.id)
        )
    decided = desk.vote("dave")  # shifted by 20 minutes, within what the request's own timeout allows
    assert decided.record.status == "approved"
    assert desk.check() is None  # the residue SECURITY.md names: at most timeout - escalate_after earlier


def test_an_unreadable_time_is_a_refusal_not_an_error(desk: Desk) -> None:
    desk.vote("alice")
    desk.vote("bob")
    with desk.store.transaction():
        desk.store.connection.execute("UPDATE approvals SET expires_at = '9999' WHERE id = ?", (desk.id,))
    assert desk.check().reason == "it holds a time that cannot be read"


def test_a_genuine_approval_under_an_older_approvers_block_no_longer_counts_but_is_not_tampering(desk: Desk) -> None:
    desk.vote("alice")
    desk.vote("bob")
    edited = parse_policy(policy_text(extra='  erin: {roles: [owner], key: "' + line("mallory") + '"}'))
    refusal = desk.check(edited, edited.tools["delete_repository"].rules[0])
    assert refusal is not None and not refusal.tampered
    assert "another approvers block" in refusal.reason


def test_a_vote_dated_in_the_future_is_refused(desk: Desk) -> None:
    desk.vote("alice")
    desk.vote("bob", at_s=time.time() + 600)
    assert "in the future" in desk.check().reason


def test_arguments_edited_before_the_vote_sign_another_call_and_do_not_count(desk: Desk) -> None:
    """The attacker shows the approvers harmless arguments: the votes sign those, not the call's."""
    with desk.store.transaction():
        desk.store.connection.execute(
            "UPDATE approvals SET args_exact = ? WHERE id = ?", (json.dumps({"repo": "acme/sandbox"}), desk.id)
        )
    desk.vote("alice")
    desk.vote("bob")
    assert desk.check().reason == "alice's vote is not signed by alice's key in the policy"


@pytest.mark.parametrize(
    "other",
    [
        CallFacts("files", "delete_repository", arguments_sha256({"repo": "acme/other"}), None),
        CallFacts("files", "archive_repository", THE_CALL.arguments_sha256, None),
        CallFacts("prod-files", "delete_repository", THE_CALL.arguments_sha256, None),
        CallFacts("files", "delete_repository", THE_CALL.arguments_sha256, "ci-bot"),
    ],
)
def test_signed_votes_count_only_for_the_call_they_name(desk: Desk, other: CallFacts) -> None:
    desk.vote("alice")
    desk.vote("bob")
    assert desk.check() is None
    assert "not signed by" in desk.check(call=other).reason


def test_two_of_three_owners_approve_and_the_third_vote_changes_nothing(tmp_path: Path) -> None:
    three = policy_text(extra="").replace("dave:  {roles: [oncall]", "dave:  {roles: [owner, oncall]")
    desk = Desk(tmp_path, parse_policy(three))
    assert desk.vote("alice").record.status == "pending"
    assert desk.vote("dave").record.status == "approved"
    late = desk.vote("bob")
    assert (late.changed, late.record.status, late.record.decided_by) == (False, "approved", "alice, dave")
    assert [v.actor for v in votes_of(desk.store, desk.id)] == ["alice", "dave"]
    assert desk.check() is None


def test_two_of_three_owners_one_deny_vetoes_even_after_a_yes(tmp_path: Path) -> None:
    three = policy_text(extra="").replace("dave:  {roles: [oncall]", "dave:  {roles: [owner, oncall]")
    desk = Desk(tmp_path, parse_policy(three))
    desk.vote("alice")
    assert desk.vote("dave", approve=False).record.status == "denied"
    with pytest.raises(DecisionConflict, match="already denied"):
        desk.vote("bob")
