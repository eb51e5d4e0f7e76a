"""Scoped approvals in the store, on a real SQLite file: uses are taken one conditional update
at a time, the last one consumes, a give-back returns one, and a window without a count runs
until it ends."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from intercept.store.approvals import ApprovalStore
from intercept.store.database import connect
from tests.store_support import approval_record, insert_record


def store_with(tmp_path: Path, scope: dict[str, object]) -> ApprovalStore:
    record = replace(approval_record("apr_s", created_s=time.time()), scope=json.dumps(scope), args_exact="{}")
    insert_record(tmp_path, record)
    store = ApprovalStore(connect(tmp_path))
    with store.transaction():
        store.decide("apr_s", True, "alice", None, time.time())
    return store


def consume(store: ApprovalStore) -> bool:
    with store.transaction():
        return store.consume("f" * 64, time.time()) is not None


def test_uses_are_taken_one_at_a_time_and_given_back(tmp_path: Path) -> None:
    store = store_with(tmp_path, {"uses": 2, "for_s": None, "match": "call"})
    assert store.get("apr_s").uses_left == 2  # type: ignore[union-attr]
    assert consume(store)
    with store.transaction():
        assert store.give_back("apr_s", time.time(), "never started", "{}")
    assert store.get("apr_s").uses_left == 2  # type: ignore[union-attr]
    assert consume(store) and consume(store)
    assert not consume(store)
    record = store.get("apr_s")
    assert record is not None and (record.status, record.uses_left, record.args_exact) == ("consumed", 0, None)
    with store.transaction():
        assert store.give_back("apr_s", time.time(), "never started", "{}")
    record = store.get("apr_s")
    assert record is not None and (record.status, record.uses_left) == ("approved", 1)


def test_a_window_runs_until_it_ends(tmp_path: Path) -> None:
    store = store_with(tmp_path, {"uses": None, "for_s": 1.0, "match": "tool"})
    record = store.get("apr_s")
    assert record is not None and record.uses_left is None
    assert consume(store) and consume(store) and consume(store)
    with store.transaction():
        assert not store.give_back("apr_s", time.time(), "never started", "{}")  # nothing was taken
    later = time.time() + 2
    with store.transaction():
        assert store.consume("f" * 64, later) is None  # the window is over
    assert [h.event for h in store.history("apr_s")].count("used") == 3


def test_a_give_back_never_returns_more_than_the_uses_taken(tmp_path: Path) -> None:
    # one run, its give-back delivered twice (two paths that each think they own it): one use back
    store = store_with(tmp_path, {"uses": 2, "for_s": None, "match": "call"})
    assert consume(store)
    with store.transaction():
        assert store.give_back("apr_s", time.time(), "never started", "{}")
    with store.transaction():
        assert not store.give_back("apr_s", time.time(), "never started", "{}")
    assert store.get("apr_s").uses_left == 2  # type: ignore[union-attr]
    assert consume(store) and consume(store) and not consume(store)


@pytest.mark.parametrize(
    "scope",
    ["garbage", "[]", "{}", '{"uses": null, "for_s": null}', '{"uses": 0}', '{"uses": "5"}', '{"for_s": "1h"}'],
)
def test_a_garbled_scope_is_approved_as_one_run(tmp_path: Path, scope: str) -> None:
    # an edited `scope` in the database must not become a window of unlimited runs: fail closed
    record = replace(approval_record("apr_s", created_s=time.time()), scope=scope, args_exact="{}")
    insert_record(tmp_path, record)
    store = ApprovalStore(connect(tmp_path))
    with store.transaction():
        store.decide("apr_s", True, "alice", None, time.time())
    assert consume(store)
    assert not consume(store)
    assert store.get("apr_s").status == "consumed"  # type: ignore[union-attr]
