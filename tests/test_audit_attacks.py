"""Second attacker-style review of the tamper-evident audit trail (#13): what an attacker who can
write the state dir (but not read proxy.key) can plant, and what `audit verify` then says. Each
test here failed on the reviewed commit; the docstring says what the bug is."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from intercept.audit.chain_verify import verify_state_dir
from intercept.audit.events import EventLog, events_dir, prune_old_event_files
from intercept.audit.proxy_key import ProxyKeyError, load_existing, load_or_create, parse_public_line
from intercept.audit.receipt_checks import check_database
from intercept.audit.receipts import Receipts
from intercept.store.database import database_path
from tests.test_event_chain import PROXY, lines_of, make_state_dir, write_lines
from tests.test_receipts import state  # noqa: F401  (the fixture: two requests, signed votes, three receipts)

DEEP = b"[" * 200_000  # parses as far as Python's recursion limit, then RecursionError (not ValueError)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    make_state_dir(tmp_path)
    return tmp_path


def public(state_dir: Path) -> Any:
    return load_or_create(state_dir).public()


# -- verify must survive garbage: a finding, never an exception ---------------------------------------


def test_a_deeply_nested_line_is_a_finding_not_a_recursion_error(state_dir: Path) -> None:
    """load_files catches ValueError only; json.loads raises RecursionError on deep nesting, so
    `audit verify` (and `events tail`, `status`, `audit export`, which read the same files) ends
    in a traceback on one planted line."""
    name = "srv-2-def.jsonl"
    write_lines(state_dir, name, [*lines_of(state_dir, name), DEEP])
    report = verify_state_dir(state_dir, public(state_dir))
    assert any(finding.file == name and finding.line == 4 for finding in report.breaks)


@pytest.mark.parametrize("value", ["1e400", str(2**70)], ids=["infinity", "beyond_2_53"])
def test_a_checkpoint_with_numbers_jcs_cannot_encode_is_a_finding(state_dir: Path, value: str) -> None:
    """_checkpoint_problem runs rfc8785.dumps on the record's fields without a guard: a forged
    checkpoint whose sealed_seq is 1e400 or 2**70 makes verify raise FloatDomainError /
    IntegerDomainError instead of reporting a bad checkpoint."""
    name = "srv-2-def.jsonl"
    lines = lines_of(state_dir, name)
    assert json.loads(lines[1])["type"] == "chain_checkpoint"
    lines[1] = lines[1].replace(b'"sealed_seq":1,', f'"sealed_seq":{value},'.encode())
    write_lines(state_dir, name, lines)
    report = verify_state_dir(state_dir, public(state_dir))
    assert any(finding.file == name and finding.line == 2 for finding in report.breaks)


def _rebuild_receipts_without_constraints(state_dir: Path) -> sqlite3.Connection:
    """What an attacker can do to the table: replace it with one that takes any type."""
    db = sqlite3.connect(database_path(state_dir))
    db.executescript(
        "CREATE TABLE r2 AS SELECT * FROM receipts; DROP TABLE receipts; "
        "CREATE TABLE receipts (seq, approval_id, kind, body, hash, signature); "
        "INSERT INTO receipts SELECT * FROM r2; DROP TABLE r2;"
    )
    return db


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE receipts SET body = '[1]' WHERE seq = 2",
        "UPDATE receipts SET body = '5' WHERE seq = 2",
        "UPDATE receipts SET body = json_set(body, '$.votes', json('[1]')) WHERE seq = 2",
        "UPDATE receipts SET body = json_set(body, '$.votes', 'ab') WHERE seq = 2",
        "UPDATE receipts SET body = printf('%.*c', 100000, '[') WHERE seq = 2",
        "UPDATE receipts SET body = x'7b7d' WHERE seq = 2",
        "UPDATE receipts SET body = NULL WHERE seq = 2",
        "UPDATE receipts SET seq = 'two' WHERE seq = 2",
        "UPDATE approval_votes SET payload = '[1]' WHERE rowid = 1",
        "UPDATE approval_votes SET payload = '7' WHERE rowid = 1",
    ],
    ids=[
        "body_a_list", "body_a_number", "votes_not_objects", "votes_a_string", "body_nested_deep",
        "body_a_blob", "body_null", "seq_text", "signed_vote_a_list", "signed_vote_a_number",
    ],
)  # fmt: skip
def test_receipts_and_votes_of_the_wrong_type_are_findings(state: Path, statement: str) -> None:  # noqa: F811
    """_check_receipts / _vote_problem call .encode() and .get() on whatever the row holds; an
    edited row of another type (a JSON list, a number, a blob, NULL) is an AttributeError /
    TypeError / RecursionError traceback from `audit verify`, not a finding."""
    db = _rebuild_receipts_without_constraints(state)
    db.execute(statement)
    db.commit()
    db.close()
    report = check_database(state, load_or_create(state).public())
    assert any(finding.broken for finding in report.findings)


# -- the writers: a planted line or key must not crash them -------------------------------------------


def test_a_deeply_nested_last_line_does_not_crash_a_shared_writer(tmp_path: Path) -> None:
    """read_tail -> parse_linked catches ValueError only: a planted deep line at the end of the
    CLI's shared file makes every later `emit` raise RecursionError. `intercept approvals approve`
    commits the decision, then crashes before `approval_decided` is written: an attacker can keep
    CLI decisions out of the log. It must get `chain_restarted` like any garbled tail."""
    directory = events_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "approvals-cli.jsonl").write_bytes(DEEP + b"\n")
    log = EventLog(tmp_path, "approvals-cli")
    log.emit("approval_decided", approval_id="apr_1")
    log.close()
    kinds = [json.loads(line)["type"] for line in lines_of(tmp_path, "approvals-cli.jsonl")[1:]]
    assert kinds[:2] == ["chain_restarted", "approval_decided"]


def _unsupported_key(state_dir: Path) -> None:
    """A PEM private key `cryptography` parses but does not support (EC on secp112r1)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    made = subprocess.run(
        f"{openssl} ecparam -name secp112r1 -genkey -noout | {openssl} pkcs8 -topk8 -nocrypt",
        shell=True, capture_output=True, check=True,
    )  # fmt: skip
    path = state_dir / "proxy.key"
    path.write_bytes(made.stdout)
    os.chmod(path, 0o600)


