"""Append JSONL events under `<state-dir>/events/` and read them back in time order.

Writes are buffered and flushed on a short timer, on every event that is not a routine
`tool_call`, and at shutdown, so the allowed-call hot path pays for a list append only.

A failed write never stops the proxy and never turns the log off: the writer keeps what it could
not write (up to MAX_UNWRITTEN_BYTES, dropping the oldest beyond and counting them as lost),
tries again with a doubling backoff, and on success first writes an `events_gap` record saying
how many records were lost, between when and why. A file that passes MAX_FILE_BYTES is closed and
the writer continues in `<instance-id>.<n>.jsonl`, which begins with an `events_rotated` record;
files untouched for DEFAULT_RETENTION_S are pruned.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intercept.audit.hashing import ArgumentHasher
from intercept.store.timestamps import rfc3339

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

# Never follow a symlink or block on a FIFO planted in the events dir; the result must be a regular file.
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
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
    unwritten: deque[bytes] = field(default_factory=deque)  # rendered lines, oldest first
    unwritten_bytes: int = 0
    lost: int = 0


class EventLog:
    """One writer per process: `<state-dir>/events/<instance-id>.jsonl`, then `<instance-id>.2.jsonl`
    and so on as files fill up."""

    def __init__(
        self,
        state_dir: Path,
        instance_id: str,
        hasher: ArgumentHasher | None = None,
        *,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_unwritten_bytes: int = MAX_UNWRITTEN_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`hasher` keys the `args_hash` of routine `tool_call` records (the proxy has one; the
        CLI writes no such records). `monotonic` times the retries of failed writes."""
        self.instance_id = instance_id
        self.hasher = hasher
        self.max_file_bytes = max_file_bytes
        self.max_unwritten_bytes = max_unwritten_bytes
        self._monotonic = monotonic
        self._directory = events_dir(state_dir)
        self._segment = 1
        self.path = self._directory / f"{instance_id}.jsonl"
        self._buffer: list[str | _RoutineCall] = []
        self._outage: _Outage | None = None
        self._torn = False  # the last write stopped inside a line
        self._fd: int | None = None
        self._escaped: dict[tuple[str, str], str] = {}

    def emit(self, event_type: str, **fields: Any) -> None:
        record = {"ts": _stamp(time.time_ns()), "type": event_type, "instance": self.instance_id, **fields}
        self._buffer.append(_RECORD_JSON.encode(record))
        if event_type not in ROUTINE_EVENTS or len(self._buffer) >= MAX_BUFFERED_EVENTS:
            self.flush()

    def tool_call(
        self, server: str, tool: str, result: str, arguments: dict[str, Any], rule: str = "", **more: Any
    ) -> None:
        """The `tool_call` record of one call (`tool_call_record` defines its fields), with the
        arguments as `args_hash`.

        The routine one (no rule and nothing more: an allowed call) keeps only the time and the
        call here; it is rendered at flush time, for a whole buffer in one loop, which costs
        less per call than doing it call by call. Any other is rendered now.
        """
        if rule or more:
            stamp = _stamp(time.time_ns())
            extra = {"rule": rule, **more} if rule else more
            digest = _args_hash(self.hasher, arguments)
            record = tool_call_record(stamp, self.instance_id, server, tool, result, digest, **extra)
            self._buffer.append(_RECORD_JSON.encode(record))
        else:
            middle = self._escaped.get((server, tool))
            if middle is None:
                middle = self._escape(server, tool)
            self._buffer.append((time.time_ns(), middle, result, arguments))
        if len(self._buffer) >= MAX_BUFFERED_EVENTS:
            self.flush()

    def _escape(self, server: str, tool: str) -> str:
        """The fixed part of a routine record between its timestamp and its result (kept for a
        bounded number of server and tool names): `tool_call_record` rendered with an empty
        time, result and hash, less what `_render` writes around it."""
        rendered = _RECORD_JSON.encode(tool_call_record("", self.instance_id, server, tool, "", ""))
        if not (rendered.startswith(_ROUTINE_HEAD) and rendered.endswith(_ROUTINE_TAIL)):
            raise ValueError("tool_call_record must begin with ts and end with args_hash")
        middle = rendered[len(_ROUTINE_HEAD) : -len(_ROUTINE_TAIL)]
        if len(self._escaped) < MAX_ESCAPED_NAMES and len(tool) <= MAX_ESCAPED_NAME_CHARS:
            self._escaped[(server, tool)] = middle
        return middle

    def flush(self) -> None:
        """Write what is buffered; while writes fail, keep it and try again when the backoff allows."""
        if self._outage is not None:
            self._flush_in_outage(last_try=False)
            return
        if not self._buffer:
            return
        items, self._buffer = self._buffer, []
        data = _encode(items, self.hasher)
        written, error = self._append(data)
        if error is not None:
            self._begin_outage(data, written, error)

    def close(self) -> None:
        """Write what is buffered and close the file. If writes have been failing, this is one last
        try regardless of the backoff; what still cannot be written is reported on stderr."""
        if self._outage is None:
            self.flush()
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
        self._close_file()

    def _append(self, data: bytes) -> tuple[int, OSError | None]:
        """Append `data` (whole lines) to the current file; returns how many of its bytes got there,
        and the error that stopped the rest. A line torn by an earlier failure is ended first, so
        that its fragment spoils no other record."""
        out, head, done = data, b"", 0
        try:
            fd, preamble = self._open()
            head = (b"\n" if self._torn else b"") + preamble
            out = head + data if head else data
            view = memoryview(out)
            while done < len(out):
                done += os.write(fd, view[done:])
        except OSError as exc:
            self._close_file()
            if done:
                self._torn = out[done - 1] != ord("\n")
            return max(0, done - len(head)), exc
        self._torn = False
        return len(data), None

    def _begin_outage(self, data: bytes, written: int, error: OSError) -> None:
        start = data.rfind(b"\n", 0, written) + 1  # a torn line is written again whole
        self._outage = _Outage(
            since_ns=time.time_ns(), error=_short(error), retry_at_s=self._monotonic() + RETRY_FIRST_S
        )
        self._keep(data[start:])
        log.warning(
            "cannot write events to %s: %s (trying again; up to %d bytes of events are kept meanwhile)",
            self.path,
            self._outage.error,
            self.max_unwritten_bytes,
        )

    def _keep(self, data: bytes) -> None:
        """Hold rendered lines for a later try, dropping the oldest beyond the limit as lost."""
        outage = self._outage
        assert outage is not None
        for line in data.splitlines(keepends=True):
            outage.unwritten.append(line)
            outage.unwritten_bytes += len(line)
        while outage.unwritten_bytes > self.max_unwritten_bytes:
            outage.unwritten_bytes -= len(outage.unwritten.popleft())
            outage.lost += 1

    def _flush_in_outage(self, last_try: bool) -> None:
        outage = self._outage
        assert outage is not None
        if self._buffer:
            items, self._buffer = self._buffer, []
            self._keep(_encode(items, self.hasher))
        if not last_try and self._monotonic() < outage.retry_at_s:
            return
        now_ns = time.time_ns()
        gap = _RECORD_JSON.encode(
            {
                "ts": _stamp(now_ns),
                "type": "events_gap",
                "instance": self.instance_id,
                "lost": outage.lost,
                "since": _stamp(outage.since_ns),
                "until": _stamp(now_ns),
                "error": outage.error,
            }
        )
        gap_line = (gap + "\n").encode("utf-8", "backslashreplace")
        data = gap_line + b"".join(outage.unwritten)
        written, error = self._append(data)
        if error is None:
            self._outage = None
            log.info(
                "writing events to %s again (%d events lost since %s)", self.path, outage.lost, _stamp(outage.since_ns)
            )
            return
        if written >= len(gap_line):  # the gap is on record: from here on it is a new one
            outage.since_ns, outage.lost = now_ns, 0
            for _ in range(data.count(b"\n", len(gap_line), written)):
                outage.unwritten_bytes -= len(outage.unwritten.popleft())
        outage.backoff_s = min(outage.backoff_s * 2, RETRY_MAX_S)
        outage.retry_at_s = self._monotonic() + outage.backoff_s

    def _open(self) -> tuple[int, bytes]:
        """The file to append to, and an `events_rotated` line to write first if this call created
        it in place of a full one.

        The file is opened once, and again if the path no longer leads to it (deleted by pruning,
        renamed by log rotation, state dir removed), so nothing is written where nobody reads. A
        file at MAX_FILE_BYTES is left for the next of this instance (other processes may have
        created it already: the CLI's writers share one instance id).
        """
        fd = self._fd
        if fd is not None:
            try:
                current = os.fstat(fd)
                if os.stat(self.path).st_ino == current.st_ino and current.st_size < self.max_file_bytes:
                    return fd, b""
            except FileNotFoundError:
                pass
        self._close_file()
        self._directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the state dir
        self._directory.mkdir(mode=0o700, exist_ok=True)
        full: tuple[str, int] | None = None  # the file this writer moved on from
        while True:
            try:
                fd, created = os.open(self.path, _APPEND | os.O_EXCL, 0o600), True
            except FileExistsError:
                fd, created = os.open(self.path, _APPEND, 0o600), False
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, f"{self.path.name} is not a regular file")
            size = info.st_size
            if size < self.max_file_bytes:
                break
            os.close(fd)
            full = (self.path.name, size)
            self._segment += 1
            self.path = self._directory / f"{self.instance_id}.{self._segment}.jsonl"
        self._fd = fd
        self._torn = self._torn and not created
        if not created or full is None:
            return fd, b""
        rotated = {"ts": _stamp(time.time_ns()), "type": "events_rotated", "instance": self.instance_id}
        rotated |= {"previous_file": full[0], "previous_bytes": full[1]}
        return fd, (_RECORD_JSON.encode(rotated) + "\n").encode("utf-8", "backslashreplace")

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass


