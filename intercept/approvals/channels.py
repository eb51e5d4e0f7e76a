"""What a channel that tells humans about approval requests implements (STYLE.md: one small
module per channel behind one interface).

The gate calls every listener on the event loop when it opens a new request (not when a pending
one is reused): a listener must return at once and never fail the call (the webhook queues the
POST on its own thread). Decisions come back through `approvals.decisions`, whatever the channel.
"""

from __future__ import annotations

from typing import Protocol

from intercept.policy.model import Policy
from intercept.store.approvals import ApprovalRecord


class RequestListener(Protocol):
    def approval_requested(self, approval: ApprovalRecord, policy: Policy) -> None:
        """A new approval request was opened under `policy` (the one the call was judged by)."""

    def approval_escalated(self, approval: ApprovalRecord, policy: Policy, roles: list[str]) -> None:
        """Nobody decided `approval` within its rule's `escalate_after`: `roles` may decide it now too."""
