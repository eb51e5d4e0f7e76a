"""What a deciding channel (the CLI, the console) brings to `decisions.decide`: the policy a
request was made under, and a signer holding the approver's private key.

The policy is the one given with `-c`, or else the one archived under the request's policy
digest in the state dir (a proxy archives every policy it loads before it makes a request under
it), so the CLI needs no `-c` to know who may decide. A request whose policy is not archived (made
by an older intercept) is decided unchecked, unless the state dir's archived policies name
approvers: then its archive was lost or removed, and the decision is refused. That check is early and for people: the check that counts is the
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
            from intercept.audit.policy_archive import PolicyArchiveError, archived_policy

            try:
                cache[digest] = archived_policy(state_dir, digest)
            except PolicyArchiveError as exc:  # edited or damaged: say so, decide nothing
                raise DecisionRefused(f"the archived policy {digest[:12]} cannot be used: {exc}") from None
            if cache[digest] is None and _approvers_in_use(state_dir):
                raise DecisionRefused(
                    f"the policy approval {record.id} was made under ({digest[:12]}) is not archived, and policies "
                    "of this state dir name approvers, so who may decide is unknown; pass -c with the policy file "
                    "the proxy runs"
                )
        return cache[digest]

    return policy_of


def _approvers_in_use(state_dir: Path) -> bool:
    """Whether any policy archived in the state dir names approvers (then a request whose own
    policy is missing is not decided unchecked: its archive was lost or removed). Unreadable
    archives count as naming them."""
    from intercept.audit.policy_archive import PolicyArchiveError, archived_policy, list_archived_policies

    try:
        for info in list_archived_policies(state_dir):
            policy = archived_policy(state_dir, info.digest) if not info.problem else None
            if info.problem or (policy is not None and policy.approvers):
                return True
    except PolicyArchiveError:
        return True
    return False


def key_signer(
    key_file: Path | None, passphrase: Callable[[str], Callable[[], bytes]], *, key_dir: Path | None = None
) -> Signer:
    """Signs with the approver's private key: `key_file`, or `<key_dir>/NAME.key`, or their
    default key path; an encrypted key asks `passphrase(actor)()` (a prompt, a file, or a
    refusal for the console)."""

    def sign(actor: str, payload: bytes) -> str:
        from intercept.approvals import approver_keys

        try:
            if key_file is not None:
                path = key_file.expanduser()
            elif key_dir is not None:
                path = key_dir / (approver_keys.check_name(actor) + approver_keys.KEY_FILE_SUFFIX)
            else:
                path = approver_keys.default_key_path(actor)
            private_key = approver_keys.load_private_key(path, passphrase(actor))
        except approver_keys.ApproverKeyError as exc:  # no key, wrong passphrase, ...: one line, nothing decided
            raise DecisionRefused(str(exc)) from None
        return approver_keys.sign(private_key, payload)

    return sign
