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
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from intercept.store.database import (
    BUSY_TIMEOUT_MS,
    PAST_DEADLINE,
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
            raise StoreBusy(PAST_DEADLINE)
        timeout_ms = STATEMENT_BUSY_TIMEOUT_MS
    try:
        connection.execute(f"PRAGMA busy_timeout = {timeout_ms}")
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"state store unavailable: {exc}") from None


class StoreWorker:
    """The store thread of one proxy: `run` awaits a job, `spawn` starts one whose result is
    handled later on the event loop, `drain` waits for spawned jobs before the proxy exits.

    The thread takes jobs from a queue in order and hands results back to the event loop: the
    results of jobs that finish before the loop has taken the earlier ones go back together, in
    one wake-up of the loop (`_hand_back`). A thread hand-off costs more than most of our store
    work on a busy machine, so there is no executor layer between the two."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # started by the first job
        self._finished: list[tuple[_Job, Any, BaseException | None]] = []  # for the loop to take
        self._finished_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unhandled = 0  # spawned jobs whose result the loop has not handled yet (loop only)
        self._drained: asyncio.Future[None] | None = None  # set when `_unhandled` comes to 0

    @property
    def busy(self) -> bool:
        """Some spawned job has not finished (and had its result handled) yet."""
        return self._unhandled > 0

    async def run(self, job: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `job(*args, **kwargs)` on the store thread and return its result (or raise its error)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def settle(result: T, error: BaseException | None) -> None:
            if future.done():  # the caller stopped waiting (cancelled)
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        self._submit(_Job(lambda: job(*args, **kwargs), settle))
        return await future

    def spawn(self, job: Callable[[], T], then: Callable[[T], object] | None = None) -> None:
        """Queue `job` now (its place in the order is fixed at once) and hand its result to `then`
        on the event loop; a failure is logged, never raised."""

        def settle(result: T, error: BaseException | None) -> None:
            try:
                if error is not None:
                    log.error("state store job failed: %s", error)
                elif then is not None:
                    try:
                        then(result)
                    except Exception:
                        log.exception("handling a state store result failed")
            finally:
                self._unhandled -= 1
                if not self._unhandled and self._drained is not None and not self._drained.done():
                    self._drained.set_result(None)

        self._unhandled += 1
        self._submit(_Job(job, settle))

    def _submit(self, job: _Job) -> None:
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="intercept-store", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _serve(self) -> None:
        """The store thread: run each job with no lock-wait deadline left over from the previous
        one (it may `arm` its own), then queue its result for the event loop, waking the loop only
        when nothing was queued for it yet."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            bound_lock_waits(None)
            try:
                result, error = job.work(), None
            except StopIteration as exc:  # a future refuses it: it would end the awaiting coroutine
                result, error = None, RuntimeError(f"store job raised StopIteration: {exc}")
            except BaseException as exc:  # handed to the caller (run) or logged (spawn)
                result, error = None, exc
            with self._finished_lock:
                self._finished.append((job, result, error))
                wake = len(self._finished) == 1
            if wake:
                loop = self._loop
                try:
                    loop.call_soon_threadsafe(self._hand_back)  # type: ignore[union-attr]
                except RuntimeError:  # the loop is closed: nobody is left to take the result
                    pass

    def _hand_back(self) -> None:
        """On the event loop: act on every result the thread has queued, in order."""
        with self._finished_lock:
            finished, self._finished = self._finished, []
        for job, result, error in finished:
            try:
                job.settle(result, error)
            except Exception:  # one result that cannot be handed back must not lose the others
                log.exception("handing back a state store result failed")

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the spawned jobs, e.g. give-backs, before exiting."""
        if not self._unhandled:
            return
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._drained), timeout_s)
        except TimeoutError:
            log.warning("%d state store jobs did not finish before exit", self._unhandled)

    def close(self) -> None:
        """Stop the thread once its queued jobs are done (called after the event loop has ended)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None


@dataclass(frozen=True, slots=True)
class _Job:
    """Work for the store thread, and what the event loop does with its result or error."""

    work: Callable[[], Any]
    settle: Callable[[Any, BaseException | None], None]
