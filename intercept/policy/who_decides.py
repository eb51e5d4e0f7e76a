"""Reading who may decide: the top-level `approvers` block, a `require_approval` rule's
`approvers`, `escalate_after` and `escalate_to`, and the checks across them (roles no approver
holds, a quorum that can never be reached, `via: elicitation` or `on_timeout: allow` where
approvers decide). Part of the loader (`policy.load`), kept apart because it is one concern; it
reports through the loader's `Reporter` and does no I/O.

A public key is checked for shape only (`ed25519:` and 32 bytes of base64): the proxy parses it
with `cryptography` when it first verifies a decision, so a policy loads without importing it.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from intercept.policy.model import PERSON_NAME, ApprovalSettings, Approver, ToolPolicy, WhoDecides
from intercept.policy.rule_steps import quote

APPROVER_KEYS = ("roles", "key")
RULE_APPROVERS_KEYS = ("roles", "quorum")
ESCALATE_TO_KEYS = ("roles",)
PUBLIC_KEY_PREFIX = "ed25519:"
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Where = tuple[Any, ...]


class Reporter(Protocol):
    """The loader's side of the reading: located issues and the shared shape checks."""

    def report(
        self, where: Where, message: str, at: Where = (), *, key: bool = False, severity: Any = "error"
    ) -> None: ...

    def error(self, where: Where, message: str, at: Where = (), *, key: bool = False) -> None: ...

    def check_keys(self, where: Where, mapping: dict[Any, Any], allowed: tuple[str, ...]) -> None: ...

    def mapping(self, where: Where, value: Any, what: str) -> dict[Any, Any] | None: ...

    def listing(self, where: Where, value: Any, what: str) -> list[Any] | None: ...

    def duration(self, where: Where, raw: Any) -> float | None: ...


def read_approvers(reporter: Reporter, raw: Any) -> Mapping[str, Approver]:
    """The `approvers` block: name -> {roles: [..], key: "ed25519:..."}."""
    where: Where = ("approvers",)
    block = reporter.mapping(where, raw, "approvers")
    approvers: dict[str, Approver] = {}
    for name, body in (block or {}).items():
        if not isinstance(name, str) or not PERSON_NAME.fullmatch(name):
            reporter.error(
                where,
                f"approver name must be letters, digits, '.', '_', '@', '+' or '-' (at most 64, not starting with a "
                f"symbol), got {quote(name)}",
                at=(name,),
                key=True,
            )
            continue
        entry = reporter.mapping((*where, name), body, "an approver")
        if entry is None:
            continue
        reporter.check_keys((*where, name), entry, APPROVER_KEYS)
        roles = read_roles(reporter, (*where, name, "roles"), entry.get("roles"), required=False)
        key = entry.get("key")
        if key is not None and not _public_key_ok(key):
            reporter.error(
                (*where, name, "key"),
                f'must be "ed25519:" and the base64 of a 32-byte public key (`intercept approvers keygen {name}` '
                f"prints one), got {quote(key)}",
            )
            key = None
        elif key is None:
            reporter.report(
                (*where, name),
                f"approver {name} has no key: votes in that name are not signed, so anyone who can run "
                "`intercept approvals` or write the state dir can cast them",
                severity="warning",
            )
        approvers[name] = Approver(name=name, roles=frozenset(roles or ()), key=key)
    return MappingProxyType(approvers)


