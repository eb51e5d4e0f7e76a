"""Verify the event files of a state dir offline: hash links, signed checkpoints, rotated segments and
pruned files (`intercept audit verify`).

The files are read once (`load_files`); then each check in CHECKS looks at them and returns
findings, without I/O. A finding is a break (the command exits 1) or a note. Another check (signed
receipts, signed approver decisions) is one more function `(VerifyInput) -> list[Finding]`.

A tail after a file's last valid checkpoint is not a break: a running or crashed proxy leaves one.
It is reported as not sealed: anyone who can write the file could have cut or rewritten it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from intercept.audit.chain import CHECKPOINT, PRUNED, RESTARTED, ROTATED, ZERO_HEAD, head_of, is_head, signed_payload
from intercept.audit.events import CHECKPOINT_INTERVAL_S, _event_files, events_dir

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_BREAKS_PER_FILE = 10
_SEGMENT = re.compile(r"(.*)\.([1-9][0-9]*)")


@dataclass(frozen=True)
class Finding:
    """Something wrong (`broken`) or worth knowing at `<area>/<file>:<line>` (line 0: the file):
    `events/<file>:<line>` for the event files, `intercept.sqlite/receipts:<seq>` and
    `intercept.sqlite/approval_votes` for what the database holds."""

    file: str
    line: int
    message: str
    broken: bool = True
    area: str = "events"

    def __str__(self) -> str:
        where = f"{self.area}/{self.file}:{self.line}" if self.line else f"{self.area}/{self.file}"
        return f"{where}: {self.message}"


@dataclass
class EventFile:
    """One file as read: its lines (without newlines), their parsed records (None when not a JSON
    object) and hashes, and whether it ends inside a line."""

    name: str
    lines: list[bytes]
    records: list[dict[str, Any] | None]
    heads: list[str]
    torn: bool
    problem: str = ""  # why the file could not be read (then it has no lines)

    @property
    def instance(self) -> str:
        segment = _SEGMENT.fullmatch(self.name.removesuffix(".jsonl"))
        return segment[1] if segment else self.name.removesuffix(".jsonl")

    @property
    def segment(self) -> int:
        segment = _SEGMENT.fullmatch(self.name.removesuffix(".jsonl"))
        return int(segment[2]) if segment else 1


@dataclass
class VerifyInput:
    """What the checks read: the files, the key checkpoints must be signed with, and what the
    checkpoint check found valid (file name -> line numbers), which later checks use."""

    files: list[EventFile]
    public_key: Ed25519PublicKey | None
    sealed_lines: dict[str, list[int]] = field(default_factory=dict)

    def file(self, name: str) -> EventFile | None:
        return next((candidate for candidate in self.files if candidate.name == name), None)

    def sealed(self, name: str, line: int) -> bool:
        """Whether `line` of `name` comes before a valid checkpoint of its file."""
        return any(line < sealed for sealed in self.sealed_lines.get(name, []))


Check = Callable[[VerifyInput], list[Finding]]


@dataclass
class VerifyReport:
    files: int
    records: int
    checkpoints: int
    findings: list[Finding]
    unsealed: list[str]  # "events/<file> (lines a-b)"

    @property
    def breaks(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.broken]

    @property
    def notes(self) -> list[Finding]:
        return [finding for finding in self.findings if not finding.broken]


MAX_FILE_READ_BYTES = 1024 * 1024 * 1024  # writers rotate at 64 MiB: anything this big was planted


def _read_event_file(path: Path) -> bytes:
    """A regular file's bytes, never following a symlink nor blocking on a FIFO (a planted one
    must not hang verify); raises OSError saying what it is instead."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if info.st_size > MAX_FILE_READ_BYTES:
            raise OSError(f"{path.name} is larger than any event file ({info.st_size} bytes)")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_files(state_dir: Path) -> list[EventFile]:
    found = []
    for path in _event_files(events_dir(state_dir)):
        try:
            data = _read_event_file(path)
        except OSError as exc:  # a symlink, a FIFO, a directory: named, and the other files still checked
            found.append(EventFile(path.name, [], [], [], False, problem=exc.strerror or str(exc)))
            continue
        torn = bool(data) and not data.endswith(b"\n")
        lines = data.split(b"\n")
        if not torn:
            lines.pop()
        records: list[dict[str, Any] | None] = []
        for line in lines:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, or nested too deep to read
                record = None
            records.append(record if isinstance(record, dict) else None)
        found.append(EventFile(path.name, lines, records, [head_of(line) for line in lines], torn))
    return found


