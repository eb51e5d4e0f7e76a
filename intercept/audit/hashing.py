"""Keyed hashes of call arguments, with a secret key per state dir.

An unkeyed hash of `{"password": "<guess>", "user": "admin"}` gives a low-entropy secret away to
anyone who can read the events or the database and guess. Every hash of arguments (`args_hash` in
events and records, and the approval fingerprint) is therefore a BLAKE2b keyed with 32 random
bytes kept in `<state-dir>/hash.key` (0600), shared by every process using that state dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import orjson

from intercept.store.secret_file import SecretUnavailable, read_or_create_secret

log = logging.getLogger("intercept")

KEY_FILE = "hash.key"
KEY_BYTES = 32

# Built once: json.dumps with options builds a new encoder per call, which shows on the hot path.
_SORTED_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class KeyUnavailable(Exception):
    """The state dir's hash key cannot be read or created."""


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def read_or_create_key(state_dir: Path) -> bytes:
    """The state dir's key, created on first use (atomically: racing processes agree on one)."""
    try:
        return read_or_create_secret(key_path(state_dir), KEY_BYTES)
    except SecretUnavailable as exc:
        raise KeyUnavailable(str(exc)) from None


def load_key(state_dir: Path) -> bytes:
    """The state dir's key; if it cannot be had, a key for this process alone (hashes then match
    nothing another process wrote: approvals requested here can only be used here), said once."""
    try:
        return read_or_create_key(state_dir)
    except KeyUnavailable as exc:
        log.error("%s: using a key for this process only", exc)
        return secrets.token_bytes(KEY_BYTES)


class ArgumentHasher:
    """Keyed BLAKE2b digests (256 bits, hex) of call arguments and canonical call encodings."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hashlib.blake2b(key=key, digest_size=32)  # copied per hash: the key block is hashed once

    def digest(self, data: bytes) -> str:
        state = self._keyed.copy()
        state.update(data)
        return state.hexdigest()

    def arguments(self, arguments: Any) -> str:
        """The hash of the arguments as compact sorted-key UTF-8 JSON: correlates events and
        approvals without revealing values. orjson writes it; the stdlib writes what orjson cannot
        (integers beyond 64 bits), so a given value always hashes the same way."""
        try:
            encoded = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            encoded = _SORTED_JSON.encode(arguments).encode("utf-8", "surrogatepass")
        state = self._keyed.copy()
        state.update(encoded)
        return state.hexdigest()
