"""The `tools/call` decision, top to bottom: one call in, a typed outcome out.

`CallHandler.handle` takes a call sent on its own (request id, tool, arguments, its params for
the era of the reply) and the policy in force, and says what happens to it:

- `Forward`: send it upstream as it is; if it took an approval or counters, `taken` says what
  happens when the reply comes (`Taken`).
- `Answer`: send the client this message instead (a deny, -32003 for approval, an error).
- `Pending`: the state store must be asked (counters, approvals); awaiting `decide(ticket)`
  yields a `Forward` or an `Answer`, within the ticket's deadline (fail closed after it).

In that order a call goes: argument types, then the engine (`decide`, no store: most calls end
here), then counters (read, evaluate and reserve in one transaction), then the approval gate
(consume, reuse, refuse or request), then the counters of an approved call. Every outcome is
recorded in the event log here. Anything the engine does not allow is refused: `allow` and
`require_approval` are the only verdicts that go on.

It knows no bytes, pipes or JSON-RPC ids: the interceptor keeps the envelope, ids, batches,
cancels and tools/list, and turns these outcomes into what the relay writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from intercept.approvals.decision_watch import DecisionWatch
from intercept.approvals.gate import ApprovalGate, AskHuman, Consumed, GateOutcome
from intercept.audit.events import EventLog
from intercept.counters.call_counters import (
    AsyncCallCounters,
    CounterAsk,
    CountOutcome,
    IncrementRefused,
    Judged,
    OverLimit,
)
from intercept.counters.rules import counted_rules
from intercept.counters.store import Reservation
from intercept.engine import Decision, ToolCall, evaluate
from intercept.engine.decision import ALLOW
from intercept.engine.evaluate import decide
from intercept.policy.model import MAX_APPROVAL_WAIT_S, Policy, Rule
from intercept.proxy import jsonrpc
from intercept.proxy.approval_reply import approval_required_error
from intercept.proxy.elicitation import (
    Answer as Confirmation,
)
from intercept.proxy.elicitation import (
    ClientInfo,
    HandshakeElicitor,
    InBandAnswer,
    RequestStates,
    confirmation_request,
    input_required_result,
    stateless_client,
)
from intercept.proxy.era import denied_result, is_stateless_request
from intercept.proxy.outcomes import INTERNAL_ERROR_TEXT
from intercept.proxy.tool_schemas import FINE, TypeVerdict
from intercept.store.worker import deadline_after

log = logging.getLogger("intercept")

Message = dict[str, Any]
FailMode = Literal["closed", "open"]
INTERNAL_POLICY_ERROR = "Internal policy error"
ARGUMENT_TYPE_RULE = "(argument type)"
INCREMENT_RULE = "(increment_from)"
STORE_RULE = "(state store)"
# Error codes with which the upstream refuses a request before running anything: only these give
# an approval or counters back. Any other outcome (another error, a cancel, silence, an exit) may
# follow side effects, so what the call took stays taken.
NEVER_STARTED_CODES = frozenset({jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST, jsonrpc.METHOD_NOT_FOUND})
PROGRESS_INTERVAL_S = 5.0  # a held call's progress notifications, when the client gave a token
# Calls of one session waiting for a human at once (held, or asked in the client). Each keeps its
# place among the relay's MAX_DECIDING (128) calls on the side, beyond which client input pauses:
# at half of it, the client's answers and cancels are still read. Calls beyond are answered as
# without a wait (-32003).
MAX_WAITING_FOR_HUMAN = 64


@dataclass(slots=True)
class Ticket:
    """A call waiting for the state store (or a human): `deadline` (monotonic) bounds its next
    store work; `cancelled` is set by the interceptor when the client cancels it meanwhile, and
    `stop_signal` is done then, or when the wait for a human must end (the upstream or the client
    went away)."""

    deadline: float
    cancelled: bool = False
    ended: bool = False  # `end_wait` was called: a wait that has not started yet never starts
    _stop: asyncio.Future[None] | None = None

    def stop_signal(self) -> asyncio.Future[None]:
        if self._stop is None:
            self._stop = asyncio.get_running_loop().create_future()
            if self.ended:
                self._stop.set_result(None)
        return self._stop

    def cancel(self) -> None:
        self.cancelled = True
        self.end_wait()

    def end_wait(self) -> None:
        self.ended = True
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the call upstream as the client sent it; `taken` is what it took, if anything."""

    taken: Taken | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """Send the client this message instead of forwarding the call."""

    message: Message


