"""Ed25519 signatures, the one way intercept writes and reads them: public keys as
`ed25519:<base64 of the 32 raw bytes>` (an approver's line in the policy, the proxy key's line
for `audit verify --public-key`), signatures as `ed25519:<base64 of the 64 bytes>`, base64 in its
one canonical spelling, and RFC 8785 canonical JSON for what is signed. `cryptography` is
imported by this module: import it only where a signature is made or checked.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_PREFIX = "ed25519:"
SIGNATURE_PREFIX = PUBLIC_PREFIX
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class KeyFormatError(ValueError):
    """A public key line that is not `ed25519:<base64 of 32 bytes>` (the message is one line)."""


def public_line(public_key: Ed25519PublicKey) -> str:
    """`ed25519:` + standard base64 of the 32 raw public bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_PREFIX + base64.b64encode(raw).decode("ascii")


def strict_b64decode(text: str) -> bytes | None:
    """The bytes of canonical standard base64 (padded, no other characters, no stray bits), or None:
    one value has exactly one spelling."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def parse_public_line(text: str, what: str = "a public key") -> Ed25519PublicKey:
    """The public key of an `ed25519:<base64>` line (surrounding whitespace ignored); raises
    KeyFormatError naming `what` ("an approver key", "the proxy's public key")."""
    if not isinstance(text, str):
        raise KeyFormatError(f"{what} must be a string 'ed25519:<base64>', not {type(text).__name__}")
    line = text.strip()
    if not line.startswith(PUBLIC_PREFIX):
        raise KeyFormatError(f"{what} must start with 'ed25519:'")
    raw = strict_b64decode(line[len(PUBLIC_PREFIX) :])
    if raw is None:
        raise KeyFormatError(f"{what}'s 'ed25519:' must be followed by standard base64 (A-Z a-z 0-9 + / =)")
    if len(raw) != PUBLIC_KEY_BYTES:
        raise KeyFormatError(f"{what} must be {PUBLIC_KEY_BYTES} bytes, this one is {len(raw)}")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFormatError(f"{what}'s bytes are not an Ed25519 public key") from None


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The RFC 8785 (JCS) canonical JSON of `fields`: the bytes a signature covers. Raises
    ValueError (rfc8785.CanonicalizationError) for what it cannot say: NaN, infinities, integers
    beyond 2^53, keys that are not strings, types JSON does not have."""
    return rfc8785.dumps(dict(fields))


def sign(private_key: Ed25519PrivateKey, payload: bytes) -> str:
    """`ed25519:` + standard base64 of the 64-byte signature of `payload`."""
    return SIGNATURE_PREFIX + base64.b64encode(private_key.sign(payload)).decode("ascii")


def verify(public_key: Ed25519PublicKey, payload: bytes, signature: str) -> bool:
    """Whether `signature` (as `sign` writes it) is `public_key`'s over `payload`; False for any
    malformed signature, never raises for bad input."""
    if not isinstance(signature, str) or not signature.startswith(SIGNATURE_PREFIX):
        return False
    raw = strict_b64decode(signature[len(SIGNATURE_PREFIX) :])
    if raw is None or len(raw) != SIGNATURE_BYTES or not isinstance(payload, bytes | bytearray):
        return False
    try:
        public_key.verify(raw, bytes(payload))
    except InvalidSignature:
        return False
    return True
