"""A random secret kept in a 0600 file of the state dir, created once: racing processes agree on
one (it is written under a temporary name and linked into place; the loser reads the winner's)."""

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


def _create(path: Path, size: int) -> bytes:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(size))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
        return path.read_bytes()
    except OSError as exc:
        raise SecretUnavailable(f"cannot create {path}: {exc.strerror or exc}") from None
