"""What a deciding channel (the CLI, the console) brings to `decisions.decide`: the policy a
request was made under, and a signer holding the approver's private key.

The policy is the one given with `-c`, or else the one archived under the request's policy
digest in the state dir (every policy a proxy loads is archived there), so the CLI needs no
`-c` to know who may decide. That check is early and for people: the check that counts is the
proxy's own, at consume time, against the policy it enforces (`vote_check`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from intercept.approvals.decisions import PolicyOf, Signer
from intercept.policy.model import Policy
from intercept.store.approvals import ApprovalRecord, DecisionRefused


def policy_source(state_dir: Path, given: Policy | None = None) -> PolicyOf:
    """`given` for every request, else each request's archived policy (cached by digest)."""
    cache: dict[str, Policy | None] = {}

    def policy_of(record: ApprovalRecord) -> Policy | None:
        if given is not None:
            return given
        digest = record.policy_revision
        if digest not in cache:
            try:
                from intercept.audit.policy_archive import archived_policy
            except ImportError:  # TODO(merge): the archive lands with the audit commands
                return None

            try:
                cache[digest] = archived_policy(state_dir, digest)
            except ValueError as exc:  # a corrupt archive file: say so, decide nothing
                raise DecisionRefused(f"the archived policy {digest[:12]} cannot be read: {exc}") from None
        return cache[digest]

    return policy_of


def key_signer(key_file: Path | None, passphrase: Callable[[str], Callable[[], bytes]]) -> Signer:
    """Signs with the approver's private key: `key_file`, or their default key path; an
    encrypted key asks `passphrase(actor)()` (a prompt, a file, or a refusal for the console)."""

    def sign(actor: str, payload: bytes) -> str:
        from intercept.approvals import approver_keys

        try:
            path = key_file.expanduser() if key_file is not None else approver_keys.default_key_path(actor)
            private_key = approver_keys.load_private_key(path, passphrase(actor))
        except approver_keys.ApproverKeyError as exc:  # no key, wrong passphrase, ...: one line, nothing decided
            raise DecisionRefused(str(exc)) from None
        return approver_keys.sign(private_key, payload)

    return sign
