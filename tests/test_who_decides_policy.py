"""The `approvers` block and a rule's `approvers` / `escalate_after` / `escalate_to`: what loads,
the digests signed decisions bind to, and the one-line issue for each bad or risky value."""

from __future__ import annotations

import pytest

from intercept.policy import PolicyError, parse_policy
from intercept.policy.load import check_policy
from intercept.policy.model import WhoDecides

KEY = "ed25519:" + "A" * 43 + "="  # the shape of a key: 32 zero bytes


def policy(approvers: str, rule_extra: str = "", approvals: str = "") -> str:
    return (
        'version: "1"\n'
        + (f"approvers:\n{approvers}\n" if approvers else "")
        + (f"approvals:\n{approvals}\n" if approvals else "")
        + "tools:\n  delete_repository:\n    rules:\n      - name: ask\n        action: require_approval\n"
        + "".join(f"        {line}\n" for line in rule_extra.splitlines() if line)
    )


OWNERS = f'  alice: {{roles: [owner], key: "{KEY}"}}\n  bob: {{roles: [owner, oncall], key: "{KEY}"}}'


def issues_of(text: str) -> list[str]:
    _, issues = check_policy(text)
    return [issue.text for issue in issues]


def test_the_block_and_a_rule_load() -> None:
    loaded = parse_policy(
        policy(OWNERS, "approvers: {roles: [owner], quorum: 2}\nescalate_after: 10m\nescalate_to: {roles: [oncall]}")
    )
    assert loaded.approvers["bob"].roles == frozenset({"owner", "oncall"}) and loaded.approvers["bob"].key == KEY
    rule = loaded.tools["delete_repository"].rules[0]
    assert rule.approvers == WhoDecides(frozenset({"owner"}), 2, 600.0, frozenset({"oncall"}))
    assert len(loaded.approvers_digest) == 64


def test_who_decides_is_part_of_the_rule_digest_and_absent_leaves_it_as_before() -> None:
    plain = parse_policy(policy(OWNERS)).tools["delete_repository"].rules[0]
    no_block = parse_policy(policy("")).tools["delete_repository"].rules[0]
    quorum_2 = parse_policy(policy(OWNERS, "approvers: {roles: [owner], quorum: 2}")).tools["delete_repository"]
    assert plain.digest == no_block.digest
    assert quorum_2.rules[0].digest != plain.digest


def test_the_approvers_digest_changes_with_the_block_only() -> None:
    first = parse_policy(policy(OWNERS))
    described = parse_policy(policy(OWNERS).replace('version: "1"\n', 'version: "1"\ndescription: edited\n'))
    more = parse_policy(policy(OWNERS + f'\n  carol: {{roles: [owner], key: "{KEY}"}}'))
    assert first.approvers_digest == described.approvers_digest != more.approvers_digest


@pytest.mark.parametrize(
    ("approvers", "rule_extra", "approvals", "error"),
    [
        ("", "approvers: {roles: [owner]}", "", "approvers needs an approvers block at the top of the policy"),
        (OWNERS, "approvers: {roles: [ownr]}", "", 'no approver has role "ownr" (did you mean "owner"?)'),
        (OWNERS, "approvers: {roles: [owner], quorum: 3}", "", "quorum 3 can never be reached: 2 approver(s) may"),
        (OWNERS, "approvers: {roles: [owner], quorum: 0}", "", 'must be an integer from 1 to 100, got "0"'),
        (OWNERS, "approvers: {roles: []}", "", "must list at least one role"),
        (OWNERS, "approvers: {role: [owner]}", "", 'unknown key "role" (did you mean "roles"?)'),
        (OWNERS, "escalate_after: 10m", "", "escalate_to is needed with escalate_after"),
        (OWNERS, "escalate_to: {roles: [oncall]}", "", "escalate_after is needed with escalate_to"),
        (OWNERS, "escalate_after: 0s\nescalate_to: {roles: [oncall]}", "", 'duration "0s" must be greater than zero'),
        (OWNERS, "via: elicitation", "", "via: elicitation cannot decide where approvers decide"),
        (OWNERS, "", "  via: elicitation", "via: elicitation cannot decide where approvers decide"),
        (OWNERS, "wait: 30s\non_timeout: allow", "", "on_timeout: allow is refused where approvers decide"),
        (
            '  alice: {roles: [owner], key: "ssh-ed25519 AAAA"}',
            "",
            "",
            'must be "ed25519:" and the base64 of a 32-byte',
        ),
        ('  alice: {roles: [owner], key: "ed25519:AAAA"}', "", "", 'must be "ed25519:" and the base64 of a 32-byte'),
        ("  ../alice: {roles: [owner]}", "", "", "approver name must be letters, digits"),
        ("  alice: {roles: [owner], keys: x}", "", "", 'unknown key "keys" (did you mean "key"?)'),
        ("  alice: {roles: owner}", "", "", "roles must be a list"),
    ],
)
def test_each_bad_value_has_its_one_line_error(approvers: str, rule_extra: str, approvals: str, error: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(policy(approvers, rule_extra, approvals))
    assert any(error in line for line in raised.value.errors), raised.value.errors


def test_a_keyless_approver_and_a_late_escalation_are_warnings() -> None:
    found = issues_of(policy("  alice: {roles: [owner]}", "escalate_after: 2h\nescalate_to: {roles: [owner]}"))
    assert any("approver alice has no key: votes in that name are not signed" in text for text in found)
    assert any("escalate_after (7200s) is not shorter than the approval timeout (3600s)" in text for text in found)
    parse_policy(policy("  alice: {roles: [owner]}"))  # loads


def test_without_an_approvers_block_validate_says_anyone_decides() -> None:
    assert any("no approvers block: anyone who can run `intercept approvals`" in t for t in issues_of(policy("")))
    no_gate = 'version: "1"\ntools:\n  read:\n    rules:\n      - name: r\n        action: deny\n'
    assert not any("no approvers block" in t for t in issues_of(no_gate))


def test_a_rule_may_set_the_severity_of_its_events_and_a_bad_one_is_an_error() -> None:
    loaded = parse_policy(policy("", "severity: critical"))
    assert loaded.tools["delete_repository"].rules[0].severity == "critical"
    assert (
        loaded.tools["delete_repository"].rules[0].digest
        == parse_policy(policy("")).tools["delete_repository"].rules[0].digest
    )  # not part of what is approved
    with pytest.raises(PolicyError) as raised:
        parse_policy(policy("", "severity: critcal"))
    assert 'must be "info", "notice", "warning" or "critical", got "critcal" (did you mean "critical"?)' in str(
        raised.value.errors
    )
