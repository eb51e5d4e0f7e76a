"""The immutable, validated policy the engine evaluates; built only by `intercept.policy.load`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

Action = Literal["evaluate", "deny", "require_approval"]
Window = Literal["minute", "hour", "day"]
# The operator set, defined once here so the loader and the engine can share it.
Operator = Literal["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists"]

ACTIONS: tuple[str, ...] = get_args(Action)
WINDOWS: tuple[str, ...] = get_args(Window)
OPERATORS: frozenset[str] = frozenset(get_args(Operator))
LIST_OPERATORS = frozenset({"in", "not_in"})
NUMERIC_OPERATORS = frozenset({"lt", "lte", "gt", "gte"})

# A person's name wherever one is given: an approver in the policy, a person token, a key file's
# name (so always a safe file name: no separator, no leading dot, no control character).
PERSON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")

WILDCARD = "*"
GLOBAL_SCOPE = "_global"
DEFAULT_APPROVAL_TIMEOUT_S = 3600.0
APPROVAL_REQUIRED_CODE = -32003  # Intercept's error code for "approval required"
DEFAULT_WEBHOOK_TIMEOUT_S = 5.0
MAX_APPROVAL_WAIT_S = 600.0  # a held call longer than this outlives most clients' request timeouts

Via = Literal["approval", "elicitation"]
Severity = Literal["info", "notice", "warning", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
OnTimeout = Literal["pending", "deny", "allow"]
ON_TIMEOUTS: tuple[str, ...] = ("pending", "deny", "allow")
WebhookFormat = Literal["generic", "slack"]
VIAS: tuple[str, ...] = get_args(Via)
WEBHOOK_FORMATS: tuple[str, ...] = get_args(WebhookFormat)


@dataclass(frozen=True, slots=True)
class Condition:
    """One `path op value` test; `matcher` is the compiled RE2 pattern for `regex`."""

    path: str
    op: str
    value: Any
    matcher: Any = None


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """A rule's `state` block: a counter in a calendar-aligned UTC window."""

    counter: str
    window: Window
    increment: int = 1
    increment_from: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalScope:
    """What one approval allows (a `require_approval` rule's `scope`): `uses` runs (None: as many
    as the window allows), within `for_s` seconds of the approval (None: the approval timeout),
    of this exact call, or of any arguments to the tool (`match: tool`). The default, `once`, is
    one run of the exact call."""

    uses: int | None = 1
    for_s: float | None = None
    any_arguments: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"uses": self.uses, "for_s": self.for_s, "match": "tool" if self.any_arguments else "call"}

    def describe(self) -> str:
        """What one approval allows, in words (the CLI, the webhook and the client's prompt say it
        the same way; the inbox's `scopeText` mirrors it)."""
        runs = "one run" if self.uses == 1 else f"{self.uses} runs" if self.uses is not None else "any number of runs"
        what = "with any arguments to the tool" if self.any_arguments else "of this exact call"
        window = f" within {self.for_s:g}s of the approval" if self.for_s is not None else ""
        return f"{runs} {what}{window}"


ONCE = ApprovalScope()


@dataclass(frozen=True, slots=True)
class Approver:
    """One entry of the `approvers` block: a person who may decide, their roles, and the Ed25519
    public key their decisions are signed with (`ed25519:<base64>`; None: their decisions are
    taken on their word, which `validate` warns about)."""

    name: str
    roles: frozenset[str] = frozenset()
    key: str | None = None


@dataclass(frozen=True, slots=True)
class WhoDecides:
    """Who must decide a `require_approval` rule's requests: `quorum` distinct approvers holding
    one of `roles` (None: any listed approver), and, once a request has waited `escalate_after_s`
    undecided, approvers holding one of `escalate_to` as well. One eligible deny vetoes."""

    roles: frozenset[str] | None = None
    quorum: int = 1
    escalate_after_s: float | None = None
    escalate_to: frozenset[str] = frozenset()

    def as_json(self) -> dict[str, Any]:
        return {
            "roles": None if self.roles is None else sorted(self.roles),
            "quorum": self.quorum,
            "escalate_after_s": self.escalate_after_s,
            "escalate_to": sorted(self.escalate_to),
        }

    def describe(self) -> str:
        """Who may decide, in words (the CLI and the inbox say it so)."""
        who = "any approver" if self.roles is None else "role " + " or ".join(sorted(self.roles))
        need = f"{self.quorum} approvals from {who}" if self.quorum > 1 else f"an approval from {who}"
        if self.escalate_after_s is not None and self.escalate_to:
            need += f"; after {self.escalate_after_s:g}s also role " + " or ".join(sorted(self.escalate_to))
        return need


