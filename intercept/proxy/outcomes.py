"""What the interceptor says of a client line, as the relay acts on it.

`None`: forward the line as sent. `bytes`: answer the client with these (empty: drop the line).
`Rewritten`: forward this line instead. `Hold`: send the proxy's own request upstream now and
keep this line and every later one until the interceptor releases them. A module of its own, with
no imports, so the relay can start the upstream before the interceptor's code is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


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


ClientOutcome = bytes | Rewritten | Hold | None
