"""Load a policy file and validate it, collecting every problem with its location.

Each problem is a `PolicyIssue`: Intercept's message, the location path it names
(`tools.x.rules[0].conditions[1]`), the line and column of the YAML node at fault, and a
severity. Errors make the file unusable; warnings (a YAML-1.1 boolean word used as a string) and
notices (`loose_types: true`, which weakens a check on purpose) do not.

Validation is hand-written rather than a pydantic schema so that messages keep the wording of
Intercept's validation table (`tools.x.rules[0].conditions[1]: unknown operator "lte_"`), every
error is reported at once, and the proxy starts without importing pydantic. Hints such as
"did you mean" are computed only for errors, so a valid file loads as fast as before.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import yaml

from intercept.durations import parse_duration_s
from intercept.policy.agents import name_problem
from intercept.policy.desugar import RateLimit, rate_limit_counter, scope_of, window_of
from intercept.policy.model import (
    ACTIONS,
    AGENT_PATHS,
    DEFAULT_WEBHOOK_TIMEOUT_S,
    LIST_OPERATORS,
    MAX_APPROVAL_WAIT_S,
    MAX_SCOPE_FOR_S,
    MAX_SCOPE_USES,
    NUMERIC_OPERATORS,
    ON_TIMEOUTS,
    ONCE,
    OPERATORS,
    SEVERITIES,
    VIAS,
    WEBHOOK_FORMATS,
    WILDCARD,
    WINDOWS,
    ApprovalScope,
    ApprovalSettings,
    Condition,
    CounterSpec,
    Policy,
    Rule,
    ToolPolicy,
    WebhookSettings,
)
from intercept.policy.rule_steps import RuleDraft, check_counters, check_rule, desugar_rule, digest, make_rule
from intercept.policy.rule_steps import quote as _q
from intercept.policy.strict_yaml import YAML11_BOOLEANS, load_yaml_document, yaml11_boolean
from intercept.policy.who_decides import approvers_digest, check_who_decides, read_approvers, read_rule_approvers

_TOP_KEYS = ("version", "description", "default", "hide", "tools", "approvals", "approvers", "agents")
_TOOL_KEYS = ("rules", "loose_types")
_RULE_KEYS = (
    "name", "action", "conditions", "on_deny", "state", "rate_limit", "approval_timeout", "wait", "via", "on_timeout",
    "scope", "approvers", "escalate_after", "escalate_to", "severity",
)  # fmt: skip
_SCOPE_KEYS = ("uses", "for", "match")
_CONDITION_KEYS = ("path", "op", "value")
_STATE_KEYS = ("counter", "window", "increment", "increment_from")
_APPROVALS_KEYS = ("timeout", "dedupe_window", "notify", "console_url", "error_code", "wait", "via", "max_pending")
_MAX_PENDING_KEYS = ("per_tool", "per_server")
_NOTIFY_KEYS = ("webhook",)
_WEBHOOK_KEYS = ("url", "secret_env", "secret", "timeout", "format")
# JSON-RPC's own codes mean something to every client (and -32700/-32600/-32601 give an approval
# back when an upstream answers them): an approval-required error must not reuse one.
_RESERVED_ERROR_CODES = frozenset({-32700, -32600, -32601, -32602, -32603})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_ROOTS = ("args", "state")
_HINT_ROOTS = ("args", "state", "agent")  # `agnet.name` is a misspelled agent path
_AGENT_KEYS = ("roles",)
# What each `agent.*` path holds (a string, a list of strings) and the operators that cannot hold
# for it, whatever the agent: refused at load, since such a rule could never do what it says.
_AGENT_PATH_NEVER = {
    "agent.name": frozenset({"lt", "lte", "gt", "gte"}),
    "agent.roles": frozenset({"lt", "lte", "gt", "gte", "regex"}),
}
# Operators whose value is compared as written, where `value: yes` is the string "yes".
_STRING_COMPARING_OPERATORS = frozenset({"eq", "neq", "in", "not_in"})
_NO_RULES_HINT = 'write "rules: []" to allow the tool with no checks'
# How alike a misspelling and the word it is taken for must be (difflib's ratio): `acton`/`action`
# is 0.91, `deni`/`deny` 0.75; `gt`/`lt` (0.5) are both real and must not be confused.
_SUGGESTION_CUTOFF = 0.75

Severity = Literal["error", "warning", "notice"]
# A place in the document: mapping keys and list indexes, e.g. ("tools", "x", "rules", 0).
Where = tuple[Any, ...]


class PolicyIssue(NamedTuple):
    """One problem found in a policy file.

    `location` is the path the message is about ("" for the whole file); `line` and `column`
    (1-based, as editors count) point at the node at fault, or are None when there is none (a file
    that cannot be read). A NamedTuple rather than a dataclass: the proxy imports this module at
    start, and a dataclass costs about a millisecond to create.
    """

    message: str
    location: str = ""
    line: int | None = None
    column: int | None = None
    severity: Severity = "error"

    @property
    def text(self) -> str:
        """`location: message`, as the proxy logs it; warnings and notices say what they are."""
        text = f"{self.location}: {self.message}" if self.location else self.message
        return text if self.severity == "error" else f"{self.severity}: {text}"

    def located(self, source: str) -> str:
        """The line `intercept validate` prints: `FILE:LINE:COLUMN: text` (editors jump to it)."""
        where = f"{source}:{self.line}:{self.column}" if self.line is not None else source
        return f"{where}: {self.text}"

    def __str__(self) -> str:
        return self.text


class PolicyError(Exception):
    """A policy file that cannot be used: unreadable, not YAML, or invalid (all errors listed).

    `issues` are every problem found, with positions; `errors` are the errors as `location:
    message` lines and `notices` what `policy_notices` would report for the file's valid parts.
    """

    def __init__(self, source: str, issues: Sequence[str | PolicyIssue]) -> None:
        self.source = source
        self.issues = [PolicyIssue(issue) if isinstance(issue, str) else issue for issue in issues]
        self.errors = [issue.text for issue in self.issues if issue.severity == "error"]
        self.notices = [issue.text for issue in self.issues if issue.severity == "notice"]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"{source}: {self.errors[0]}{more}")


class PolicyFileError(PolicyError):
    """The policy file itself cannot be read (missing, a directory, unreadable, empty)."""


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises PolicyError."""
    return read_policy(path)[0]


