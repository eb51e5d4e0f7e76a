"""The `approvals` block's channel settings (webhook, console URL, error code, hold-open, via) and
the rule-level `wait` / `via`: what loads, and the one-line error for each bad value."""

from __future__ import annotations

import textwrap

import pytest

from intercept.policy import PolicyError, parse_policy
from intercept.policy.load import check_policy
from intercept.policy.model import WebhookSettings


def policy(approvals: str, rule_extra: str = "", action: str = "require_approval") -> str:
    block = textwrap.indent(textwrap.dedent(approvals).strip("\n"), "  ") if approvals.strip() else ""
    extra = textwrap.indent(textwrap.dedent(rule_extra).strip("\n"), "        ") if rule_extra.strip() else ""
    return (
        'version: "1"\n'
        + ("approvals:\n" + block + "\n" if block else "")
        + f"tools:\n  write_file:\n    rules:\n      - name: ask\n        action: {action}\n"
        + (extra + "\n" if extra else "")
    )


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    return list(raised.value.errors)


def test_full_block_loads() -> None:
    loaded = parse_policy(
        policy(
            """
            wait: 45s
            via: elicitation
            console_url: http://127.0.0.1:9111/
            error_code: -32010
            notify:
              webhook: {url: "https://hooks.example.com/a?b=c", secret_env: HOOK_SECRET, timeout: 2s, format: slack}
            """,
            "wait: 10s\nvia: approval",
        )
    )
    settings = loaded.approvals
    assert settings.wait_s == 45 and settings.via == "elicitation" and settings.error_code == -32010
    assert settings.console_url == "http://127.0.0.1:9111/"
    assert settings.webhook == WebhookSettings("https://hooks.example.com/a?b=c", "HOOK_SECRET", None, 2.0, "slack")
    rule = loaded.tools["write_file"].rules[0]
    assert rule.wait_s == 10 and rule.via == "approval"
    limits = parse_policy(policy("max_pending: {per_tool: 5, per_server: 20}")).approvals
    assert (limits.max_pending_per_tool, limits.max_pending_per_server) == (5, 20)


def test_defaults() -> None:
    settings = parse_policy(policy("timeout: 5m")).approvals
    assert (settings.wait_s, settings.via, settings.error_code, settings.webhook, settings.console_url) == (
        0.0,
        "approval",
        -32003,
        None,
        None,
    )
    assert parse_policy(policy("notify: {webhook: {url: 'http://h/x', secret_env: S}}")).approvals.webhook == (
        WebhookSettings("http://h/x", "S", None, 5.0, "generic")
    )


def test_wait_and_via_are_not_part_of_the_rule_digest() -> None:
    """They change how a human is asked, not what is approved: a reload changing them leaves
    pending approvals usable."""
    plain = parse_policy(policy("")).tools["write_file"].rules[0]
    held = parse_policy(policy("", "wait: 30s\nvia: elicitation")).tools["write_file"].rules[0]
    assert plain.digest == held.digest


@pytest.mark.parametrize(
    ("approvals", "rule_extra", "action", "expected"),
    [
        ("error_code: -32601", "", "require_approval", "approvals.error_code: -32601 is a JSON-RPC code"),
        ("error_code: '-32003'", "", "require_approval", "approvals.error_code: must be an integer"),
        ("error_code: true", "", "require_approval", "approvals.error_code: must be an integer"),
        ("wait: 11m", "", "require_approval", "approvals.wait: must be at most 600s"),
        ("wait: soon", "", "require_approval", 'approvals.wait: invalid duration "soon"'),
        ("via: slack", "", "require_approval", 'approvals.via: must be "approval" or "elicitation"'),
        ("console_url: ftp://h/", "", "require_approval", "approvals.console_url: must be an http:// or https:// URL"),
        ("console_url: 'http:// h'", "", "require_approval", "approvals.console_url: must be an http:// or https:// URL"),
        ("notify: {webhook: {url: 'file:///x', secret_env: S}}", "", "require_approval", "url: must be an http://"),
        ("notify: {webhook: {secret_env: S}}", "", "require_approval", "approvals.notify.webhook: webhook needs a url"),
        ("notify: {webhook: {url: 'http://h'}}", "", "require_approval", "webhook needs a secret_env"),
        ("notify: {webhook: {}}", "", "require_approval", "webhook needs at least a url and a secret_env"),
        ("notify: {webhook: {url: 'http://h', secret_env: 'A-B'}}", "", "require_approval", "must be the name of an environment variable"),
        ("notify: {webhook: {url: 'http://h', secret_env: S, format: teams}}", "", "require_approval", 'format: must be "generic" or "slack"'),
        ("notify: {webhook: {url: 'http://h', secret_env: S, timeout: 0s}}", "", "require_approval", "must be greater than zero"),
        ("notify: {email: {to: x}}", "", "require_approval", 'unknown key "email"'),
        ("", "wait: 5s", "deny", 'wait is only valid with action "require_approval"'),
        ("", "via: elicitation", "deny", 'via is only valid with action "require_approval"'),
        ("", "via: phone", "require_approval", 'via: must be "approval" or "elicitation"'),
        ("max_pending: {per_tool: 0}", "", "require_approval", "per_tool: must be a positive integer"),
        ("", "on_timeout: deny", "require_approval", "on_timeout: deny needs the call held: set wait"),
        ("", "on_timeout: allow\nvia: elicitation", "require_approval", "on_timeout: allow needs the call held"),
        ("", "scope: {for: 400d}", "require_approval", "scope.for: must be at most 366d"),
        ("", "on_timeout: later", "require_approval", 'on_timeout: must be "pending", "deny" or "allow"'),
        ("", "on_timeout: deny", "deny", 'on_timeout is only valid with action "require_approval"'),
        ("max_pending: {per_server: true}", "", "require_approval", "per_server: must be a positive integer"),
        ("", "scope: {uses: 9007199254740993}", "require_approval", "uses: must be a positive integer of at most 2^53"),
        ("max_pending: {per_day: 3}", "", "require_approval", 'unknown key "per_day"'),
        ("max_pending: 5", "", "require_approval", "max_pending must be a mapping"),
    ],
)
def test_bad_values_are_one_line_errors(approvals: str, rule_extra: str, action: str, expected: str) -> None:
    errors = errors_of(policy(approvals, rule_extra, action))
    assert len(errors) == 1, errors
    assert expected in errors[0], errors


def test_a_literal_secret_loads_with_a_warning() -> None:
    text = policy("notify: {webhook: {url: 'https://h/x', secret: s3cr3t}}")
    assert parse_policy(text).approvals.webhook == WebhookSettings("https://h/x", None, "s3cr3t", 5.0, "generic")
    warnings = [issue for issue in check_policy(text)[1] if issue.severity == "warning"]
    assert len(warnings) == 1 and "prefer secret_env" in warnings[0].message
    assert "s3cr3t" not in warnings[0].message


def test_on_timeout_allow_loads_with_a_warning_naming_the_rule() -> None:
    text = policy("wait: 5s", "on_timeout: allow")
    assert parse_policy(text).tools["write_file"].rules[0].on_timeout == "allow"
    warnings = [issue.message for issue in check_policy(text)[1] if issue.severity == "warning"]
    assert warnings == ['on_timeout: allow lets a call of rule "ask" run when nobody decides in time: an agent can simply wait it out']
    assert parse_policy(policy("", "wait: 5s\non_timeout: deny")).tools["write_file"].rules[0].on_timeout == "deny"
