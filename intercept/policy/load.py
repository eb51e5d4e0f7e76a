"""Load a policy file and validate it, collecting every error with its location.

Besides errors, validation notes settings that weaken a check on purpose (`loose_types`); they are
`policy_notices` of a valid policy and `PolicyError.notices` of an invalid one.

Validation is hand-written rather than a pydantic schema so that messages keep the wording of
Intercept's validation table (`tools.x.rules[0].conditions[1].op: unknown operator "lte_"`), every
error is reported at once, and the proxy starts without importing pydantic.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from intercept.policy.durations import parse_duration_s
from intercept.policy.model import (
    GLOBAL_SCOPE,
    WILDCARD,
    ApprovalSettings,
    Condition,
    CounterSpec,
    Policy,
    Rule,
    ToolPolicy,
)
from intercept.policy.strict_yaml import load_yaml

OPERATORS = frozenset({"eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists"})
LIST_OPERATORS = frozenset({"in", "not_in"})
NUMERIC_OPERATORS = frozenset({"lt", "lte", "gt", "gte"})
ACTIONS = ("evaluate", "deny", "require_approval")
WINDOWS = ("minute", "hour", "day")

_TOP_KEYS = ("version", "description", "default", "hide", "tools", "approvals")
_TOOL_KEYS = ("rules", "loose_types")
_RULE_KEYS = ("name", "action", "conditions", "on_deny", "state", "rate_limit", "approval_timeout")
_CONDITION_KEYS = ("path", "op", "value")
_STATE_KEYS = ("counter", "window", "increment", "increment_from")
_APPROVALS_KEYS = ("timeout", "dedupe_window")
_NO_RULES_HINT = 'write "rules: []" to allow the tool with no checks'


class PolicyError(Exception):
    """A policy file that cannot be used: unreadable, not YAML, or invalid (all errors listed).

    `notices` are what `policy_notices` would report for the file's valid parts (`loose_types`).
    """

    def __init__(self, source: str, errors: list[str], notices: list[str] | None = None) -> None:
        self.source = source
        self.errors = errors
        self.notices = notices or []
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{source}: {errors[0]}{more}")


class PolicyFileError(PolicyError):
    """The policy file itself cannot be read (missing, a directory, unreadable, empty)."""


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises PolicyError."""
    return read_policy(path)[0]


