"""The state dir's hash key: created once, owner-only, shared by racing processes, refused if damaged."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from intercept.audit.hashing import KEY_BYTES, KeyUnavailable, key_path, load_key, read_or_create_key


def test_the_key_is_created_owner_only_and_then_reused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = read_or_create_key(state_dir)
    assert len(first) == KEY_BYTES
    assert stat.S_IMODE(key_path(state_dir).stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert read_or_create_key(state_dir) == first
    assert [p.name for p in state_dir.iterdir()] == ["hash.key"]  # no temporary file left behind


def _key_of(state_dir: str) -> bytes:
    return read_or_create_key(Path(state_dir))


def test_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        keys = pool.map(_key_of, [str(tmp_path / "state")] * 16)
    assert len(set(keys)) == 1
    assert keys[0] == key_path(tmp_path / "state").read_bytes()


def test_a_damaged_key_is_refused_and_the_proxy_falls_back_to_a_private_one(tmp_path: Path) -> None:
    key_path(tmp_path).write_bytes(b"short")
    with pytest.raises(KeyUnavailable, match="not a 32-byte key"):
        read_or_create_key(tmp_path)
    private = load_key(tmp_path)
    assert len(private) == KEY_BYTES and private != load_key(tmp_path)  # never shared, never written
    assert key_path(tmp_path).read_bytes() == b"short"
