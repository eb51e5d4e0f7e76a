"""One timestamp format for people: UTC to the second, with a relative time where it helps."""

from __future__ import annotations

import pytest

from intercept.store.timestamps import relative, rfc3339, when

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("offset_s", "expected"),
    [(0.2, "just now"), (-45, "45s ago"), (-180, "3m ago"), (3540, "in 59m"), (-7200, "2h ago"), (3 * 86400, "in 3d")],
)
def test_relative(offset_s: float, expected: str) -> None:
    assert relative(rfc3339(NOW + offset_s), NOW) == expected


def test_when_is_seconds_in_utc_with_the_relative_time() -> None:
    assert when(rfc3339(NOW - 180.75), NOW) == "2027-01-15 07:56:59Z (3m ago)"
    assert when(None, NOW) == "-"
    assert when("not a timestamp", NOW) == "not a timestamp"  # an edited event file: shown as it is
