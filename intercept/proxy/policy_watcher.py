"""Hot reload: watch the policy file and swap in each valid new version.

It watches the file's directory (and, for a symlink, its target's directory), so editors that
save by renaming a temporary file, symlinked configs, and delete-then-recreate all reach it. Any
change there, and a once-a-second recheck, re-reads the file; an unchanged digest is ignored. An invalid version is reported on
stderr and in a `config_reload` event, and the previous policy stays active.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from intercept.audit.events import EventLog
from intercept.policy import Policy, PolicyError, parse_policy

log = logging.getLogger("intercept")

DEBOUNCE_MS = 100
# Also re-check once a second without an event: covers edits made while the watch is restarted
# (a re-pointed symlink) and filesystems whose notifications are unreliable. A digest compare.
RECHECK_MS = 1000


class PolicyWatcher:
    """Owns the reload loop; `on_policy` receives each new valid policy."""

    def __init__(self, path: Path, on_policy: Callable[[Policy], None], events: EventLog) -> None:
        self.path = Path(path).absolute()
        self.on_policy = on_policy
        self.events = events
        self._digest = self._read_digest()

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

    def reload(self) -> None:
        """Re-read the file; swap the policy if it changed and is valid."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            if self._digest is not None:
                self._digest = None
                log.warning("policy file %s disappeared: keeping the current policy until it returns", self.path)
                self.events.emit("config_reload", status="failure", errors=["policy file not found"])
            return
        except OSError as exc:
            log.error("cannot read policy file %s: %s (keeping the current policy)", self.path, exc)
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return
        self._digest = digest
        try:
            policy = parse_policy(data.decode("utf-8", errors="strict"), str(self.path))
        except UnicodeDecodeError:
            self._reject(["policy file is not valid UTF-8"])
            return
        except PolicyError as exc:
            self._reject(exc.errors)
            return
        self.on_policy(policy)
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
