"""The `prune` command and the proxy's `--retention`, as processes, on a state dir seeded with
something of everything retention looks at (`intercept.retention` itself: tests/test_retention.py).

What went is recorded as an event (`approvals_pruned`, `events_pruned`), so pruning can be told
from deletion.
"""

from __future__ import annotations

import time
from pathlib import Path

from intercept.audit.events import read_events
from tests.e2e.support import RAW_UPSTREAM, ProxyProcess, initialize_message, proxy_command, run_cli, wait_until
from tests.store_support import DAY_S, seed_state_dir, surviving


def test_prune_command_records_what_it_pruned(tmp_path: Path) -> None:
    seed_state_dir(tmp_path, time.time() - 10 * DAY_S)
    result = run_cli("prune", "--state-dir", str(tmp_path), "--retention", "7d")
    assert result.returncode == 0, result
    assert "Pruned 1 approvals, 1 stopped instances and 1 event files" in result.stdout
    events = read_events(tmp_path)
    assert [(e["approvals"], e["instances"], e["retention_s"]) for e in events if e["type"] == "approvals_pruned"] == [
        (1, 1, 7 * DAY_S)
    ]
    assert [e["files"] for e in events if e["type"] == "events_pruned"] == [1]


def test_a_bad_retention_is_refused_with_the_reason(tmp_path: Path) -> None:
    result = run_cli("prune", "--state-dir", str(tmp_path), "--retention", "5 weeks")
    assert result.returncode == 2 and "invalid duration" in result.stderr, result
    policy = tmp_path / "p.yaml"
    policy.write_text('version: "1"\n')
    result = run_cli("-c", str(policy), "--retention", "0d", "--", *RAW_UPSTREAM)
    assert result.returncode == 2 and "greater than zero" in result.stderr, result


def test_the_proxy_prunes_at_start_with_its_retention(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    seed_state_dir(state_dir, time.time() - 10 * DAY_S)
    policy = tmp_path / "p.yaml"
    policy.write_text('version: "1"\n')
    proxy = ProxyProcess(proxy_command(policy, state_dir, RAW_UPSTREAM, "--retention", "2d"))
    try:
        assert "result" in proxy.request(initialize_message(0))
        assert wait_until(lambda: any(e["type"] == "approvals_pruned" for e in read_events(state_dir)), 10.0)
        proxy.close_stdin()
        assert proxy.wait() == 0
    finally:
        proxy.stop()
    pruned = [e for e in read_events(state_dir) if e["type"] == "approvals_pruned"]
    assert [(e["approvals"], e["retention_s"]) for e in pruned] == [(1, 2 * DAY_S)]
    assert surviving(state_dir)[0] == ["apr_approved", "apr_pending"]
