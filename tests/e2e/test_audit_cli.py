"""`intercept audit policy` and `intercept audit export` on what a real proxy wrote: each policy
version it loaded (at start and at a hot reload) archived with its literal webhook secret redacted,
printed by digest prefix; the calls exported as JSON lines and CSV with the policy each ran under;
a state dir where the archive cannot be written costs the proxy nothing and the version is
archived at the next load."""

from __future__ import annotations

import csv
import io
import json
import stat
from pathlib import Path

import pytest

from intercept.audit.events import read_events
from intercept.audit.policy_archive import PolicyArchiveError, archive_path, archived_policy, policies_dir
from intercept.policy import parse_policy
from tests.e2e.support import (
    RAW_UPSTREAM,
    READ_TIMEOUT_S,
    Harness,
    call_tool,
    is_denied,
    ok,
    one_line_error,
    run_cli,
    wait_until,
)

SECRET = "literal-webhook-secret-0123456789"
FIRST = f"""# audited policy, first version
version: "1"
approvals:
  notify:
    webhook:
      url: http://127.0.0.1:9/hook
      secret: "{SECRET}"   # only a test's
tools:
  echo:
    rules:
      - name: "no shouting"
        conditions:
          - {{path: args.text, op: neq, value: "LOUD"}}
        on_deny: "too loud"
"""
SECOND = FIRST.replace("first version", "second version").replace('"LOUD"', '"quiet"')
RELOADED = "policy reloaded"


def audit(state_dir: Path, *args: str) -> str:
    return ok(run_cli("audit", *args, "--state-dir", str(state_dir)))


def test_each_loaded_version_is_archived_redacted_and_the_calls_export_with_their_policy(harness: Harness) -> None:
    first, second = parse_policy(FIRST).digest, parse_policy(SECOND).digest
    harness.write_policy(FIRST)
    proxy = harness.start(RAW_UPSTREAM)
    assert not is_denied(call_tool(proxy, 1, "echo", {"text": "quiet"}))
    assert is_denied(call_tool(proxy, 2, "echo", {"text": "LOUD"}))
    harness.write_policy(SECOND)
    proxy.wait_for_stderr(RELOADED)
    assert is_denied(call_tool(proxy, 3, "echo", {"text": "quiet"}))
    assert wait_until(lambda: archive_path(harness.state_dir, second).exists(), READ_TIMEOUT_S)
    assert proxy.finish() == 0
    state = harness.state_dir

    for digest, text in ((first, FIRST), (second, SECOND)):
        path = archive_path(state, digest)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert SECRET not in path.read_text()
        printed = audit(state, "policy", digest[:8])
        assert printed == path.read_text()
        assert f"# digest: {digest}\n" in printed
        assert f'# source: "{harness.policy.absolute()}"\n' in printed
        assert printed.endswith(text.replace(f'"{SECRET}"', '"[REDACTED]"'))  # comments kept
    assert stat.S_IMODE(policies_dir(state).stat().st_mode) == 0o700
    listed = audit(state, "policy", "--list").splitlines()
    assert [line.split()[0] for line in listed] == [first, second]
    assert json.loads(audit(state, "policy", "--list", "--json"))[1]["digest"] == second

    rows = list(csv.DictReader(io.StringIO(audit(state, "export", "--since", "10m", "--format", "csv"), newline="")))
    calls = [(row["tool"], row["result"], row["policy_digest"]) for row in rows if row["type"] == "tool_call"]
    assert calls == [("echo", "allowed", first), ("echo", "denied", first), ("echo", "denied", second)]
    assert SECRET not in json.dumps(rows)

    exported = audit(state, "export", "--since", "10m")
    logged = [event for event in read_events(state) if event["type"] != "chain_checkpoint"]  # seals: not exported
    assert [json.loads(line) for line in exported.splitlines()] == logged
    target = harness.root / "export.jsonl"
    assert audit(state, "export", "--since", "10m", "--output", str(target)) == ""
    assert target.read_text() == exported
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert audit(state, "export", "--since", "10m", "--until", "9m") == ""  # a window before any event


def test_bad_requests_are_one_line_errors(harness: Harness) -> None:
    harness.write_policy(FIRST)
    harness.start(RAW_UPSTREAM).finish()
    state = str(harness.state_dir)
    cases = {
        ("audit", "policy", "1234567", "--state-dir", state): "at least 8 hex characters",
        ("audit", "policy", "00000000", "--state-dir", state): "no archived policy with digest 00000000",
        ("audit", "policy", "../../etc/passwd", "--state-dir", state): "is not a policy digest",
        ("audit", "policy", "--state-dir", state): "give a policy DIGEST",
        ("audit", "policy", "--state-dir", str(harness.root / "nowhere"), "--list"): "no state dir at",
        ("audit", "export", "--since", "yesterday", "--state-dir", state): "--since 'yesterday' is not a time",
        ("audit", "export", "--since", "1d", "--until", "2026-01-01T00:00:00", "--state-dir", state): "has no offset",
        ("audit", "export", "--since", "1h", "--until", "2h", "--state-dir", state): "--until must be after --since",
        (
            "audit", "export", "--since", "1h", "--output", str(harness.root / "no" / "dir.csv"), "--state-dir", state,
        ): "cannot write",
    }  # fmt: skip
    for args, error in cases.items():
        assert error in one_line_error(run_cli(*args)), args


def test_an_archive_that_cannot_be_written_costs_the_proxy_nothing_and_is_written_at_the_next_load(
    harness: Harness,
) -> None:
    first, second = parse_policy(FIRST).digest, parse_policy(SECOND).digest
    harness.write_policy(FIRST)
    harness.state_dir.mkdir(mode=0o700)
    policies_dir(harness.state_dir).write_text("not a directory")
    proxy = harness.start(RAW_UPSTREAM)
    assert not is_denied(call_tool(proxy, 1, "echo", {"text": "quiet"}))
    proxy.wait_for_stderr("could not archive policy")
    policies_dir(harness.state_dir).unlink()
    harness.write_policy(SECOND)
    proxy.wait_for_stderr(RELOADED)
    assert is_denied(call_tool(proxy, 2, "echo", {"text": "quiet"}))
    assert wait_until(lambda: archive_path(harness.state_dir, second).exists(), READ_TIMEOUT_S)
    assert archive_path(harness.state_dir, first).exists()  # the version that failed, tried again
    assert proxy.finish() == 0
    assert proxy.stderr.count("could not archive policy") == 1
    assert SECRET not in proxy.stderr


def test_an_archived_file_edited_in_the_state_dir_is_refused_by_the_reader(harness: Harness) -> None:
    harness.write_policy(FIRST)
    harness.start(RAW_UPSTREAM).finish()
    digest = parse_policy(FIRST).digest
    path = archive_path(harness.state_dir, digest)
    path.write_text(path.read_text().replace('"LOUD"', '"nothing"'))
    with pytest.raises(PolicyArchiveError, match="does not match its digest"):
        archived_policy(harness.state_dir, digest)
