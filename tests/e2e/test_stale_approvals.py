"""A request whose rule a reload changed can never be used: the CLI says so and refuses to approve it.

An approval binds its rule's digest. After the policy file is edited so that the rule changes (or
goes), a pending request for it is `stale (rule changed)` in `approvals list` and `show`, `--json`
carries `"stale": true`, and `approve` fails with the reason instead of promising a run that can
never happen. Judged against the policies the running proxies of that server enforce.
"""

from __future__ import annotations

import json

from tests.e2e.support import TYPED_UPSTREAM, Harness, call_tool, ok, pending_id, run_cli, show, wait_until

POLICY = 'version: "1"\ntools:\n  act:\n    rules:\n      - name: "act needs a human"\n        action: require_approval\n'
EDITED = POLICY.replace('"act needs a human"', '"act needs a human, edited"')


def listed(harness: Harness) -> str:
    return ok(run_cli("approvals", "list", "--state-dir", str(harness.state_dir)))


def test_a_request_whose_rule_was_edited_is_stale_and_cannot_be_approved(harness: Harness) -> None:
    harness.write_policy(POLICY)
    proxy = harness.start(TYPED_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "act", {"job": "x"}))
    assert "stale" not in listed(harness) and show(harness.state_dir, approval_id)["stale"] is False

    harness.write_policy(EDITED)
    proxy.wait_for_stderr("policy reloaded")
    # The proxy records the digest it now enforces on its store thread, right after the reload.
    assert wait_until(lambda: "stale (rule changed)" in listed(harness), 10.0), listed(harness)
    assert show(harness.state_dir, approval_id)["stale"] is True
    shown = ok(run_cli("approvals", "show", approval_id, "--state-dir", str(harness.state_dir)))
    assert "stale (rule changed)" in shown

    refused = run_cli("approvals", "approve", approval_id, "--state-dir", str(harness.state_dir))
    assert refused.returncode == 1 and "stale (rule changed)" in refused.stderr, refused
    assert show(harness.state_dir, approval_id)["status"] == "pending"
    # The agent's retry asks again, under the edited rule; that request can be approved.
    new_id = pending_id(call_tool(proxy, 2, "act", {"job": "x"}))
    assert new_id != approval_id
    ok(run_cli("approvals", "approve", new_id, "--state-dir", str(harness.state_dir)))


def test_without_a_running_proxy_of_the_server_a_request_is_not_called_stale(harness: Harness) -> None:
    harness.write_policy(POLICY)
    proxy = harness.start(TYPED_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "act", {"job": "x"}))
    proxy.close_stdin()
    proxy.wait()
    harness.write_policy(EDITED)  # nobody enforces it yet: the request may still be used later
    data = json.loads(ok(run_cli("approvals", "list", "--json", "--state-dir", str(harness.state_dir))))
    assert [(r["id"], r["stale"]) for r in data] == [(approval_id, False)]
    ok(run_cli("approvals", "approve", approval_id, "--state-dir", str(harness.state_dir)))