def read_policy(path: str | Path) -> tuple[Policy, str]:
    """The policy and the SHA-256 of the very bytes it was read from (what a reload watcher must
    compare against, so an edit made right after this read is not mistaken for the loaded one)."""
    source = str(path)
    absolute = Path(path).absolute()
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:  # MCP clients start servers in unpredictable directories: say which
        raise PolicyFileError(source, [f"policy file not found: {absolute} (working directory: {Path.cwd()})"]) from None
    except IsADirectoryError:
        raise PolicyFileError(source, [f"{absolute} is a directory, not a policy file"]) from None
    except PermissionError:
        raise PolicyFileError(source, [f"cannot read policy file {absolute}: permission denied"]) from None
    except UnicodeDecodeError:
        raise PolicyFileError(source, ["policy file is not valid UTF-8"]) from None
    except OSError as exc:
        raise PolicyFileError(source, [f"cannot read policy file {absolute}: {exc.strerror or exc}"]) from None
    if not text.strip():
        raise PolicyFileError(source, ["policy file is empty (it needs at least version: \"1\")"])
    return parse_policy(text, source), hashlib.sha256(data).hexdigest()


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy YAML text; raises PolicyError listing every problem."""
    try:
        document = load_yaml(text)
    except yaml.YAMLError as exc:
        raise PolicyError(source, [_yaml_error_line(exc)]) from None
    builder = _PolicyBuilder()
    policy = builder.build(document)
    if builder.errors:
        raise PolicyError(source, builder.errors, builder.notices)
    assert policy is not None
    return policy


def _yaml_error_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {problem}"


def _q(value: Any) -> str:
    """Quote like Go's %q for the values that appear in messages."""
    if value is None:
        return '""'
    return json.dumps(value if isinstance(value, str) else str(value), ensure_ascii=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_text(value: Any) -> str | None:
    """A YAML scalar as the string Go's decoder would give a string field; None if not a scalar."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if _is_number(value):
        return str(value)
    return None


def _raw_counter(raw: dict[Any, Any]) -> str | None:
    """The counter a raw rule defines: its `state.counter`, or `_rate_<window>` for rate_limit."""
    rate_limit = raw.get("rate_limit")
    if rate_limit is not None:
        window = str(rate_limit).partition("/")[2]
        return f"_rate_{window}" if window in WINDOWS and raw.get("state") is None else None
    state = raw.get("state")
    counter = _as_text(state.get("counter")) if isinstance(state, dict) else None
    return counter or None


def loose_types_notice(tool: str) -> str:
    """The line `intercept validate` prints for a tool with `loose_types: true`."""
    return f"notice: tools.{tool}.loose_types: argument types of {tool} are not checked against the server's schema"


def policy_notices(policy: Policy) -> list[str]:
    """Notices about a valid policy (not errors): one per tool with `loose_types: true`, in file order."""
    return [loose_types_notice(tool) for tool, tool_policy in policy.tools.items() if tool_policy.loose_types]


def _digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class _PolicyBuilder:
    """Walks the YAML document once, appending located errors and building the model."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.notices: list[str] = []

    def error(self, location: str, message: str) -> None:
        self.errors.append(f"{location}: {message}" if location else message)

    def unknown_keys(self, location: str, mapping: dict[Any, Any], allowed: tuple[str, ...]) -> None:
        for key in mapping:
            if key not in allowed:
                hint = ", ".join(allowed)
                self.error(location, f"unknown key {_q(key)} (expected one of: {hint})")

    def mapping(self, location: str, value: Any, what: str) -> dict[Any, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(location, f"{what} must be a mapping")
            return None
        return value

    def listing(self, location: str, value: Any, what: str) -> list[Any] | None:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(location, f"{what} must be a list")
            return None
        return value

    # -- top level -------------------------------------------------------------------------

    def build(self, document: Any) -> Policy | None:
        if document is None:
            document = {}
        if not isinstance(document, dict):
            self.error("", "policy must be a YAML mapping with version and tools")
            return None
        self.unknown_keys("", document, _TOP_KEYS)

        version = _as_text(document.get("version"))
        if version != "1":
            self.error(
                "", f'version must be "1", got {_q(version if version is not None else document.get("version"))}'
            )

        description = _as_text(document.get("description"))
        if description is None:
            self.error("description", "must be a string")

        default = document.get("default")
        default = "allow" if default is None else default
        if default not in ("allow", "deny"):
            self.error("", f'default must be "allow" or "deny", got {_q(default)}')

        for key, empty in (("hide", "[]"), ("tools", "{}")):  # a file cut short right after `tools:`
            if key in document and document[key] is None:
                self.error(key, f'{key} must not be null (write "{key}: {empty}" for none)')
        hide = self.build_hide(document.get("hide"))
        tools = self.build_tools(document.get("tools"))
        approvals = self.build_approvals(document.get("approvals"))
        if self.errors:
            return None
        return Policy(
            version="1",
            description=description or "",
            default=default,
            hide=frozenset(hide),
            tools=MappingProxyType(tools),
            approvals=approvals,
            digest=_digest(document),
            counted_tools=frozenset(name for name, tool in tools.items() if any(r.state for r in tool.rules)),
        )

    def build_hide(self, raw: Any) -> list[str]:
        entries = self.listing("hide", raw, "hide")
        names: list[str] = []
        for i, entry in enumerate(entries or []):
            name = _as_text(entry)
            if name is None:
                self.error(f"hide[{i}]", "entry must be a tool name")
            elif not name.strip():
                self.error(f"hide[{i}]", "entry must not be empty")
            elif name in names:
                self.error("hide", f"duplicate entry {_q(name)}")
            else:
                names.append(name)
        return names

    def build_approvals(self, raw: Any) -> ApprovalSettings:
        settings = self.mapping("approvals", raw, "approvals")
        if not settings:
            return ApprovalSettings()
        self.unknown_keys("approvals", settings, _APPROVALS_KEYS)
        timeout = self.duration("approvals.timeout", settings.get("timeout"))
        dedupe = self.duration("approvals.dedupe_window", settings.get("dedupe_window"))
        if timeout is None:
            return ApprovalSettings(dedupe_window_s=dedupe)
        return ApprovalSettings(timeout_s=timeout, dedupe_window_s=dedupe)

    def duration(self, location: str, raw: Any) -> float | None:
        if raw is None:
            return None
        try:
            return parse_duration_s(raw)
        except ValueError as exc:
            self.error(location, str(exc))
            return None

    # -- tools and rules -------------------------------------------------------------------

    def build_tools(self, raw: Any) -> dict[str, ToolPolicy]:
        tools_raw = self.mapping("tools", raw, "tools")
        if not tools_raw:
            return {}
        parsed: dict[str, list[tuple[int, dict[Any, Any], Rule | None]]] = {}
        loose: set[str] = set()
        for key, body in tools_raw.items():
            tool = _as_text(key)
            location = f"tools.{tool}"
            if not tool:
                self.error("tools", f"tool name must be a non-empty string, got {_q(key)}")
                continue
            if body is None:  # `transfer:` with nothing after it, e.g. a file still being written
                self.error(location, f"a tool entry must be a mapping, not null ({_NO_RULES_HINT})")
                continue
            body_map = self.mapping(location, body, "a tool entry")
            if body_map is None:
                continue
            self.unknown_keys(location, body_map, _TOOL_KEYS)
            if self.loose_types(location, tool, body_map):
                loose.add(tool)
            if "rules" in body_map and body_map["rules"] is None:
                self.error(f"{location}.rules", f"rules must be a list, not null ({_NO_RULES_HINT})")
            rules_raw = self.listing(f"{location}.rules", body_map.get("rules"), "rules")
            entries = []
            for i, rule_raw in enumerate(rules_raw or []):
                rule_location = f"{location}.rules[{i}]"
                if not isinstance(rule_raw, dict):
                    self.error(rule_location, "a rule must be a mapping")
                    continue
                entries.append((i, rule_raw, self.build_rule(rule_location, tool, rule_raw)))
            parsed[tool] = entries
        self.check_counters(parsed)
        return {
            tool: ToolPolicy(rules=tuple(rule for _, _, rule in entries if rule is not None), loose_types=tool in loose)
            for tool, entries in parsed.items()
        }

    def loose_types(self, location: str, tool: str, body: dict[Any, Any]) -> bool:
        """A tool's `loose_types` flag (absent = false); noted for `intercept validate` when true."""
        if "loose_types" not in body:
            return False
        value = body["loose_types"]
        if tool == WILDCARD:
            self.error(f"{location}.loose_types", 'loose_types applies per tool; set it on each tool key, not on "*"')
            return False
        if not isinstance(value, bool):
            self.error(
                f"{location}.loose_types", f"must be true or false, got {'null' if value is None else _q(value)}"
            )
            return False
        if value:
            self.notices.append(loose_types_notice(tool))
        return value

    def check_counters(self, parsed: dict[str, list[tuple[int, dict[Any, Any], Rule | None]]]) -> None:
        """Counter checks read the raw rules, so one invalid rule does not cascade into others."""
        defined: dict[str, set[str]] = {}
        for tool, entries in parsed.items():
            scope = GLOBAL_SCOPE if tool == WILDCARD else tool
            seen: dict[str, int] = {}
            for i, raw, _ in entries:
                counter = _raw_counter(raw)
                if counter is None:
                    continue
                if counter in seen:
                    self.error(
                        f"tools.{tool}.rules[{i}]",
                        f"duplicate state counter {_q(counter)} (also used by rules[{seen[counter]}])",
                    )
                else:
                    seen[counter] = i
            defined.setdefault(scope, set()).update(seen)
        for tool, entries in parsed.items():
            for i, raw, _ in entries:
                conditions = raw.get("conditions") if raw.get("rate_limit") is None else None
                for condition in conditions if isinstance(conditions, list) else ():
                    path = condition.get("path") if isinstance(condition, dict) else None
                    parts = path.split(".", 2) if isinstance(path, str) else []
                    if len(parts) < 3 or parts[0] != "state":
                        continue
                    if parts[2] not in defined.get(parts[1], set()):
                        self.error(
                            f"tools.{tool}.rules[{i}]",
                            f"condition references state.{parts[1]}.{parts[2]} but no matching state block found",
                        )

    def build_rule(self, location: str, tool: str, raw: dict[Any, Any]) -> Rule | None:
        errors_before = len(self.errors)
        self.unknown_keys(location, raw, _RULE_KEYS)

        name = _as_text(raw.get("name"))
        if not name:
            self.error(location, "rule must have a name")
        action = raw.get("action")
        action = "evaluate" if action is None else action
        if action not in ACTIONS:
            self.error(location, f'action must be "evaluate", "deny" or "require_approval", got {_q(action)}')
        on_deny = _as_text(raw.get("on_deny"))
        if on_deny is None:
            self.error(f"{location}.on_deny", "must be a string")

        rate_limit_raw = raw.get("rate_limit")
        conditions_raw = raw.get("conditions")
        state_raw = raw.get("state")
        conditions: list[Condition] = []
        state: CounterSpec | None = None
        rate_limit: str | None = None

        if rate_limit_raw is not None:
            rate_limit = _as_text(rate_limit_raw) or ""
            parsed_limit = self.rate_limit(location, rate_limit)
            if conditions_raw is not None or state_raw is not None:
                self.error(
                    location,
                    "rate_limit cannot be combined with conditions or state; use separate rules or the full syntax instead",
                )
            if action in ("deny", "require_approval"):
                self.error(location, f"rate_limit cannot be used with action {_q(action)}")
            if parsed_limit is not None:
                count, window = parsed_limit
                scope = GLOBAL_SCOPE if tool == WILDCARD else tool
                counter = f"_rate_{window}"
                conditions = [Condition(f"state.{scope}.{counter}", "lte", count)]
                state = CounterSpec(counter=counter, window=window)
                if not on_deny:
                    on_deny = f"Rate limit of {count} per {window} reached. Try again later."
        else:
            conditions_list = self.listing(f"{location}.conditions", conditions_raw, "conditions")
            for j, condition_raw in enumerate(conditions_list or []):
                condition = self.build_condition(f"{location}.conditions[{j}]", condition_raw)
                if condition is not None:
                    conditions.append(condition)
            if state_raw is not None:
                state = self.build_state(f"{location}.state", state_raw)
            if action == "deny" and conditions_list:
                self.error(location, "deny rules must not have conditions")
            if action == "evaluate" and not conditions_list:
                self.error(location, "evaluate rules must have at least one condition")
            if action == "require_approval" and state_raw is not None:
                self.error(location, "require_approval rules must not have a state block")

        approval_timeout_s = None
        if raw.get("approval_timeout") is not None:
            if action != "require_approval":
                self.error(location, 'approval_timeout is only valid with action "require_approval"')
            approval_timeout_s = self.duration(f"{location}.approval_timeout", raw.get("approval_timeout"))

        if len(self.errors) != errors_before:
            return None
        definition = {
            "tool": tool,
            "name": name,
            "action": action,
            "conditions": [[c.path, c.op, c.value] for c in conditions],
            "on_deny": on_deny,
            "state": None if state is None else [state.counter, state.window, state.increment, state.increment_from],
            "approval_timeout_s": approval_timeout_s,
        }
        return Rule(
            name=name or "",
            action=action,
            conditions=tuple(conditions),
            on_deny=on_deny or None,
            state=state,
            rate_limit=rate_limit,
            approval_timeout_s=approval_timeout_s,
            digest=_digest(definition),
        )

    def rate_limit(self, location: str, text: str) -> tuple[int, str] | None:
        count_text, slash, window = text.partition("/")
        if not slash:
            self.error(location, f'rate_limit must be in the format "N/window" (e.g. "5/hour"), got {_q(text)}')
            return None
        ok = True
        if not (count_text.isascii() and count_text.isdigit() and int(count_text) > 0):
            self.error(location, f"rate_limit count must be a positive integer, got {_q(count_text)}")
            ok = False
        if window not in WINDOWS:
            self.error(location, f'rate_limit window must be "minute", "hour", or "day", got {_q(window)}')
            ok = False
        return (int(count_text), window) if ok else None

    def build_condition(self, location: str, raw: Any) -> Condition | None:
        if not isinstance(raw, dict):
            self.error(location, "a condition must be a mapping with path, op and value")
            return None
        errors_before = len(self.errors)
        self.unknown_keys(location, raw, _CONDITION_KEYS)
        path = _as_text(raw.get("path"))
        if path is None or not (path.startswith("args.") or path.startswith("state.")):
            self.error(
                location,
                f'path must start with "args." or "state.", got {_q(path if path is not None else raw.get("path"))}',
            )
        op = raw.get("op")
        value = raw.get("value")
        matcher = None
        if op not in OPERATORS:
            self.error(location, f"unknown operator {_q(op)}")
        elif op in LIST_OPERATORS and not isinstance(value, list):
            self.error(location, f"operator {_q(op)} requires a list value")
        elif op in NUMERIC_OPERATORS and not (_is_number(value) and math.isfinite(value)):
            self.error(location, f"operator {_q(op)} requires a numeric value")
        elif op == "exists" and not isinstance(value, bool):
            self.error(location, 'operator "exists" requires a boolean value')
        elif op == "regex":
            if not isinstance(value, str):
                self.error(location, "regex value must be a string")
            else:
                matcher = self.compile_regex(location, value)
        if len(self.errors) != errors_before:
            return None
        return Condition(path=path or "", op=op, value=value, matcher=matcher)

    def compile_regex(self, location: str, pattern: str) -> Any:
        import re2  # RE2: linear-time matching, the dialect Intercept's Go regexp uses

        options = re2.Options()
        options.log_errors = False  # the reason is reported below, not on stderr by the C++ library
        try:
            return re2.compile(pattern, options=options)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            self.error(location, f"invalid regex {_q(pattern)}: {reason}")
            return None

    def build_state(self, location: str, raw: Any) -> CounterSpec | None:
        if not isinstance(raw, dict):
            self.error(location, "state must be a mapping with counter and window")
            return None
        errors_before = len(self.errors)
        self.unknown_keys(location, raw, _STATE_KEYS)
        counter = _as_text(raw.get("counter"))
        if not counter:
            self.error(location, "counter must not be empty")
        window = raw.get("window")
        if window not in WINDOWS:
            self.error(location, f'window must be "minute", "hour", or "day", got {_q(window)}')
        increment = raw.get("increment", 1)
        if increment is None:
            increment = 1
        if not isinstance(increment, int) or isinstance(increment, bool) or increment <= 0:
            self.error(location, f"increment must be a positive integer, got {_q(increment)}")
        increment_from = raw.get("increment_from")
        if increment_from is not None and not (isinstance(increment_from, str) and increment_from.startswith("args.")):
            self.error(location, f'increment_from must start with "args.", got {_q(increment_from)}')
        if len(self.errors) != errors_before:
            return None
        return CounterSpec(counter=counter or "", window=window, increment=increment, increment_from=increment_from)
