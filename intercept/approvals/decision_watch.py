"""Calls held open while a human decides elsewhere (CLI, console, a webhook's link).

Every held call waits on a future here; one poller reads the status of all awaited approvals in
one query on the store thread every POLL_S (a decision made by another process is seen within
that, plus the query), and resolves the futures of those no longer pending. Polling, not a
notification: the deciding process may be any CLI or console on the state dir, and SQLite has no
cross-process notification. The poller runs only while some call is held.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from intercept.store.database import StoreUnavailable
from intercept.store.worker import StoreWorker

log = logging.getLogger("intercept")

POLL_S = 0.1
ReadStatuses = Callable[[list[str]], dict[str, str]]


class DecisionWatch:
    """`wait` for an approval to leave `pending`; `read_statuses(ids)` runs on the store thread
    and returns each id's status (an expired pending one as `expired`)."""

    def __init__(self, worker: StoreWorker, read_statuses: ReadStatuses) -> None:
        self.worker = worker
        self.read_statuses = read_statuses
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def wait(self, approval_id: str, timeout_s: float, stop: asyncio.Future[None] | None = None) -> str | None:
        """The status the approval moved to, or None after `timeout_s` or once `stop` is done."""
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[str] = loop.create_future()
        self._waiters.setdefault(approval_id, []).append(decided)
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll())
        try:
            watched: set[asyncio.Future[object]] = {decided}  # type: ignore[arg-type]
            if stop is not None:
                watched.add(stop)  # type: ignore[arg-type]
            done, _ = await asyncio.wait(watched, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            return decided.result() if decided in done else None
        finally:
            waiting = self._waiters.get(approval_id, [])
            if decided in waiting:
                waiting.remove(decided)
            if not waiting:
                self._waiters.pop(approval_id, None)
            if not decided.done():
                decided.cancel()

    async def _poll(self) -> None:
        while self._waiters:
            await asyncio.sleep(POLL_S)
            ids = list(self._waiters)
            if not ids:
                break
            try:
                statuses = await self.worker.run(self.read_statuses, ids)
            except StoreUnavailable as exc:  # held calls keep waiting; their own bound ends them
                log.debug("could not read approval statuses: %s", exc)
                continue
            except Exception:  # a bug must not leave every held call waiting out its bound silently
                log.exception("reading the statuses of held approvals failed")
                continue
            for approval_id, status in statuses.items():
                if status == "pending":
                    continue
                for decided in self._waiters.pop(approval_id, []):
                    if not decided.done():
                        decided.set_result(status)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
