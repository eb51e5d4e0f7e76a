"""Append JSONL events under `<state-dir>/events/` and read them back in time order.

Writes are buffered and flushed on a short timer, on every event that is not a routine
`tool_call`, and at shutdown, so the allowed-call hot path pays for a list append only.
An unwritable events dir is reported once on stderr and never stops the proxy.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from intercept.audit.hashing import ArgumentHasher
from intercept.store.timestamps import rfc3339

_RECORD_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_json_string = json.encoder.encode_basestring  # the C escaper json.dumps uses for str

log = logging.getLogger("intercept")

EVENTS_DIR = "events"
RETENTION_S = 7 * 86400
ROUTINE_EVENTS = frozenset({"tool_call"})
MAX_BUFFERED_EVENTS = 512
MAX_ESCAPED_NAMES = 1024
MAX_ESCAPED_NAME_CHARS = 256  # agent-chosen names: the cache stays small in bytes, not just in entries
UNHASHABLE = "unhashable"


def events_dir(state_dir: Path) -> Path:
    return Path(state_dir) / EVENTS_DIR


class EventLog:
    """One writer per process: `<state-dir>/events/<instance-id>.jsonl`."""

    def __init__(self, state_dir: Path, instance_id: str, hasher: ArgumentHasher | None = None) -> None:
        """`hasher` keys the `args_hash` of routine `tool_call` records (the proxy has one; the
        CLI writes no such records)."""
        self.instance_id = instance_id
        self.hasher = hasher
        self.path = events_dir(state_dir) / f"{instance_id}.jsonl"
        self._buffer: list[str | _RoutineCall] = []
        self._broken = False
        self._fd: int | None = None
        self._escaped: dict[tuple[str, str], str] = {}

    def emit(self, event_type: str, **fields: Any) -> None:
        record = {"ts": _stamp(time.time_ns()), "type": event_type, "instance": self.instance_id, **fields}
        self._buffer.append(_RECORD_JSON.encode(record))
        if event_type not in ROUTINE_EVENTS or len(self._buffer) >= MAX_BUFFERED_EVENTS:
            self.flush()

    def emit_tool_call(self, server: str, tool: str, result: str, arguments: dict[str, Any]) -> None:
        """The routine `tool_call` event (no rule), written for every call.

        Only the time and the call are kept here; the record (the same keys and order as `emit`
        writes, the arguments as `args_hash`) is rendered at flush time, for a whole buffer in one
        loop, which costs less per call than doing it call by call.
        """
        middle = self._escaped.get((server, tool))
        if middle is None:
            middle = self._escape(server, tool)
        self._buffer.append((time.time_ns(), middle, result, arguments))
        if len(self._buffer) >= MAX_BUFFERED_EVENTS:
            self.flush()

    def _escape(self, server: str, tool: str) -> str:
        """The fixed part of a routine record between its timestamp and its result (kept for a
        bounded number of server and tool names)."""
        middle = (
            f'","type":"tool_call","instance":{_json_string(self.instance_id)},'
            f'"server":{_json_string(server)},"tool":{_json_string(tool)},"result":"'
        )
        if len(self._escaped) < MAX_ESCAPED_NAMES and len(tool) <= MAX_ESCAPED_NAME_CHARS:
            self._escaped[(server, tool)] = middle
        return middle

    def flush(self) -> None:
        if not self._buffer:
            return
        items, self._buffer = self._buffer, []
        if self._broken:
            return
        data = (_render(items, self.hasher) + "\n").encode("utf-8", "backslashreplace")
        try:
            fd = self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            self._broken = True
            self._close_file()
            log.error("cannot write events to %s: %s (events are not recorded from now on)", self.path, exc)

    def _open(self) -> int:
        """The events file, opened once and again if the path no longer leads to it (deleted by
        pruning, renamed by log rotation, state dir removed), so nothing is written where nobody
        reads."""
        if self._fd is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    return self._fd
            except FileNotFoundError:
                pass
        self._close_file()
        self.path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the state dir
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self.flush()
        self._close_file()

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass


_RoutineCall = tuple[int, str, str, dict[str, Any]]  # (time_ns, escaped middle, result, arguments)


def _stamp(stamp_ns: int) -> str:
    """RFC 3339 with microseconds for a `time.time_ns()` value."""
    return f"{rfc3339(stamp_ns // 1_000_000_000)[:20]}{stamp_ns // 1000 % 1_000_000:06d}Z"


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
        try:
            digest = hasher.arguments(arguments) if hasher is not None else UNHASHABLE
        except RecursionError:  # arguments nested nearly as deep as the parser allows
            digest = UNHASHABLE
        lines.append(f'{{"ts":"{stamp}{middle}{result}","args_hash":"{digest}"}}')
    return "\n".join(lines)


def prune_old_event_files(state_dir: Path, now_s: float | None = None) -> int:
    """Delete event files untouched for RETENTION_S; returns how many were removed."""
    cutoff = (time.time() if now_s is None else now_s) - RETENTION_S
    removed = 0
    for path in events_dir(state_dir).glob("*.jsonl"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def read_events(state_dir: Path) -> list[dict[str, Any]]:
    """Every readable event in every file, oldest first (unparseable lines are skipped)."""
    found: list[dict[str, Any]] = []
    for path in sorted(events_dir(state_dir).glob("*.jsonl")):
        found.extend(_read_file(path, 0)[0])
    found.sort(key=lambda event: str(event.get("ts", "")))
    return found


def _read_file(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    try:
        with open(path, "rb") as stream:
            stream.seek(offset)
            data = stream.read()
    except OSError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    events = []
    for line in complete.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + len(complete)


def follow_events(state_dir: Path, stop_after_s: float | None = None) -> Iterator[dict[str, Any]]:
    """New events as they are appended to any file (uses filesystem notifications)."""
    from watchfiles import watch

    directory = events_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    offsets = {path: path.stat().st_size for path in directory.glob("*.jsonl")}
    deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
    for _ in watch(directory, rust_timeout=500, yield_on_timeout=True, raise_interrupt=False):
        for path in sorted(directory.glob("*.jsonl")):
            events, offsets[path] = _read_file(path, offsets.get(path, 0))
            yield from events
        if deadline is not None and time.monotonic() > deadline:
            return


def new_instance_id(server: str) -> str:
    return f"{server}-{os.getpid()}-{os.urandom(3).hex()}"
