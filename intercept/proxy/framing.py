"""Split a byte stream into newline-terminated lines, carrying partial lines across chunks."""

from __future__ import annotations


class LineSplitter:
    """Feed chunks, get complete lines without their LF.

    A line longer than `max_line_bytes` is dropped as it streams (memory stays bounded) and comes
    out as `None`, so the caller can answer it with an error.
    """

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self._tail = bytearray()
        self._max = max_line_bytes
        self._overflowed = False

    @property
    def pending(self) -> bool:
        """True while a partial line is buffered."""
        return bool(self._tail) or self._overflowed

    def feed(self, chunk: bytes) -> list[bytes | None]:
        if self._overflowed or (self._max is not None and len(self._tail) + len(chunk) > self._max):
            return self._feed_bounded(chunk)
        lines: list[bytes | None] = chunk.split(b"\n")  # type: ignore[assignment]
        rest = lines.pop()
        if self._tail and lines:
            self._tail += lines[0]  # type: ignore[operator]
            lines[0] = bytes(self._tail)
            self._tail.clear()
        if rest:
            self._tail += rest
        return lines

    def _feed_bounded(self, chunk: bytes) -> list[bytes | None]:
        """`feed` when a line may exceed the limit: over-long lines become None as they stream."""
        lines: list[bytes | None] = []
        start = 0
        newline = chunk.find(b"\n")
        while newline >= 0:
            if self._tail or self._overflowed:
                lines.append(self._complete(chunk[start:newline]))
            elif self._max is not None and newline - start > self._max:
                lines.append(None)
            else:
                lines.append(chunk[start:newline])
            start = newline + 1
            newline = chunk.find(b"\n", start)
        if start < len(chunk) and not self._overflowed:
            self._tail += chunk[start:] if start else chunk
            if self._max is not None and len(self._tail) > self._max:
                self._tail.clear()
                self._overflowed = True
        return lines

    def _complete(self, end: bytes) -> bytes | None:
        if self._overflowed or (self._max is not None and len(self._tail) + len(end) > self._max):
            self._overflowed = False
            self._tail.clear()
            return None
        self._tail += end
        line = bytes(self._tail)
        self._tail.clear()
        return line

    def flush(self) -> bytes | None:
        """The unterminated tail at end of stream (b"" when there is none)."""
        if self._overflowed:
            self._overflowed = False
            return None
        line = bytes(self._tail)
        self._tail.clear()
        return line
