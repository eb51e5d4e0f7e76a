"""One thread per proxy for all of its state-store work, so the event loop never waits for SQLite.

Every SQLite call of a running proxy (approval checks, counter reads and reservations, give-backs,
heartbeat snapshots, its instance record) runs here, one job at a time, in the order submitted.
The relay keeps moving messages that need no store while a job waits for a lock held by another
process. A job that decides a call carries a deadline: it is refused unstarted once the deadline
has passed, and its wait for the write lock ends there (`arm`, `database.begin_immediate`), so a
decision fails closed within its bound however many calls queue behind a lock.

Why one thread and not aiosqlite: our transactions are several statements with Python decisions
between them (expire, consume, check for a denial, reuse or request). Run as one job on one
thread, a transaction holds the write lock only for its own statements; through aiosqlite every
statement would be a round trip to its thread and back through the event loop while the lock is
held. One thread also keeps one connection per proxy and the order of jobs (a give-back runs
after the consume it undoes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from intercept.store.database import (
    BUSY_TIMEOUT_MS,
    STATEMENT_BUSY_TIMEOUT_MS,
    StoreBusy,
    StoreUnavailable,
    bound_lock_waits,
)

log = logging.getLogger("intercept")

T = TypeVar("T")
STORE_WAIT_S = 2.0  # how long a call may wait for the store before it is refused (fail closed)


def deadline_after(wait_s: float = STORE_WAIT_S) -> float:
    """A deadline (monotonic clock) `wait_s` from now."""
    return time.monotonic() + wait_s


def arm(connection: sqlite3.Connection, deadline: float | None) -> None:
    """Bound the SQLite lock waits of the job about to run to `deadline` (BEGIN IMMEDIATE retries
    until then, see `database.begin_immediate`), or the default busy timeout without one. Raises
    StoreBusy if the deadline has passed."""
    bound_lock_waits(deadline)
    if deadline is None:
        timeout_ms = BUSY_TIMEOUT_MS
    else:
        if deadline - time.monotonic() <= 0:
            raise StoreBusy("database is locked (the state store stayed busy until this call's deadline)")
        timeout_ms = STATEMENT_BUSY_TIMEOUT_MS
    try:
        connection.execute(f"PRAGMA busy_timeout = {timeout_ms}")
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"state store unavailable: {exc}") from None


def _fresh(job: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a job with no lock-wait deadline left over from the previous one (it may `arm` its own)."""
    bound_lock_waits(None)
    return job(*args, **kwargs)


class StoreWorker:
    """The store thread of one proxy: `run` awaits a job, `spawn` starts one whose result is
    handled later on the event loop, `drain` waits for spawned jobs before the proxy exits."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="intercept-store")
        self._spawned: set[asyncio.Future[Any]] = set()

    async def run(self, job: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `job(*args, **kwargs)` on the store thread and return its result (or raise its error)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: _fresh(job, *args, **kwargs))

    def spawn(self, job: Callable[[], T], then: Callable[[T], object] | None = None) -> None:
        """Queue `job` now (its place in the order is fixed at once) and hand its result to `then`
        on the event loop; a failure is logged, never raised."""
        loop = asyncio.get_running_loop()
        future = asyncio.wrap_future(self._executor.submit(_fresh, job), loop=loop)
        self._spawned.add(future)

        def done(finished: asyncio.Future[T]) -> None:
            self._spawned.discard(finished)
            if finished.cancelled():
                return
            error = finished.exception()
            if error is not None:
                log.error("state store job failed: %s", error)
            elif then is not None:
                try:
                    then(finished.result())
                except Exception:
                    log.exception("handling a state store result failed")

        future.add_done_callback(done)

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the spawned jobs, e.g. give-backs, before exiting."""
        if self._spawned:
            _, pending = await asyncio.wait(set(self._spawned), timeout=timeout_s)
            if pending:
                log.warning("%d state store jobs did not finish before exit", len(pending))

    def close(self) -> None:
        """Stop the thread once its queued jobs are done (called after the event loop has ended)."""
        self._executor.shutdown(wait=True)
