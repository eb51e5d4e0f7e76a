"""What to do with a call that policy says needs a human: consume, reuse, refuse or request.

One IMMEDIATE transaction per call, so N proxies retrying the same approved call at once see
exactly one `consumed` winner. Any store failure refuses the call with the reason (fail closed).
The transactions run on the proxy's store thread (`store.worker`); the gate's methods are called
on the event loop, which records the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from intercept.approvals.channels import RequestListener
from intercept.approvals.fingerprint import UnfingerprintableCall, call_fingerprint
from intercept.approvals.redact import redact
from intercept.approvals.requester import client_label, requester_fields
from intercept.approvals.vote_check import Refusal, check_approval, rule_scope_text
from intercept.approvals.who_may_decide import CallFacts, arguments_sha256
from intercept.audit.events import EventLog
from intercept.audit.hashing import ArgumentHasher
from intercept.audit.receipts import NO_RECEIPT, Appended, Receipts
from intercept.engine import ToolCall
from intercept.policy.model import Policy, Rule
from intercept.store.approvals import ApprovalRecord, ApprovalStore
from intercept.store.database import LazyConnection, StoreUnavailable
from intercept.store.timestamps import rfc3339
from intercept.store.votes import votes_of
from intercept.store.worker import StoreWorker, arm, deadline_after

if TYPE_CHECKING:
    from intercept.audit.policy_archive import PolicyArchiver

log = logging.getLogger("intercept")


@dataclass(frozen=True, slots=True)
class Consumed:
    """An approval was consumed: forward the call (given back only if it provably never starts).
    `receipt`: the receipt of this run (or why none could be written)."""

    approval: ApprovalRecord
    receipt: Appended = NO_RECEIPT


@dataclass(frozen=True, slots=True)
class AskHuman:
    """No usable approval: a human must decide on `approval` (new, or `reused` while pending)."""

    approval: ApprovalRecord
    reused: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    """The call is refused: a human denied it, or the store cannot be used."""

    message: str
    approval: ApprovalRecord | None = None


@dataclass(frozen=True, slots=True)
class Limited(Refuse):
    """No new request: `pending` requests of this tool (`scope` "tool") or server ("server") wait
    already, the policy's `max_pending` (the fatigue guard)."""

    scope: str = "tool"
    pending: int = 0
    limit: int = 0


@dataclass(frozen=True, slots=True)
class Voided(Refuse):
    """The call's approval was refused by the proxy's own check of its votes (`vote_check`) and
    voided; `why` says what did not hold. A call is refused for it once; its retry asks anew."""

    why: str = ""


GateOutcome = Consumed | AskHuman | Refuse


class RunsTaken:
    """How many runs this proxy took of each approval it consumed where approvers decide: the
    database says how many are left, but anyone who can write it can put a used approval back
    (`status`, `uses_left`), and signed votes stay valid for the approval's window. This memory
    cannot be edited from outside the process, so a proxy never runs one approval more often than
    its scope allows; what remains (a replay through another proxy, or after a restart, within the
    window) is named in SECURITY.md."""

    def __init__(self) -> None:
        self._taken: dict[str, int] = {}

    def beyond(self, approval_id: str, allowed: int | None) -> Refusal | None:
        taken = self._taken.get(approval_id, 0)
        if allowed is not None and taken >= allowed:
            return Refusal(f"this proxy already ran it {taken} time(s), all its scope allows; the database was edited")
        return None

    def took(self, approval_id: str) -> None:
        self._taken[approval_id] = self._taken.get(approval_id, 0) + 1

    def gave_back(self, approval_id: str) -> None:
        if self._taken.get(approval_id, 0) > 0:
            self._taken[approval_id] -= 1


def escalating_rules(policy: Policy) -> tuple[Rule, ...]:
    """The policy's `require_approval` rules with `escalate_after`."""
    return tuple(
        rule
        for tool_policy in policy.tools.values()
        for rule in tool_policy.rules
        if rule.action == "require_approval" and rule.who_decides.escalate_after_s is not None
    )


def new_approval_id() -> str:
    """`apr_` and 128 random bits in lowercase hex: no `-` or `_`, so a double-click selects it whole."""
    return "apr_" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """The upstream as approvals see it: `name` for people, `identity` for binding (see
    `proxy.server_identity`), `command` (JSON, secrets redacted) for approvers."""

    name: str
    identity: str
    command: str


