"""Who the upstream is, for binding approvals: its `--name`, or its command line made absolute.

Two servers that derive the same readable name (`python staging/server.py` and
`python prod/server.py` are both `server`) must not share approvals, so the approval fingerprint
binds this identity, not the name. Relative paths in the command are made absolute against the
proxy's working directory (clients start servers in unpredictable directories, so the directory
itself is not part of the identity; a path that resolves elsewhere is a different server).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def absolute_command(command: list[str], cwd: Path) -> list[str]:
    """`command` with each word (or `--opt=` value) that names an existing relative path made absolute."""
    return [_absolute_word(word, cwd) for word in command]


def _absolute_word(word: str, cwd: Path) -> str:
    if word.startswith("-"):
        if "=" not in word:
            return word
        option, value = word.split("=", 1)
        return f"{option}={_absolute_path(value, cwd)}"
    return _absolute_path(word, cwd)


def _absolute_path(word: str, cwd: Path) -> str:
    if not word or os.path.isabs(word) or "://" in word:
        return word
    candidate = cwd / word
    try:
        exists = candidate.exists()
    except (OSError, ValueError):
        return word
    return os.path.normpath(candidate) if exists else word


def server_identity(command: list[str], name: str | None, cwd: Path) -> str:
    """`name:<name>` when the operator named the server, else `command:<absolute argv as JSON>`."""
    if name:
        return f"name:{name}"
    return "command:" + json.dumps(absolute_command(command, cwd), ensure_ascii=False)