_RoutineCall = tuple[int, str, str, dict[str, Any]]  # (time_ns, escaped middle, result, arguments)
_ROUTINE_HEAD = '{"ts":"'  # what `_render` writes before a routine record's time
_ROUTINE_TAIL = '","args_hash":""}'  # after its result, less the hash


def tool_call_record(
    ts: str, instance: str, server: str, tool: str, result: str, args_hash: str, **more: Any
) -> dict[str, Any]:
    """The one definition of a `tool_call` record's fields, in order: time, type, instance,
    server, tool, result, the arguments' keyed hash, then `rule` and anything more."""
    return {"ts": ts, "type": "tool_call", "instance": instance, "server": server, "tool": tool,
            "result": result, "args_hash": args_hash, **more}  # fmt: skip


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


def _encode(items: list[str | _RoutineCall], hasher: ArgumentHasher | None) -> bytes:
    return (_render(items, hasher) + "\n").encode("utf-8", "backslashreplace")


def _render(items: list[str | _RoutineCall], hasher: ArgumentHasher | None) -> str:
    """The buffered events as JSONL text (without the last newline).

    A routine record's timestamp reuses the date part of the one before it in the same second,
    read off the digits of its `time_ns`: while that has 19 digits (2001 to 2286) the first 10
    are the epoch second and the next 6 the microseconds.
    """
    lines: list[str] = []
    second, date = "", ""
    for item in items:
        if type(item) is str:
            lines.append(item)
            continue
        stamp_ns, middle, result, arguments = item  # type: ignore[misc]
        digits = str(stamp_ns)
        if len(digits) != 19:
            stamp = _stamp(stamp_ns)
        else:
            if digits[:10] != second:
                second, date = digits[:10], _stamp(stamp_ns)[:20]
            stamp = f"{date}{digits[10:16]}Z"
        lines.append(f'{_ROUTINE_HEAD}{stamp}{middle}{result}","args_hash":"{_args_hash(hasher, arguments)}"}}')
    return "\n".join(lines)


