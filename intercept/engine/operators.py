"""The 11 condition operators with Intercept's semantics.

Numbers compare numerically only when both sides are numbers (a string is never coerced; a
boolean is not a number). `eq` falls back to comparing Go's `%v` renderings, as Intercept does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from intercept.policy.model import Condition


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    """float(value), with an integer beyond float's range as +-inf (how Go's float64 reads it)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _go_float(value: float) -> str:
    """Go's %v of a float64: shortest digits, exponent form when exp < -4 or exp >= 6 (shortest %g)."""
    if value != value or value in (float("inf"), float("-inf")):
        return {True: "+Inf", False: "-Inf"}[value > 0] if value == value else "NaN"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    text = "".join(map(str, digits))
    exp10 = len(text) + int(exponent) - 1
    prefix = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if exp10 >= len(text) - 1:
        return prefix + text + "0" * (exp10 - len(text) + 1)
    if exp10 >= 0:
        return prefix + text[: exp10 + 1] + "." + text[exp10 + 1 :]
    return prefix + "0." + "0" * (-exp10 - 1) + text


def go_string(value: Any, from_json: bool = True) -> str:
    """Render a value as Go's fmt %v would.

    Go decodes every JSON number (call arguments) as float64, but keeps a YAML integer (policy
    values) as an int: `1000000` renders as `1e+06` from JSON and `1000000` from YAML.
    """
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if _is_number(value):
        return _go_float(_float(value)) if from_json or isinstance(value, float) else str(value)
    if isinstance(value, list):
        return "[" + " ".join(go_string(item, from_json) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted((str(k), go_string(v, from_json)) for k, v in value.items())
        return "map[" + " ".join(f"{k}:{v}" for k, v in items) + "]"
    return str(value)


def equals(actual: Any, expected: Any) -> bool:
    """`actual` comes from the call (JSON), `expected` from the policy (YAML)."""
    if _is_number(actual) and _is_number(expected):
        try:
            return float(actual) == float(expected)
        except OverflowError:  # an integer beyond float's range: compared exactly
            return actual == expected
    if isinstance(actual, str) and isinstance(expected, str):
        return actual == expected
    return go_string(actual) == go_string(expected, from_json=False)


def _in(actual: Any, expected: Any) -> bool:
    return isinstance(expected, list) and any(equals(actual, item) for item in expected)


def _numeric(compare: Callable[[float, float], bool]) -> Callable[[Any, Any], bool]:
    def check(actual: Any, expected: Any) -> bool:
        if not (_is_number(actual) and _is_number(expected)):
            return False
        try:
            return compare(float(actual), float(expected))
        except OverflowError:  # an integer beyond float's range: compared exactly
            return compare(actual, expected)

    return check


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if isinstance(actual, list):
        return any(equals(item, expected) for item in actual)
    return False


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": equals,
    "neq": lambda a, e: not equals(a, e),
    "in": _in,
    "not_in": lambda a, e: not _in(a, e),
    "lt": _numeric(lambda a, e: a < e),
    "lte": _numeric(lambda a, e: a <= e),
    "gt": _numeric(lambda a, e: a > e),
    "gte": _numeric(lambda a, e: a >= e),
    "contains": _contains,
}


def comparable(op: str, actual: Any) -> bool:
    """Whether `actual` is of a type the operator can judge (`gt` needs a number, `regex` a string)."""
    if op in ("lt", "lte", "gt", "gte"):
        return _is_number(actual)
    if op == "regex":
        return isinstance(actual, str)
    if op == "contains":
        return isinstance(actual, (str, list))
    return True


def _kind(value: Any) -> str:
    """A value's JSON kind for strict comparison: numbers are one kind, booleans another."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def kinds_differ(op: str, actual: Any, expected: Any) -> bool:
    """Whether the condition would compare values of different JSON kinds (`"true"` against
    `true`, `"22"` against `[22, 3389]`, a number where `contains` reads text). Used when the
    server's schema does not declare the argument's type: such a comparison is not trusted."""
    if op == "exists":
        return False
    if op in ("lt", "lte", "gt", "gte"):
        return not _is_number(actual)
    if op == "regex":
        return not isinstance(actual, str)
    if op == "contains":
        if isinstance(actual, str):
            return not isinstance(expected, str)
        if isinstance(actual, list):
            return any(_kind(item) != _kind(expected) for item in actual)
        return True
    if op in ("in", "not_in"):  # every item must be of the value's kind: a mixed list is not trusted
        return isinstance(expected, list) and any(_kind(item) != _kind(actual) for item in expected)
    return _kind(actual) != _kind(expected)


def condition_selects(condition: Condition, found: bool, actual: Any) -> bool:
    """For require_approval: the condition holds, or the value is present but of a type it cannot
    judge. `{"amount": "60000"}` must not skip a `gt 50000` approval because it was sent as text
    (many servers convert it to a number)."""
    if found and condition.op != "exists" and not comparable(condition.op, actual):
        return True
    return condition_holds(condition, found, actual)


def condition_holds(condition: Condition, found: bool, actual: Any) -> bool:
    """Apply `condition` to the value at its path; a missing value fails every operator but exists."""
    if condition.op == "exists":
        return (found and actual is not None) == condition.value
    if not found:
        return False
    if condition.op == "regex":
        return (
            isinstance(actual, str) and condition.matcher is not None and condition.matcher.search(actual) is not None
        )
    operator = _OPERATORS.get(condition.op)
    return operator is not None and operator(actual, condition.value)
