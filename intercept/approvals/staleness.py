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

import os
import stat
from collections import defaultdict

from intercept.policy import Policy, PolicyError
from intercept.policy.load import parse_policy
from intercept.store.approvals import ApprovalRecord
from intercept.store.instances import InstanceRecord

STALE = "stale (rule changed)"
MAX_POLICY_BYTES = 1 << 20  # a policy file larger than this is not read here (it tells nothing)


def _read_small_file(path: str) -> str | None:
    """The text of a regular file of at most MAX_POLICY_BYTES, or None; never blocks (the path
    comes from the database, which anyone who can write the state dir can edit)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_POLICY_BYTES:
            return None
        data = os.read(fd, MAX_POLICY_BYTES + 1)
        return data.decode("utf-8") if len(data) <= MAX_POLICY_BYTES else None
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def rule_digests(policy: Policy) -> frozenset[str]:
    """The digest of every rule in the policy."""
    return frozenset(rule.digest for tool in policy.tools.values() for rule in tool.rules)


class RuleCheck:
    """Judges records against the rules of the given running instances (policy files read once)."""

    def __init__(self, running: list[InstanceRecord]) -> None:
        self._by_server: dict[str, list[InstanceRecord]] = defaultdict(list)
        for instance in running:  # by name and command: one name may be shared by different servers
            self._by_server[instance.server].append(instance)
        self._digests: dict[tuple[str, str], frozenset[str] | None] = {}

    def _enforced(self, instance: InstanceRecord) -> frozenset[str] | None:
        """The rule digests the instance enforces, or None if its policy file no longer says."""
        key = (instance.config, instance.policy_digest)
        if key not in self._digests:
            text = _read_small_file(instance.config)
            try:
                policy = parse_policy(text, instance.config) if text is not None else None
            except PolicyError:
                policy = None
            matches = policy is not None and policy.digest == instance.policy_digest
            self._digests[key] = rule_digests(policy) if matches and policy is not None else None
        return self._digests[key]

    def stale(self, record: ApprovalRecord) -> bool:
        """True when no running proxy of the record's server has its rule any more."""
        if record.status not in ("pending", "approved"):
            return False
        instances = [i for i in self._by_server.get(record.server, ()) if record.command in (None, i.command)]
        if not instances:
            return False
        for instance in instances:
            enforced = self._enforced(instance)
            if enforced is None or record.rule_digest in enforced:
                return False
        return True