def read_policy(path: str | Path) -> tuple[Policy, str]:
    """The policy and the SHA-256 of the very bytes it was read from (what a reload watcher must
    compare against, so an edit made right after this read is not mistaken for the loaded one)."""
    policy, file_digest, _ = read_policy_source(path)
    return policy, file_digest


def read_policy_source(path: str | Path) -> tuple[Policy, str, str]:
    """`read_policy` and the text the policy was parsed from (what the policy archive keeps)."""
    text, data = _read_policy_file(path)
    return parse_policy(text, str(path)), hashlib.sha256(data).hexdigest(), text


def check_policy_file(path: str | Path) -> tuple[Policy | None, list[PolicyIssue]]:
    """Every problem in a policy file (`intercept validate`), and the policy if it has no error."""
    try:
        text, _ = _read_policy_file(path)
    except PolicyFileError as exc:
        return None, exc.issues
    return check_policy(text, str(path))


def _read_policy_file(path: str | Path) -> tuple[str, bytes]:
    source = str(path)
    absolute = Path(path).absolute()
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:  # MCP clients start servers in unpredictable directories: say which
        raise PolicyFileError(
            source, [f"policy file not found: {absolute} (working directory: {Path.cwd()})"]
        ) from None
    except IsADirectoryError:
        raise PolicyFileError(source, [f"{absolute} is a directory, not a policy file"]) from None
    except PermissionError:
        raise PolicyFileError(source, [f"cannot read policy file {absolute}: permission denied"]) from None
    except UnicodeDecodeError:
        raise PolicyFileError(source, ["policy file is not valid UTF-8"]) from None
    except OSError as exc:
        raise PolicyFileError(source, [f"cannot read policy file {absolute}: {exc.strerror or exc}"]) from None
    if not text.strip():
        raise PolicyFileError(source, ['policy file is empty (it needs at least version: "1")'])
    return text, data


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy YAML text; raises PolicyError listing every problem."""
    policy, issues = check_policy(text, source)
    if policy is None:
        raise PolicyError(source, issues)
    return policy


def check_policy(text: str, source: str = "<policy>") -> tuple[Policy | None, list[PolicyIssue]]:
    """Every problem in policy YAML text, in the order found, and the policy if none is an error."""
    try:
        document, root = load_yaml_document(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        return None, [PolicyIssue(_yaml_error_line(exc), line=line, column=column)]
    builder = _PolicyBuilder(document, root)
    policy = builder.build()
    return (None if builder.error_count else policy), builder.issues


def _yaml_error_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {problem}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    """A number a float can hold: not NaN or infinite, and no integer beyond float's range."""
    if not _is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _as_text(value: Any) -> str | None:
    """A YAML scalar as the string Go's decoder would give a string field; None if not a scalar."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if _is_number(value):
        return str(value)
    return None


def _location(where: Where) -> str:
    """("tools", "x", "rules", 0) -> "tools.x.rules[0]"."""
    text = ""
    for step in where:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _suggest(word: Any, choices: Iterable[str]) -> str | None:
    """The choice `word` is most likely a misspelling of, if one is close enough (errors only)."""
    if not isinstance(word, str) or not word:
        return None
    import difflib  # only an invalid file gets here

    choices = list(choices)
    lowered = word.lower()
    for choice in choices:
        if choice.lower() == lowered:
            return choice
    found = difflib.get_close_matches(lowered, choices, n=1, cutoff=_SUGGESTION_CUTOFF)
    return found[0] if found else None


def _did_you_mean(word: Any, choices: Iterable[str]) -> str:
    meant = _suggest(word, choices)
    return f" (did you mean {_q(meant)}?)" if meant is not None else ""


def _path_hint(path: Any, roots: tuple[str, ...]) -> str:
    """`arg.amount` -> ` (did you mean "args.amount"?)`: a misspelled first part of a path."""
    head, dot, rest = path.partition(".") if isinstance(path, str) else ("", "", "")
    meant = _suggest(head, roots) if dot and rest else None
    return f" (did you mean {_q(f'{meant}.{rest}')}?)" if meant is not None else ""


def _raw_counter(raw: dict[Any, Any]) -> str | None:
    """The counter a raw rule defines: its `state.counter`, or the one its rate_limit stands for."""
    rate_limit = raw.get("rate_limit")
    if rate_limit is not None:
        window = window_of(str(rate_limit))
        return rate_limit_counter(window) if window is not None and raw.get("state") is None else None
    state = raw.get("state")
    counter = _as_text(state.get("counter")) if isinstance(state, dict) else None
    return counter or None


def loose_types_notice(tool: str) -> str:
    """The line `intercept validate` prints for a tool with `loose_types: true`."""
    return f"notice: tools.{tool}.loose_types: {_loose_types_message(tool)}"


def _loose_types_message(tool: str) -> str:
    return f"argument types of {tool} are not checked against the server's schema"


def policy_notices(policy: Policy) -> list[str]:
    """Notices about a valid policy (not errors): one per tool with `loose_types: true`, in file order."""
    return [loose_types_notice(tool) for tool, tool_policy in policy.tools.items() if tool_policy.loose_types]


def _key_index(mapping: dict[Any, Any], step: Any) -> tuple[int, Any] | None:
    """Where key `step` is in `mapping` (a tool key such as `123` is named by its text) and its value."""
    for index, (key, value) in enumerate(mapping.items()):
        if key == step or (not isinstance(key, str) and _as_text(key) == step):
            return index, value
    return None


class _PolicyBuilder:
    """Walks the YAML document once, appending located issues and building the model.

    A key that is unknown but close to an absent known key (`acton` for `action`) is reported once
    and then read as that key (renamed in this private copy of the document), so one typo does not
    also fail the checks that need the key ("evaluate rules must have at least one condition").
    """

    def __init__(self, document: Any, root: yaml.Node | None) -> None:
        self.document = {} if document is None else document
        self.root = root
        self.issues: list[PolicyIssue] = []
        self.error_count = 0

    def report(
        self, where: Where, message: str, at: Where = (), *, key: bool = False, severity: Severity = "error"
    ) -> None:
        """An issue about `where`, positioned at the node `at` below it (its key with `key`)."""
        node = self.node_at((*where, *at), key=key)
        line, column = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (None, None)
        self.issues.append(PolicyIssue(message, _location(where), line, column, severity))
        if severity == "error":
            self.error_count += 1

    def error(self, where: Where, message: str, at: Where = (), *, key: bool = False) -> None:
        self.report(where, message, at, key=key)

    def node_at(self, where: Where, *, key: bool = False) -> yaml.Node | None:
        """The node at `where` (its key's node with `key`), or the deepest one on the way if the
        rest is missing (a rule without `name` is pointed at by its first line)."""
        node, data = self.root, self.document
        for depth, step in enumerate(where):
            if isinstance(node, yaml.MappingNode) and isinstance(data, dict):
                found = _key_index(data, step)
                if found is None or found[0] >= len(node.value):
                    break
                key_node, value_node = node.value[found[0]]
                if key and depth == len(where) - 1:
                    return key_node
                node, data = value_node, found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(data, list) and isinstance(step, int):
                if not 0 <= step < min(len(node.value), len(data)):
                    break
                node, data = node.value[step], data[step]
            else:
                break
        return node

    def check_keys(self, where: Where, mapping: dict[Any, Any], allowed: tuple[str, ...]) -> None:
        """Report unknown keys; read one close to an absent allowed key as that key."""
        renames: dict[Any, str] = {}
        for key in mapping:
            if key in allowed:
                continue
            meant = _suggest(key, allowed)
            hint = f"did you mean {_q(meant)}?" if meant is not None else f"expected one of: {', '.join(allowed)}"
            self.error(where, f"unknown key {_q(key)} ({hint})", at=(key,), key=True)
            if meant is not None and meant not in mapping and meant not in renames.values():
                renames[key] = meant
        if renames:  # in place and in order, so positions are still found by index
            items = [(renames.get(key, key), value) for key, value in mapping.items()]
            mapping.clear()
            mapping.update(items)

    def mapping(self, where: Where, value: Any, what: str) -> dict[Any, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"{what} must be a mapping")
            return None
        return value

    def listing(self, where: Where, value: Any, what: str) -> list[Any] | None:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(where, f"{what} must be a list")
            return None
        return value

    def boolean_hint(self, where: Where) -> str:
        """Why `yes` (`no`, `on`, `off`, `y`, `n`) unquoted at `where` is not a boolean."""
        node = self.node_at(where)
        meaning = yaml11_boolean(node)
        if node is None or meaning is None:
            return ""
        return (
            f" ({node.value} is a string here, not a boolean: only true and false are booleans in a policy;"
            f" write {str(meaning).lower()})"
        )

    def warn_boolean_words(self, where: Where, value: Any) -> None:
        """Warn about `value: yes` (or an item `yes`) compared as a string where the boolean may be meant."""
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            # A cheap test on every value first; a lone `y` or `n` is usually meant as the letter.
            if not (isinstance(item, str) and len(item) > 1 and item.lower() in YAML11_BOOLEANS):
                continue
            at = ("value",) if index is None else ("value", index)
            node = self.node_at((*where, *at))
            meaning = yaml11_boolean(node)
            if node is None or meaning is None:
                continue
            boolean = str(meaning).lower()
            self.report(
                where,
                f"value {node.value} is a string here, not the boolean {boolean} (only true and false are"
                f" booleans in a policy): write {boolean} for the boolean, or quote {_q(node.value)} to keep the string",
                at,
                severity="warning",
            )

    # -- top level -------------------------------------------------------------------------

    def build(self) -> Policy | None:
        document = self.document
        if not isinstance(document, dict):
            self.error((), "policy must be a YAML mapping with version and tools")
            return None
        self.check_keys((), document, _TOP_KEYS)

        version = _as_text(document.get("version"))
        if version != "1":
            shown = version if version is not None else document.get("version")
            self.error((), f'version must be "1", got {_q(shown)}', at=("version",))

        description = _as_text(document.get("description"))
        if description is None:
            self.error(("description",), "must be a string")

        default = document.get("default")
        default = "allow" if default is None else default
        if default not in ("allow", "deny"):
            hint = _did_you_mean(default, ("allow", "deny"))
            self.error((), f'default must be "allow" or "deny", got {_q(default)}{hint}', at=("default",))

        for key, empty in (("hide", "[]"), ("tools", "{}")):  # a file cut short right after `tools:`
            if key in document and document[key] is None:
                self.error((key,), f'{key} must not be null (write "{key}: {empty}" for none)', key=True)
        hide = self.build_hide(document.get("hide"))
        tools = self.build_tools(document.get("tools"))
        approvals = self.build_approvals(document.get("approvals"))
        approvers = read_approvers(self, document.get("approvers"))
        agents = self.build_agents(document.get("agents"))
        self.check_on_timeout(tools, approvals)
        check_who_decides(self, approvers, tools, approvals)
        if self.error_count:
            return None
        return Policy(
            version="1",
            description=description or "",
            default=default,
            hide=frozenset(hide),
            tools=MappingProxyType(tools),
            approvals=approvals,
            digest=digest(document),
            counted_tools=frozenset(name for name, tool in tools.items() if any(r.state for r in tool.rules)),
            approvers=approvers,
            approvers_digest=approvers_digest(approvers),
            agents=MappingProxyType(agents),
        )

    def check_on_timeout(self, tools: dict[str, ToolPolicy], approvals: ApprovalSettings) -> None:
        """`on_timeout: deny|allow` means something only for a call that is held (a `wait`, on the
        rule or in `approvals`); `allow` lets a call nobody decided run, which an agent gets by
        waiting: a warning says so."""
        for tool, tool_policy in tools.items():
            for index, rule in enumerate(tool_policy.rules):
                if rule.on_timeout == "pending":
                    continue
                where: Where = ("tools", tool, "rules", index)
                wait_s = rule.wait_s if rule.wait_s is not None else approvals.wait_s
                if wait_s <= 0:
                    self.error(
                        where,
                        f"on_timeout: {rule.on_timeout} needs the call held: set wait (on the rule or in approvals)",
                        at=("on_timeout",),
                    )
                elif rule.on_timeout == "allow":
                    self.report(
                        where,
                        f"on_timeout: allow lets a call of rule {_q(rule.name)} run when nobody decides in time: "
                        "an agent can simply wait it out",
                        at=("on_timeout",),
                        severity="warning",
                    )

    # -- agents ----------------------------------------------------------------------------

    def build_agents(self, raw: Any) -> dict[str, tuple[str, ...]]:
        """`agents: {NAME: {roles: [ROLE, ...]}}`: the roles each agent named by `--agent` has."""
        if "agents" in self.document and raw is None:
            self.error(("agents",), 'agents must not be null (write "agents: {}" for none)', key=True)
        entries = self.mapping(("agents",), raw, "agents")
        found: dict[str, tuple[str, ...]] = {}
        for key, body in (entries or {}).items():
            problem = name_problem(key)
            if problem is not None:
                self.error(("agents",), f"{problem}, got {_q(key)}", at=(key,), key=True)
                continue
            where: Where = ("agents", key)
            if not isinstance(body, dict):
                shown = "null" if body is None else "a " + type(body).__name__
                self.error(
                    where, f"an agent entry must be a mapping such as {{roles: [reviewer]}}, not {shown}", key=True
                )
                continue
            self.check_keys(where, body, _AGENT_KEYS)
            roles = self.listing((*where, "roles"), body.get("roles"), "roles")
            if "roles" in body and body["roles"] is None:
                self.error((*where, "roles"), 'roles must be a list, not null (write "roles: []" for none)', key=True)
                continue
            kept: list[str] = []
            for index, role in enumerate(roles or []):
                problem = name_problem(role, "a role")
                if problem is not None:
                    self.error((*where, "roles", index), f"{problem}, got {_q(role)}")
                elif role in kept:
                    self.error((*where, "roles"), f"duplicate role {_q(role)}", at=(index,))
                else:
                    kept.append(role)
            found[key] = tuple(kept)
        return found

    def check_agent_path(self, where: Where, path: str, op: Any) -> None:
        """`agent.name` and `agent.roles` are the only agent paths; operators that can never hold
        for what they hold (a number comparison, a regex on the list of roles) are refused."""
        if path not in AGENT_PATHS:
            self.error(
                where,
                f'unknown agent path {_q(path)}: use "agent.name" or "agent.roles"{_did_you_mean(path, AGENT_PATHS)}',
                at=("path",),
            )
        elif op in _AGENT_PATH_NEVER[path]:
            held = "a string" if path == "agent.name" else "a list of roles"
            self.error(where, f"operator {_q(op)} can never hold for {path} ({held})", at=("op",))

    def build_hide(self, raw: Any) -> list[str]:
        entries = self.listing(("hide",), raw, "hide")
        names: list[str] = []
        for i, entry in enumerate(entries or []):
            name = _as_text(entry)
            if name is None:
                self.error(("hide", i), "entry must be a tool name")
            elif not name.strip():
                self.error(("hide", i), "entry must not be empty")
            elif name in names:
                self.error(("hide",), f"duplicate entry {_q(name)}", at=(i,))
            else:
                names.append(name)
        return names

    def build_approvals(self, raw: Any) -> ApprovalSettings:
        settings = self.mapping(("approvals",), raw, "approvals")
        if not settings:
            return ApprovalSettings()
        self.check_keys(("approvals",), settings, _APPROVALS_KEYS)
        where: Where = ("approvals",)
        timeout = self.duration((*where, "timeout"), settings.get("timeout"))
        dedupe = self.duration((*where, "dedupe_window"), settings.get("dedupe_window"))
        built = ApprovalSettings(
            dedupe_window_s=dedupe,
            webhook=self.webhook(settings.get("notify")),
            console_url=self.http_url((*where, "console_url"), settings.get("console_url")),
        )
        if timeout is not None:
            built = replace(built, timeout_s=timeout)
        if settings.get("wait") is not None:
            built = replace(built, wait_s=self.wait((*where, "wait"), settings["wait"]) or 0.0)
        if settings.get("via") is not None:
            built = replace(built, via=self.via((*where, "via"), settings["via"]) or "approval")  # type: ignore[arg-type]
        limits = self.mapping((*where, "max_pending"), settings.get("max_pending"), "max_pending")
        if limits:
            self.check_keys((*where, "max_pending"), limits, _MAX_PENDING_KEYS)
            for key in _MAX_PENDING_KEYS:
                value = limits.get(key)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    self.error((*where, "max_pending", key), f"must be a positive integer, got {_q(value)}")
                else:
                    built = replace(built, **{f"max_pending_{key}": value})
        code = settings.get("error_code")
        if code is not None:
            if isinstance(code, bool) or not isinstance(code, int) or not -(2**31) <= code < 2**31:
                self.error((*where, "error_code"), f"must be an integer (a JSON-RPC error code), got {_q(code)}")
            elif code in _RESERVED_ERROR_CODES:
                self.error((*where, "error_code"), f"{code} is a JSON-RPC code with its own meaning; use another")
            else:
                built = replace(built, error_code=code)
        return built

    def webhook(self, raw: Any) -> WebhookSettings | None:
        """`approvals.notify.webhook`: a URL and a signing secret (from the environment, or literal
        with a warning); incomplete is an error."""
        notify = self.mapping(("approvals", "notify"), raw, "notify")
        if not notify:
            return None
        self.check_keys(("approvals", "notify"), notify, _NOTIFY_KEYS)
        where: Where = ("approvals", "notify", "webhook")
        hook = self.mapping(where, notify.get("webhook"), "webhook")
        if not hook:
            if hook is not None and "webhook" in notify:
                self.error(where, "webhook needs at least a url and a secret_env")
            return None
        self.check_keys(where, hook, _WEBHOOK_KEYS)
        url = self.http_url((*where, "url"), hook.get("url"))
        if hook.get("url") is None:
            self.error(where, "webhook needs a url")
        secret_env, secret = hook.get("secret_env"), hook.get("secret")
        if secret_env is not None and not (isinstance(secret_env, str) and _ENV_NAME.fullmatch(secret_env)):
            self.error((*where, "secret_env"), f"must be the name of an environment variable, got {_q(secret_env)}")
            secret_env = None
        if secret is not None and not (isinstance(secret, str) and secret):
            self.error((*where, "secret"), "must be a non-empty string")
            secret = None
        if hook.get("secret_env") is None and hook.get("secret") is None:
            self.error(where, "webhook needs a secret_env (the environment variable holding its signing secret)")
        if secret is not None:
            self.report(
                (*where, "secret"),
                "a literal secret in the policy file can be read by anyone who reads the file; "
                "prefer secret_env (the name of an environment variable holding it)",
                key=True,
                severity="warning",
            )
        timeout = self.duration((*where, "timeout"), hook.get("timeout"))
        form = hook.get("format", "generic")
        if form not in WEBHOOK_FORMATS:
            self.error((*where, "format"), f'must be "generic" or "slack", got {_q(form)}')
            form = "generic"
        if url is None or (secret_env is None and secret is None):
            return None
        return WebhookSettings(
            url=url,
            secret_env=secret_env,
            secret=secret,
            timeout_s=DEFAULT_WEBHOOK_TIMEOUT_S if timeout is None else timeout,
            format=form,
        )

    def http_url(self, where: Where, raw: Any) -> str | None:
        """An absolute http(s) URL with a host, or None (with an error when one was given)."""
        if raw is None:
            return None
        if not isinstance(raw, str) or not re.fullmatch(r"https?://[^\s/?#@]+(?:[/?#]\S*)?", raw, re.IGNORECASE):
            self.error(where, f"must be an http:// or https:// URL, got {_q(raw)}")
            return None
        return raw

    def wait(self, where: Where, raw: Any) -> float | None:
        """How long a call is held for a decision: "0s" (answer at once) up to MAX_APPROVAL_WAIT_S."""
        if raw in ("0", "0s", 0):
            return 0.0
        seconds = self.duration(where, raw)
        if seconds is not None and seconds > MAX_APPROVAL_WAIT_S:
            self.error(where, f"must be at most {MAX_APPROVAL_WAIT_S:g}s (clients give up on a call held longer)")
            return None
        return seconds

    def scope(self, where: Where, raw: Any) -> ApprovalScope | None:
        """`once`, or `{uses: N}`, `{for: DURATION}`, either with `match: tool` (any arguments)."""
        if raw == "once":
            return ONCE
        if not isinstance(raw, dict) or not raw:
            self.error(where, f'must be "once" or a mapping such as {{uses: 3}} or {{for: 15m}}, got {_q(raw)}')
            return None
        self.check_keys(where, raw, _SCOPE_KEYS)
        uses, for_s, ok = raw.get("uses"), None, True
        if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int) or not 0 < uses <= MAX_SCOPE_USES):
            self.error((*where, "uses"), f"must be a positive integer of at most 2^53, got {_q(uses)}")
            ok = False
        if raw.get("for") is not None:
            for_s = self.duration((*where, "for"), raw["for"])
            if for_s is not None and for_s > MAX_SCOPE_FOR_S:
                self.error((*where, "for"), "must be at most 366d (a longer window is a standing grant: write a rule)")
                for_s = None
            ok = ok and for_s is not None
        if raw.get("match", "call") not in ("call", "tool"):
            self.error((*where, "match"), f'must be "call" (this exact call) or "tool" (any arguments), got {_q(raw["match"])}')
            ok = False
        if uses is None and raw.get("for") is None:
            self.error(where, "scope needs uses, for, or both")
            ok = False
        if not ok:
            return None
        return ApprovalScope(uses=uses, for_s=for_s, any_arguments=raw.get("match") == "tool")

    def via(self, where: Where, raw: Any) -> str | None:
        if raw not in VIAS:
            self.error(where, f'must be "approval" or "elicitation", got {_q(raw)}')
            return None
        return raw  # type: ignore[no-any-return]

    def duration(self, where: Where, raw: Any) -> float | None:
        if raw is None:
            return None
        try:
            return parse_duration_s(raw)
        except ValueError as exc:
            self.error(where, str(exc))
            return None

    # -- tools and rules -------------------------------------------------------------------

    def build_tools(self, raw: Any) -> dict[str, ToolPolicy]:
        tools_raw = self.mapping(("tools",), raw, "tools")
        if not tools_raw:
            return {}
        parsed: dict[str, list[tuple[RuleDraft, Rule | None]]] = {}
        loose: set[str] = set()
        broken: set[str] = set()  # scopes with a rule or tool entry too broken to read its counters
        for key, body in tools_raw.items():
            tool = _as_text(key)
            if not tool:
                self.error(("tools",), f"tool name must be a non-empty string, got {_q(key)}", at=(key,), key=True)
                continue
            where = ("tools", tool)
            scope = scope_of(tool)
            if body is None:  # `transfer:` with nothing after it, e.g. a file still being written
                self.error(where, f"a tool entry must be a mapping, not null ({_NO_RULES_HINT})", key=True)
                broken.add(scope)
                continue
            body_map = self.mapping(where, body, "a tool entry")
            if body_map is None:
                broken.add(scope)
                continue
            self.check_keys(where, body_map, _TOOL_KEYS)
            if self.loose_types(where, tool, body_map):
                loose.add(tool)
            if "rules" in body_map and body_map["rules"] is None:
                self.error((*where, "rules"), f"rules must be a list, not null ({_NO_RULES_HINT})", key=True)
                broken.add(scope)
            rules_raw = self.listing((*where, "rules"), body_map.get("rules"), "rules")
            if rules_raw is None:
                broken.add(scope)
            entries = []
            for i, rule_raw in enumerate(rules_raw or []):
                if not isinstance(rule_raw, dict):
                    self.error((*where, "rules", i), "a rule must be a mapping")
                    broken.add(scope)
                    continue
                entries.append(self.build_rule((*where, "rules", i), tool, rule_raw))
            parsed[tool] = entries
        check_counters({tool: [draft for draft, _ in entries] for tool, entries in parsed.items()}, broken, self.error)
        return {
            tool: ToolPolicy(rules=tuple(rule for _, rule in entries if rule is not None), loose_types=tool in loose)
            for tool, entries in parsed.items()
        }

    def loose_types(self, where: Where, tool: str, body: dict[Any, Any]) -> bool:
        """A tool's `loose_types` flag (absent = false); a notice for `intercept validate` when true."""
        if "loose_types" not in body:
            return False
        value = body["loose_types"]
        where = (*where, "loose_types")
        if tool == WILDCARD:
            self.error(where, 'loose_types applies per tool; set it on each tool key, not on "*"', key=True)
            return False
        if not isinstance(value, bool):
            shown = "null" if value is None else _q(value)
            self.error(where, f"must be true or false, got {shown}{self.boolean_hint(where)}")
            return False
        if value:
            self.report(where, _loose_types_message(tool), key=True, severity="notice")
        return value

    def build_rule(self, where: Where, tool: str, raw: dict[Any, Any]) -> tuple[RuleDraft, Rule | None]:
        """A rule in four steps (`policy.rule_steps`): read, desugar, check, make (None if any
        error was found); the draft is kept for the checks across rules (`check_counters`)."""
        errors_before = self.error_count
        draft = desugar_rule(self.read_rule(where, tool, raw))
        check_rule(draft, self.error)
        return draft, (make_rule(draft) if self.error_count == errors_before else None)

    def read_rule(self, where: Where, tool: str, raw: dict[Any, Any]) -> RuleDraft:
        """Step 1: each field's shape and value, with located errors."""
        self.check_keys(where, raw, _RULE_KEYS)
        name = _as_text(raw.get("name"))
        if not name:
            self.error(where, "rule must have a name", at=("name",))
        action = raw.get("action")
        action = "evaluate" if action is None else action
        action_known = action in ACTIONS  # checks that depend on the action are skipped for a bad one
        if not action_known:
            self.error(
                where,
                f'action must be "evaluate", "deny" or "require_approval", got {_q(action)}'
                f"{_did_you_mean(action, ACTIONS)}",
                at=("action",),
            )
        on_deny = _as_text(raw.get("on_deny"))
        if on_deny is None:
            self.error((*where, "on_deny"), "must be a string")
        draft = RuleDraft(
            where, tool, name, action, action_known, on_deny,
            conditions_given=raw.get("conditions") is not None, state_given=raw.get("state") is not None,
            approval_timeout_given=raw.get("approval_timeout") is not None,
        )  # fmt: skip
        if raw.get("rate_limit") is not None:  # its conditions and state are not read: an error anyway
            text = _as_text(raw["rate_limit"]) or ""
            draft = replace(draft, rate_limit_text=text, rate_limit=self.rate_limit(where, text))
        else:
            listed = self.listing((*where, "conditions"), raw.get("conditions"), "conditions")
            conditions = [self.build_condition((*where, "conditions", j), item) for j, item in enumerate(listed or [])]
            state = self.build_state((*where, "state"), raw["state"]) if draft.state_given else None
            draft = replace(
                draft,
                conditions=tuple(c for c in conditions if c is not None),
                conditions_listed=listed is not None,
                conditions_count=len(listed or []),
                condition_paths=tuple(
                    (j, item.get("path")) for j, item in enumerate(listed or []) if isinstance(item, dict)
                ),
                state=state,
            )
        if draft.approval_timeout_given:
            draft = replace(
                draft, approval_timeout_s=self.duration((*where, "approval_timeout"), raw["approval_timeout"])
            )
        if raw.get("wait") is not None:
            draft = replace(draft, wait_given=True, wait_s=self.wait((*where, "wait"), raw["wait"]))
        if raw.get("via") is not None:
            draft = replace(draft, via=self.via((*where, "via"), raw["via"]))
        if raw.get("scope") is not None:
            draft = replace(draft, scope=self.scope((*where, "scope"), raw["scope"]))
        if raw.get("severity") is not None:
            if raw["severity"] not in SEVERITIES:
                self.error(
                    (*where, "severity"),
                    f'must be "info", "notice", "warning" or "critical", got {_q(raw["severity"])}'
                    f"{_did_you_mean(raw['severity'], SEVERITIES)}",
                )
            else:
                draft = replace(draft, severity=raw["severity"])
        who = read_rule_approvers(self, where, raw)
        if who is not None:
            draft = replace(draft, approvers=who, approvers_given=True)
        elif any(raw.get(key) is not None for key in ("approvers", "escalate_after", "escalate_to")):
            draft = replace(draft, approvers_given=True)
        if raw.get("on_timeout") is not None:
            on_timeout = raw["on_timeout"]
            if on_timeout not in ON_TIMEOUTS:
                self.error((*where, "on_timeout"), f'must be "pending", "deny" or "allow", got {_q(on_timeout)}')
            else:
                draft = replace(draft, on_timeout=on_timeout)
        # After the state block is read: a key close to `counter` (`countr`) is read as it by then.
        return replace(draft, counter=_raw_counter(raw))

    def rate_limit(self, where: Where, text: str) -> RateLimit | None:
        count_text, slash, window = text.partition("/")
        if not slash:
            self.error(
                where,
                f'rate_limit must be in the format "N/window" (e.g. "5/hour"), got {_q(text)}',
                at=("rate_limit",),
            )
            return None
        ok = True
        if not (count_text.isascii() and count_text.isdigit() and int(count_text) > 0):
            self.error(where, f"rate_limit count must be a positive integer, got {_q(count_text)}", at=("rate_limit",))
            ok = False
        if window not in WINDOWS:
            self.error(
                where,
                f'rate_limit window must be "minute", "hour", or "day", got {_q(window)}{_did_you_mean(window, WINDOWS)}',
                at=("rate_limit",),
            )
            ok = False
        return RateLimit(int(count_text), window) if ok else None

    def build_condition(self, where: Where, raw: Any) -> Condition | None:
        if not isinstance(raw, dict):
            self.error(where, "a condition must be a mapping with path, op and value")
            return None
        errors_before = self.error_count
        self.check_keys(where, raw, _CONDITION_KEYS)
        path = _as_text(raw.get("path"))
        op = raw.get("op")
        if path is not None and path.startswith("agent."):
            self.check_agent_path(where, path, op)
        elif path is None or not (path.startswith("args.") or path.startswith("state.")):
            shown = path if path is not None else raw.get("path")
            self.error(
                where,
                f'path must start with "args." or "state.", got {_q(shown)}{_path_hint(shown, _HINT_ROOTS)}',
                at=("path",),
            )
        value = raw.get("value")
        matcher = None
        if not isinstance(op, str) or op not in OPERATORS:
            self.error(where, f"unknown operator {_q(op)}{_did_you_mean(op, sorted(OPERATORS))}", at=("op",))
        elif op in LIST_OPERATORS and not isinstance(value, list):
            self.error(where, f"operator {_q(op)} requires a list value", at=("value",))
        elif op in NUMERIC_OPERATORS and not _is_finite_number(value):
            self.error(where, f"operator {_q(op)} requires a numeric value", at=("value",))
        elif op == "exists" and not isinstance(value, bool):
            hint = self.boolean_hint((*where, "value"))
            self.error(where, f'operator "exists" requires a boolean value{hint}', at=("value",))
        elif op == "regex":
            if not isinstance(value, str):
                self.error(where, "regex value must be a string", at=("value",))
            else:
                matcher = self.compile_regex(where, value)
        elif op in _STRING_COMPARING_OPERATORS:
            self.warn_boolean_words(where, value)
        if self.error_count != errors_before:
            return None
        return Condition(path=path or "", op=op, value=value, matcher=matcher)

    def compile_regex(self, where: Where, pattern: str) -> Any:
        import re2  # RE2: linear-time matching, the dialect Intercept's Go regexp uses

        options = re2.Options()
        options.log_errors = False  # the reason is reported below, not on stderr by the C++ library
        try:
            return re2.compile(pattern, options=options)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            self.error(where, f"invalid regex {_q(pattern)}: {reason}", at=("value",))
            return None

    def build_state(self, where: Where, raw: Any) -> CounterSpec | None:
        if not isinstance(raw, dict):
            self.error(where, "state must be a mapping with counter and window")
            return None
        errors_before = self.error_count
        self.check_keys(where, raw, _STATE_KEYS)
        counter = _as_text(raw.get("counter"))
        if not counter:
            self.error(where, "counter must not be empty", at=("counter",))
        window = raw.get("window")
        if window not in WINDOWS:
            self.error(
                where,
                f'window must be "minute", "hour", or "day", got {_q(window)}{_did_you_mean(window, WINDOWS)}',
                at=("window",),
            )
        increment = raw.get("increment", 1)
        if increment is None:
            increment = 1
        if not isinstance(increment, int) or isinstance(increment, bool) or increment <= 0:
            self.error(where, f"increment must be a positive integer, got {_q(increment)}", at=("increment",))
        increment_from = raw.get("increment_from")
        if increment_from is not None and not (isinstance(increment_from, str) and increment_from.startswith("args.")):
            hint = _path_hint(increment_from, ("args",))
            self.error(
                where, f'increment_from must start with "args.", got {_q(increment_from)}{hint}', at=("increment_from",)
            )
        if self.error_count != errors_before:
            return None
        return CounterSpec(counter=counter or "", window=window, increment=increment, increment_from=increment_from)
