"""This proxy's record in the state database's instance table: registered at start, refreshed by
the heartbeat and on reload (the policy digest it enforces), marked stopped at exit.

Store failures are logged and never stop the proxy (the record informs; it does not decide),
except a `--name` clash at registration, which the caller turns into a refusal to start.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from intercept.store.database import StoreUnavailable, connect
from intercept.store.instances import InstanceRecord, InstanceStore

log = logging.getLogger("intercept")


class LiveInstance:
    """One proxy's instance record; each update opens, uses and closes its own connection, so it
    can run on any thread."""

    def __init__(self, state_dir: Path, record: InstanceRecord) -> None:
        self.state_dir = state_dir
        self.record = record

    def _with_store(self, action: str, change: Callable[[InstanceStore], object]) -> None:
        connection: sqlite3.Connection | None = None
        try:
            connection = connect(self.state_dir)
            change(InstanceStore(connection))
        except StoreUnavailable as exc:
            log.warning("could not %s in the state database: %s", action, exc)
        finally:
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()

    def register(self) -> None:
        """Record this instance; raises NameInUse (the name is taken) or StoreUnavailable."""
        connection = connect(self.state_dir)
        try:
            InstanceStore(connection).register(self.record, time.time())
        finally:
            connection.close()

    def register_quietly(self) -> None:
        """Record this instance; a store failure is logged, a name clash too (it was checked
        before start when the name was given explicitly)."""
        self._with_store("record this instance", lambda store: store.register(self.record, time.time()))

    def seen(self, policy_digest: str | None = None) -> None:
        self._with_store("refresh this instance", lambda store: store.seen(self.record.id, time.time(), policy_digest))

    def stopped(self) -> None:
        self._with_store("mark this instance stopped", lambda store: store.stopped(self.record.id, time.time()))
