"""Append JSONL events under `<state-dir>/events/` and read them back in time order.

Writes are buffered and flushed on a short timer, on every event that is not a routine
`tool_call`, and at shutdown, so the allowed-call hot path pays for a list append only.

A failed write never stops the proxy and never turns the log off: the writer keeps what it could
not write (up to MAX_UNWRITTEN_BYTES, dropping the oldest beyond and counting them as lost),
tries again with a doubling backoff, and on success first writes an `events_gap` record saying
how many records were lost, between when and why. A file that passes MAX_FILE_BYTES is closed and
the writer continues in `<instance-id>.<n>.jsonl`, which begins with an `events_rotated` record;
files untouched for DEFAULT_RETENTION_S are pruned.

Every record carries a `severity` (SEVERITY gives each type's default; `emit(..., severity=)`
overrides it), the constant fields of `set_context`, and the hash-chain fields `seq` and `prev`,
added when the lines are written (`audit.chained_file`): a flush hashes each line once and
re-encodes nothing. Checkpoints signed by the proxy key (`audit.proxy_key`) seal the chain at
rotation, after an `events_gap`, after pruning (`checkpoint()`), at close and every
CHECKPOINT_INTERVAL_S while records are written; the key is loaded at the first one, never on the
start path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intercept.audit.chain import CHAIN_FIELDS, link_open, read_tail
from intercept.audit.chained_file import ChainedFile
from intercept.audit.hashing import ArgumentHasher
from intercept.policy.model import SEVERITIES
from intercept.store.timestamps import parse_rfc3339, rfc3339

_time_ns = time.time_ns  # looked up once: `routine_call` runs per call

_RECORD_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_json_string = json.encoder.encode_basestring  # the C escaper json.dumps uses for str

log = logging.getLogger("intercept")

EVENTS_DIR = "events"
DEFAULT_RETENTION_S = 90 * 86400
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_UNWRITTEN_BYTES = 8 * 1024 * 1024  # kept while writes fail; older records are dropped beyond
RETRY_FIRST_S = 0.25  # the relay flushes every 0.25 s, so a short fault costs one tick
RETRY_MAX_S = 30.0
ROUTINE_EVENTS = frozenset({"tool_call"})
MAX_BUFFERED_EVENTS = 512
MAX_ESCAPED_NAMES = 1024
MAX_ESCAPED_NAME_CHARS = 256  # agent-chosen names: the cache stays small in bytes, not just in entries
UNHASHABLE = "unhashable"
CHECKPOINT_INTERVAL_S = 60.0  # a signed checkpoint at most this long after records were written

# The default severity of each event type; a type not listed is `info`.
SEVERITY: dict[str, str] = {
    "tool_call": "info",
    "startup": "info",
    "shutdown": "info",
    "heartbeat": "info",
    "config_reload": "notice",
    "approval_required": "notice",
    "approval_requested": "notice",
    "approval_decided": "notice",
    "approval_reused": "info",
    "approval_consumed": "info",
    "approval_given_back": "notice",
    "approval_expired": "info",
    "approval_timed_out": "notice",
    "approval_tampered": "critical",
    "approvals_pruned": "info",
    "events_pruned": "notice",
    "events_rotated": "info",
    "events_gap": "warning",
    "chain_checkpoint": "info",
    "chain_restarted": "warning",
    "chain_checkpoint_failed": "critical",
    "webhook_sent": "info",
    "webhook_failed": "warning",
}
_SEGMENT = re.compile(r"(.*)\.([1-9][0-9]*)")  # `<instance-id>.<n>` of a rotated file's stem


def events_dir(state_dir: Path) -> Path:
    return Path(state_dir) / EVENTS_DIR


@dataclass
class _Outage:
    """What the writer knows while writes fail: since when, why, what it still holds, what it dropped."""

    since_ns: int  # wall clock of the first failure
    error: str
    retry_at_s: float  # on the writer's monotonic clock
    backoff_s: float = RETRY_FIRST_S
    unwritten: deque[str] = field(default_factory=deque)  # `_render_lines` lines, oldest first
    unwritten_bytes: int = 0
    lost: int = 0


class EventLog:
    """One writer per process: `<state-dir>/events/<instance-id>.jsonl`, then `<instance-id>.2.jsonl`
    and so on as files fill up. `shared=False` only for a file this process alone writes (the
    proxy's own instance id): it is then appended without a lock (see `audit.chained_file`)."""

    def __init__(
        self,
        state_dir: Path,
        instance_id: str,
        hasher: ArgumentHasher | None = None,
        *,
        shared: bool = True,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_unwritten_bytes: int = MAX_UNWRITTEN_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`hasher` keys the `args_hash` of routine `tool_call` records (the proxy has one; the
        CLI writes no such records). `monotonic` times the retries of failed writes and checkpoints."""
        self.instance_id = instance_id
        self.hasher = hasher
        self.max_unwritten_bytes = max_unwritten_bytes
        self._monotonic = monotonic
        self._file = ChainedFile(
            events_dir(state_dir),
            instance_id,
            self._line,
            lambda: _stamp(time.time_ns()),
            shared=shared,
            max_file_bytes=max_file_bytes,
            link=lambda items, seq, head: _link_records(items, seq, head, self.hasher),
        )
        self._buffer: list[str | _RoutineCall] = []  # open lines (`audit.chain.link_open`) and routine calls
        self._outage: _Outage | None = None
        self._escaped: dict[tuple[str, str], str] = {}
        self._context: dict[str, Any] = {}
        self._sealed_at_s = monotonic()

    @property
    def path(self) -> Path:
        """The file written to now."""
        return self._file.path

    def set_context(self, **fields: Any) -> None:
        """Constant fields added to every record written from now on, after `instance` (a value of
        None removes the field)."""
        for key, value in fields.items():
            if key in CHAIN_FIELDS or key in _OWN_FIELDS:
                raise ValueError(f"{key!r} cannot be a context field")
            if value is None:
                self._context.pop(key, None)
            else:
                self._context[key] = value
        self._escaped.clear()  # routine templates carry the context

    def emit(self, event_type: str, *, severity: str | None = None, **fields: Any) -> None:
        if CHAIN_FIELDS.intersection(fields):
            raise ValueError("seq and prev are the chain's fields")
        record = self._record(event_type, _stamp(time.time_ns()), fields, severity)
        self._buffer.append(_RECORD_JSON.encode(record)[:-1])  # open: the chain fields close it
        if event_type not in ROUTINE_EVENTS or len(self._buffer) >= MAX_BUFFERED_EVENTS:
            self.flush()

    def _record(self, event_type: str, stamp: str, fields: dict[str, Any], severity: str | None) -> dict[str, Any]:
        severity = severity or SEVERITY.get(event_type, "info")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        return {"ts": stamp, "type": event_type, "severity": severity, "instance": self.instance_id,
                **self._context, **fields}  # fmt: skip

    def _line(self, event_type: str, stamp: str, fields: dict[str, Any]) -> str:
        """One record of the writer's own (rotation, restart, checkpoint), rendered like emit's,
        without its closing brace (`audit.chain.link_open`)."""
        return _RECORD_JSON.encode(self._record(event_type, stamp, fields, None))[:-1]

    def tool_call(
        self, server: str, tool: str, result: str, arguments: dict[str, Any], rule: str = "", **more: Any
    ) -> None:
        """The `tool_call` record of one call (`tool_call_record` defines its fields), with the
        arguments as `args_hash`; `severity=` among `more` overrides the default.

        The routine one (no rule and nothing more: an allowed call) keeps only the time and the
        call here; it is rendered at flush time, for a whole buffer in one loop, which costs
        less per call than doing it call by call. Any other is rendered now.
        """
        if rule or more:
            stamp = _stamp(time.time_ns())
            extra = {"rule": rule, **more} if rule else more
            severity = extra.pop("severity", None) or SEVERITY["tool_call"]
            if severity not in SEVERITIES:
                raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
            digest = _args_hash(self.hasher, arguments)
            record = tool_call_record(
                stamp, self.instance_id, server, tool, result, digest, severity=severity, context=self._context, **extra
            )
            self._buffer.append(_RECORD_JSON.encode(record)[:-1])
            if len(self._buffer) >= MAX_BUFFERED_EVENTS:
                self.flush()
        else:
            self.routine_call(server, tool, result, arguments)

    def routine_call(self, server: str, tool: str, result: str, arguments: dict[str, Any]) -> None:
        """`tool_call` without a rule or anything more (an allowed call), for the per-call path:
        a signature without `**more` builds no dict per call."""
        middle = self._escaped.get((server, tool))
        if middle is None:
            middle = self._escape(server, tool)
        buffer = self._buffer
        buffer.append((_time_ns(), middle, result, arguments))
        if len(buffer) >= MAX_BUFFERED_EVENTS:
            self.flush()

    def _escape(self, server: str, tool: str) -> str:
        """The fixed part of a routine record between its timestamp and its result (kept for a
        bounded number of server and tool names): `tool_call_record` rendered with an empty
        time, result and hash, less what `_render` writes around it."""
        record = tool_call_record("", self.instance_id, server, tool, "", "", context=self._context)
        rendered = _RECORD_JSON.encode(record)
        if not (rendered.startswith(_ROUTINE_HEAD) and rendered.endswith(_ROUTINE_TAIL)):
            raise ValueError("tool_call_record must begin with ts and end with args_hash")
        middle = rendered[len(_ROUTINE_HEAD) : -len(_ROUTINE_TAIL)]
        if len(self._escaped) < MAX_ESCAPED_NAMES and len(tool) <= MAX_ESCAPED_NAME_CHARS:
            self._escaped[(server, tool)] = middle
        return middle

    def flush(self, *, seal: bool = False) -> None:
        """Write what is buffered; while writes fail, keep it and try again when the backoff allows.
        With `seal`, or when the last checkpoint is CHECKPOINT_INTERVAL_S old, end with a checkpoint."""
        if self._outage is not None:
            self._flush_in_outage(last_try=False)
            return
        now_s = self._monotonic()
        since_s = now_s - self._sealed_at_s
        if since_s >= CHECKPOINT_INTERVAL_S / 2:  # load the key before the checkpoint needs it
            self._file.load_key_in_background()
        seal = seal or (since_s >= CHECKPOINT_INTERVAL_S and bool(self._buffer or self._file.unsealed))
        if not self._buffer and not seal:
            return
        items, self._buffer = self._buffer, []
        written, error = self._file.append(items, seal=seal)  # rendered as they are linked (`_link_records`)
        if seal and error is None:
            self._sealed_at_s = now_s
        if error is not None:
            self._begin_outage(_render_lines(items[written:], self.hasher), error)

    def checkpoint(self) -> None:
        """Write what is buffered and seal it with a signed checkpoint now (after pruning)."""
        self.flush(seal=True)

    def close(self) -> None:
        """Write what is buffered, seal it with a checkpoint and close the file. If writes have been
        failing, this is one last try regardless of the backoff; what still cannot be written is
        reported on stderr."""
        if self._outage is None:
            self.flush(seal=True)
        else:
            self._flush_in_outage(last_try=True)
        outage, self._outage = self._outage, None
        if outage is not None:
            log.error(
                "cannot write events to %s: %s (%d events since %s were not recorded)",
                self.path,
                outage.error,
                outage.lost + len(outage.unwritten),
                _stamp(outage.since_ns),
            )
        if self._file.sign_error:
            log.error("event checkpoints are not signed: %s", self._file.sign_error)
        self._file.close()

    def _begin_outage(self, unwritten: list[str], error: OSError) -> None:
        self._outage = _Outage(
            since_ns=time.time_ns(), error=_short(error), retry_at_s=self._monotonic() + RETRY_FIRST_S
        )
        self._keep(unwritten)
        log.warning(
            "cannot write events to %s: %s (trying again; up to %d bytes of events are kept meanwhile)",
            self.path,
            self._outage.error,
            self.max_unwritten_bytes,
        )

    def _keep(self, lines: list[str]) -> None:
        """Hold rendered lines for a later try, dropping the oldest beyond the limit as lost."""
        outage = self._outage
        assert outage is not None
        for line in lines:
            outage.unwritten.append(line)
            outage.unwritten_bytes += _size(line)
        while outage.unwritten_bytes > self.max_unwritten_bytes:
            outage.unwritten_bytes -= _size(outage.unwritten.popleft())
            outage.lost += 1

    def _flush_in_outage(self, last_try: bool) -> None:
        outage = self._outage
        assert outage is not None
        if self._buffer:
            items, self._buffer = self._buffer, []
            self._keep(_render_lines(items, self.hasher))
        if not last_try and self._monotonic() < outage.retry_at_s:
            return
        now_ns = time.time_ns()
        gap = {"lost": outage.lost, "since": _stamp(outage.since_ns), "until": _stamp(now_ns), "error": outage.error}
        lines = [self._line("events_gap", _stamp(now_ns), gap), *outage.unwritten]
        written, error = self._file.append(lines, seal=True)  # a checkpoint seals the gap's record
        if error is None:
            self._outage = None
            self._sealed_at_s = self._monotonic()
            log.info(
                "writing events to %s again (%d events lost since %s)", self.path, outage.lost, _stamp(outage.since_ns)
            )
            return
        if written >= 1:  # the gap is on record: from here on it is a new one
            outage.since_ns, outage.lost = now_ns, 0
            for _ in range(written - 1):
                outage.unwritten_bytes -= _size(outage.unwritten.popleft())
        outage.backoff_s = min(outage.backoff_s * 2, RETRY_MAX_S)
        outage.retry_at_s = self._monotonic() + outage.backoff_s


_RoutineCall = tuple[int, str, str, dict[str, Any]]  # (time_ns, escaped middle, result, arguments)
_ROUTINE_HEAD = '{"ts":"'  # what `_render` writes before a routine record's time
_OWN_FIELDS = frozenset({"ts", "type", "severity", "instance"})
_ROUTINE_TAIL = '","args_hash":""}'  # after its result, less the hash


def tool_call_record(
    ts: str,
    instance: str,
    server: str,
    tool: str,
    result: str,
    args_hash: str,
    *,
    severity: str = "info",
    context: dict[str, Any] | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The one definition of a `tool_call` record's fields, in order: time, type, severity,
    instance, the writer's context fields, server, tool, result, the arguments' keyed hash, then
    `rule` and anything more (the chain's `seq` and `prev` are added when it is written)."""
    return {"ts": ts, "type": "tool_call", "severity": severity, "instance": instance, **(context or {}),
            "server": server, "tool": tool, "result": result, "args_hash": args_hash, **more}  # fmt: skip


def _args_hash(hasher: ArgumentHasher | None, arguments: dict[str, Any]) -> str:
    try:
        return hasher.arguments(arguments) if hasher is not None else UNHASHABLE
    except RecursionError:  # arguments nested nearly as deep as the parser allows
        return UNHASHABLE


def _stamp(stamp_ns: int) -> str:
    """RFC 3339 with microseconds for a `time.time_ns()` value."""
    return f"{rfc3339(stamp_ns // 1_000_000_000)[:20]}{stamp_ns // 1000 % 1_000_000:06d}Z"


def _short(error: OSError) -> str:
    """The reason of a failed write without the path, which the log line names anyway."""
    return error.strerror or str(error) or type(error).__name__


def _size(line: str) -> int:
    """The bytes an unchained line from `_render_lines` stands for: itself, its brace and newline."""
    return (len(line) if line.isascii() else len(line.encode("utf-8", "backslashreplace"))) + 2


def _render(items: list[str | _RoutineCall], hasher: ArgumentHasher | None) -> str:
    """The buffered events as JSONL text (without the last newline and the chain fields)."""
    return "\n".join(line + "}" for line in _render_lines(items, hasher))


def _render_lines(items: list[str | _RoutineCall], hasher: ArgumentHasher | None) -> list[str]:
    """The buffered events as JSON objects without their closing brace, which the chain fields
    close when they are written (`audit.chain.link_open`): what `_link_records` writes, less the
    chain fields. For the records a failed write keeps (not on the per-call path)."""
    return [
        item
        if type(item) is str
        else f'{_ROUTINE_HEAD}{_stamp(item[0])}{item[1]}{item[2]}","args_hash":"{_args_hash(hasher, item[3])}"'
        for item in items
    ]


def _link_records(
    items: list[str | _RoutineCall], seq: int, head: str, hasher: ArgumentHasher | None
) -> tuple[list[bytes], int, str]:
    """`audit.chain.link_lines` of `_render_lines(items)`, with each routine record rendered and
    linked in one step (one string built per record, not two): the allowed call's share of a flush.
    The bytes are the same (`tests/test_call_fast_path.py` compares them)."""
    out: list[bytes] = []
    append, sha256 = out.append, hashlib.sha256
    second, date = "", ""
    arguments_hash = hasher.arguments if hasher is not None else None  # `_args_hash` inlined
    for item in items:
        seq += 1
        if type(item) is str:  # a record of another type: rare in a flush
            linked = link_open(item, seq, head)
        else:
            stamp_ns, middle, result, arguments = item  # type: ignore[misc]
            # `_stamp(stamp_ns)`, reusing the date part of the record before it in the same second,
            # read off the digits of `time_ns`: while that has 19 digits (2001 to 2286) the first 10
            # are the epoch second and the next 6 the microseconds (cheaper than arithmetic and a format).
            digits = str(stamp_ns)
            if len(digits) != 19:
                stamp = _stamp(stamp_ns)
            else:
                if digits[:10] != second:
                    second, date = digits[:10], _stamp(stamp_ns)[:20]
                stamp = f"{date}{digits[10:16]}Z"
            try:
                digest = arguments_hash(arguments) if arguments_hash is not None else UNHASHABLE
            except RecursionError:
                digest = UNHASHABLE
            linked = (
                f'{_ROUTINE_HEAD}{stamp}{middle}{result}","args_hash":"{digest}","seq":{seq},"prev":"{head}"}}'
            ).encode("utf-8", "backslashreplace")
        head = sha256(linked).hexdigest()
        append(linked)
    return out, seq, head


def _event_files(directory: Path) -> list[Path]:
    """The event files in the order they were written: by instance, then `<id>.jsonl`,
    `<id>.2.jsonl`, `<id>.3.jsonl`..."""

    def order(path: Path) -> tuple[str, int]:
        segment = _SEGMENT.fullmatch(path.stem)
        return (segment[1], int(segment[2])) if segment else (path.stem, 1)

    return sorted(directory.glob("*.jsonl"), key=order)


@dataclass(frozen=True)
class PrunedFiles:
    """What `prune_old_event_files` deleted: how many files and bytes, and each file's name with the
    seq and hash of its last record (so that verifying can tell pruning from deletion)."""

    count: int
    bytes: int
    heads: tuple[dict[str, Any], ...] = field(default=(), compare=False)


def prune_old_event_files(
    state_dir: Path, now_s: float | None = None, retention_s: float = DEFAULT_RETENTION_S
) -> PrunedFiles:
    """Delete event files last modified more than `retention_s` ago (a live writer's file is newer:
    heartbeats land in it every minute) whose last record is that old too: a modification time can
    be set back by anyone who can write the state dir, and pruning is sealed as retention."""
    cutoff = (time.time() if now_s is None else now_s) - retention_s
    count = size = 0
    heads: list[dict[str, Any]] = []
    directory = events_dir(state_dir)
    if directory.is_symlink() or not directory.is_dir():  # never prune somewhere the state dir points to
        return PrunedFiles(0, 0)
    for path in directory.glob("*.jsonl"):
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                head = _last_record(path)
                if head.pop("written_s", -math.inf) >= cutoff:  # an mtime set back: its records say it is recent
                    continue
                path.unlink()
                count += 1
                size += info.st_size
                heads.append({"file": path.name, **head})
        except OSError:
            continue
    return PrunedFiles(count, size, tuple(heads))


def _last_record(path: Path) -> dict[str, Any]:
    """The seq and hash of a file's last record (`problem` instead when its tail cannot be read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        tail = read_tail(fd)
    finally:
        os.close(fd)
    if tail.problem:
        return {"problem": tail.problem}
    found = {"seq": tail.seq, "head": tail.head}
    try:
        found["written_s"] = parse_rfc3339(tail.last_ts)  # when the last record says it was written
    except ValueError:
        pass
    return found


def event_files_size(state_dir: Path) -> tuple[int, int]:
    """How many event files there are and their total size in bytes."""
    count = size = 0
    for path in events_dir(state_dir).glob("*.jsonl"):
        try:
            size += path.stat().st_size
        except OSError:  # pruned meanwhile
            continue
        count += 1
    return count, size


def read_events(state_dir: Path) -> list[dict[str, Any]]:
    """Every readable event in every file, oldest first (unparseable lines are skipped)."""
    found: list[dict[str, Any]] = []
    for path in _event_files(events_dir(state_dir)):
        found.extend(_read_file(path, 0)[0])
    found.sort(key=lambda event: str(event.get("ts", "")))
    return found


_HEAD_BYTES = 256  # how much of a file's start tells one file from another made under its name


def _read_file(path: Path, offset: int, head: bytes = b"") -> tuple[list[dict[str, Any]], int, bytes]:
    """The complete records after `offset`, the new offset and the file's first bytes. A file whose
    start is not `head` any more (pruned and made again under the same name; filesystems reuse
    inode numbers at once, and the new file may already be longer) is read from its start."""
    try:
        # Non-blocking, and regular files only: a FIFO planted under an event file's name must not hang a reader.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                return [], offset, head
            first = stream.read(_HEAD_BYTES)
            if first[: len(head)] != head:
                offset = 0
            stream.seek(offset)
            data = stream.read()
    except OSError:
        return [], offset, head
    complete = data[: data.rfind(b"\n") + 1]
    events = []
    for line in complete.splitlines():
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + len(complete), first


class EventFollower:
    """Reads what is appended to the event files of a directory: `start` notes where each file
    ends, each `poll` returns the complete records written since. A file that appears, such as the
    next one of a writer whose file filled up, is read from its start, after what is left of the
    files written before it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._positions: dict[Path, tuple[int, bytes]] = {}  # path -> (offset read up to, first bytes)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob("*.jsonl"):
            try:
                with open(path, "rb") as stream:
                    head = stream.read(_HEAD_BYTES)
                self._positions[path] = (path.stat().st_size, head)
            except OSError:  # pruned meanwhile
                continue

    def poll(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for path in _event_files(self.directory):
            events, offset, head = _read_file(path, *self._positions.get(path, (0, b"")))
            self._positions[path] = (offset, head)
            found.extend(events)
        return found


def follow_events(state_dir: Path, stop_after_s: float | None = None) -> Iterator[dict[str, Any]]:
    """New events as they are appended to any file (uses filesystem notifications)."""
    from watchfiles import watch

    follower = EventFollower(events_dir(state_dir))
    follower.start()
    deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
    for _ in watch(follower.directory, rust_timeout=500, yield_on_timeout=True, raise_interrupt=False):
        yield from follower.poll()
        if deadline is not None and time.monotonic() > deadline:
            return


def new_instance_id(server: str) -> str:
    return f"{server}-{os.getpid()}-{os.urandom(3).hex()}"