Done = Callable[["Forward | Answer"], None]  # told once what a pending call comes to


@dataclass(frozen=True, slots=True)
class Pending:
    """The decision needs the state store: `start(ticket, done)` starts it, and `done` is told
    once, with a Forward or an Answer, within the ticket's deadline (fail closed after it)."""

    start: Callable[[Ticket, Done], None]


@dataclass(frozen=True, slots=True)
class NobodyDecided:
    """The call was held (or its human asked in the client) and nobody decided in time; the rule's
    `on_timeout` is deny or allow."""

    asking: AskHuman


CallOutcome = Forward | Answer | Pending
FORWARD = Forward()


class Taken:
    """What a forwarded call took: a consumed approval and counter reservations, and what happens
    to them when the reply comes. They are given back only if the call provably never started:
    it could not be forwarded, or the upstream refused the request itself (NEVER_STARTED_CODES).
    A cancel, silence, an upstream exit, any other error and `isError: true` keep them taken:
    the tool may have acted. The call is recorded `allowed` when it is forwarded (`forwarded`),
    not before: registering its reply can still fail (too many requests awaiting an answer)."""

    __slots__ = ("_handler", "approval_id", "call", "reserved", "rule")

    def __init__(
        self,
        handler: CallHandler,
        call: ToolCall,
        approval_id: str | None,
        reserved: tuple[Reservation, ...],
        rule: str = "",
    ) -> None:
        self._handler = handler
        self.call = call
        self.approval_id = approval_id
        self.reserved = reserved
        self.rule = rule  # the rule that asked for approval, if one did

    def forwarded(self) -> None:
        """The call went upstream under a watched id: record it."""
        if self.approval_id is None:
            self._handler._record(self.call, "allowed", self.rule)
        else:
            self._handler._record(self.call, "allowed", self.rule, approval_id=self.approval_id)

    def on_reply(self, reply: Message) -> None:
        """The upstream answered: give back if it refused the request itself."""
        error = reply.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if type(code) is int and code in NEVER_STARTED_CODES:
            self.give_back(f"the upstream refused the request (error {code}): the tool did not start")

    def give_back(self, why: str) -> None:
        """Return the approval (re-armed) and the counters: the call never started."""
        self._handler.counters.give_back(self.reserved, why)
        if self.approval_id is not None:
            self._handler.gate.give_back(self.approval_id, self.call.arguments, time.time(), why)