def check_links(given: VerifyInput) -> list[Finding]:
    """Every record's seq follows the one before and its prev is that record's hash; a line that is
    not a record is a break unless a `chain_restarted` right after it links past it (a write that
    failed mid-line)."""
    findings: list[Finding] = []
    for file in given.files:
        breaks: list[Finding] = []
        seq, head = 0, ZERO_HEAD
        garbage_since = 0  # line number of the first unreadable line since the last record
        count = len(file.lines) - (1 if file.torn else 0)
        for index in range(count):
            number, record = index + 1, file.records[index]
            chained = record is not None and type(record.get("seq")) is int and is_head(record.get("prev"))
            if not chained:
                garbage_since = garbage_since or number
                continue
            assert record is not None
            kind, got_seq, got_prev = record.get("type"), record["seq"], record["prev"]
            linked = got_seq == seq + 1 and got_prev == head
            if index == 0 and kind == ROTATED and got_seq == 1:
                linked = True  # its link to the previous segment is check_segments' job
            if garbage_since:
                if kind == RESTARTED and (linked or (got_seq == 1 and got_prev == ZERO_HEAD)):
                    if linked:
                        findings.append(
                            Finding(
                                file.name,
                                garbage_since,
                                "incomplete line left by a failed write (skipped by chain_restarted)",
                                broken=False,
                            )
                        )
                    else:
                        breaks.append(
                            Finding(file.name, garbage_since, "unreadable line; the chain starts again after it")
                        )
                else:
                    breaks.append(
                        Finding(file.name, garbage_since, "not a chained record (edited, or written before the chain)")
                    )
                garbage_since = 0
            elif kind == RESTARTED and "last_seq" in record and linked:
                breaks.append(Finding(file.name, number, f"the writer found its file changed: {_reason(record)}"))
            elif not linked:
                breaks.append(Finding(file.name, number, _link_problem(seq, head, got_seq, got_prev, index == 0)))
            elif kind == RESTARTED:
                findings.append(Finding(file.name, number, f"chain restarted: {_reason(record)}", broken=False))
            seq, head = got_seq, file.heads[index]
        if garbage_since:
            breaks.append(
                Finding(file.name, garbage_since, "not a chained record (edited, or written before the chain)")
            )
        if file.torn:
            findings.append(
                Finding(file.name, len(file.lines), "incomplete last line (a writer stopped mid-write)", broken=False)
            )
        findings.extend(breaks[:MAX_BREAKS_PER_FILE])
        if len(breaks) > MAX_BREAKS_PER_FILE:
            findings.append(Finding(file.name, 0, f"{len(breaks) - MAX_BREAKS_PER_FILE} more breaks not shown"))
    return findings


def check_checkpoints(given: VerifyInput) -> list[Finding]:
    """Each checkpoint is signed by the key, names its own file and instance, and seals the record
    right before it (its seq and hash). Valid ones are noted in `given.sealed_lines`."""
    from intercept.audit.proxy_key import verify

    findings: list[Finding] = []
    for file in given.files:
        valid: list[int] = []
        for index, record in enumerate(file.records):
            if record is None or record.get("type") != CHECKPOINT:
                continue
            number = index + 1
            problem = _checkpoint_problem(file, index, record, given.public_key, verify)
            if problem:
                findings.append(Finding(file.name, number, problem))
            else:
                valid.append(number)
        given.sealed_lines[file.name] = valid
    return findings


def check_segments(given: VerifyInput) -> list[Finding]:
    """A rotated segment starts with `events_rotated` linked to the last line of the segment before
    it; a missing segment is a break unless a sealed `events_pruned` record names it with that hash."""
    pruned = _sealed_prune_records(given)
    findings: list[Finding] = []
    for file in given.files:
        first = file.records[0] if file.records else None
        if file.segment == 1:
            if first is not None and first.get("type") == ROTATED:
                findings.append(Finding(file.name, 1, "events_rotated at the start of a first segment"))
            continue
        expected = f"{file.instance}.{file.segment - 1}.jsonl" if file.segment > 2 else f"{file.instance}.jsonl"
        if first is None or first.get("type") != ROTATED:
            findings.append(Finding(file.name, 1, "a rotated segment must start with events_rotated"))
            continue
        if first.get("previous_file") != expected:
            findings.append(
                Finding(file.name, 1, f"events_rotated names {first.get('previous_file')!r}, not {expected}")
            )
            continue
        previous = given.file(expected)
        if previous is None:
            if (expected, first.get("prev")) not in pruned:
                findings.append(
                    Finding(
                        file.name,
                        1,
                        f"the previous segment {expected} is missing, and no sealed events_pruned record names it with this hash",
                    )
                )
            continue
        if not previous.heads or first.get("prev") != previous.heads[-1 - (1 if previous.torn else 0)]:
            findings.append(
                Finding(file.name, 1, f"does not link to the last line of {expected} (edited or cut short)")
            )
    return findings


def check_readable(given: VerifyInput) -> list[Finding]:
    """A name in the events dir that is not a readable regular file was put there by someone else."""
    return [Finding(file.name, 0, f"cannot be read: {file.problem}") for file in given.files if file.problem]


