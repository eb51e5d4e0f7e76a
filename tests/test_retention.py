"""Retention across the state dir (`intercept.retention`), the `prune` command and the proxy's
`--retention`: real SQLite files and event files, an injected clock where time matters.

What went is recorded as an event (`approvals_pruned`, `events_pruned`), so pruning can be told
from deletion; pending and approved approvals are never pruned; the longest retention among the
running proxies wins.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from intercept.audit.events import events_dir, read_events
from intercept.retention import prune_state_dir
from intercept.store.approvals import ApprovalStore
from intercept.store.database import connect
from intercept.store.instances import InstanceRecord, InstanceStore
from intercept.store.timestamps import rfc3339
from tests.approval_support import intercept
from tests.hardening_support import wait_until
from tests.store_support import approval_record
from tests.support import RAW_SERVER, ProxyProcess, proxy_command
from tests.test_store_retention import decide, request

DAY_S = 86400.0


def instance(instance_id: str, started_s: float, retention_s: float | None, stopped_s: float | None) -> InstanceRecord:
    return InstanceRecord(
        id=instance_id,
        server="files",
        named=False,
        identity="i",
        command="[]",
        pid=os.getpid(),
        config="/p.yaml",
        policy_digest="d",
        started_at=rfc3339(started_s),
        seen_at=rfc3339(started_s),
        stopped_at=None if stopped_s is None else rfc3339(stopped_s),
        retention_s=retention_s,
    )


def seed(state_dir: Path, at_s: float, live_timeout_s: float = 1000 * DAY_S) -> None:
    """At `at_s`: one denied approval, and one pending and one approved that stay usable for
    `live_timeout_s`; one stopped instance; an event file last written then."""
    connection = connect(state_dir)
    store = ApprovalStore(connection)
    request(store, "apr_denied", at_s)
    with store.transaction():
        for approval_id in ("apr_pending", "apr_approved"):
            store.insert(
                approval_record(approval_id, fingerprint=approval_id, created_s=at_s, timeout_s=live_timeout_s, args_exact="{}")
            )
    decide(store, "apr_denied", False, at_s + 1)
    decide(store, "apr_approved", True, at_s + 1)
    InstanceStore(connection).register(instance("gone", at_s, None, at_s + 2), at_s)
    connection.close()
    old_file = events_dir(state_dir) / "old.jsonl"
    old_file.parent.mkdir(parents=True, exist_ok=True)
    old_file.write_text('{"type":"startup"}\n')
    os.utime(old_file, (at_s, at_s))


def surviving(state_dir: Path) -> tuple[list[str], int, bool]:
    connection = connect(state_dir)
    ids = [r.id for r in ApprovalStore(connection).list()]
    instances = connection.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    connection.close()
    return sorted(ids), instances, (events_dir(state_dir) / "old.jsonl").exists()


def test_what_finished_before_the_retention_goes_and_nothing_else(tmp_path: Path) -> None:
    now = time.time()
    seed(tmp_path, now - 10 * DAY_S)
    kept = prune_state_dir(tmp_path, 30 * DAY_S, now)
    assert (kept.approvals, kept.instances, kept.event_files) == (0, 0, 0)
    pruned = prune_state_dir(tmp_path, 5 * DAY_S, now)
    assert (pruned.approvals, pruned.instances, pruned.event_files) == (1, 1, 1)
    assert surviving(tmp_path) == (["apr_approved", "apr_pending"], 0, False)


def test_the_longest_retention_of_a_running_proxy_wins(tmp_path: Path) -> None:
    now = time.time()
    seed(tmp_path, now - 10 * DAY_S)
    connection = connect(tmp_path)
    InstanceStore(connection).register(instance("running", now, 60 * DAY_S, None), now)
    connection.close()
    pruned = prune_state_dir(tmp_path, 5 * DAY_S, now)
    assert (pruned.retention_s, pruned.approvals, pruned.event_files) == (60 * DAY_S, 0, 0)
    assert surviving(tmp_path)[0] == ["apr_approved", "apr_denied", "apr_pending"]


def test_prune_command_records_what_it_pruned(tmp_path: Path) -> None:
    seed(tmp_path, time.time() - 10 * DAY_S)
    result = intercept("prune", "--state-dir", str(tmp_path), "--retention", "7d")
    assert result.returncode == 0, result
    assert "Pruned 1 approvals, 1 stopped instances and 1 event files" in result.stdout
    events = read_events(tmp_path)
    assert [(e["approvals"], e["instances"], e["retention_s"]) for e in events if e["type"] == "approvals_pruned"] == [
        (1, 1, 7 * DAY_S)
    ]
    assert [e["files"] for e in events if e["type"] == "events_pruned"] == [1]


def test_a_bad_retention_is_refused_with_the_reason(tmp_path: Path) -> None:
    result = intercept("prune", "--state-dir", str(tmp_path), "--retention", "5 weeks")
    assert result.returncode == 2 and "invalid duration" in result.stderr, result
    policy = tmp_path / "p.yaml"
    policy.write_text('version: "1"\n')
    result = intercept("-c", str(policy), "--retention", "0d", "--", sys.executable, str(RAW_SERVER))
    assert result.returncode == 2 and "greater than zero" in result.stderr, result


def test_the_proxy_prunes_at_start_with_its_retention(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    seed(state_dir, time.time() - 10 * DAY_S)
    policy = tmp_path / "p.yaml"
    policy.write_text('version: "1"\n')
    proxy = ProxyProcess(proxy_command(policy, state_dir, [sys.executable, str(RAW_SERVER)], "--retention", "2d"))
    try:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
        assert "result" in proxy.request(init)
        assert wait_until(lambda: any(e["type"] == "approvals_pruned" for e in read_events(state_dir)), 10.0)
        proxy.close_stdin()
        assert proxy.wait() == 0
    finally:
        proxy.stop()
    pruned = [e for e in read_events(state_dir) if e["type"] == "approvals_pruned"]
    assert [(e["approvals"], e["retention_s"]) for e in pruned] == [(1, 2 * DAY_S)]
    assert surviving(state_dir)[0] == ["apr_approved", "apr_pending"]


def test_a_proxy_on_the_default_retention_is_not_cut_short_by_a_shorter_one(tmp_path: Path) -> None:
    """A running proxy that was given no --retention keeps the default (90 days) for everyone."""
    now = time.time()
    seed(tmp_path, now - 10 * DAY_S)
    connection = connect(tmp_path)
    InstanceStore(connection).register(instance("default-one", now, None, None), now)  # a row from before
    connection.close()
    pruned = prune_state_dir(tmp_path, 3600.0, now)
    assert (pruned.retention_s, pruned.approvals, pruned.event_files) == (90 * DAY_S, 0, 0)


def test_pruning_expires_forgotten_requests_first_erasing_their_exact_arguments(tmp_path: Path) -> None:
    now = time.time()
    seed(tmp_path, now - 30 * DAY_S, live_timeout_s=3600.0)  # expired long ago, within the retention
    pruned = prune_state_dir(tmp_path, 90 * DAY_S, now)
    assert sorted(pruned.expired) == ["apr_approved", "apr_pending"]
    connection = connect(tmp_path)
    rows = connection.execute("SELECT id, status, args_exact FROM approvals ORDER BY id").fetchall()
    connection.close()
    assert rows == [("apr_approved", "expired", None), ("apr_denied", "denied", None), ("apr_pending", "expired", None)]


def test_prune_never_follows_a_symlinked_events_dir_or_file(tmp_path: Path) -> None:
    state_dir, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "dataset.jsonl"
    victim.write_text("{}\n")
    os.utime(victim, (0, 0))
    state_dir.mkdir()
    (state_dir / "events").symlink_to(elsewhere)
    assert prune_state_dir(state_dir, DAY_S, time.time()).event_files == 0
    assert victim.exists()
    (state_dir / "events").unlink()
    (state_dir / "events").mkdir()
    (state_dir / "events" / "link.jsonl").symlink_to(victim)
    os.utime(state_dir / "events" / "link.jsonl", (0, 0), follow_symlinks=False)
    assert prune_state_dir(state_dir, DAY_S, time.time()).event_files == 0
    assert victim.exists()