def test_a_key_of_an_unsupported_algorithm_is_a_proxy_key_error(tmp_path: Path) -> None:
    """_parse_private catches ValueError and TypeError; load_pem_private_key raises
    UnsupportedAlgorithm (an Exception, neither) for such a key. Then: `audit verify` and
    `audit public-key` end in a traceback; ChainedFile.load_key's thread dies and the next
    checkpoint (periodic flush, or EventLog.close at shutdown) raises out of the event log; and
    Receipts._signing_key (which catches ProxyKeyError and OSError) raises inside the deciding
    transaction, so a decision fails instead of being recorded as `receipt_failed`."""
    _unsupported_key(tmp_path)
    with pytest.raises(ProxyKeyError):
        load_existing(tmp_path)
    log = EventLog(tmp_path, "srv-9-aaa", shared=False)
    log.emit("startup", server="srv")
    log.close()  # must not raise; writes chain_checkpoint_failed
    assert b"chain_checkpoint_failed" in lines_of(tmp_path, "srv-9-aaa.jsonl")[-1]
    assert Receipts(tmp_path)._signing_key() is None


# -- downgrade: a key the proxy refuses leaves everything unsealed, and verify says ok ---------------


def test_a_proxy_key_swapped_for_one_the_proxy_refuses_is_a_break(tmp_path: Path) -> None:
    """The attacker can write the state dir: they rename proxy.key away and plant a file the proxy
    refuses (mode 0644, a directory, garbage, a FIFO...). From then on no checkpoint is signed;
    the proxy writes one unsigned `chain_checkpoint_failed` (critical) and carries on. `audit
    verify --public-key` with the operator's pinned key still exits 0 ("ok", the files only listed
    as not sealed), and since nothing after the swap is sealed, the attacker can rewrite those
    records or drop the `chain_checkpoint_failed` line itself. SECURITY.md says verifying with a
    public key kept elsewhere defeats key replacement; this one it does not."""
    pinned = parse_public_line(load_or_create(tmp_path).public_line())
    before = EventLog(tmp_path, "srv-1-abc", shared=False)
    before.emit("startup", server="srv")
    before.close()
    os.rename(tmp_path / "proxy.key", tmp_path / ".moved")
    (tmp_path / "proxy.key").write_text("not a key")
    os.chmod(tmp_path / "proxy.key", 0o644)
    after = EventLog(tmp_path, "srv-2-abc", shared=False)
    after.emit("startup", server="srv")
    after.tool_call("srv", "delete_repository", "allowed", {"repo": "x"}, rule="r")
    after.close()
    report = verify_state_dir(tmp_path, pinned)
    assert report.breaks, "a proxy that could not sign its checkpoints verified as ok"