class CallHandler:
    """Decides the calls of one session; see the module docstring for the path a call takes."""

    def __init__(
        self,
        server_name: str,
        events: EventLog,
        gate: ApprovalGate,
        counters: AsyncCallCounters,
        fail_mode: FailMode = "closed",
        state_dir_hint: Path | None = None,
    ) -> None:
        self.server_name = server_name
        self.events = events
        self.gate = gate
        self.counters = counters
        self.fail_mode = fail_mode
        self.state_dir_hint = state_dir_hint
        # Why calls decided from now on cannot be forwarded ("" while they can): set by the interceptor.
        self.forwarding_closed: Callable[[], str] = lambda: ""
        # Asking a human while the call waits (set by the session and the interceptor):
        self.watch: DecisionWatch | None = None  # held calls (`wait`)
        self.elicitor: HandshakeElicitor | None = None  # handshake-era elicitation
        self.states: RequestStates | None = None  # stateless-era elicitation
        self.client = ClientInfo()  # what `initialize` said
        self.send_to_client: Callable[[Message], None] = lambda message: None
        self.waiting_for_human = 0  # calls held or asked in the client now (MAX_WAITING_FOR_HUMAN)
        self.policy_now: Callable[[], Policy | None] = lambda: None  # the policy in force (set by the interceptor)
        self._debug = log.isEnabledFor(logging.DEBUG)  # read once: the allowed-call path stays lean
        self._tasks: set[asyncio.Task[Forward | Answer]] = set()  # calls decided in tasks (`_run`)

    # -- one call ------------------------------------------------------------------------

    def handle(
        self,
        request_id: Any,
        tool: str,
        arguments: dict[str, Any],
        params: Message,
        policy: Policy,
        types: TypeVerdict = FINE,
        in_band: InBandAnswer | None = None,
    ) -> CallOutcome:
        """Decide a call sent on its own (`in_band`: its answer to our stateless-era confirmation). This runs for every call, so the usual case (allowed,
        no counter) takes the fewest steps; every check still runs on it."""
        if types.problem:
            return self._deny(request_id, ToolCall(tool, arguments), types.problem, params, ARGUMENT_TYPE_RULE)
        if policy.counted_tools and policy.uses_counters(tool):
            call = ToolCall(tool, arguments)
            return Pending(
                lambda ticket, done: self._count(request_id, call, params, policy, types.strict, ticket, in_band, done)
            )
        decision = decide(policy, tool, arguments, None, types.strict)
        verdict = decision.verdict
        if verdict == "allow":
            self.events.routine_call(self.server_name, tool, "allowed", arguments)
            if self._debug:
                log.debug("allowed tool=%s", tool)
            return FORWARD
        call = ToolCall(tool, arguments)
        if verdict == "require_approval":
            return Pending(
                lambda ticket, done: self._run(
                    self._gated(request_id, call, params, policy, decision, ticket, in_band=in_band), request_id, done
                )
            )
        return self._deny(request_id, call, decision.message, params, decision.rule_name, decision.rule)

    def allowed_outright(self, tool: str, arguments: dict[str, Any], policy: Policy) -> bool:
        """For a call whose argument types need no check and that uses no counter: if the engine
        allows it, record it allowed and say True (forward it as sent); else False, recording
        nothing (`handle` then decides it). The interceptor's fast path for the usual call."""
        if decide(policy, tool, arguments).verdict != "allow":
            return False
        self.events.routine_call(self.server_name, tool, "allowed", arguments)
        if self._debug:
            log.debug("allowed tool=%s", tool)
        return True

    def _count(
        self,
        request_id: Any,
        call: ToolCall,
        params: Message,
        policy: Policy,
        strict: bool,
        ticket: Ticket,
        in_band: InBandAnswer | None,
        done: Done,
    ) -> None:
        """Read the call's counters, evaluate and reserve, in one store transaction (with the calls
        queued meanwhile); `_counted` goes on from its outcome, with no task of its own."""
        ask = CounterAsk(policy, call, time.time(), ticket.deadline, strict)
        self.counters.count_then(
            ask, lambda outcome: self._counted(request_id, call, params, ask, outcome, ticket, in_band, done)
        )

    def _counted(
        self,
        request_id: Any,
        call: ToolCall,
        params: Message,
        ask: CounterAsk,
        outcome: CountOutcome | Exception,
        ticket: Ticket,
        in_band: InBandAnswer | None,
        done: Done,
    ) -> None:
        """What the call's counters said, and so what the call comes to; one needing approval goes
        on to the gate (then in a task: it may wait for the store again, or for a human)."""
        try:
            if isinstance(outcome, Exception):
                raise outcome
            decision, reserved = counters_verdict(ask, outcome, self.fail_mode)
            if decision.verdict == "require_approval":
                gated = self._gated(request_id, call, params, ask.policy, decision, ticket, ask.now_s, in_band)
                self._run(gated, request_id, done)
                return
            if decision.verdict != "allow":
                result = self._deny(request_id, call, decision.message, params, decision.rule_name, decision.rule)
            else:
                result = self._forward(request_id, call, ticket, None, reserved)
        except Exception:  # a bug must cost one call, never the session
            result = _internal_error(request_id)
        done(result)

    def _run(self, decision: Coroutine[Any, Any, Forward | Answer], request_id: Any, done: Done) -> None:
        """Decide in a task of its own (the gate's path: several store steps, maybe a human) and
        tell `done`; an error in it costs that call only."""
        task = asyncio.get_running_loop().create_task(decision)
        self._tasks.add(task)

        def finished(task: asyncio.Task[Forward | Answer]) -> None:
            self._tasks.discard(task)
            if task.cancelled():
                result: Forward | Answer = _internal_error(request_id, log_it=False)
            elif task.exception() is not None:
                result = _internal_error(request_id, task.exception())
            else:
                result = task.result()
            done(result)

        task.add_done_callback(finished)

    async def _gated(
        self,
        request_id: Any,
        call: ToolCall,
        params: Message,
        policy: Policy,
        decision: Decision,
        ticket: Ticket,
        now_s: float = 0.0,
        in_band: InBandAnswer | None = None,
    ) -> Forward | Answer:
        """Ask the approval gate (and, when the rule says so, a human while the call waits); an
        approval consumed, the call's counters are reserved too."""
        assert decision.rule is not None
        now_s = now_s or time.time()
        client = self.client_name(params)
        checked = await self.gate.check(policy, call, decision.rule, now_s, ticket.deadline, client)
        if isinstance(checked, AskHuman) and not ticket.cancelled:
            asked = await self._ask_human(request_id, call, params, policy, decision.rule, checked, ticket, in_band)
            if isinstance(asked, Answer):
                return asked
            if isinstance(asked, NobodyDecided):
                if not await self.gate.end_undecided(asked.asking.approval, decision.rule.on_timeout):
                    # decided at the last moment, or the store cannot say: the gate tells what holds
                    asked = await self._check_again(policy, call, decision.rule, ticket, client)
                elif decision.rule.on_timeout == "deny":
                    message = f"No human decided in time while the call was held (rule {decision.rule.name!r}: on_timeout deny)"
                    return self._deny(request_id, call, message, params, decision.rule_name, decision.rule)
                else:
                    log.warning(
                        "tool=%s runs unapproved: nobody decided in time (rule %s: on_timeout allow)",
                        call.name,
                        decision.rule_name,
                    )
                    ticket.deadline = deadline_after()  # held past its first bound: the store gets a fresh one
                    return await self._run_approved(request_id, call, params, policy, decision, ticket, None)
            checked = asked
            now_s = time.time()
        outcome = checked
        if isinstance(outcome, Consumed):
            return await self._run_approved(
                request_id, call, params, policy, decision, ticket, outcome.approval.id, now_s
            )
        if isinstance(outcome, AskHuman):
            log.info("held tool=%s for approval %s (rule %s)", call.name, outcome.approval.id, decision.rule_name)
            self._record(call, "approval_required", decision.rule_name, decision.rule, approval_id=outcome.approval.id)
            settings = policy.approvals
            return Answer(
                approval_required_error(
                    request_id, outcome.approval, self.state_dir_hint, settings.console_url, settings.error_code
                )
            )
        return self._deny(request_id, call, outcome.message, params, decision.rule_name, decision.rule)

    async def _run_approved(
        self,
        request_id: Any,
        call: ToolCall,
        params: Message,
        policy: Policy,
        decision: Decision,
        ticket: Ticket,
        approval_id: str | None,
        now_s: float = 0.0,
    ) -> Forward | Answer:
        """Forward a call a human approved (`approval_id`, consumed) or that runs by `on_timeout:
        allow` (None), its counters reserved first; refused by them, the approval is given back."""
        now_s = now_s or time.time()
        reserved: tuple[Reservation, ...] = ()
        if policy.uses_counters(call.name):
            ask = CounterAsk(policy, call, now_s, ticket.deadline, approved=True)
            try:
                outcome_of_counters = await self.counters.count(ask)
            except BaseException:  # a bug, or cancelled: the call never starts, the approval stays usable
                if approval_id is not None:
                    self.gate.give_back(approval_id, call.arguments, now_s, "the counters could not be checked")
                raise
            counted, reserved = counters_verdict(ask, outcome_of_counters, self.fail_mode)
            if counted.verdict != "allow":
                if approval_id is not None:
                    self.gate.give_back(approval_id, call.arguments, now_s, f"refused by counters: {counted.message}")
                return self._deny(request_id, call, counted.message, params, counted.rule_name)
        return self._forward(request_id, call, ticket, approval_id, reserved, decision.rule_name)

    # -- a human, while the call waits -----------------------------------------------------

    async def _ask_human(
        self,
        request_id: Any,
        call: ToolCall,
        params: Message,
        policy: Policy,
        rule: Rule,
        asking: AskHuman,
        ticket: Ticket,
        in_band: InBandAnswer | None,
    ) -> GateOutcome | Answer | NobodyDecided:
        """Confirmation in the client (`via: elicitation`, when the client can), then holding the
        call open (`wait`) while a human decides elsewhere. A decision reached either way is
        checked at the gate again (consumed, or refused); without one, `asking` stands (-32003),
        or `NobodyDecided` when the call was held its whole `wait` and its rule's `on_timeout`
        says deny or allow."""
        approval = asking.approval
        held = False  # the call waited out its `wait` (an unanswered prompt alone does not count:
        # a client can fail it at once, and `on_timeout: allow` must not come sooner than `wait`)
        if (rule.via or policy.approvals.via) == "elicitation":
            stateless = is_stateless_request(params)
            client = stateless_client(params) if stateless else self.client
            if in_band is not None and in_band.approval_id == approval.id and in_band.answer is not None:
                return await self._confirmed(call, policy, rule, asking, in_band.answer, client.name, ticket)
            if client.elicits and stateless and self.states is not None:
                state = self.states.sign(approval.id, call.name, self.gate.hasher.arguments(call.arguments))
                request = confirmation_request(
                    call.name, self.server_name, rule.name, approval.id, call.arguments, rule.scope
                )
                self._record(
                    call, "approval_required", rule.name, rule, approval_id=approval.id, channel="elicitation"
                )
                return Answer({"jsonrpc": "2.0", "id": request_id, "result": input_required_result(request, state)})
            if client.elicits and not stateless and self.elicitor is not None and self._may_wait(ticket, call):
                request = confirmation_request(
                    call.name, self.server_name, rule.name, approval.id, call.arguments, rule.scope
                )
                bound_s = min(asking.approval.timeout_s, MAX_APPROVAL_WAIT_S)
                self.waiting_for_human += 1
                try:
                    answer = await self.elicitor.ask(request, bound_s, ticket.stop_signal())
                finally:
                    self.waiting_for_human -= 1
                if answer is not None and not ticket.cancelled:
                    return await self._confirmed(call, policy, rule, asking, answer, client.name, ticket)
        wait_s = rule.wait_s if rule.wait_s is not None else policy.approvals.wait_s
        if wait_s > 0 and self.watch is not None and self._may_wait(ticket, call):
            self.waiting_for_human += 1
            held = True
            try:
                status = await self._hold(approval.id, wait_s, params, ticket)
            finally:
                self.waiting_for_human -= 1
            # approved or denied, or gone otherwise (revoked, expired, consumed by another call):
            # the gate says what holds now, so the answer never names a request that is not pending
            if status is not None and not ticket.cancelled and not self._reloaded_since(policy):
                return await self._check_again(policy, call, rule, ticket, self.client_name(params))
        if (
            held
            and rule.on_timeout != "pending"
            and not (ticket.cancelled or ticket.ended or self._reloaded_since(policy))
        ):
            return NobodyDecided(asking)
        return asking

    def _reloaded_since(self, policy: Policy) -> bool:
        """A reload came while a human decided (minutes, maybe): the call must not go on under the
        policy it was judged by. It is answered -32003 (the decision is kept) and its retry is
        judged by the policy in force, as any retry is."""
        now = self.policy_now()
        return now is not None and now is not policy and now.digest != policy.digest

    def _may_wait(self, ticket: Ticket, call: ToolCall) -> bool:
        """Whether this call may wait for a human: not cancelled, not ended, and room left."""
        if ticket.cancelled or ticket.ended:
            return False
        if self.waiting_for_human >= MAX_WAITING_FOR_HUMAN:
            log.warning("%d calls already wait for a human: %s answered at once", MAX_WAITING_FOR_HUMAN, call.name)
            return False
        return True

    async def _confirmed(
        self,
        call: ToolCall,
        policy: Policy,
        rule: Rule,
        asking: AskHuman,
        answer: Confirmation,
        client: str,
        ticket: Ticket,
    ) -> GateOutcome:
        """The client's answer as a decision (channel `elicitation`, actor `client:<name>`), then
        the gate again: an accepted call consumes its approval, a declined one is refused."""
        approve = answer == "accept"
        reason = None if approve else ("declined in the client" if answer == "decline" else "cancelled in the client")
        await self.gate.decide_in_band(asking.approval.id, approve, f"client:{client or 'unnamed'}", reason)
        if self._reloaded_since(policy):
            return asking
        return await self._check_again(policy, call, rule, ticket, client or None)

    async def _check_again(
        self, policy: Policy, call: ToolCall, rule: Rule, ticket: Ticket, client: str | None
    ) -> GateOutcome:
        """The gate once more after a human's turn (minutes, maybe): with a fresh store deadline."""
        ticket.deadline = deadline_after()
        return await self.gate.check(policy, call, rule, time.time(), ticket.deadline, client)

    def client_name(self, params: Message) -> str | None:
        """The name the client gave itself (recorded on approvals, never trusted): from this
        request's `_meta` in the stateless era, else from `initialize`; None if it gave none."""
        name = stateless_client(params).name if is_stateless_request(params) else self.client.name
        return name or None

    async def _hold(self, approval_id: str, wait_s: float, params: Message, ticket: Ticket) -> str | None:
        """Wait up to `wait_s` for a human to decide `approval_id` elsewhere; the status it moved
        to, or None (no decision in time, cancelled, or the session is ending). With a progress
        token, a `notifications/progress` goes out at once and every PROGRESS_INTERVAL_S."""
        assert self.watch is not None
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if not (isinstance(token, (str, int)) and not isinstance(token, bool)):
            token = None
        until = time.monotonic() + wait_s
        stop = ticket.stop_signal()
        progress = 0
        while not ticket.cancelled and not stop.done():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            if token is not None:
                progress += 1
                self.send_to_client(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {
                            "progressToken": token,
                            "progress": progress,
                            "message": f"waiting up to {remaining:.0f}s for a human to decide approval {approval_id}",
                        },
                    }
                )
            step_s = min(remaining, PROGRESS_INTERVAL_S) if token is not None else remaining
            status = await self.watch.wait(approval_id, step_s, stop)
            if status is not None:
                return status
        return None

    def _forward(
        self,
        request_id: Any,
        call: ToolCall,
        ticket: Ticket,
        approval_id: str | None,
        reserved: tuple[Reservation, ...],
        rule: str = "",
    ) -> Forward | Answer:
        """Forward a call the store allowed, unless it can no longer be (then what it took is
        given back: it never started)."""
        taken = Taken(self, call, approval_id, reserved, rule) if approval_id is not None or reserved else None
        why = "the client cancelled it before it was forwarded" if ticket.cancelled else self.forwarding_closed()
        if why:
            return self.not_forwarded(request_id, call.name, taken, why)
        if taken is not None:
            return Forward(taken)  # recorded once the interceptor has forwarded it (`Taken.forwarded`)
        self._record(call, "allowed", rule)
        return FORWARD

    def not_forwarded(self, request_id: Any, tool: str, taken: Taken | None, why: str) -> Answer:
        """A decided call that can no longer be forwarded: what it took goes back (it never
        started), and the client is told why."""
        if taken is not None:
            taken.give_back(why)
        log.info("tool=%s not forwarded: %s", tool, why)
        return Answer(jsonrpc.error_message(request_id, jsonrpc.INTERNAL_ERROR, f"{tool} was not forwarded: {why}"))

    # -- calls in a batch ----------------------------------------------------------------

    def judge_in_batch(
        self, request_id: Any, tool: str, arguments: dict[str, Any], params: Message, policy: Policy, types: TypeVerdict
    ) -> Forward | Answer:
        """A call inside a JSON-RPC batch: only a call the engine allows without the store may go
        (the batch's answers cannot be matched to approvals or reservations). An allowed call is
        recorded by `forwarded_in_batch` once the whole batch is forwarded."""
        if types.problem:
            return self._deny(request_id, ToolCall(tool, arguments), types.problem, params, ARGUMENT_TYPE_RULE)
        if policy.counted_tools and policy.uses_counters(tool):
            return Answer(
                jsonrpc.error_message(
                    request_id, jsonrpc.INVALID_REQUEST, f"{tool} uses counters: send it on its own, not in a batch"
                )
            )
        decision = decide(policy, tool, arguments, None, types.strict)
        if decision.verdict == "allow":
            return FORWARD
        call = ToolCall(tool, arguments)
        if decision.verdict == "require_approval":
            self._record(call, "denied", decision.rule_name, decision.rule)
            return Answer(
                jsonrpc.error_message(
                    request_id, jsonrpc.INVALID_REQUEST, f"{tool} needs approval: send it on its own, not in a batch"
                )
            )
        return self._deny(request_id, call, decision.message, params, decision.rule_name, decision.rule)

    def forwarded_in_batch(self, calls: list[ToolCall]) -> None:
        """Record the calls of a batch that is forwarded whole."""
        for call in calls:
            self._record(call, "allowed")

    # -- answers and the record ----------------------------------------------------------

    def _deny(
        self, request_id: Any, call: ToolCall, message: str, params: Message, rule: str, deciding: Rule | None = None
    ) -> Answer:
        self._record(call, "denied", rule, deciding)
        log.info("denied tool=%s rule=%s", call.name, rule)
        return Answer(
            {"jsonrpc": "2.0", "id": request_id, "result": denied_result(message, is_stateless_request(params))}
        )

    def _record(
        self, call: ToolCall, result: str, rule: str = "", deciding: Rule | None = None, **more: Any
    ) -> None:
        """The call's `tool_call` event; with the severity the deciding rule sets, if it sets one."""
        if deciding is not None and deciding.severity is not None:
            more["severity"] = deciding.severity
        self.events.tool_call(self.server_name, call.name, result, call.arguments, rule, **more)


