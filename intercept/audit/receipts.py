"""Receipts: one for every decision on an approval request and one for every run of an
approval-gated call, so that what was requested, who decided, and what ran can be proven later
without trusting the host's database.

A receipt is the RFC 8785 canonical JSON of {kind, seq, prev, at, the request (id, fingerprint,
server, tool, args hash, agent, client, rule, rule digest, policy digest, created/decided times,
decided by), its status, and its votes with their own signatures and signed bytes}, stored in
the `receipts` table with its SHA-256 and a signature by the proxy key (`audit.proxy_key`, the
one that seals the event files). `prev` is the hash of the receipt before it, and receipts are
appended inside the write transaction of the decision or the run, so the chain is one line
across every process of the state dir. `intercept audit verify` checks it (`receipt_checks`).

Allowed calls get no receipt: a signature per call would cost the hot path more than the whole
relay. The key is loaded lazily (and can be warmed up off the event loop): a proxy whose policy
never asks a human never loads `cryptography`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from intercept.store.approvals import ApprovalRecord, ApprovalStore
from intercept.store.timestamps import rfc3339
from intercept.store.votes import Vote

log = logging.getLogger("intercept")

ReceiptKind = Literal["decided", "ran"]
GENESIS = "0" * 64  # the `prev` of the first receipt of a state dir
_LAST = "SELECT seq, hash FROM receipts ORDER BY seq DESC LIMIT 1"
_INSERT = "INSERT INTO receipts (seq, approval_id, kind, body, hash, signature) VALUES (?, ?, ?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class Appended:
    """A receipt written (`seq`, `hash`), or why none was (`problem`)."""

    seq: int | None = None
    hash: str | None = None
    problem: str | None = None

    def fields(self) -> dict[str, Any]:
        """What the event of the same step carries: `receipt_seq` and `receipt_hash`, so a receipt
        removed from the database is missed by the hash-chained log (`audit verify`)."""
        return {} if self.seq is None else {"receipt_seq": self.seq, "receipt_hash": self.hash}


NO_RECEIPT = Appended()  # none asked for (a decision the caller keeps no receipts of)


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    seq: int
    approval_id: str
    kind: str
    body: str
    hash: str
    signature: str


def receipt_body(
    kind: ReceiptKind, seq: int, prev: str, at_s: float, record: ApprovalRecord, votes: list[Vote]
) -> dict[str, Any]:
    """What one receipt says (pure)."""
    return {
        "kind": kind,
        "seq": seq,
        "prev": prev,
        "at": rfc3339(at_s),
        "approval_id": record.id,
        "fingerprint": record.fingerprint,
        "server": record.server,
        "tool": record.tool,
        "args_hash": record.args_hash,
        "agent": record.agent,
        "client": record.client,
        "rule": record.rule,
        "rule_digest": record.rule_digest,
        "policy_digest": record.policy_revision,
        "status": record.status,
        "created_at": record.created_at,
        "decided_at": record.decided_at,
        "decided_by": record.decided_by,
        "votes": [
            {
                "actor": vote.actor,
                "decision": vote.decision,
                "decided_at": vote.decided_at,
                "channel": vote.channel,
                "signature": vote.signature,
                "signed": vote.payload,
            }
            for vote in votes
        ],
    }


def canonical(body: dict[str, Any]) -> str:
    import rfc8785

    return rfc8785.dumps(body).decode()


class Receipts:
    """Writes receipts for one state dir with its proxy key, loaded at first use (or by
    `warm_up`, off the event loop). A key that cannot be used is said once on stderr and each
    receipt not written is returned as its reason: the decision or the run stands (its votes are
    signed by the approvers), the gap is recorded as `receipt_failed`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._key: Any = None
        self._problem: str | None = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        self._signing_key()

    def _signing_key(self) -> Any:
        with self._lock:
            if self._key is None and self._problem is None:
                from intercept.audit.proxy_key import ProxyKeyError, load_or_create

                try:
                    self._key = load_or_create(self.state_dir)
                except (ProxyKeyError, OSError, ValueError) as exc:
                    self._problem = str(exc)
                    log.error("receipts cannot be signed: %s", exc)
            return self._key

    def append(
        self, store: ApprovalStore, kind: ReceiptKind, record: ApprovalRecord, votes: list[Vote], at_s: float
    ) -> Appended:
        """Append one receipt inside the caller's write transaction; what was written (its seq and
        hash, which the event recording the same step names), or why nothing was (no usable key)."""
        key = self._signing_key()
        if key is None:
            return Appended(problem=self._problem or "no proxy key")
        last = store.connection.execute(_LAST).fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        body = canonical(receipt_body(kind, seq, prev, at_s, record, votes))
        digest = hashlib.sha256(body.encode()).hexdigest()
        store.connection.execute(_INSERT, (seq, record.id, kind, body, digest, key.sign(body.encode())))
        return Appended(seq, digest)


def stored_receipts(store: ApprovalStore) -> list[StoredReceipt]:
    rows = store.connection.execute("SELECT seq, approval_id, kind, body, hash, signature FROM receipts ORDER BY seq")
    return [StoredReceipt(*row) for row in rows]