# -- verify changes nothing ----------------------------------------------------------------------------


def test_verify_creates_no_files_in_the_state_dir(state: Path) -> None:  # noqa: F811
    """check_database opens the WAL database with `mode=ro`, which still creates
    intercept.sqlite-wal and -shm beside it (the docstring: "verifying changes nothing")."""
    for suffix in ("-wal", "-shm"):
        Path(f"{database_path(state)}{suffix}").unlink(missing_ok=True)
    before = sorted(path.name for path in state.iterdir())
    check_database(state, load_or_create(state).public())
    assert sorted(path.name for path in state.iterdir()) == before


# -- pruning trusts mtime ------------------------------------------------------------------------------


def test_pruning_goes_by_the_records_not_by_a_backdated_mtime(state_dir: Path) -> None:
    """prune_old_event_files deletes by st_mtime, which whoever can write the state dir sets with
    `touch -d`. The proxy then deletes a segment with recent records and seals an events_pruned
    record naming it, so `audit verify` accepts the deletion as retention. It should judge a
    file's age by its last record's `ts` (and put it in the signed prune record)."""
    first = events_dir(state_dir) / f"{PROXY}.jsonl"
    os.utime(first, (1_000_000_000, 1_000_000_000))  # 2001: "older than the retention"
    pruned = prune_old_event_files(state_dir)
    assert first.exists() and pruned.count == 0


# -- export ---------------------------------------------------------------------------------------------


def test_csv_cells_escape_bidi_and_control_characters_like_jsonl() -> None:
    """JSONL export writes control and bidi characters as \\uNNNN; the CSV writes an agent-chosen
    tool name holding U+202E (right-to-left override) or a lone CR/LF-led cell as is, so the
    spreadsheet a reviewer reads shows another name than the one logged (Trojan-source style)."""
    from intercept.audit.export import csv_cell

    for value in ("rm\u202efdp.txt", "a\u2066b", "x\x1by"):
        assert csv_cell(value) != value, repr(value)


# -- the policy archive ---------------------------------------------------------------------------------

LEAKY_POLICY = """version: "1"
approvals:
  notify:
    webhook:
      url: "https://hooks.slack.com/services/T0000/B0000/XOXBSECRETTOKEN"
      format: slack
      # the old secret was s3cr3tHALF1
      secret: |
        s3cr3tHALF1
        s3cr3tHALF2
tools: {}
"""


@pytest.mark.parametrize("secret", ["s3cr3tHALF1", "XOXBSECRETTOKEN"], ids=["part_of_a_block_secret", "slack_url"])
def test_the_archive_leaks_no_part_of_a_secret(secret: str) -> None:
    """_redacted_well searches the text for the whole parsed value only: a block-scalar secret
    whose lines also appear elsewhere (a comment) passes, one line at a time. And a Slack incoming
    webhook's URL (format: slack) is the credential itself, archived as is (so is user:pass@ in
    any url)."""
    from intercept.audit.policy_archive import redact_policy_source
    from intercept.policy.load import parse_policy

    redacted = redact_policy_source(LEAKY_POLICY, parse_policy(LEAKY_POLICY).digest)
    assert secret not in redacted.text
