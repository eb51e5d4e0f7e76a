"""Fixtures for every test (tests/e2e/conftest.py adds the end-to-end ones): policy files in tmp dirs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[[str], Path]:
    """Writes a policy text to tmp_path/NAME (policy.yaml by default); returns its path."""

    def write(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
