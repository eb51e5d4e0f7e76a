"""Characters that can change what a terminal or a page shows: their detection and escaping.

A tool name or an argument is chosen by the agent. Control characters (ESC sequences, CR, LF,
backspace), C1 controls and Unicode bidirectional overrides could redraw an approver's screen or
reorder what they read (`ls -la /tmp` shown for a pending `curl … | sh`). The proxy refuses tool
names containing any of them; every human-facing output escapes them as visible `\\xNN` /
`\\uNNNN` text.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, and the bidirectional marks, embeddings, overrides and isolates.
UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def has_unsafe_chars(text: str) -> bool:
    return UNSAFE_CHARS.search(text) is not None


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_unsafe(text: str, keep_newlines: bool = False) -> str:
    """`text` with every unsafe character written as visible escape text (`\\x1b`, `\\u202e`);
    with `keep_newlines`, LF stays a line break (multi-line values shown in full)."""
    if keep_newlines:
        return "\n".join(UNSAFE_CHARS.sub(_escape, line) for line in text.split("\n"))
    return UNSAFE_CHARS.sub(_escape, text)
