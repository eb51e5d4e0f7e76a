"""Retention of approval records (`ApprovalStore.prune`) and the retention proxies sharing a state
dir agree on (`InstanceStore.longest_retention_s`), with an injected clock on real SQLite files.

Records are driven through the store's own transitions at chosen times, so the timestamps pruning
compares are the ones the proxy and the CLI write.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from intercept.store.approvals import ApprovalRecord, ApprovalStore
from intercept.store.database import connect
from intercept.store.instances import InstanceRecord, InstanceStore
from intercept.store.timestamps import rfc3339
from tests.store_support import DAY_S, approval_record, decide

T0 = 1_800_000_000.0  # when each record is requested
TIMEOUT_S = 100.0
RETENTION_S = 30 * DAY_S


def record(approval_id: str, fingerprint: str, created_s: float = T0) -> ApprovalRecord:
    return approval_record(
        approval_id, fingerprint=fingerprint, created_s=created_s, timeout_s=TIMEOUT_S, args_exact="{}"
    )


@pytest.fixture
def store(tmp_path: Path) -> ApprovalStore:
    return ApprovalStore(connect(tmp_path))


def request(store: ApprovalStore, approval_id: str, created_s: float = T0) -> None:
    with store.transaction():
        store.insert(record(approval_id, "fp-" + approval_id, created_s))


def history_count(store: ApprovalStore, approval_id: str) -> int:
    return store.connection.execute(
        "SELECT COUNT(*) FROM approval_history WHERE approval_id = ?", (approval_id,)
    ).fetchone()[0]


# -- the lives a record can end with, and the moment of its last change ------------------------


@dataclass(frozen=True)
class Life:
    status: str
    last_change_s: float  # the latest timestamp the record ends up carrying
    live: Callable[[ApprovalStore, str], None]


def denied(store: ApprovalStore, approval_id: str) -> None:
    request(store, approval_id)
    decide(store, approval_id, False, T0 + 10)  # refuses retries until expires_at (T0 + 100)


def consumed(store: ApprovalStore, approval_id: str) -> None:
    request(store, approval_id)
    decide(store, approval_id, True, T0 + 10)  # usable until T0 + 110
    with store.transaction():
        assert store.consume("fp-" + approval_id, T0 + 20) is not None


def given_back_late_then_expired(store: ApprovalStore, approval_id: str) -> None:
    consumed(store, approval_id)
    with store.transaction():  # the call never started; the answer came after the window closed
        assert store.give_back(approval_id, T0 + 200, "never forwarded", "{}")
        store.expire_stale(T0 + 300)


def expired_lazily(store: ApprovalStore, approval_id: str) -> None:
    request(store, approval_id)
    with store.transaction():  # noticed long after it expired at T0 + 100
        assert store.expire_stale(T0 + 5 * DAY_S) == [approval_id]


def revoked(store: ApprovalStore, approval_id: str) -> None:
    request(store, approval_id)
    with store.transaction():
        store.revoke(approval_id, T0 + 10)


LIVES = {
    "denied": Life("denied", T0 + TIMEOUT_S, denied),
    "consumed": Life("consumed", T0 + 10 + TIMEOUT_S, consumed),
    "given-back-then-expired": Life("expired", T0 + 10 + TIMEOUT_S, given_back_late_then_expired),
    "expired-lazily": Life("expired", T0 + TIMEOUT_S, expired_lazily),
    "revoked": Life("expired", T0 + 10, revoked),
}

AGES = [
    pytest.param(-DAY_S, False, id="a-day-newer"),
    pytest.param(0.0, False, id="exactly-at-the-cutoff"),
    pytest.param(0.001, True, id="a-millisecond-older"),
    pytest.param(DAY_S, True, id="a-day-older"),
]


@pytest.mark.parametrize("life", LIVES.values(), ids=LIVES.keys())
@pytest.mark.parametrize(("older_by_s", "pruned"), AGES)
def test_a_finished_record_is_pruned_once_its_last_change_is_older_than_the_retention(
    store: ApprovalStore, life: Life, older_by_s: float, pruned: bool
) -> None:
    life.live(store, "apr_x")
    assert store.get("apr_x").status == life.status  # type: ignore[union-attr]
    now_s = life.last_change_s + RETENTION_S + older_by_s

    assert store.prune(now_s, RETENTION_S) == int(pruned)
    assert (store.get("apr_x") is None) == pruned
    assert (history_count(store, "apr_x") == 0) == pruned


@pytest.mark.parametrize("status", ["pending", "approved"])
def test_pending_and_approved_records_are_never_pruned(store: ApprovalStore, status: str) -> None:
    request(store, "apr_x", created_s=0.5)  # requested in 1970, never expired since
    if status == "approved":
        decide(store, "apr_x", True, 1.0)
    history = history_count(store, "apr_x")

    assert store.prune(T0, 0.0) == 0
    assert store.get("apr_x").status == status  # type: ignore[union-attr]
    assert history_count(store, "apr_x") == history


def test_history_goes_with_its_record_and_only_its_record(store: ApprovalStore) -> None:
    for approval_id in ("apr_old", "apr_new"):
        request(store, approval_id, created_s=T0 if approval_id == "apr_old" else T0 + 10 * DAY_S)
        with store.transaction():
            store.count_request(approval_id, T0)
    denied_at = {"apr_old": T0 + 10, "apr_new": T0 + 10 * DAY_S + 10}
    for approval_id, at_s in denied_at.items():
        decide(store, approval_id, False, at_s)
    assert history_count(store, "apr_old") == history_count(store, "apr_new") == 3

    assert store.prune(T0 + 5 * DAY_S, DAY_S) == 1
    assert history_count(store, "apr_old") == 0
    assert history_count(store, "apr_new") == 3
    assert store.connection.execute("SELECT COUNT(*) FROM approval_history").fetchone() == (3,)


def test_prune_counts_every_record_it_deletes(store: ApprovalStore) -> None:
    for name, life in LIVES.items():
        life.live(store, f"apr_{name}")
    request(store, "apr_pending")
    latest = max(life.last_change_s for life in LIVES.values())
    assert store.prune(latest + RETENTION_S + 1, RETENTION_S) == len(LIVES)
    assert [r.id for r in store.list()] == ["apr_pending"]


@pytest.mark.parametrize(
    ("retention_s", "expected"),
    [
        pytest.param(math.inf, 0, id="forever-prunes-nothing"),
        pytest.param(T0 * 2, 0, id="longer-than-since-1970-prunes-nothing"),
        pytest.param(0.0, 1, id="zero-prunes-every-finished-record"),
    ],
)
def test_retention_extremes(store: ApprovalStore, retention_s: float, expected: int) -> None:
    denied(store, "apr_x")
    assert store.prune(T0 + DAY_S, retention_s) == expected


@pytest.mark.parametrize("retention_s", [-1.0, math.nan])
def test_a_retention_that_is_not_a_duration_is_refused(store: ApprovalStore, retention_s: float) -> None:
    with pytest.raises(ValueError, match="retention"):
        store.prune(T0, retention_s)


# -- the longest retention among live instances ---------------------------------------------------


def instance(instance_id: str, retention_s: float | None) -> InstanceRecord:
    stamp = rfc3339(T0)
    return InstanceRecord(
        id=instance_id,
        server="files",
        named=False,
        identity="x" * 64,
        command='["server"]',
        pid=1,
        config="/policy.yaml",
        policy_digest="p" * 64,
        started_at=stamp,
        seen_at=stamp,
        retention_s=retention_s,
    )


DEFAULT_S = 30 * DAY_S
UNRECORDED_S = 90 * DAY_S  # what the proxy passes: the built-in default

RETENTION_CASES = [
    pytest.param([], [], DEFAULT_S, id="no-instances-the-default"),
    pytest.param([("a", 7 * DAY_S), ("b", 90 * DAY_S)], [], 90 * DAY_S, id="the-longest-live-one"),
    pytest.param([("a", 7 * DAY_S)], [], DEFAULT_S, id="the-default-when-longer"),
    pytest.param([("a", None)], [], UNRECORDED_S, id="an-instance-without-one-counts-as-unrecorded"),
    pytest.param([("a", 7 * DAY_S), ("b", 365 * DAY_S)], ["b"], DEFAULT_S, id="stopped-ones-are-ignored"),
    pytest.param([("a", 60 * DAY_S), ("b", 365 * DAY_S)], ["b"], 60 * DAY_S, id="the-longest-not-stopped"),
]


@pytest.mark.parametrize(("instances", "stopped", "expected"), RETENTION_CASES)
def test_the_longest_retention_among_instances_not_stopped_wins(
    tmp_path: Path, instances: list[tuple[str, float | None]], stopped: list[str], expected: float
) -> None:
    store = InstanceStore(connect(tmp_path))
    for instance_id, retention_s in instances:
        store.register(instance(instance_id, retention_s), T0)
    for instance_id in stopped:
        store.stopped(instance_id, T0 + 1)
    assert store.longest_retention_s(DEFAULT_S, UNRECORDED_S) == expected


def test_retention_is_kept_by_heartbeats_and_replaced_by_registering_again(tmp_path: Path) -> None:
    store = InstanceStore(connect(tmp_path))
    store.register(instance("a", 90 * DAY_S), T0)
    store.seen("a", T0 + 60, "q" * 64)
    assert store.connection.execute("SELECT retention_s FROM instances WHERE id = 'a'").fetchone() == (90 * DAY_S,)
    store.register(instance("a", 10 * DAY_S), T0 + 120)
    assert store.longest_retention_s(DAY_S, UNRECORDED_S) == 10 * DAY_S