def check_signing_failures(given: VerifyInput) -> list[Finding]:
    """A writer that could not sign (`chain_checkpoint_failed`, `receipt_failed`) leaves records
    nothing seals: whatever came after can have been rewritten. That is a break, whatever the
    cause (a key replaced by one the proxy refuses is how an attacker would turn signing off)."""
    findings = []
    for file in given.files:
        for index, record in enumerate(file.records):
            if record is not None and record.get("type") in SIGNING_FAILURES:
                why = record.get("reason") or record.get("error") or "no reason given"
                findings.append(Finding(file.name, index + 1, f"{record['type']}: nothing signed it ({why})"))
    return findings


CHECKS: list[Check] = [check_readable, check_links, check_checkpoints, check_segments, check_signing_failures]
SIGNING_FAILURES = frozenset({"chain_checkpoint_failed", "receipt_failed"})
# Records after a file's last checkpoint older than this were never sealed although a writer
# seals at least every CHECKPOINT_INTERVAL_S and at exit: its writer crashed or could not sign,
# or they were rewritten (a break). Younger ones are a running writer's (listed, not a break).
STALE_TAIL_S = 3 * CHECKPOINT_INTERVAL_S


def verify_files(
    files: list[EventFile],
    public_key: Ed25519PublicKey | None,
    checks: list[Check] | None = None,
    now_s: float | None = None,
) -> VerifyReport:
    given = VerifyInput(files, public_key)
    findings: list[Finding] = []
    for check in checks or CHECKS:
        findings.extend(check(given))
    unsealed = []
    now_s = time.time() if now_s is None else now_s
    for file in files:
        last = max(given.sealed_lines.get(file.name, [0]), default=0)
        if len(file.lines) > last:
            unsealed.append(f"events/{file.name} (lines {last + 1}-{len(file.lines)})")
            age_s = _tail_age_s(file, now_s)
            if age_s is not None and age_s > STALE_TAIL_S:
                findings.append(
                    Finding(
                        file.name,
                        last + 1,
                        f"lines {last + 1}-{len(file.lines)} were never sealed by a checkpoint and the last is "
                        f"{age_s / 60:.0f} min old: their writer crashed or could not sign, or they were rewritten",
                    )
                )
    records = sum(1 for file in files for record in file.records if record is not None)
    checkpoints = sum(len(lines) for lines in given.sealed_lines.values())
    return VerifyReport(len(files), records, checkpoints, findings, unsealed)


def verify_state_dir(state_dir: Path, public_key: Ed25519PublicKey | None) -> VerifyReport:
    return verify_files(load_files(state_dir), public_key)


def _tail_age_s(file: EventFile, now_s: float) -> float | None:
    """How long ago the file's last readable record was written (None: no readable time)."""
    from intercept.store.timestamps import parse_rfc3339

    for record in reversed(file.records):
        stamp = record.get("ts") if record is not None else None
        if isinstance(stamp, str):
            try:
                return now_s - parse_rfc3339(stamp)
            except ValueError:
                return None
    return None


def _checkpoint_problem(
    file: EventFile,
    index: int,
    record: dict[str, Any],
    public_key: Ed25519PublicKey | None,
    verify: Callable[[Ed25519PublicKey, bytes, str], bool],
) -> str:
    if public_key is None:
        return "checkpoint cannot be checked: no public key"
    signature = record.get("signature")
    try:
        payload = signed_payload(record)
    except ValueError:  # numbers RFC 8785 cannot write (an infinity, an integer beyond 2^53): forged
        return "checkpoint holds values no checkpoint can sign"
    if not isinstance(signature, str) or not verify(public_key, payload, signature):
        return "checkpoint signature does not verify with the public key"
    if record.get("file") != file.name:
        return f"checkpoint is for {record.get('file')!r}, copied from another file"
    if record.get("instance") != file.instance:
        return f"checkpoint is for instance {record.get('instance')!r}"
    before = file.records[index - 1] if index > 0 else None
    if (
        before is None
        or record.get("sealed_seq") != before.get("seq")
        or record.get("sealed_head") != file.heads[index - 1]
    ):
        return "checkpoint does not seal the record before it (a record was edited, added or removed)"
    return ""


def _sealed_prune_records(given: VerifyInput) -> set[tuple[str, object]]:
    """(file name, hash of its last record) of every pruned file named by a sealed prune record."""
    named: set[tuple[str, object]] = set()
    for file in given.files:
        for index, record in enumerate(file.records):
            if record is None or record.get("type") != PRUNED or not given.sealed(file.name, index + 1):
                continue
            for entry in record.get("pruned_files") or []:
                if isinstance(entry, dict):
                    named.add((str(entry.get("file")), entry.get("head")))
    return named


def _reason(record: dict[str, Any]) -> str:
    return str(record.get("reason", "no reason given"))


def _link_problem(seq: int, head: str, got_seq: object, got_prev: object, first: bool) -> str:
    if first and got_prev != ZERO_HEAD:
        return "the first record does not start a chain (lines before it were removed?)"
    if got_seq != seq + 1:
        return f"seq {got_seq} follows seq {seq} (a record was removed, added or moved)"
    return "prev is not the hash of the line before (that line was edited)"
