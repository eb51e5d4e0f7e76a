"""Hot reload: watch the policy file and swap in each valid new version once it has stopped changing.

It watches the file's directory (and, for a symlink, its target's directory), so editors that
save by renaming a temporary file, symlinked configs, and delete-then-recreate all reach it. Any
change there, and a once-a-second recheck, looks at the file; an unchanged digest is ignored.

A changed file is loaded only after it has stayed the same (device, inode, size, mtime_ns and
SHA-256 of its bytes) for STABLE_S seconds: a writer that truncates the file and writes it in
pieces would otherwise get a prefix loaded, and a prefix can be a valid but weaker policy. An
invalid version is reported on stderr and in a `config_reload` event, and the previous policy
stays active. A deleted file is reported at once and the previous policy stays active.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from intercept.audit.events import EventLog
from intercept.policy import Policy, PolicyError, parse_policy

log = logging.getLogger("intercept")

DEBOUNCE_MS = 100
# Also re-check once a second without an event: covers edits made while the watch is restarted
# (a re-pointed symlink) and filesystems whose notifications are unreliable. A digest compare.
RECHECK_MS = 1000
# A changed file must look the same for this long before it is loaded.
STABLE_S = 1.0

# What identifies one version of the file: (st_dev, st_ino, st_size, st_mtime_ns, SHA-256 hex).
Snapshot = tuple[int, int, int, int, str]


class PolicyWatcher:
    """Owns the reload loop; `on_policy` receives each new valid policy and the text it was parsed from."""

    def __init__(
        self, path: Path, on_policy: Callable[[Policy, str], None], events: EventLog, loaded_digest: str | None = None
    ) -> None:
        """`loaded_digest`: the SHA-256 of the bytes the running policy came from (else the file
        is read now), so an edit made between that load and this watcher is still picked up."""
        self.path = Path(path).absolute()
        self.on_policy = on_policy
        self.events = events
        # Digest of the last version acted on (loaded or rejected); None while the file is missing.
        self._digest = loaded_digest if loaded_digest is not None else self._read_digest()
        # A changed version waiting to be stable: its snapshot and when it was first seen (monotonic).
        self._candidate: Snapshot | None = None
        self._candidate_since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def _directories(self) -> list[Path]:
        found = {self.path.parent}
        try:
            found.add(self.path.resolve().parent)
        except OSError:
            pass
        return sorted(d for d in found if d.is_dir())

    async def run(self) -> None:
        from watchfiles import awatch

        try:
            while True:
                directories = self._directories()
                async for _ in awatch(
                    *directories,
                    debounce=DEBOUNCE_MS,
                    step=20,
                    recursive=False,
                    rust_timeout=RECHECK_MS,
                    yield_on_timeout=True,
                ):
                    self.reload()
                    if self._directories() != directories:
                        break  # the symlink now points into another directory: watch that one instead
        finally:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _snapshot(self) -> tuple[Snapshot, bytes]:
        """The file's bytes and identity, read through one descriptor; raises OSError."""
        with open(self.path, "rb") as file:
            stat = os.fstat(file.fileno())
            data = file.read()
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, hashlib.sha256(data).hexdigest()), data

    def reload(self) -> None:
        """Look at the file; load a changed version once it has been stable for STABLE_S seconds.

        Called on every watch event and recheck, and by a timer at the moment a pending version
        would become stable.
        """
        self._cancel_timer()
        try:
            snapshot, data = self._snapshot()
        except FileNotFoundError:
            self._candidate = None
            if self._digest is not None:
                self._digest = None
                log.warning("policy file %s disappeared: keeping the current policy until it returns", self.path)
                self.events.emit("config_reload", status="failure", errors=["policy file not found"])
            return
        except OSError as exc:
            self._candidate = None
            log.error("cannot read policy file %s: %s (keeping the current policy)", self.path, exc)
            return
        digest = snapshot[-1]
        if digest == self._digest:
            self._candidate = None  # back to the version in force (or an mtime-only touch)
            return
        now = time.monotonic()
        if self._candidate != snapshot:
            self._candidate = snapshot  # new, or still being written: the stable period restarts
            self._candidate_since = now
        remaining = self._candidate_since + STABLE_S - now
        if remaining > 0:
            self._timer = asyncio.get_running_loop().call_later(remaining, self.reload)
            return
        self._candidate = None
        self._digest = digest
        self._apply(data)

    def _apply(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8", errors="strict")
            policy = parse_policy(text, str(self.path))
        except UnicodeDecodeError:
            self._reject(["policy file is not valid UTF-8"])
            return
        except PolicyError as exc:
            self._reject(exc.errors)
            return
        self.on_policy(policy, text)
        log.info("policy reloaded from %s", self.path)
        self.events.emit("config_reload", status="success", policy_digest=policy.digest)

    def _reject(self, errors: list[str]) -> None:
        log.error(
            "policy reload rejected, the previous policy stays active: %s: %s%s",
            self.path,
            errors[0],
            f" (and {len(errors) - 1} more)" if len(errors) > 1 else "",
        )
        self.events.emit("config_reload", status="failure", errors=errors)