ANY_APPROVER = WhoDecides()
MAX_SCOPE_FOR_S = 366 * 86400.0  # a scope's `for` at most: a window longer than a year is a standing grant
MAX_SCOPE_USES = 2**53  # a scope's `uses` at most: SQLite stores it (and one given back) as an integer


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a tool; `digest` identifies its definition (approvals bind to it)."""

    name: str
    action: Action
    conditions: tuple[Condition, ...] = ()
    on_deny: str | None = None
    state: CounterSpec | None = None
    rate_limit: str | None = None
    approval_timeout_s: float | None = None
    # How a human is asked (require_approval only); None = the policy's `approvals` default. Not
    # part of the digest: they change how a decision is reached, not what is approved.
    wait_s: float | None = None
    via: Via | None = None
    on_timeout: OnTimeout = "pending"  # a held call nobody decided in time: -32003, denied, or run
    scope: ApprovalScope = ONCE  # part of the digest: it changes what an approval allows
    # Who must decide (None: any approver, one vote); part of the digest when given.
    approvers: WhoDecides | None = None
    # The severity of the events this rule's decisions produce (None: each event type's own);
    # not part of the digest: it changes how the record reads, not what is decided.
    severity: Severity | None = None
    digest: str = ""

    @property
    def who_decides(self) -> WhoDecides:
        return self.approvers or ANY_APPROVER


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """One key of `tools` (a tool name or `"*"`): its rules, and whether its argument types are checked.

    `loose_types` (never true for `"*"`): when true, the proxy does not check the JSON type of the
    arguments its rules read against the server's declared inputSchema for this tool.
    """

    rules: tuple[Rule, ...] = ()
    loose_types: bool = False


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """`approvals.notify.webhook`: where a new approval request is POSTed, signed with HMAC-SHA256.

    The secret is read from the environment variable `secret_env` when the proxy starts (so it
    stays out of the file); `secret` is a literal one, accepted for compatibility with a warning."""

    url: str
    secret_env: str | None = None
    secret: str | None = None
    timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S
    format: WebhookFormat = "generic"


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """The top-level `approvals` block."""

    timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S
    dedupe_window_s: float | None = None
    webhook: WebhookSettings | None = None
    console_url: str | None = None  # where approvers decide; named in -32003 replies and webhooks
    error_code: int = APPROVAL_REQUIRED_CODE
    wait_s: float = 0.0  # hold a call this long for a decision before answering error_code
    via: Via = "approval"
    # The fatigue guard: beyond this many pending requests for one tool (or one server), new ones
    # are denied without a record. None: no limit.
    max_pending_per_tool: int | None = None
    max_pending_per_server: int | None = None

    @property
    def effective_dedupe_window_s(self) -> float:
        return self.timeout_s if self.dedupe_window_s is None else self.dedupe_window_s


# -- who is asking (the `agents` block and `--agent`) ---------------------------------------------

AGENT_PATHS: tuple[str, ...] = ("agent.name", "agent.roles")  # the only `agent.*` condition paths
MAX_AGENT_NAME_CHARS = 128


@dataclass(frozen=True, slots=True)
class Agent:
    """Who is asking, as conditions on `agent.*` see it: the proxy's `--agent` name (None without
    one) and the roles the policy's `agents` block gives that name (none for a name it does not
    list). The client's self-asserted `clientInfo.name` is never an agent."""

    name: str | None = None
    roles: tuple[str, ...] = ()


NO_AGENT = Agent()


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole validated policy file. Immutable, so a reload swaps one reference."""

    version: str = "1"
    description: str = ""
    default: Literal["allow", "deny"] = "allow"
    hide: frozenset[str] = frozenset()
    tools: Mapping[str, ToolPolicy] = field(default_factory=lambda: MappingProxyType({}))
    approvals: ApprovalSettings = ApprovalSettings()
    digest: str = ""
    counted_tools: frozenset[str] = frozenset()
    # The `approvers` block (empty: anyone who reaches the CLI or console decides, unsigned) and
    # the digest of it that signed decisions bind to.
    approvers: Mapping[str, Approver] = field(default_factory=lambda: MappingProxyType({}))
    approvers_digest: str = ""
    # The `agents` block (agent name -> its roles), and the agent this policy is bound to: the
    # proxy binds it once (`policy.agents.bind_agent`), so conditions on `agent.*` are judged once
    # per (policy, agent) when the plans are built, never per call.
    agents: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    agent: Agent = NO_AGENT
    # The engine's per-tool evaluation plans, built on first use (a cache, not part of the policy).
    plans: dict[str | None, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    # The approvers' parsed public keys, built on first verification (a cache, like `plans`).
    public_keys: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def rule_by_digest(self, tool: str, rule_digest: str) -> Rule | None:
        """The rule of `tool` (or of the wildcard) whose definition has this digest."""
        for key in (tool, WILDCARD):
            tool_policy = self.tools.get(key)
            for rule in tool_policy.rules if tool_policy else ():
                if rule.digest == rule_digest:
                    return rule
        return None

    def uses_counters(self, tool: str) -> bool:
        """True when a call to `tool` touches a counter (its own rules or the wildcard's)."""
        return tool in self.counted_tools or WILDCARD in self.counted_tools

    def hides(self, tool: str) -> bool:
        """True when `tool` is hidden from the agent (listed in `hide`, or `hide` has `"*"`)."""
        return tool in self.hide or WILDCARD in self.hide
