"""Table tests for `LineSplitter`, the framing under the relay: a byte stream in, newline-terminated
lines out, whatever the chunk boundaries; an over-long line refused (None) as it streams, without
being buffered whole, and the stream intact after it; `pending` and `flush` at end of stream.

Each row is checked against `reference`, the plain reading of the stream (split on LF, lines over
the limit become None), fed at once, in two chunks at every split point, and byte by byte.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest

from intercept.proxy.framing import LineSplitter

Lines = list[bytes | None]


def reference(data: bytes, limit: int | None) -> tuple[Lines, bytes | None]:
    """The lines of `data` and its unterminated tail, as the splitter must give them."""
    *lines, tail = data.split(b"\n")

    def within(part: bytes) -> bytes | None:
        return None if limit is not None and len(part) > limit else part

    return [within(part) for part in lines], within(tail)


def split(chunks: list[bytes], limit: int | None) -> tuple[Lines, bool, bytes | None]:
    """Feed `chunks` to a fresh splitter: the lines, whether a partial line was pending, the flush."""
    splitter = LineSplitter(limit)
    lines: Lines = []
    for chunk in chunks:
        lines.extend(splitter.feed(chunk))
    pending = splitter.pending
    tail = splitter.flush()
    assert not splitter.pending and splitter.flush() == b""  # flushed: nothing is left
    return lines, pending, tail


def chunkings(data: bytes) -> list[list[bytes]]:
    """The stream at once, in two chunks at every split point, and byte by byte."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [[data[:cut], data[cut:]] for cut in range(len(data) + 1)]
    return ways


ROWS: list[tuple[str, bytes, int | None, Lines, bytes | None]] = [
    ("nothing", b"", None, [], b""),
    ("one line", b"abc\n", None, [b"abc"], b""),
    ("two lines and a tail", b"ab\ncd\nef", None, [b"ab", b"cd"], b"ef"),
    ("empty lines", b"\n\n\n", None, [b"", b"", b""], b""),
    ("CRLF keeps the CR", b'{"a":1}\r\n{"b":2}\r\n', None, [b'{"a":1}\r', b'{"b":2}\r'], b""),
    ("a lone CR does not end a line", b"a\rb\nc\r", None, [b"a\rb"], b"c\r"),
    ("no limit: a long line whole", b"x" * 5000 + b"\n", None, [b"x" * 5000], b""),
    ("exactly the limit", b"abcd\n", 4, [b"abcd"], b""),
    ("one over the limit", b"abcde\n", 4, [None], b""),
    ("the CR counts", b"abcd\r\n", 4, [None], b""),
    ("over-long, then intact lines", b"toolong\nok\nfine\n", 4, [None, b"ok", b"fine"], b""),
    ("intact, over-long, intact", b"ab\nxxxxxxxxxx\ncd\n", 4, [b"ab", None, b"cd"], b""),
    ("two over-long in a row", b"xxxxxx\nyyyyyy\nz\n", 4, [None, None, b"z"], b""),
    ("an over-long tail", b"ok\nxxxxxxx", 4, [b"ok"], None),
    ("a tail at the limit", b"ok\nxxxx", 4, [b"ok"], b"xxxx"),
    ("limit zero: only empty lines pass", b"\na\n\n", 0, [b"", None, b""], b""),
    ("bytes pass as they are", b"\x00\xff\n\xef\xbb\xbf{}\n", None, [b"\x00\xff", b"\xef\xbb\xbf{}"], b""),
]


@pytest.mark.parametrize(
    ("data", "limit", "lines", "tail"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_lines_are_the_same_however_the_stream_is_chunked(
    data: bytes, limit: int | None, lines: Lines, tail: bytes | None
) -> None:
    assert reference(data, limit) == (lines, tail)  # the row says what the plain reading says
    for chunks in chunkings(data):
        assert split(chunks, limit) == (lines, tail != b"", tail), chunks


def test_random_streams_and_chunkings_match_the_plain_reading() -> None:
    rng = random.Random(20240611)  # fixed: a failure names a reproducible case
    for _ in range(3000):
        data = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randint(0, 40)))
        limit = rng.choice([None, 0, 1, 3, 5, 8])
        cuts = sorted(rng.sample(range(len(data) + 1), rng.randint(0, min(len(data) + 1, 10))))
        chunks = [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        lines, tail = reference(data, limit)
        assert split(chunks, limit) == (lines, tail != b"", tail), (data, limit, chunks)


def test_pending_and_flush_follow_the_partial_line() -> None:
    splitter = LineSplitter(max_line_bytes=8)
    assert not splitter.pending and splitter.flush() == b""
    assert splitter.feed(b"ab") == [] and splitter.pending
    assert splitter.feed(b"c\nde") == [b"abc"] and splitter.pending
    assert splitter.feed(b"\n") == [b"de"] and not splitter.pending
    assert splitter.feed(b"tail") == []
    assert splitter.flush() == b"tail" and not splitter.pending
    assert splitter.feed(b"next\n") == [b"next"]  # a flushed splitter starts afresh


def test_an_over_long_line_is_pending_until_its_end_and_refused_there() -> None:
    splitter = LineSplitter(max_line_bytes=4)
    assert splitter.feed(b"xxx") == [] and splitter.pending
    assert splitter.feed(b"xxx") == [] and splitter.pending  # over the limit now: dropped as it streams
    assert splitter.feed(b"xxx") == [] and splitter.pending
    assert splitter.feed(b"x\nok\npar") == [None, b"ok"]  # refused at its LF, and the stream goes on
    assert splitter.feed(b"t\n") == [b"part"] and not splitter.pending


def test_an_over_long_line_cut_short_by_the_end_of_the_stream_flushes_as_refused() -> None:
    splitter = LineSplitter(max_line_bytes=4)
    splitter.feed(b"xxxxxxxx")
    assert splitter.flush() is None  # not its first bytes: the caller answers it with an error
    assert not splitter.pending and splitter.flush() == b""
    assert splitter.feed(b"ok\n") == [b"ok"]


def test_an_over_long_line_is_not_buffered_whole() -> None:
    limit, chunk = 1024, b"x" * 65536
    splitter = LineSplitter(max_line_bytes=limit)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(256):  # a 16 MiB line
            assert splitter.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 4 * len(chunk)  # a chunk or two, not the line
    assert splitter.feed(b"\n{}\n") == [None, b"{}"]
