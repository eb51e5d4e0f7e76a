"""Files written once, whole, readable by their owner only: a random secret of the state dir (and
through `write_once`, the proxy key and the archived policies). Racing processes agree on one:
each writes under a temporary name and links it into place; the loser reads the winner's."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class SecretUnavailable(Exception):
    """The secret file cannot be read or created (the message names it and why)."""


def read_or_create_secret(path: Path, size: int) -> bytes:
    """The `size`-byte secret in `path`, created on first use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = _create(path, size)
    except OSError as exc:
        raise SecretUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) != size:
        raise SecretUnavailable(f"{path} is not a {size}-byte key (delete it to start a new one)")
    return data


def write_once(path: Path, data: bytes) -> bool:
    """`data` at `path` unless something is there already: written to a 0600 file under a
    temporary name beside it, synced and linked into place, so no reader sees a part of it and
    racing writers agree on the first. True when this call put it there. Raises OSError."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _create(path: Path, size: int) -> bytes:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_once(path, secrets.token_bytes(size))
        return path.read_bytes()
    except OSError as exc:
        raise SecretUnavailable(f"cannot create {path}: {exc.strerror or exc}") from None
