"""The checks `intercept audit verify` runs on what the database holds, offline: the receipt
chain (each receipt's hash, its link to the one before, its signature by the proxy key) and
every signed vote (its signature by the key the request's archived policy gives that approver,
over bytes that name that request, that approver and that decision), the votes inside receipts
included.

The database is opened read-only and never migrated: verifying changes nothing. A state dir
without a database, or one made before receipts existed, has nothing of this to check.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intercept.audit.chain_verify import Finding
from intercept.audit.receipts import GENESIS
from intercept.policy.model import Policy
from intercept.store.database import database_path

AREA = "intercept.sqlite"


@dataclass
class DatabaseReport:
    findings: list[Finding] = field(default_factory=list)
    receipts: int = 0
    signed_votes: int = 0


class _Keys:
    """Approvers' public keys by (policy digest, name), from the archived policies (cached)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._policies: dict[str, Policy | str | None] = {}

    def policy(self, digest: str) -> Policy | str | None:
        """The archived policy, or why it cannot be read (a string), or None when not archived."""
        if digest not in self._policies:
            from intercept.audit.policy_archive import PolicyArchiveError, archived_policy

            try:
                self._policies[digest] = archived_policy(self.state_dir, digest)
            except PolicyArchiveError as exc:
                self._policies[digest] = str(exc)
        return self._policies[digest]


def check_database(state_dir: Path, proxy_public: Any) -> DatabaseReport:
    report = DatabaseReport()
    path = database_path(state_dir)
    if not path.exists():  # the events may still name receipts: deleting the database loses them all
        _check_named_receipts({}, state_dir, report)
        return report
    try:
        # Read-only; `immutable` when no write-ahead log exists, since opening a WAL database
        # read-only would otherwise create its -wal and -shm files: verifying writes nothing.
        live = Path(f"{path}-wal").exists()
        connection = sqlite3.connect(f"file:{path}?mode=ro{'' if live else '&immutable=1'}", uri=True)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        report.findings.append(Finding("", 0, f"cannot be read: {exc}", area=AREA))
        return report
    keys = _Keys(state_dir)
    try:
        held: dict[int, str] = {}
        if "receipts" in tables:
            _check_receipts(connection, proxy_public, keys, report)
            held = dict(connection.execute("SELECT seq, hash FROM receipts"))
        _check_named_receipts(held, state_dir, report)  # a dropped table holds none of them
        if "approval_votes" in tables:
            _check_votes(connection, keys, report)
    except sqlite3.Error as exc:
        report.findings.append(Finding("", 0, f"cannot be read: {exc}", area=AREA))
    finally:
        connection.close()
    return report


def _check_receipts(connection: sqlite3.Connection, proxy_public: Any, keys: _Keys, report: DatabaseReport) -> None:
    from intercept.audit.proxy_key import verify

    expected_seq, prev = 1, GENESIS
    rows = connection.execute("SELECT seq, approval_id, kind, body, hash, signature FROM receipts ORDER BY seq")
    for index, (seq, approval_id, kind, body, digest, signature) in enumerate(rows, start=1):
        report.receipts += 1
        at = seq if type(seq) is int else index

        def broken(message: str, where: int = at) -> None:
            report.findings.append(Finding("receipts", where, message, area=AREA))

        if type(seq) is not int or not isinstance(body, str) or not isinstance(digest, str):
            broken("its seq, body or hash is not of its type: the row was edited")
            prev = digest if isinstance(digest, str) else prev
            expected_seq = at + 1
            continue
        if seq != expected_seq:
            broken(f"receipts {expected_seq} to {seq - 1} are missing")
        expected_seq = seq + 1
        if hashlib.sha256(body.encode()).hexdigest() != digest:
            broken("its hash is not the SHA-256 of its body: the body or the hash was edited")
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read
            fields = None
        if not isinstance(fields, dict):
            broken("its body is not a JSON object")
            prev = digest
            continue
        if fields.get("seq") != seq or fields.get("approval_id") != approval_id or fields.get("kind") != kind:
            broken("its row does not match its body (seq, approval or kind edited)")
        if fields.get("prev") != prev:
            broken("its prev is not the hash of the receipt before it: a receipt was removed, added or reordered")
        if proxy_public is None:
            broken("no proxy key to check its signature against")
        elif not verify(proxy_public, body.encode(), signature):
            broken("its signature is not the proxy key's")
        votes = fields.get("votes")
        if not isinstance(votes, list) or not all(isinstance(vote, dict) for vote in votes):
            broken("its votes are not a list of votes")
            votes = []
        for vote in votes:
            problem = _vote_problem(
                keys, fields.get("policy_digest"), approval_id, fields.get("fingerprint"), vote, report
            )
            if problem is not None:
                broken(problem)
        prev = digest


