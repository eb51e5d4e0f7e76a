"""A stable, readable server name derived from the upstream command (used when --name is absent)."""

from __future__ import annotations

import os
import re

_LAUNCHERS = frozenset(
    {
        "npx",
        "pnpx",
        "bunx",
        "uvx",
        "uv",
        "pipx",
        "node",
        "deno",
        "bun",
        "python",
        "python3",
        "docker",
        "podman",
        "run",
        "exec",
        "dlx",
    }
)
_SCRIPT_SUFFIX = re.compile(r"\.(py|js|mjs|cjs|ts)$")


def derive_server_name(command: list[str]) -> str:
    """`npx -y @modelcontextprotocol/server-filesystem ~/w` -> `server-filesystem`."""
    for word in command:
        if word.startswith("-"):
            continue
        base = os.path.basename(word.rstrip("/")) or word
        if base in _LAUNCHERS or re.fullmatch(r"python3(\.\d+)?", base):
            continue
        name = word.rsplit("/", 1)[-1] if word.startswith("@") else base
        name = re.sub(r"@[^@]*$", "", name) if "@" in name[1:] else name
        name = _SCRIPT_SUFFIX.sub("", name)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "upstream"
    return "upstream"
