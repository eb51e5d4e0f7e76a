"""Append records to one instance's events files, hash-chained (`audit.chain`), rotated by size and
sealed by signed checkpoints.

`shared=True` is for files several processes append to (the CLI's, the console's): every append
takes an exclusive `flock` on the file, reads its tail, links and writes the lines, then unlocks, so
the chain never forks. `shared=False` is for a file with one writer (the proxy's own
`<instance-id>.jsonl`): the chain state stays in memory and the tail is read back only when the file
is (re)opened, so a flush costs no lock and no read.

A file whose tail cannot be continued (a line cut short by a failed write, a garbled last line,
a file replaced under a single writer) gets a `chain_restarted` record saying why, never a silent
new chain. A full file is sealed with a checkpoint and the next segment starts with
`events_rotated`, linked to the last line of the full one; the full file's lock is held until the
next one is created and locked, so racing writers cannot start it twice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from intercept.audit.chain import (
    CHECKPOINT,
    RESTARTED,
    ROTATED,
    ZERO_HEAD,
    Tail,
    checkpoint_fields,
    head_of,
    link_lines,
    link_open,
)
from intercept.audit.chain import read_tail as _read_tail

# Never follow a symlink or block on a FIFO planted in the events dir; the result must be a regular file.
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_READ_APPEND = (_APPEND & ~os.O_WRONLY) | os.O_RDWR  # the tail is read through the same descriptor

# (event type, time stamp, fields) -> one rendered record without its closing brace (`link_open`)
Render = Callable[[str, str, dict[str, Any]], str]
Stamp = Callable[[], str]
# (records, seq, head) -> the records linked from there, and the seq and head after the last (`link_lines`)
Link = Callable[[list[Any], int, str], tuple[list[bytes], int, str]]


class ChainedFile:
    """`<dir>/<instance-id>.jsonl`, then `<instance-id>.2.jsonl` and so on."""

    def __init__(
        self,
        directory: Path,
        instance_id: str,
        render: Render,
        stamp: Stamp,
        *,
        shared: bool,
        max_file_bytes: int,
        link: Link = link_lines,
    ) -> None:
        """`link` turns what `append` is given into linked lines; it also gets the writer's own
        records (open lines, `Render`), which it must link as `link_lines` does."""
        self.directory = directory
        self.instance_id = instance_id
        self.shared = shared
        self.max_file_bytes = max_file_bytes
        self.unsealed = False  # this writer wrote records no checkpoint of its own covers yet
        self.sign_error = ""  # why checkpoints cannot be signed (empty while they can)
        self._render = render
        self._link = link
        self._stamp = stamp
        self._segment = 1
        self.path = directory / f"{instance_id}.jsonl"
        self._fd: int | None = None
        self._tail: Tail | None = None  # single writer: the chain state of the open file
        self._known: tuple[str, int, str] | None = None  # (file, seq, head) of this writer's last record
        self._key: Any = None
        self._key_lock = threading.Lock()
        self._key_requested = False
        self._failure_recorded = False

    def append(self, lines: list[Any], *, seal: bool = False) -> tuple[int, OSError | None]:
        """Link and append `lines` (JSON objects without their closing brace, see `link_open`, or
        whatever else this file's `link` renders; the chain fields close them); with `seal`, end
        with a checkpoint when records are unsealed. Returns how many of `lines` were written whole,
        and the error that stopped the rest (the file is closed then, and its tail read again on
        the next append)."""
        if not lines and not (seal and self.unsealed):
            return 0, None
        try:
            fd, tail, preamble = self._open_locked()
        except OSError as exc:
            self.close()
            return 0, exc
        try:
            return self._write(fd, tail, preamble, lines, seal)
        finally:
            if self.shared and self._fd is not None:
                _unlock(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass
        self._tail = None

    def _write(
        self, fd: int, tail: Tail, preamble: list[str], lines: list[Any], seal: bool
    ) -> tuple[int, OSError | None]:
        out, seq, head = self._link([*preamble, *lines] if preamble else lines, tail.seq, tail.head)
        sealed = False
        if seal and (out or tail.last_type != CHECKPOINT):
            checkpoint = self._checkpoint(seq, head)
            if checkpoint is not None:
                seq += 1
                linked = link_open(checkpoint, seq, head)
                head = head_of(linked)
                out.append(linked)
                sealed = not self.sign_error
        if not out:  # asked to seal what another writer sealed already
            self.unsealed = False
            return 0, None
        prefix = b"\n" if tail.torn else b""
        data = prefix + b"\n".join(out) + b"\n"
        done = 0
        try:
            view = memoryview(data)
            while done < len(data):
                done += os.write(fd, view[done:])
        except OSError as exc:
            whole = data.count(b"\n", len(prefix), done) if done > len(prefix) else 0
            if whole:
                self._known = (self.path.name, tail.seq + whole, head_of(out[whole - 1]))
            self.close()
            return max(0, min(len(lines), whole - len(preamble))), exc
        self._known = (self.path.name, seq, head)
        self.unsealed = not sealed and (bool(out) or self.unsealed)
        if not self.shared:
            self._tail = Tail(seq, head, last_type=CHECKPOINT if sealed else "")
        return len(lines), None

    def load_key(self) -> None:
        """Load (or make) the signing key now, importing `cryptography`; `sign_error` says why when
        it cannot be had."""
        with self._key_lock:
            if self._key is not None or self.sign_error:
                return
            import rfc8785  # noqa: F401  (checkpoints need it too: imported here, off the call path)

            from intercept.audit.proxy_key import ProxyKeyError, load_or_create

            try:
                self._key = load_or_create(self.directory.parent)
            except ProxyKeyError as exc:
                self.sign_error = str(exc)

    def load_key_in_background(self) -> None:
        """`load_key` on a thread of its own, so the first checkpoint does not stall the event loop."""
        if not self._key_requested:
            self._key_requested = True
            threading.Thread(target=self.load_key, name="intercept-proxy-key", daemon=True).start()

    def _checkpoint(self, seq: int, head: str) -> str | None:
        """A signed checkpoint sealing (seq, head) of the current file; None when the key cannot be
        had (then `sign_error` says why, and an unsigned `chain_checkpoint_failed` is written once)."""
        from intercept.audit.chain import signed_payload

        self.load_key()
        if self.sign_error:
            if self._failure_recorded:
                return None
            self._failure_recorded = True
            return self._render("chain_checkpoint_failed", self._stamp(), {"reason": self.sign_error})
        fields = checkpoint_fields(self.path.name, seq, head, self.instance_id, self._stamp())
        signature = self._key.sign(signed_payload(fields))
        stamp = fields.pop("ts")
        del fields["type"], fields["instance"]
        return self._render(CHECKPOINT, stamp, {**fields, "signature": signature})

    def _seal(self, fd: int, tail: Tail) -> Tail:
        """End a full file with a checkpoint before leaving it (raises OSError when it cannot be written)."""
        checkpoint = self._checkpoint(tail.seq, tail.head)
        if checkpoint is None:
            return tail
        linked = link_open(checkpoint, tail.seq + 1, tail.head)
        data = linked + b"\n"
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        return Tail(tail.seq + 1, head_of(linked), last_type=CHECKPOINT if not self.sign_error else "")

    def _open_locked(self) -> tuple[int, Tail, list[str]]:
        """The file to append to (locked when shared), its chain tail, and the records to write
        before the caller's: `events_rotated` for a new segment, `chain_restarted` when the tail
        cannot be continued."""
        fd = self._fd
        if fd is not None and not self._still_current(fd):
            self.close()
            fd = None
        if fd is None:
            fd = self._open_path(self.path)
        self._fd = fd
        if self.shared:
            fcntl.flock(fd, fcntl.LOCK_EX)
        full: tuple[str, int, Tail] | None = None  # the segment this writer moved on from
        while True:
            tail = self._tail if (not self.shared and self._tail is not None) else _read_tail(fd)
            size = os.fstat(fd).st_size
            if size < self.max_file_bytes:
                break
            if tail.last_type != CHECKPOINT and not tail.problem and not tail.torn:
                tail = self._seal(fd, tail)
                size = os.fstat(fd).st_size
            following = self.directory / f"{self.instance_id}.{self._segment + 1}.jsonl"
            next_fd = self._open_path(following)
            if self.shared:
                try:
                    fcntl.flock(next_fd, fcntl.LOCK_EX)  # before letting go of the full one
                except OSError:
                    os.close(next_fd)
                    raise
                _unlock(fd)
            self._fd, self._tail = next_fd, None
            os.close(fd)
            full = (self.path.name, size, tail)
            self._segment += 1
            self.path, fd = following, next_fd
        return fd, *self._continue(tail, full)

    def _continue(self, tail: Tail, full: tuple[str, int, Tail] | None) -> tuple[Tail, list[str]]:
        known, stamp = self._known, self._stamp()
        if tail.problem:
            return Tail(0, ZERO_HEAD, torn=tail.torn), [self._render(RESTARTED, stamp, {"reason": tail.problem})]
        if tail.torn:
            reason = "the last line was cut short (a write failed); it is not part of the chain"
            return tail, [self._render(RESTARTED, stamp, {"reason": reason})]
        if tail.seq == 0 and full is not None:
            name, size, previous = full
            fields = {"previous_file": name, "previous_bytes": size}
            return Tail(0, previous.head), [self._render(ROTATED, stamp, fields)]
        if not self.shared and known is not None and known[0] == self.path.name and (tail.seq, tail.head) != known[1:]:
            reason = f"{self.path.name} changed under its only writer after record {known[1]} (replaced or truncated)"
            fields = {"reason": reason, "last_seq": known[1], "last_head": known[2]}
            return tail, [self._render(RESTARTED, stamp, fields)]
        return tail, []

    def _still_current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _open_path(self, path: Path) -> int:
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the state dir
        self.directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, _READ_APPEND, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{path.name} is not a regular file")
        return fd


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
