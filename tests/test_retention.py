"""Retention across the state dir (`intercept.retention`): real SQLite files and event files, an
injected clock (the `prune` command and the proxy's `--retention`: tests/e2e/test_retention_e2e.py).

What went is recorded as an event (`approvals_pruned`, `events_pruned`), so pruning can be told
from deletion; pending and approved approvals are never pruned; the longest retention among the
running proxies wins.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from intercept.retention import prune_state_dir
from intercept.store.database import connect
from intercept.store.instances import InstanceStore
from tests.store_support import DAY_S, instance_record, seed_state_dir, surviving


def test_what_finished_before_the_retention_goes_and_nothing_else(tmp_path: Path) -> None:
    now = time.time()
    seed_state_dir(tmp_path, now - 10 * DAY_S)
    kept = prune_state_dir(tmp_path, 30 * DAY_S, now)
    assert (kept.approvals, kept.instances, kept.event_files) == (0, 0, 0)
    pruned = prune_state_dir(tmp_path, 5 * DAY_S, now)
    assert (pruned.approvals, pruned.instances, pruned.event_files) == (1, 1, 1)
    assert surviving(tmp_path) == (["apr_approved", "apr_pending"], 0, False)


def test_the_longest_retention_of_a_running_proxy_wins(tmp_path: Path) -> None:
    now = time.time()
    seed_state_dir(tmp_path, now - 10 * DAY_S)
    connection = connect(tmp_path)
    InstanceStore(connection).register(instance_record("running", now, 60 * DAY_S, None), now)
    connection.close()
    pruned = prune_state_dir(tmp_path, 5 * DAY_S, now)
    assert (pruned.retention_s, pruned.approvals, pruned.event_files) == (60 * DAY_S, 0, 0)
    assert surviving(tmp_path)[0] == ["apr_approved", "apr_denied", "apr_pending"]


def test_a_proxy_on_the_default_retention_is_not_cut_short_by_a_shorter_one(tmp_path: Path) -> None:
    """A running proxy that was given no --retention keeps the default (90 days) for everyone."""
    now = time.time()
    seed_state_dir(tmp_path, now - 10 * DAY_S)
    connection = connect(tmp_path)
    InstanceStore(connection).register(instance_record("default-one", now, None, None), now)  # a row from before
    connection.close()
    pruned = prune_state_dir(tmp_path, 3600.0, now)
    assert (pruned.retention_s, pruned.approvals, pruned.event_files) == (90 * DAY_S, 0, 0)


def test_pruning_expires_forgotten_requests_first_erasing_their_exact_arguments(tmp_path: Path) -> None:
    now = time.time()
    seed_state_dir(tmp_path, now - 30 * DAY_S, live_timeout_s=3600.0)  # expired long ago, within the retention
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