class ApprovalGate:
    """Connects lazily to the state database (from the store thread); reconnects after a failure."""

    def __init__(
        self, state_dir: Path, upstream: UpstreamServer, events: EventLog, hasher: ArgumentHasher, worker: StoreWorker
    ) -> None:
        self.state_dir = state_dir
        self.upstream = upstream
        self.server = upstream.name
        self.events = events
        self.hasher = hasher
        self.worker = worker
        self.listeners: list[RequestListener] = []  # told of every new request (webhook, ...)
        self._connection = LazyConnection(state_dir)
        self._escalating = False  # a look for requests to escalate is queued on the store thread
        # The policy versions loaded and not archived yet: written before a request is made, so
        # whoever decides it can read who may (the session's background job writes them too).
        self.archiver: PolicyArchiver | None = None
        self._runs = RunsTaken()  # on the store thread only
        self.receipts = Receipts(state_dir)  # signed with the proxy key, loaded once a request exists
        self._warming = False

    def _open(self, deadline: float | None = None) -> ApprovalStore:
        connection = self._connection.get()
        arm(connection, deadline)
        return ApprovalStore(connection)

    def _drop(self, after: StoreUnavailable | None = None) -> None:
        self._connection.drop(after)

    async def check(
        self, policy: Policy, call: ToolCall, rule: Rule, now_s: float, deadline: float, client: str | None = None
    ) -> GateOutcome:
        """Consume, reuse, refuse or request, within `deadline` (monotonic); refused if the store
        cannot answer by then. The agent is the policy's (`Policy.agent`, bound to `--agent`) and
        is part of the call's fingerprint; `client` is the client's self-given name, recorded on a
        new request and its events, never part of what is approved."""
        agent = policy.agent.name
        try:
            fingerprint = call_fingerprint(
                self.hasher,
                self.upstream.identity,
                call.name,
                call.arguments,
                rule.digest,
                rule.scope.any_arguments,
                agent,
            )
        except UnfingerprintableCall as exc:
            return Refuse(f"Approval cannot be requested for {call.name}: {exc}")
        if not self._warming:  # receipts need the proxy key: load it (and cryptography) off the loop, once
            self._warming = True
            threading.Thread(target=self.receipts.warm_up, name="intercept-receipts-key", daemon=True).start()
        waiter = _Waiter(asyncio.get_running_loop())
        who = requester_fields(agent, client_label(client))
        try:
            outcome, expired = await self.worker.run(
                self._check_for, waiter, policy, call, rule, fingerprint, now_s, deadline, who
            )
        except asyncio.CancelledError:
            if waiter.abandon() is not None:  # decided before we stopped waiting: give back here
                self.give_back(waiter.consumed_id(), call.arguments, now_s, ABANDONED)  # type: ignore[arg-type]
            raise
        for expired_id in expired:
            self.events.emit("approval_expired", approval_id=expired_id, tool=call.name, server=self.server, **who)
        self._emit(outcome, call, policy, who, rule)
        return outcome

    def _check_for(
        self,
        waiter: _Waiter,
        policy: Policy,
        call: ToolCall,
        rule: Rule,
        fingerprint: str,
        now_s: float,
        deadline: float,
        who: dict[str, Any] | None = None,
    ) -> tuple[GateOutcome, list[str]]:
        """On the store thread: the check, and if the call stopped waiting meanwhile (its task was
        cancelled, e.g. when the proxy exits and no event loop will run the give-back), the
        approval it consumed is given back right here: the call never starts."""
        result = self._check_in_store(policy, call, rule, fingerprint, now_s, deadline, who)
        if waiter.finish(result[0]) and isinstance(result[0], Consumed):
            approval_id = result[0].approval.id
            done = self._give_back_now(approval_id, call.arguments, now_s, ABANDONED)
            with contextlib.suppress(RuntimeError):  # the loop is closed at exit: the history row stays
                waiter.loop.call_soon_threadsafe(self._given_back, approval_id, ABANDONED, done)
        return result

    def _check_in_store(
        self,
        policy: Policy,
        call: ToolCall,
        rule: Rule,
        fingerprint: str,
        now_s: float,
        deadline: float,
        who: dict[str, Any] | None = None,
    ) -> tuple[GateOutcome, list[str]]:
        """On the store thread: the outcome and the ids of the approvals that expired on the way."""
        expired: list[str] = []
        if self.archiver is not None and self.archiver.waiting:  # no request before its policy is archived
            self.archiver.write_waiting()
        request = self._new_request(
            policy, call, rule, fingerprint, now_s, who or {}
        )  # before the lock: hold it briefly
        try:
            store = self._open(deadline)
            with store.transaction():
                outcome = self._decide(store, policy, call, rule, fingerprint, now_s, expired, request)
        except StoreUnavailable as exc:
            self._drop(exc)
            log.error("approval store unavailable, refusing %s: %s", call.name, exc)
            return Refuse(f"Approval required for {call.name}, but the approval store is unavailable ({exc})"), []
        return outcome, expired

    def _decide(
        self,
        store: ApprovalStore,
        policy: Policy,
        call: ToolCall,
        rule: Rule,
        fingerprint: str,
        now_s: float,
        expired: list[str],
        request: ApprovalRecord,
    ) -> GateOutcome:
        """In the transaction: expire, consume, refuse if denied, reuse a pending request or insert `request`."""
        expired.extend(store.expire_stale(now_s, fingerprint))
        candidate = store.consumable(fingerprint, now_s)
        votes = votes_of(store, candidate.id) if candidate is not None else []  # checked, then in the receipt
        if candidate is not None and policy.approvers:
            facts = CallFacts(
                self.server,
                call.name,
                None if rule.scope.any_arguments else arguments_sha256(call.arguments),
                policy.agent.name,
            )
            refusal = check_approval(policy, rule, candidate, votes, now_s, facts)
            if refusal is None:
                refusal = self._runs.beyond(candidate.id, rule.scope.uses)
            if refusal is not None:
                store.void(candidate.id, now_s, refusal.reason)
                if refusal.tampered:
                    return Voided(
                        f"Approval {candidate.id} for {call.name} failed the proxy's check ({refusal.reason}) and was "
                        "voided; the call needs a new approval",
                        candidate,
                        why=refusal.reason,
                    )
                expired.append(candidate.id)  # a genuine approval the policy no longer accepts: ask anew
                candidate = None
        consumed = store.take(candidate, now_s) if candidate is not None else None
        if consumed is not None:
            if policy.approvers:
                self._runs.took(consumed.id)
            return Consumed(consumed, self.receipts.append(store, "ran", consumed, votes, now_s))
        denied = store.find_denied(fingerprint, now_s)
        if denied is not None:
            reason = f": {denied.reason}" if denied.reason else ""
            lead = rule.on_deny or f"A human reviewer denied this call to {call.name}"
            return Refuse(f"{lead} (denied by {denied.decided_by}{reason}; approval {denied.id})", denied)
        dedupe_since = now_s - policy.approvals.effective_dedupe_window_s
        pending = store.find_pending(fingerprint, now_s, dedupe_since)
        if pending is not None:
            store.count_request(pending.id, now_s)
            return AskHuman(pending, reused=True)
        limited = self._over_limit(store, policy, call, now_s)
        if limited is not None:
            return limited
        store.insert(request)
        return AskHuman(request, reused=False)

    def _over_limit(self, store: ApprovalStore, policy: Policy, call: ToolCall, now_s: float) -> Limited | None:
        """The fatigue guard: a new request beyond `approvals.max_pending` is refused, unrecorded."""
        settings = policy.approvals
        for scope, limit, tool in (
            ("tool", settings.max_pending_per_tool, call.name),
            ("server", settings.max_pending_per_server, None),
        ):
            if limit is None:
                continue
            pending = store.count_pending(self.server, tool, now_s)
            if pending >= limit:
                what = f"{call.name} on {self.server}" if tool is not None else self.server
                return Limited(
                    f"Too many pending approvals for {what} ({pending}, the policy allows {limit}); "
                    "a human must decide or expire them first",
                    scope=scope,
                    pending=pending,
                    limit=limit,
                )
        return None

    def _new_request(
        self, policy: Policy, call: ToolCall, rule: Rule, fingerprint: str, now_s: float, who: dict[str, Any]
    ) -> ApprovalRecord:
        """The record a new request would get (made whether or not it is needed: outside the lock)."""
        timeout_s = rule.approval_timeout_s or policy.approvals.timeout_s
        return ApprovalRecord(
            id=new_approval_id(),
            fingerprint=fingerprint,
            server=self.server,
            tool=call.name,
            args_hash=self.hasher.arguments(call.arguments),
            args_redacted=json.dumps(redact(call.arguments), ensure_ascii=False),
            args_exact=exact_arguments(call.arguments),
            command=self.upstream.command,
            rule=rule.name,
            rule_digest=rule.digest,
            policy_revision=policy.digest,
            status="pending",
            timeout_s=timeout_s,
            created_at=rfc3339(now_s),
            expires_at=rfc3339(now_s + timeout_s),
            scope=rule_scope_text(rule),
            agent=who.get("agent"),
            client=who.get("client"),
        )

    def _emit(self, outcome: GateOutcome, call: ToolCall, policy: Policy, who: dict[str, Any], rule: Rule) -> None:
        common = {"tool": call.name, "server": self.server, **who}
        if rule.severity is not None:  # the rule's own, for the events of its requests
            common["severity"] = rule.severity
        if isinstance(outcome, Consumed):
            log.info("approval %s consumed: tool=%s runs once", outcome.approval.id, call.name)
            if outcome.receipt.problem is not None:
                self.events.emit(
                    "receipt_failed",
                    approval_id=outcome.approval.id,
                    reason=outcome.receipt.problem,
                    **{**common, "severity": "critical"},
                )
            self.events.emit("approval_consumed", approval_id=outcome.approval.id, **common, **outcome.receipt.fields())
        elif isinstance(outcome, Voided):
            log.error(
                "approval %s refused and voided: %s", outcome.approval.id if outcome.approval else "?", outcome.why
            )
            self.events.emit(
                "approval_tampered",
                approval_id=outcome.approval.id if outcome.approval else None,
                reason=outcome.why,
                **{**common, "severity": "critical"},
            )
        elif isinstance(outcome, Limited):
            log.warning("no new approval request for %s: %s", call.name, outcome.message)
            self.events.emit(
                "approvals_limited", scope=outcome.scope, pending=outcome.pending, limit=outcome.limit, **common
            )
        elif isinstance(outcome, AskHuman):
            kind = "approval_reused" if outcome.reused else "approval_requested"
            approval = outcome.approval
            self.events.emit(kind, approval_id=approval.id, rule=approval.rule, args_hash=approval.args_hash, **common)
            if not outcome.reused:
                for listener in self.listeners:
                    try:
                        listener.approval_requested(approval, policy)
                    except Exception:  # a channel never fails the call it announces
                        log.exception("approval channel %s failed on %s", type(listener).__name__, approval.id)

    def escalate(self, policy: Policy) -> None:
        """Look, on the store thread, for requests of this server that waited their rule's
        `escalate_after` undecided; each one found and marked first here is recorded as
        `approval_escalated` and announced again to the listeners (the webhook). Returns at once;
        one look at a time."""
        rules = escalating_rules(policy)
        if not rules or self._escalating:
            return
        self._escalating = True
        now_s = time.time()

        def done(escalated: list[tuple[ApprovalRecord, Rule]]) -> None:
            self._escalating = False
            for record, rule in escalated:
                roles = sorted(rule.who_decides.escalate_to)
                log.warning("approval %s escalated: role %s may decide it now", record.id, " or ".join(roles))
                self.events.emit(
                    "approval_escalated", approval_id=record.id, tool=record.tool, server=self.server, roles=roles
                )
                for listener in self.listeners:
                    try:
                        listener.approval_escalated(record, policy, roles)
                    except Exception:  # a channel never fails the proxy
                        log.exception("approval channel %s failed on %s", type(listener).__name__, record.id)

        self.worker.spawn(lambda: self._escalate_in_store(rules, now_s), then=done)

    def _escalate_in_store(self, rules: tuple[Rule, ...], now_s: float) -> list[tuple[ApprovalRecord, Rule]]:
        escalated: list[tuple[ApprovalRecord, Rule]] = []
        try:
            store = self._open(deadline_after())
            with store.transaction():
                for rule in rules:
                    who = rule.who_decides
                    assert who.escalate_after_s is not None
                    for record in store.escalation_due(self.server, rule.digest, now_s - who.escalate_after_s, now_s):
                        if store.mark_escalated(record.id, now_s, " or ".join(sorted(who.escalate_to))):
                            escalated.append((record, rule))
        except StoreUnavailable as exc:
            self._drop(exc)
            self._escalating = False
            log.warning("could not look for requests to escalate: %s", exc)
            return []
        return escalated

    async def decide_in_band(self, approval_id: str, approve: bool, actor: str, reason: str | None) -> None:
        """A decision the client's human made in-band (elicitation), through the same path as the
        CLI's (`approvals.decisions`); its event is recorded here, on the event loop. A record
        decided otherwise meanwhile, or a store that cannot be used, changes nothing: the gate's
        next check says what holds."""
        from intercept.approvals.decisions import decide
        from intercept.store.approvals import DecisionRefused

        recorded: list[tuple[str, dict[str, Any]]] = []

        class _Collect:
            def emit(self, event_type: str, **fields: Any) -> None:
                recorded.append((event_type, fields))

        def job() -> None:
            store = self._open(deadline_after())
            decide(
                store,
                _Collect(),
                approval_id,
                approve=approve,
                actor=actor,
                reason=reason,
                channel="elicitation",
                now_s=time.time(),
                receipts=self.receipts,
            )

        try:
            await self.worker.run(job)
        except (DecisionRefused, StoreUnavailable) as exc:
            log.warning("in-band decision on approval %s not applied: %s", approval_id, exc)
        for event_type, fields in recorded:
            self.events.emit(event_type, **fields)

    async def end_undecided(self, approval: ApprovalRecord, on_timeout: str) -> bool:
        """A held call's request that nobody decided in time ends with the call (`on_timeout`
        deny or allow): pending -> expired, recorded as `approval_timed_out`. False if a human
        decided it meanwhile or the store cannot say (the gate's next check tells what holds)."""
        why = f"nobody decided while the call was held (on_timeout: {on_timeout})"
        ended = await self.worker.run(
            lambda: self._change_status(
                lambda store: store.expire_if_pending(approval.id, time.time(), why),
                f"could not end approval {approval.id} at its call's timeout",
            )
        )
        if ended:
            self.events.emit(
                "approval_timed_out",
                approval_id=approval.id,
                tool=approval.tool,
                server=self.server,
                on_timeout=on_timeout,
                **requester_fields(approval.agent, approval.client),
            )
        return bool(ended)

    def read_statuses(self, approval_ids: list[str]) -> dict[str, str]:
        """On the store thread: the status of each id (for held calls, `approvals.decision_watch`)."""
        try:
            return self._open(deadline_after()).statuses(approval_ids, time.time())
        except StoreUnavailable:
            self._drop()
            raise

    def _change_status(self, change: Callable[[ApprovalStore], bool], failure: str) -> bool | None:
        """Run one conditional status change in its own transaction; None if the store failed."""
        try:
            store = self._open()
            with store.transaction():
                return change(store)
        except StoreUnavailable as exc:
            self._drop()
            log.error("%s (%s)", failure, exc)
            return None

    def give_back(self, approval_id: str, arguments: dict[str, Any], now_s: float, why: str) -> None:
        """Re-arm a consumed approval whose call provably never started (never forwarded, or the
        upstream refused the request itself: parse error, invalid request, method not found).
        Queued on the store thread at once; the event is recorded when it is done."""
        self.worker.spawn(
            lambda: self._give_back_now(approval_id, arguments, now_s, why),
            then=lambda done: self._given_back(approval_id, why, done),
        )

    def _give_back_now(self, approval_id: str, arguments: dict[str, Any], now_s: float, why: str) -> bool | None:
        """On the store thread: re-arm the approval (True if it was consumed and now is not)."""
        args_exact = exact_arguments(arguments)
        done = self._change_status(
            lambda store: store.give_back(approval_id, now_s, why, args_exact),
            f"could not give back approval {approval_id}: it stays consumed",
        )
        if done:
            self._runs.gave_back(approval_id)
        return done

    def _given_back(self, approval_id: str, why: str, done: bool | None) -> None:
        """On the event loop: record a give-back that happened."""
        if done:
            log.info("approval %s given back: %s", approval_id, why)
            self.events.emit("approval_given_back", approval_id=approval_id, reason=why, server=self.server)


ABANDONED = "the call stopped waiting before it was forwarded"


class _Waiter:
    """Who gives back an approval consumed for a call that stopped waiting: whichever of the
    event loop (the call is abandoned) and the store thread (the check is done) comes second,
    exactly once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop  # where the give-back is recorded, while it still runs
        self._lock = threading.Lock()
        self._abandoned = False
        self._outcome: GateOutcome | None = None

    def finish(self, outcome: GateOutcome) -> bool:
        """The store thread is done; True if the call was abandoned first (give back now)."""
        with self._lock:
            self._outcome = outcome
            return self._abandoned

    def abandon(self) -> GateOutcome | None:
        """The call stops waiting; the outcome if the check was already done (a consumed
        approval is then the event loop's to give back), else None."""
        with self._lock:
            self._abandoned = True
            outcome = self._outcome
        return outcome if isinstance(outcome, Consumed) else None

    def consumed_id(self) -> str | None:
        outcome = self._outcome
        return outcome.approval.id if isinstance(outcome, Consumed) else None


def exact_arguments(arguments: dict[str, Any]) -> str:
    """The arguments as the approver must see them: every value, in full."""
    return json.dumps(arguments, ensure_ascii=False)
