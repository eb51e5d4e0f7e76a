"""The one decision path (`approvals.decisions.decide`) against a real SQLite file: the decision
and its event, the same decision again, and a request past its expiry (marked expired for good,
the decision refused)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.decisions import DecisionConflict, decide
from intercept.store.approvals import ApprovalStore
from intercept.store.database import connect
from tests.store_support import approval_record, insert_record


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, **fields: Any) -> None:
        self.events.append((event_type, fields))


def test_a_decision_then_the_same_again(tmp_path: Path) -> None:
    insert_record(tmp_path, approval_record("apr_1", created_s=time.time()))
    store, events = ApprovalStore(connect(tmp_path)), Recorded()
    first = decide(store, events, "apr_1", approve=True, actor="alice", reason="ok", channel="api", now_s=time.time())
    again = decide(store, events, "apr_1", approve=True, actor="bob", reason=None, channel="cli", now_s=time.time())
    assert (first.changed, first.record.status, first.record.decided_by) == (True, "approved", "alice")
    assert (again.changed, again.record.decided_by) == (False, "alice")
    assert [(kind, fields["channel"], fields["actor"]) for kind, fields in events.events] == [
        ("approval_decided", "api", "alice")
    ]


def test_a_request_past_its_expiry_is_marked_expired_and_not_decided(tmp_path: Path) -> None:
    created = time.time() - 100
    insert_record(tmp_path, approval_record("apr_old", created_s=created, timeout_s=10))
    store, events = ApprovalStore(connect(tmp_path)), Recorded()
    with pytest.raises(DecisionConflict) as refused:
        decide(store, events, "apr_old", approve=True, actor="alice", reason=None, channel="api", now_s=time.time())
    assert "expired at" in str(refused.value) and refused.value.record.status == "expired"
    # The expiry is committed (it was rolled back with the refusal before), and recorded once.
    assert ApprovalStore(connect(tmp_path)).get("apr_old").status == "expired"  # type: ignore[union-attr]
    assert [kind for kind, _ in events.events] == ["approval_expired"]
