"""Values as a human reads them on a terminal: exact arguments with secret-looking parts marked,
and JSON that cannot change what the terminal shows.

`render_arguments` prints every value in full as indented JSON (the layout of
`json.dumps(value, indent=2, ensure_ascii=False)`) and marks, instead of removing, what `redact`
would replace: the whole value under a secret-named key, a string that is one secret-looking token,
and each secret inside longer text (tokens, `Bearer …`, `password=…`, `user:password@` in URLs,
private keys). A mark is reverse video (`ESC[7m … ESC[27m`, `REVERSE_VIDEO`) for a terminal, or
`⟦ … ⟧` (`BRACKETS`) for anything else; strings are marked inside their quotes, other values around
them.

The marks are the only control sequences in the output: C0/C1 controls, DEL and bidirectional
controls inside values are written as JSON `\\uNNNN` escapes (the text stays valid JSON once the
marks are removed), and with `BRACKETS` so are literal `⟦` and `⟧`, so no value can forge or hide
a mark. `safe_json` applies the same escaping to plain `json.dumps` output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from intercept.approvals.redact import _SECRET_IN_TEXT, _looks_secret, _secret_key
from intercept.safe_text import UNSAFE_CHARS

_encode_string = json.encoder.encode_basestring  # the escaper json.dumps uses for str


@dataclass(frozen=True, slots=True)
class Marks:
    """What goes before and after a secret-looking part."""

    open: str
    close: str


REVERSE_VIDEO = Marks("\x1b[7m", "\x1b[27m")
BRACKETS = Marks("⟦", "⟧")
_BRACKET_CHARS = re.compile("[⟦⟧]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _json_escape_in_strings(match: re.Match[str]) -> str:
    # json.dumps escapes every C0 control inside strings: a raw LF is the layout of `indent`.
    return match.group() if match.group() == "\n" else _json_escape(match)


def safe_json(value: Any, indent: int | None = None) -> str:
    """`json.dumps(value, ensure_ascii=False)` with every character that could change what a
    terminal shows (DEL, C1 controls, bidi controls; json already escapes C0) written as `\\uNNNN`.
    Outside strings JSON text is ASCII (line breaks and spaces of `indent` included), so this is
    the same JSON value."""
    return UNSAFE_CHARS.sub(_json_escape_in_strings, json.dumps(value, indent=indent, ensure_ascii=False))


def secret_spans(text: str) -> list[tuple[int, int]]:
    """Where `redact` / `redact_text` would replace parts of `text`: all of it when it is one
    secret-looking token, else each secret found inside it (start, end offsets, in order)."""
    if _looks_secret(text):
        return [(0, len(text))]
    return [match.span() for match in _SECRET_IN_TEXT.finditer(text) if match.end() > match.start()]


class _Renderer:
    def __init__(self, marks: Marks | None, indent: int) -> None:
        self.marks = marks
        self.indent = indent
        self.out: list[str] = []

    def text(self, text: str) -> str:
        """The inside of a JSON string for `text`, safe for a terminal."""
        encoded = UNSAFE_CHARS.sub(_json_escape, _encode_string(text)[1:-1])
        return _BRACKET_CHARS.sub(_json_escape, encoded) if self.marks is BRACKETS else encoded

    def string(self, text: str, whole_secret: bool) -> None:
        spans = [(0, len(text))] if whole_secret else secret_spans(text)
        if self.marks is None or not spans:
            self.out.append(f'"{self.text(text)}"')
            return
        self.out.append('"')
        done = 0
        for start, end in spans:
            self.out += [self.text(text[done:start]), self.marks.open, self.text(text[start:end]), self.marks.close]
            done = end
        self.out += [self.text(text[done:]), '"']

    def value(self, value: Any, level: int, secret: bool) -> None:
        """`secret`: `value` sits under a secret-named key, so all of it is marked."""
        if isinstance(value, str):
            self.string(value, secret)
            return
        if secret and self.marks is not None:
            self.out.append(self.marks.open)
            self.value(value, level, False)
            self.out.append(self.marks.close)
            return
        if isinstance(value, dict):
            self.container("{", "}", [(k, v) for k, v in value.items()], level, keyed=True)
        elif isinstance(value, list | tuple):
            self.container("[", "]", [(None, v) for v in value], level, keyed=False)
        else:
            self.out.append(json.dumps(value))

    def container(self, start: str, end: str, items: list[tuple[Any, Any]], level: int, keyed: bool) -> None:
        if not items:
            self.out.append(start + end)
            return
        inner = "\n" + " " * (self.indent * (level + 1))
        self.out.append(start)
        for i, (key, item) in enumerate(items):
            self.out.append(("," if i else "") + inner)
            secret = False
            if keyed:
                self.out.append(f'"{self.text(str(key))}": ')
                secret = _secret_key(str(key))
            self.value(item, level + 1, secret)
        self.out.append("\n" + " " * (self.indent * level) + end)


def render_arguments(value: Any, marks: Marks | None, indent: int = 2) -> str:
    """`value` in full as indented JSON, secret-looking parts wrapped in `marks` (None: unmarked),
    unsafe characters escaped. Raises RecursionError for nesting deeper than the stack allows."""
    renderer = _Renderer(marks, indent)
    renderer.value(value, 0, False)
    return "".join(renderer.out)
