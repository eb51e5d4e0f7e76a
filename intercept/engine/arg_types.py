"""Judge argument types against a tool's declared `inputSchema`, for the paths the rules read.

Servers built on the Python SDK coerce arguments to the declared parameter types: `"yes"`, `"on"`,
`1` become `True`; `"22.0"`, `" 22"`, `"+22"` become `22`; a JSON string holding an object becomes
that object. A rule compares the raw JSON, so it could judge one value while the server acts on
another. So before evaluating, the value at every path a condition reads (and each parent on the
way) must have the JSON type the schema declares, or the call is denied with a message that lets
the agent retry correctly.

Schemas are read as the SDKs write them: local `$ref` (`#/$defs/X`, `#/definitions/X`), unions
(`anyOf`, `oneOf`, type arrays; any member's type passes, `null` members of optional fields
included), `allOf` (every member's type must pass), `enum`/`const` (the types of their values).
`5.0` is an integer, as JSON Schema says. A parameter without a type is unknown: it is not
checked, and the engine then compares its value strictly (see `engine.operators`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from intercept.policy.model import Policy, Rule

JsonSchema = Mapping[str, Any]
TYPE_NAMES = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})
MAX_REF_HOPS = 32


def json_type(value: Any) -> str:
    """The JSON Schema type name of a decoded JSON value (`5.0` is an integer)."""
    kind = type(value)
    if kind is str:
        return "string"
    if kind is bool:
        return "boolean"
    if kind is int:
        return "integer"
    if kind is float:
        return "integer" if value.is_integer() else "number"
    if kind is dict:
        return "object"
    if kind is list:
        return "array"
    return "null"


def _resolve(schema: Any, root: JsonSchema) -> JsonSchema | None:
    """Follow local `$ref`s; None for a schema we cannot read (not an object, remote ref, loop)."""
    for _ in range(MAX_REF_HOPS):
        if not isinstance(schema, Mapping):
            return None
        ref = schema.get("$ref")
        if ref is None:
            return schema
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        target: Any = root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        schema = target
    return None


def _members(schema: JsonSchema, key: str) -> list[Any] | None:
    members = schema.get(key)
    return members if isinstance(members, list) and members else None


def declared_types(schema: Any, root: JsonSchema) -> frozenset[str] | None:
    """The JSON types `schema` admits, or None when it does not say (unknown)."""
    resolved = _resolve(schema, root)
    if resolved is None:
        return None
    found: frozenset[str] | None = None
    kind = resolved.get("type")
    if isinstance(kind, str) and kind in TYPE_NAMES:
        found = frozenset({kind})
    elif isinstance(kind, list) and kind and all(isinstance(k, str) and k in TYPE_NAMES for k in kind):
        found = frozenset(kind)
    elif "const" in resolved:
        found = frozenset({json_type(resolved["const"])})
    elif isinstance(resolved.get("enum"), list) and resolved["enum"]:
        found = frozenset(json_type(item) for item in resolved["enum"])
    for union in ("anyOf", "oneOf"):
        members = _members(resolved, union)
        if members is not None:
            parts = [declared_types(member, root) for member in members]
            if any(part is None for part in parts):
                return found
            united = frozenset().union(*parts)  # type: ignore[arg-type]
            found = united if found is None else _widened(found) & _widened(united)
    every = _members(resolved, "allOf")
    if every is not None:
        for member in every:
            part = declared_types(member, root)
            if part is not None:
                found = part if found is None else _widened(found) & _widened(part)
    return found


def _widened(types: frozenset[str]) -> frozenset[str]:
    """`number` admits integers: intersecting with it must keep `integer`."""
    return types | {"integer"} if "number" in types else types


def child_schema(schema: Any, root: JsonSchema, key: str) -> Any:
    """The schema of property `key` of an object schema, or None if it does not say."""
    resolved = _resolve(schema, root)
    if resolved is None:
        return None
    properties = resolved.get("properties")
    if isinstance(properties, Mapping) and key in properties:
        return properties[key]
    candidates = []
    for union in ("anyOf", "oneOf", "allOf"):
        for member in _members(resolved, union) or ():
            child = child_schema(member, root, key)
            if child is not None:
                candidates.append(child)
    if len(candidates) == 1:
        return candidates[0]
    additional = resolved.get("additionalProperties")
    return additional if isinstance(additional, Mapping) else None


def item_schema(schema: Any, root: JsonSchema) -> Any:
    resolved = _resolve(schema, root)
    items = resolved.get("items") if resolved is not None else None
    return items if isinstance(items, Mapping) else None


@dataclass(frozen=True, slots=True)
class TypedPath:
    """A path a condition reads (`("options", "target")`), and whether the value at its end is
    compared (an `exists` test needs only the parents' types)."""

    parts: tuple[str, ...]
    leaf_compared: bool


def typed_paths(rules: tuple[Rule, ...]) -> tuple[TypedPath, ...]:
    """The argument paths whose types matter to these rules (top-level `exists` tests need none)."""
    found: dict[tuple[str, ...], bool] = {}
    for rule in rules:
        for condition in rule.conditions:
            if not condition.path.startswith("args."):
                continue
            parts = tuple(condition.path[5:].split("."))
            compared = condition.op != "exists"
            if not compared and len(parts) == 1:
                continue
            found[parts] = found.get(parts, False) or compared
    return tuple(TypedPath(parts, compared) for parts, compared in found.items())


@dataclass(frozen=True, slots=True)
class _Step:
    """One key on a path, with what the schema declares for the value under it (resolved once)."""

    key: str
    name: str  # the dotted path so far, for messages
    declared: frozenset[str] | None  # None: the schema does not say (or the step is not compared)
    accepted: frozenset[str]  # `declared` with `integer` added where `number` is declared
    text_may_be_parsed: bool  # declared as more than a plain string: JSON text would be read as JSON
    item_types: frozenset[str] | None  # for the last step: what array items are declared as
    item_accepted: frozenset[str]
    known: bool  # the schema has a schema for this key at all


def _steps(schema: JsonSchema, path: TypedPath) -> tuple[_Step, ...]:
    steps: list[_Step] = []
    current: Any = schema
    last = len(path.parts) - 1
    for index, part in enumerate(path.parts):
        current = child_schema(current, schema, part) if current is not None else None
        compared = index < last or path.leaf_compared
        declared = declared_types(current, schema) if current is not None and compared else None
        items = item_schema(current, schema) if current is not None and index == last and compared else None
        item_types = declared_types(items, schema) if items is not None else None
        steps.append(
            _Step(
                key=part,
                name=".".join(path.parts[: index + 1]),
                declared=declared,
                accepted=_widened(declared) if declared is not None else frozenset(),
                text_may_be_parsed=declared is not None and "string" in declared and declared != {"string"},
                item_types=item_types,
                item_accepted=_widened(item_types) if item_types is not None else frozenset(),
                known=current is not None,
            )
        )
    return tuple(steps)


_KINDS = {str: "string", bool: "boolean", int: "integer", dict: "object", list: "array", type(None): "null"}


def _kind_of(value: Any) -> str:
    kind = _KINDS.get(type(value))
    return kind if kind is not None else json_type(value)


class TypeCheck:
    """The type checks of one tool's paths against its schema, prepared once per schema: each
    path becomes a tuple of resolved steps, so a call walks its values and compares sets."""

    def __init__(self, schema: JsonSchema, paths: tuple[TypedPath, ...]) -> None:
        self.schema = schema
        self.paths = paths
        self._steps = tuple(_steps(schema, path) for path in paths)
        self.fully_declared = all(
            step.declared is not None
            for path, steps in zip(paths, self._steps, strict=True)
            for step in (steps if path.leaf_compared else steps[:-1])
        )

    def judge(self, arguments: Mapping[str, Any]) -> tuple[str, bool]:
        """(why the arguments' types differ from the declared ones, or ""; whether a rule reads
        through a present value that is not an object, which only the strict plan judges)."""
        through_non_object = False
        for steps in self._steps:
            problem, through = _walk_steps(arguments, steps)
            if problem:
                return problem, through
            through_non_object = through_non_object or through
        return "", through_non_object


def _walk_steps(arguments: Mapping[str, Any], steps: tuple[_Step, ...]) -> tuple[str, bool]:
    value: Any = arguments
    for step in steps:
        if type(value) is not dict:  # e.g. a string where `object or string` is declared
            return "", value is not None  # null reads as missing; anything else needs the strict plan
        value = value.get(step.key, _ABSENT)
        if value is _ABSENT or not step.known:
            return "", False
        if step.declared is None:
            continue
        actual = _kind_of(value)
        if actual not in step.accepted:
            return _mismatch(step.name, step.declared, actual), False
        if actual == "string" and step.text_may_be_parsed:
            parsed = _json_text(value)
            if parsed is not None:
                return _json_text_problem(step.name, parsed), False
        if step.item_types is not None and actual == "array":
            for item in value:
                if _kind_of(item) not in step.item_accepted:
                    return _mismatch(f"{step.name}[]", step.item_types, _kind_of(item)), False
    return "", False


_ABSENT = object()


UNREADABLE = object()  # JSON text too deep (or with too long an integer) for this process to read


def json_text_reading(text: str) -> tuple[bool, Any]:
    """(True, the value) when `text` is JSON for an object, an array or null: the Python SDK parses
    such text for any parameter not annotated as a plain `str`, and acts on that value (it keeps
    text that parses to a string, a number or a boolean). (True, UNREADABLE) when it looks like
    such JSON but this process cannot read it (nested deeper than its recursion limit, an integer
    over its digit limit): a server's Python may read it, so the caller must not trust the text.
    (False, None) otherwise."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{n":
        return False, None
    try:
        parsed = json.loads(stripped)
    except RecursionError:
        return (True, UNREADABLE) if stripped[0] != "n" else (False, None)
    except ValueError as exc:
        if "limit" in str(exc) and "digits" in str(exc):  # int_max_str_digits: another process may allow more
            return True, UNREADABLE
        return False, None
    return (True, parsed) if parsed is None or type(parsed) in (dict, list) else (False, None)


def _json_text(text: str) -> str | None:
    """The JSON type this text would be read as (see `json_text_reading`), or None."""
    readable, parsed = json_text_reading(text)
    if not readable:
        return None
    return "unreadable JSON" if parsed is UNREADABLE else json_type(parsed)


def _json_text_problem(name: str, parsed: str) -> str:
    if parsed == "unreadable JSON":
        return (
            f'Argument "{name}" is text holding JSON too deeply nested (or with too long a number) to check, '
            f"which the server may read as a value instead of text: send the value itself, not JSON text"
        )
    return (
        f'Argument "{name}" is text holding JSON {_a(parsed) if parsed != "null" else "null"}, which the server '
        f"may read as that value instead of text: send the value itself, not JSON text"
    )


def _a(type_name: str) -> str:
    return "null" if type_name == "null" else ("an " if type_name[0] in "aeiou" else "a ") + type_name


def _mismatch(name: str, declared: frozenset[str], received: str) -> str:
    wanted = sorted(declared - {"null"}) or sorted(declared)
    optional = " (or null)" if "null" in declared and len(declared) > 1 else ""
    return (
        f'Argument "{name}" must be {" or ".join(_a(t) for t in wanted)}{optional}, as the server\'s schema '
        f"declares, but {_a(received)} was sent: send it as a JSON {wanted[0]}"
    )


def loose(policy: Policy, tool: str) -> bool:
    """The policy turned type checks off for this tool (`loose_types: true`)."""
    own = policy.tools.get(tool)
    return own is not None and own.loose_types