def approvers_digest(approvers: Mapping[str, Approver]) -> str:
    """SHA-256 of the block as read (names, sorted roles, keys): what a signed decision binds to,
    so an edit elsewhere in the policy does not void signed approvals, and one here does."""
    if not approvers:
        return ""
    blob = json.dumps(
        {name: {"roles": sorted(a.roles), "key": a.key} for name, a in approvers.items()},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def read_roles(reporter: Reporter, where: Where, raw: Any, *, required: bool) -> list[str] | None:
    if raw is None:
        if required:
            reporter.error(where, "must list at least one role")
        return None
    listed = reporter.listing(where, raw, "roles")
    if listed is None:
        return None
    roles = []
    for index, role in enumerate(listed):
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            reporter.error((*where, index), f"a role is a name of letters, digits, '.', '_' or '-', got {quote(role)}")
        else:
            roles.append(role)
    if required and not listed:
        reporter.error(where, "must list at least one role")
    return roles


def read_rule_approvers(reporter: Reporter, where: Where, raw: dict[Any, Any]) -> WhoDecides | None:
    """A rule's `approvers`, `escalate_after` and `escalate_to` (None when none is written)."""
    given = [key for key in ("approvers", "escalate_after", "escalate_to") if raw.get(key) is not None]
    if not given:
        return None
    who = WhoDecides()
    if raw.get("approvers") is not None:
        body = reporter.mapping((*where, "approvers"), raw["approvers"], "approvers")
        if body is None:
            return None
        reporter.check_keys((*where, "approvers"), body, RULE_APPROVERS_KEYS)
        if "roles" in body:
            roles = read_roles(reporter, (*where, "approvers", "roles"), body["roles"], required=True)
            who = WhoDecides(roles=frozenset(roles or ()))
        quorum = body.get("quorum", 1)
        if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= 100:
            reporter.error((*where, "approvers", "quorum"), f"must be an integer from 1 to 100, got {quote(quorum)}")
        else:
            who = WhoDecides(roles=who.roles, quorum=quorum)
    after = raw.get("escalate_after")
    to = raw.get("escalate_to")
    if (after is None) != (to is None):
        missing = "escalate_to" if to is None else "escalate_after"
        reporter.error(where, f"{missing} is needed with {'escalate_after' if to is None else 'escalate_to'}")
        return who
    if after is not None:
        after_s = reporter.duration((*where, "escalate_after"), after)
        body = reporter.mapping((*where, "escalate_to"), to, "escalate_to")
        roles = None
        if body is not None:
            reporter.check_keys((*where, "escalate_to"), body, ESCALATE_TO_KEYS)
            roles = read_roles(reporter, (*where, "escalate_to", "roles"), body.get("roles"), required=True)
        if after_s is not None and roles:
            who = WhoDecides(who.roles, who.quorum, after_s, frozenset(roles))
    return who


def check_who_decides(
    reporter: Reporter, approvers: Mapping[str, Approver], tools: Mapping[str, ToolPolicy], settings: ApprovalSettings
) -> None:
    """The checks across the approvers block and the rules (after both are read)."""
    gated = [
        (("tools", tool, "rules", index), rule)
        for tool, tool_policy in tools.items()
        for index, rule in enumerate(tool_policy.rules)
        if rule.action == "require_approval"
    ]
    if not approvers:
        for where, rule in gated:
            if rule.approvers is not None:
                reporter.error(where, "approvers needs an approvers block at the top of the policy", at=("approvers",))
        if gated:
            reporter.report(
                (),
                "no approvers block: anyone who can run `intercept approvals` or reach the console decides every "
                "request (add approvers to say who may, with signed decisions)",
                severity="notice",
            )
        return
    held_roles = {role for approver in approvers.values() for role in approver.roles}
    for where, rule in gated:
        who = rule.who_decides
        for key, roles in (("approvers", who.roles or frozenset()), ("escalate_to", who.escalate_to)):
            for role in sorted(roles - held_roles):
                close = difflib.get_close_matches(role, sorted(held_roles), n=1)
                hint = f" (did you mean {quote(close[0])}?)" if close else ""
                reporter.error(where, f"no approver has role {quote(role)}{hint}", at=(key,))
        eligible = [a for a in approvers.values() if who.roles is None or a.roles & (who.roles | who.escalate_to)]
        if who.quorum > len(eligible):
            reporter.error(
                where,
                f"quorum {who.quorum} can never be reached: {len(eligible)} approver(s) may decide this rule",
                at=("approvers",),
            )
        if (rule.via or settings.via) == "elicitation":
            reporter.error(
                where,
                "via: elicitation cannot decide where approvers decide (the client is not an approver and cannot "
                "sign); use via: approval",
                at=("via",) if rule.via else (),
            )
        if rule.on_timeout == "allow":
            reporter.error(
                where,
                "on_timeout: allow is refused where approvers decide (waiting would replace them)",
                at=("on_timeout",),
            )
        timeout_s = rule.approval_timeout_s or settings.timeout_s
        if who.escalate_after_s is not None and who.escalate_after_s >= timeout_s:
            reporter.report(
                where,
                f"escalate_after ({who.escalate_after_s:g}s) is not shorter than the approval timeout "
                f"({timeout_s:g}s): requests expire before they escalate",
                at=("escalate_after",),
                severity="warning",
            )


def _public_key_ok(value: Any) -> bool:
    if not isinstance(value, str) or not value.startswith(PUBLIC_KEY_PREFIX):
        return False
    try:
        raw = base64.b64decode(value[len(PUBLIC_KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32
