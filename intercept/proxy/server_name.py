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
_USER_AT_HOST = re.compile(r"[^/@]@[^/@]*[A-Za-z][^/@]*\.[A-Za-z]")  # user@host.tld, not pkg@1.2.3
# Launcher options whose next word is a value, never the server (`docker run -e TOKEN ...`).
_OPTIONS_WITH_VALUE = frozenset(
    {
        "-e",
        "--env",
        "--env-file",
        "-v",
        "--volume",
        "--mount",
        "--name",
        "--network",
        "-p",
        "--publish",
        "-w",
        "--workdir",
        "-u",
        "--user",
        "--entrypoint",
        "--from",
        "--with",
        "-c",
        "--package",
    }
)


def derive_server_name(command: list[str]) -> str:
    """`npx -y @modelcontextprotocol/server-filesystem ~/w` -> `server-filesystem`."""
    skip_next = False
    for word in command:
        if skip_next:
            skip_next = False
            continue
        if word.startswith("-"):
            skip_next = word in _OPTIONS_WITH_VALUE
            continue
        if "=" in word or "://" in word or _USER_AT_HOST.search(word):
            continue  # an assignment, a URL or a user@host: values that may carry secrets
        base = os.path.basename(word.rstrip("/")) or word
        if base in _LAUNCHERS or re.fullmatch(r"python3(\.\d+)?", base):
            continue
        name = word.rsplit("/", 1)[-1] if word.startswith("@") else base
        name = re.sub(r"@[^@]*$", "", name) if "@" in name[1:] else name
        name = _SCRIPT_SUFFIX.sub("", name)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "upstream"
    return "upstream"
