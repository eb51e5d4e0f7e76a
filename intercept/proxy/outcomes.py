"""What the interceptor says of a client line, as the relay acts on it.

`None`: forward the line as sent. `bytes`: answer the client with these (empty: drop the line).
`Rewritten`: forward this line instead. `Hold`: send the proxy's own request upstream now and
keep this line and every later one until the interceptor releases them. `Deciding`: the line
waits for the state store; later lines go on meanwhile, and its outcome comes when the store has
answered. A module of its own, with few imports, so the relay can start the upstream before the
interceptor's code is loaded.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

UNPARSED: Any = object()  # a client line handed on without its value: the interceptor parses it itself


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


@dataclass(frozen=True, slots=True)
class Deciding:
    """The call's decision needs the state store: nothing is sent now. `decision` runs as its
    own task and yields the final outcome (None: forward the line as sent, bytes: answer the
    client, Rewritten: forward this instead); lines after this one do not wait for it."""

    decision: Coroutine[Any, Any, bytes | Rewritten | None]


ClientOutcome = bytes | Rewritten | Hold | Deciding | None

class FastPathFault(Exception):
    """An internal error on the fast path at message `index` of a chunk (`allowed_as_sent`)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"internal error on the fast path at message {index}")
        self.index = index
