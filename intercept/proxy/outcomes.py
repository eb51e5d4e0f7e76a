"""What the interceptor says of a client line, as the relay acts on it.

`None`: forward the line as sent. `bytes`: answer the client with these (empty: drop the line).
`Rewritten`: forward this line instead. `Hold`: send the proxy's own request upstream now and
keep this line and every later one until the interceptor releases them. `Deciding`: the line
waits for the state store; later lines go on meanwhile, and its outcome comes when the store has
answered. A module of its own, with few imports, so the relay can start the upstream before the
interceptor's code is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

UNPARSED: Any = object()  # a client line handed on without its value: the interceptor parses it itself
INTERNAL_ERROR_TEXT = "intercept internal error: not forwarded"  # the answer to a message a bug stopped


@dataclass(frozen=True, slots=True)
class Rewritten:
    """Forward this line upstream instead of the client's."""

    line: bytes


@dataclass(frozen=True, slots=True)
class Hold:
    """The line cannot be decided until the tool schemas arrive: send `request` (the proxy's own
    `tools/list`) upstream now, and keep this client line and every later one, in order, until
    `Interceptor.on_listing_done` fires."""

    request: bytes


class Deciding:
    """The call's decision needs the state store (or a human): nothing is sent now, and lines
    after this one do not wait for it. The interceptor `settle`s it once with the final outcome
    (None: forward the line as sent, bytes: answer the client, Rewritten: forward this instead),
    and the relay's `then` acts on it in that same step: nothing (a cancel) can come between the
    end of the decision and the call's forwarding."""

    __slots__ = ("_act", "_outcome", "_waiter", "done")

    def __init__(self) -> None:
        self._act: Callable[[Settled], None] | None = None
        self._outcome: Settled = None
        self._waiter: asyncio.Future[Settled] | None = None
        self.done = False

    def then(self, act: Callable[[Settled], None]) -> None:
        """Call `act` with the outcome once it is settled (at once if it is)."""
        if self.done:
            act(self._outcome)
        else:
            self._act = act

    def settle(self, outcome: Settled) -> None:
        """The decision is final; a second settle is ignored."""
        if self.done:
            return
        self.done, self._outcome = True, outcome
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(outcome)
        act, self._act = self._act, None  # dropped once used: `act` usually refers back to this object
        if act is not None:
            act(outcome)

    @property
    def outcome(self) -> Settled:
        """The settled outcome (None before `done` too)."""
        return self._outcome

    async def wait(self) -> Settled:
        """The outcome, once settled (for callers without a relay: tests, tools)."""
        if self.done:
            return self._outcome
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter


Settled = bytes | Rewritten | None  # what a Deciding call comes to


ClientOutcome = bytes | Rewritten | Hold | Deciding | None

class FastPathFault(Exception):
    """An internal error on the fast path at message `index` of a chunk (`allowed_as_sent`)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"internal error on the fast path at message {index}")
        self.index = index
