"""Parse policy durations such as `90s`, `15m`, `1h30m`, `2d`."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration_s(text: object) -> float:
    """Seconds in a duration string; raises ValueError with a user-facing reason."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f'duration must be a string such as "15m" or "1h", got {text!r}')
    spec = text.strip()
    pos, total = 0, 0.0
    for match in _PART.finditer(spec):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not spec or pos != len(spec):
        raise ValueError(f'invalid duration "{text}": use a number and a unit (ms, s, m, h, d), e.g. "15m"')
    if total <= 0:
        raise ValueError(f'duration "{text}" must be greater than zero')
    return total
