"""The proxy's Ed25519 signing key, `<state-dir>/proxy.key`, which signs event-chain checkpoints.

Made on first use: written under a temporary name at mode 0600 and linked into place, so racing
processes agree on one key (the loser reads the winner's). A key file that is a symlink, not a
regular file, or readable by group or others is refused: a key others could read proves nothing.
`cryptography` is imported here only, when a key is first needed, never on the proxy's start path.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from intercept.store.secret_file import write_once

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_FILE = "proxy.key"
_PEM_MAX_BYTES = 4096


class ProxyKeyError(Exception):
    """The key file cannot be used (the message names it and says why, on one line)."""


@dataclass(frozen=True)
class ProxyKey:
    """A loaded signing key."""

    private: Ed25519PrivateKey
    path: Path

    def sign(self, payload: bytes) -> str:
        """The signature of `payload`, `ed25519:<base64>`."""
        from intercept.signatures import sign

        return sign(self.private, payload)

    def public_line(self) -> str:
        """`ed25519:` and the base64 of the 32 raw public-key bytes."""
        from intercept.signatures import public_line

        return public_line(self.private.public_key())

    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


def load_or_create(state_dir: Path) -> ProxyKey:
    """The state dir's signing key, created when there is none. Raises ProxyKeyError."""
    path = Path(state_dir) / KEY_FILE
    try:
        data = _read(path)
    except FileNotFoundError:
        data = _create(path)
    return ProxyKey(_parse_private(data, path), path)


def load_existing(state_dir: Path) -> ProxyKey | None:
    """The state dir's signing key, or None when there is none (never creates one)."""
    path = Path(state_dir) / KEY_FILE
    try:
        return ProxyKey(_parse_private(_read(path), path), path)
    except FileNotFoundError:
        return None


def parse_public_line(text: str) -> Ed25519PublicKey:
    """The proxy's public key from its `ed25519:<base64>` line. Raises ValueError with one line."""
    from intercept.signatures import parse_public_line as parse

    return parse(text, "the proxy's public key")


def verify(public: Ed25519PublicKey, payload: bytes, signature: str) -> bool:
    """Whether `signature` (`ed25519:<base64>`) is `public`'s signature of `payload`."""
    from intercept.signatures import verify as check

    return check(public, payload, signature)


def _read(path: Path) -> bytes:
    """The key file's bytes; FileNotFoundError when there is none."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ProxyKeyError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ProxyKeyError(f"{path} is a symlink; refusing it (the key must be a file of the state dir)")
    if not stat.S_ISREG(info.st_mode):
        raise ProxyKeyError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise ProxyKeyError(
            f"{path} is readable by group or others; run chmod 600 on it, or delete it to make a new key"
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            return os.read(fd, _PEM_MAX_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ProxyKeyError(f"cannot read {path}: {exc.strerror or exc}") from None


def _create(path: Path) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_once(path, pem)  # another process that made one first wins: theirs is read below
    except OSError as exc:
        raise ProxyKeyError(f"cannot create {path}: {exc.strerror or exc}") from None
    return _read(path)


def _parse_private(data: bytes, path: Path) -> Ed25519PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ProxyKeyError(f"{path} is not a PEM private key (delete it to make a new one)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProxyKeyError(f"{path} is not an Ed25519 key")
    return key