def _internal_error(request_id: Any, error: BaseException | None = None, log_it: bool = True) -> Answer:
    """The answer to a call a bug stopped (logged with the error): not forwarded."""
    if log_it:
        log.error("internal error while deciding a tools/call; it was not forwarded", exc_info=error or True)
    return Answer(jsonrpc.error_message(request_id, jsonrpc.INTERNAL_ERROR, INTERNAL_ERROR_TEXT))


def counters_verdict(
    ask: CounterAsk, outcome: CountOutcome, fail_mode: FailMode
) -> tuple[Decision, tuple[Reservation, ...]]:
    """The decision for a call from what its counters said, and what it took: the engine's
    decision on the counters' values; a deny when a limit would be passed, `increment_from` is
    unusable or the store is down; or, when the store is down and the fail mode is open, the
    decision as if every counter were zero, nothing taken (an approved call is then allowed). A
    store that is only busy (a lock held past the deadline) denies in both modes."""
    if isinstance(outcome, Judged):
        return outcome.decision, outcome.reserved
    call = ask.call
    if isinstance(outcome, OverLimit):
        rule = outcome.rule
        return Decision("deny", rule.name, rule.on_deny or f"Rate limit exceeded for {rule.name}", rule), ()
    if isinstance(outcome, IncrementRefused):
        log.error("denied %s: %s", call.name, outcome.reason)
        return Decision("deny", INCREMENT_RULE, INTERNAL_POLICY_ERROR), ()
    if fail_mode == "closed" or outcome.busy:  # busy: the store works; fail-open would let a
        # busy store (which an agent can make with slow calls) wave its calls through uncounted
        log.error("state store unavailable, denying %s: %s", call.name, outcome.reason)
        return Decision("deny", STORE_RULE, f"{INTERNAL_POLICY_ERROR}: state store unavailable ({outcome.reason})"), ()
    log.warning(
        "STATE STORE UNAVAILABLE, fail-open: %s allowed as if counters were zero (%s)", call.name, outcome.reason
    )
    if ask.approved:
        return ALLOW, ()
    zeros = {f"{scope}.{rule.state.counter}": 0.0 for scope, rule in counted_rules(ask.policy, call.name)}  # type: ignore[union-attr]
    return evaluate(ask.policy, call, zeros, ask.strict), ()