def _event_files(directory: Path) -> list[Path]:
    """The event files in the order they were written: by instance, then `<id>.jsonl`,
    `<id>.2.jsonl`, `<id>.3.jsonl`..."""

    def order(path: Path) -> tuple[str, int]:
        segment = _SEGMENT.fullmatch(path.stem)
        return (segment[1], int(segment[2])) if segment else (path.stem, 1)

    return sorted(directory.glob("*.jsonl"), key=order)


@dataclass(frozen=True)
class PrunedFiles:
    """What `prune_old_event_files` deleted."""

    count: int
    bytes: int


def prune_old_event_files(
    state_dir: Path, now_s: float | None = None, retention_s: float = DEFAULT_RETENTION_S
) -> PrunedFiles:
    """Delete event files last modified more than `retention_s` ago (a live writer's file is newer:
    heartbeats land in it every minute)."""
    cutoff = (time.time() if now_s is None else now_s) - retention_s
    count = size = 0
    directory = events_dir(state_dir)
    if directory.is_symlink() or not directory.is_dir():  # never prune somewhere the state dir points to
        return PrunedFiles(0, 0)
    for path in directory.glob("*.jsonl"):
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                path.unlink()
                count += 1
                size += info.st_size
        except OSError:
            continue
    return PrunedFiles(count, size)


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
        with open(path, "rb") as stream:
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
        except ValueError:
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
