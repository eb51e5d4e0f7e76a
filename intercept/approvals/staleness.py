"""Whether a pending or approved request can still be used, judged by the rules the running proxies
of its server enforce.

An approval binds the digest of the rule that asked for it. After a reload edits or removes that
rule, the identical call no longer reaches it, so the approval can never be consumed: the CLI shows
such a request as `stale (rule changed)` and refuses to approve it. Each live instance records its
config path and the digest of the policy it enforces; the file is read again here and used only if
it is that very policy (a rejected or not yet reloaded edit tells nothing). Without a running proxy
of the server, or with a policy file that cannot be matched, a request is not called stale: it
might still be used.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from intercept.policy import Policy, PolicyError
from intercept.policy.load import read_policy
from intercept.store.approvals import ApprovalRecord
from intercept.store.instances import InstanceRecord

STALE = "stale (rule changed)"


def rule_digests(policy: Policy) -> frozenset[str]:
    """The digest of every rule in the policy."""
    return frozenset(rule.digest for tool in policy.tools.values() for rule in tool.rules)


class RuleCheck:
    """Judges records against the rules of the given running instances (policy files read once)."""

    def __init__(self, running: list[InstanceRecord]) -> None:
        self._by_server: dict[str, list[InstanceRecord]] = defaultdict(list)
        for instance in running:
            self._by_server[instance.server].append(instance)
        self._digests: dict[tuple[str, str], frozenset[str] | None] = {}

    def _enforced(self, instance: InstanceRecord) -> frozenset[str] | None:
        """The rule digests the instance enforces, or None if its policy file no longer says."""
        key = (instance.config, instance.policy_digest)
        if key not in self._digests:
            try:
                policy = read_policy(Path(instance.config))[0]
            except PolicyError:
                policy = None
            matches = policy is not None and policy.digest == instance.policy_digest
            self._digests[key] = rule_digests(policy) if matches and policy is not None else None
        return self._digests[key]

    def stale(self, record: ApprovalRecord) -> bool:
        """True when no running proxy of the record's server has its rule any more."""
        if record.status not in ("pending", "approved"):
            return False
        instances = self._by_server.get(record.server)
        if not instances:
            return False
        for instance in instances:
            enforced = self._enforced(instance)
            if enforced is None or record.rule_digest in enforced:
                return False
        return True