def _check_named_receipts(held: dict[int, str], state_dir: Path, report: DatabaseReport) -> None:
    """Each `approval_decided` / `approval_consumed` event names the receipt of its step
    (`receipt_seq`, `receipt_hash`); one the database no longer holds (`held`: seq -> hash), or
    holds with another hash, was removed or replaced: the hash-chained log catches what the
    receipt chain alone cannot (its newest receipts cut off, the table or the database gone)."""
    from intercept.audit.events import read_events

    for event in read_events(state_dir):
        seq, digest = event.get("receipt_seq"), event.get("receipt_hash")
        if type(seq) is not int:
            continue
        if seq not in held:
            message = f"the {event.get('type')} event of {event.get('approval_id')} names receipt {seq}, which is gone"
            report.findings.append(Finding("receipts", seq, message, area=AREA))
        elif held[seq] != digest:
            message = (
                f"the {event.get('type')} event of {event.get('approval_id')} names receipt {seq} with another hash"
            )
            report.findings.append(Finding("receipts", seq, message, area=AREA))


def _check_votes(connection: sqlite3.Connection, keys: _Keys, report: DatabaseReport) -> None:
    columns = {row[1] for row in connection.execute("PRAGMA table_info(approval_votes)")}
    if "payload" not in columns:
        return
    rows = connection.execute(
        "SELECT v.approval_id, v.actor, v.decision, v.signature, v.payload, a.policy_revision, a.fingerprint "
        "FROM approval_votes v LEFT JOIN approvals a ON a.id = v.approval_id WHERE v.signature IS NOT NULL "
        "ORDER BY v.approval_id, v.actor"
    )
    for approval_id, actor, decision, signature, payload, digest, fingerprint in rows:
        vote = {"actor": actor, "decision": decision, "signature": signature, "signed": payload}
        problem = _vote_problem(keys, digest, approval_id, fingerprint, vote, report)
        if problem is not None:
            report.findings.append(Finding("approval_votes", 0, problem, area=AREA))


def _vote_problem(
    keys: _Keys, digest: Any, approval_id: str, fingerprint: Any, vote: dict[str, Any], report: DatabaseReport
) -> str | None:
    """Why one signed vote (as a receipt or the votes table holds it) does not hold; None if it does."""
    from intercept.approvals.approver_keys import parse_public_line, verify

    actor, signature, signed = vote.get("actor"), vote.get("signature"), vote.get("signed")
    who = f"{approval_id}: {actor}'s vote"
    if signature is None:
        return None  # an unsigned vote (an approver without a key, or no approvers): nothing to check
    report.signed_votes += 1
    if not isinstance(signed, str):
        return f"{who} is signed but its signed bytes are missing"
    try:
        said = json.loads(signed)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        said = None
    if not isinstance(said, dict):
        return f"{who}: its signed bytes are not a JSON object"
    if (said.get("approval_id"), said.get("actor"), said.get("decision")) != (approval_id, actor, vote.get("decision")):
        return f"{who} signs another request, approver or decision than the one it is stored as"
    if fingerprint is not None and said.get("fingerprint") != fingerprint:
        return f"{who} signs another call (fingerprint) than its request's"
    policy = keys.policy(digest) if isinstance(digest, str) else None
    if isinstance(policy, str):
        return f"{who}: the archived policy {str(digest)[:12]} cannot be read ({policy})"
    if policy is None:
        return f"{who}: the policy {str(digest)[:12]} it was cast under is not archived, so its key is unknown"
    approver = policy.approvers.get(str(actor))
    if approver is None or approver.key is None:
        return f"{who}: {actor} has no key in the policy it was cast under"
    if said.get("approvers_digest") != policy.approvers_digest:
        return f"{who} was signed under another approvers block than its policy's"
    if not verify(parse_public_line(approver.key), signed.encode(), str(signature)):
        return f"{who} is not signed by {actor}'s key in its policy"
    return None
