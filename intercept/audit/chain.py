"""The hash chain of an events file: how a record is linked, how a file's tail is read back, and what
a checkpoint signs. Shared by the writer (`audit.chained_file`) and the verifier (`audit.chain_verify`).

Every record of a file ends with `"seq":N,"prev":"<hex>"`: its number in the file (1, 2, ...) and
the SHA-256 of the previous record's exact line bytes (without the newline). A fresh chain starts
from ZERO_HEAD; the first record of a rotated segment (`events_rotated`) links to the last line of
the segment before it. A `chain_checkpoint` record names the file, the seq and hash of the record
before it (the head it seals), the instance and the time, and carries an Ed25519 signature of
those fields in RFC 8785 canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

ZERO_HEAD = "0" * 64
CHECKPOINT = "chain_checkpoint"
RESTARTED = "chain_restarted"
ROTATED = "events_rotated"
PRUNED = "events_pruned"
CHAIN_FIELDS = frozenset({"seq", "prev"})
MAX_TAIL_BYTES = 1024 * 1024  # a last line longer than this is reported as unreadable
_TAIL_CHUNK = 8192


def link(line: bytes, seq: int, prev: str) -> bytes:
    """`line` (one JSON object, no newline) with the chain fields appended."""
    return b'%s,"seq":%d,"prev":"%s"}' % (line[:-1], seq, prev.encode("ascii"))


def link_open(line: str, seq: int, prev: str) -> bytes:
    """`link` for a record rendered without its closing brace (the writer's form: linking then
    costs no slice), encoded as records are written (a lone surrogate as its escape)."""
    return f'{line},"seq":{seq},"prev":"{prev}"}}'.encode("utf-8", "backslashreplace")


def link_lines(lines: list[Any], seq: int, head: str) -> tuple[list[bytes], int, str]:
    """`link_open` for each of `lines` in turn from (seq, head): the linked lines, and the seq and
    head after the last. A writer may link with a function of its own that also renders records
    of its own form in the same step (`audit.events`), as long as it links open lines like this."""
    out: list[bytes] = []
    for line in lines:
        seq += 1
        out.append(link_open(line, seq, head))
        head = head_of(out[-1])
    return out, seq, head


def head_of(line: bytes) -> str:
    """The hash the next record's `prev` carries."""
    return hashlib.sha256(line).hexdigest()


def is_head(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def checkpoint_fields(file: str, sealed_seq: int, sealed_head: str, instance: str, ts: str) -> dict[str, Any]:
    """What a checkpoint signs, and the fields of its record (before `signature`), in order."""
    return {"ts": ts, "type": CHECKPOINT, "instance": instance, "file": file, "sealed_seq": sealed_seq,
            "sealed_head": sealed_head}  # fmt: skip


def signed_payload(fields: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: its signed fields in RFC 8785 canonical JSON."""
    import rfc8785

    signed = {key: fields.get(key) for key in ("ts", "type", "instance", "file", "sealed_seq", "sealed_head")}
    return rfc8785.dumps(signed)


@dataclass(frozen=True)
class Tail:
    """Where a file's chain stands: the last record's seq and hash (0 and ZERO_HEAD for an empty
    file), whether the file ends inside a line, and why the chain cannot be continued (empty if it can)."""

    seq: int
    head: str
    torn: bool = False
    problem: str = ""
    last_type: str = ""
    last_ts: str = ""  # the last record's `ts`, as written


def read_tail(fd: int) -> Tail:
    """The chain state at the end of the open file `fd` (read with pread; the offset is untouched)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return Tail(0, ZERO_HEAD)
    data, start = b"", size
    while True:  # read backwards until the chunk holds the whole last complete line
        step = min(_TAIL_CHUNK, start)
        start -= step
        data = os.pread(fd, step, start) + data
        end = data.rfind(b"\n")
        if start == 0 or (end >= 0 and data.rfind(b"\n", 0, end) >= 0):
            break
        if len(data) > MAX_TAIL_BYTES:
            return Tail(0, ZERO_HEAD, torn=not data.endswith(b"\n"), problem="the last line is too long to read back")
    torn = not data.endswith(b"\n")
    end = data.rfind(b"\n")
    if end < 0:
        return Tail(0, ZERO_HEAD, torn=True, problem="the file holds only an incomplete line")
    last = data[data.rfind(b"\n", 0, end) + 1 : end]
    seq, problem, kind = parse_linked(last)
    if problem:
        return Tail(0, ZERO_HEAD, torn=torn, problem=f"its last complete line {problem}", last_type=kind)
    return Tail(seq, head_of(last), torn=torn, last_type=kind, last_ts=_ts_of(last))


def _ts_of(line: bytes) -> str:
    try:
        stamp = json.loads(line).get("ts")
    except (ValueError, RecursionError, AttributeError):
        return ""
    return stamp if isinstance(stamp, str) else ""


def parse_linked(line: bytes) -> tuple[int, str, str]:
    """(seq, problem, type) of one line; problem is empty for a well-formed chained record."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        return 0, "is not JSON", ""
    if not isinstance(record, dict):
        return 0, "is not a JSON object", ""
    seq, prev = record.get("seq"), record.get("prev")
    if type(seq) is not int or seq < 1 or not is_head(prev):
        return 0, "has no seq and prev (written before the chain, or edited)", str(record.get("type", ""))
    return seq, "", str(record.get("type", ""))
