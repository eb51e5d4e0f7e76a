"""One proxy session's parts: policy, identity, hash key, instance record, event log, approval
gate and its channels (the webhook), counters, interceptor and policy watcher.

The relay loads the policy (`policy`) right after spawning the upstream, while it starts, and
before a client byte is read: an invalid policy kills the upstream before it has received anything.
`build` does the heavy imports and the state-dir work; the relay calls it once the upstream has
given its first answer (or at the first client line other than `initialize`), so the first answer
waits for none of it. Only a server named with `--name` is registered before the spawn
(`claim_name`): a name held by another server's live proxy must stop this one before it starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from intercept.approvals.webhook_sender import WebhookChannel
    from intercept.audit.events import EventLog
    from intercept.audit.policy_archive import PolicyArchiver
    from intercept.console.server import BackgroundServer, ListenOptions
    from intercept.policy import Policy
    from intercept.proxy.interceptor import Interceptor
    from intercept.proxy.live_instance import LiveInstance
    from intercept.proxy.policy_watcher import PolicyWatcher
    from intercept.store.worker import StoreWorker

log = logging.getLogger("intercept")


@dataclass(frozen=True)
class SessionSettings:
    """What the command line says about the session."""

    config: Path
    state_dir: Path
    state_dir_hint: Path | None  # shown in -32003 messages when it is not the default
    name: str | None
    state_prefix: str
    fail_mode: Literal["closed", "open"]
    command: tuple[str, ...]
    retention_s: float | None = None  # None: the default
    admin_api: ListenOptions | None = None  # --enable-admin-api: where it listens
    agent: str | None = None  # --agent: who is asking; every policy in force is bound to it


class InvalidPolicy(Exception):
    """The policy file cannot be used (its PolicyError's text), raised without importing the
    policy package where the caller has not; `unreadable` when the file itself is the problem."""

    def __init__(self, message: str, unreadable: bool) -> None:
        super().__init__(message)
        self.unreadable = unreadable


class ProxySession:
    """Built in two steps (`claim_name` when named, then `build`), closed once (`finish`)."""

    def __init__(self, settings: SessionSettings) -> None:
        self.settings = settings
        self.cwd = Path.cwd()
        self.instance: LiveInstance | None = None
        self.events: EventLog | None = None
        self.watcher: PolicyWatcher | None = None
        self.store: StoreWorker | None = None  # the store thread, once built
        self.admin_server: BackgroundServer | None = None
        self.webhook: WebhookChannel | None = None  # its thread starts at the first request it sends
        self.upstream_shown: list[str] = []
        self._registered = False
        self._policy: Policy | None = None
        self._policy_file_digest: str | None = None
        self._policy_text = ""  # what the policy was parsed from, for the policy archive
        self.archiver: PolicyArchiver | None = None  # made with the interceptor
        self._archive_wanted = asyncio.Event()  # a loaded version waits to be archived

    @property
    def policy(self) -> Policy:
        """The policy file, loaded on first use; raises InvalidPolicy."""
        if self._policy is None:
            from intercept.policy import PolicyError
            from intercept.policy.agents import bind_agent
            from intercept.policy.load import PolicyFileError, read_policy_source

            try:
                policy, self._policy_file_digest, self._policy_text = read_policy_source(self.settings.config)
            except PolicyError as exc:
                raise InvalidPolicy(str(exc), isinstance(exc, PolicyFileError)) from None
            self._policy = bind_agent(policy, self.settings.agent)
        return self._policy

    @property
    def server(self) -> str:
        from intercept.proxy.server_name import derive_server_name

        return self.settings.name or derive_server_name(list(self.settings.command))

    def _prepare_instance(self) -> LiveInstance:
        """The hash key, the server's identity and this proxy's instance record."""
        if self.instance is not None:
            return self.instance
        import json

        from intercept.approvals.redact import redact_argv
        from intercept.audit.events import new_instance_id
        from intercept.audit.hashing import ArgumentHasher, load_key
        from intercept.proxy.live_instance import LiveInstance
        from intercept.proxy.server_identity import absolute_command, server_identity
        from intercept.retention import DEFAULT_RETENTION_S
        from intercept.store.instances import InstanceRecord
        from intercept.store.timestamps import rfc3339

        command = list(self.settings.command)
        self.hash_key = load_key(self.settings.state_dir)
        self.hasher = ArgumentHasher(self.hash_key)
        self.identity = server_identity(command, self.settings.name, self.cwd)
        self.upstream_shown = redact_argv(absolute_command(command, self.cwd))  # argv often carries tokens
        now = rfc3339(time.time())
        self.instance = LiveInstance(
            self.settings.state_dir,
            InstanceRecord(
                id=new_instance_id(self.server),
                server=self.server,
                named=self.settings.name is not None,
                identity=self.hasher.digest(server_identity(command, None, self.cwd).encode()),
                command=json.dumps(self.upstream_shown, ensure_ascii=False),
                pid=os.getpid(),
                config=str(self.settings.config.absolute()),
                policy_digest=self._policy.digest if self._policy is not None else "",
                started_at=now,
                seen_at=now,
                retention_s=self.settings.retention_s or DEFAULT_RETENTION_S,  # what this proxy keeps
            ),
        )
        return self.instance

    def claim_name(self) -> str:
        """Register a `--name`d instance before the spawn; why it may not start, or ""."""
        from intercept.store.database import StoreUnavailable
        from intercept.store.instances import NameInUse

        instance = self._prepare_instance()
        try:
            instance.register()
        except NameInUse as exc:
            return str(exc)
        except StoreUnavailable as exc:  # approvals cannot work either: calls needing them fail closed
            log.warning("cannot check that --name %r is free: %s", self.settings.name, exc)
        self._registered = True
        return ""

    def build(self) -> Interceptor:
        """Everything the relay needs once the upstream runs."""
        from intercept.approvals.decision_watch import DecisionWatch
        from intercept.approvals.gate import ApprovalGate, UpstreamServer
        from intercept.approvals.webhook_sender import WebhookChannel
        from intercept.audit.events import EventLog
        from intercept.audit.policy_archive import PolicyArchiver
        from intercept.counters.call_counters import AsyncCallCounters, CallCounters
        from intercept.policy.agents import bind_agent
        from intercept.proxy.approval_reply import approvals_command
        from intercept.proxy.elicitation import RequestStates
        from intercept.proxy.interceptor import Interceptor
        from intercept.proxy.policy_watcher import PolicyWatcher
        from intercept.store.worker import StoreWorker

        settings = self.settings
        policy = self.policy
        instance = self._prepare_instance()
        instance.record = replace(instance.record, policy_digest=policy.digest)
        events = self.events = EventLog(settings.state_dir, instance.record.id, self.hasher, shared=False)
        events.set_context(agent=settings.agent)  # who is asking, on every record (None: no field)
        upstream = UpstreamServer(self.server, self.identity, instance.record.command)
        store = self.store = StoreWorker()  # every store access from here on runs on its thread
        gate = ApprovalGate(settings.state_dir, upstream, events, self.hasher, store)
        # Reads `approvals.notify.webhook` from the policy of each request, so a reload may add it.
        self.webhook = WebhookChannel(
            events, lambda verb, approval_id: approvals_command(verb, approval_id, settings.state_dir_hint)
        )
        gate.listeners.append(self.webhook)
        self.webhook.warm_up(policy)
        counters = AsyncCallCounters(CallCounters(settings.state_dir, settings.state_prefix), store)
        interceptor = Interceptor(
            policy,
            self.server,
            events,
            gate,
            counters,
            store,
            settings.state_dir_hint,
            on_heartbeat=lambda: store.spawn(instance.seen),
            fail_mode=settings.fail_mode,
        )

        interceptor.calls.watch = DecisionWatch(store, gate.read_statuses)
        interceptor.calls.states = RequestStates(self.hash_key)

        self.archiver = gate.archiver = PolicyArchiver(settings.state_dir)
        self._archive(policy, self._policy_text)

        def swap_policy(loaded: Policy, source_text: str) -> None:
            new_policy = bind_agent(loaded, settings.agent)  # the same agent, the new file's roles
            interceptor.policy = new_policy  # one reference swap: in-flight calls keep what they decided
            if self.webhook is not None:
                self.webhook.warm_up(new_policy)
            store.spawn(lambda: instance.seen(new_policy.digest))
            self._archive(new_policy, source_text)

        self.watcher = PolicyWatcher(settings.config, swap_policy, events, self._policy_file_digest)
        if settings.admin_api is not None:
            self._start_admin_api(settings.admin_api)
        events.emit(
            "startup",
            server=self.server,
            pid=os.getpid(),
            upstream=self.upstream_shown,
            config=str(settings.config),
            policy_digest=policy.digest,
        )
        log.info(
            "proxying %s with policy %s (state dir %s)", self.server, settings.config.absolute(), settings.state_dir
        )
        return interceptor

    def _start_admin_api(self, options: ListenOptions) -> None:
        """The admin API on its own thread; if it cannot listen, the proxy still proxies and says why."""
        from intercept.console.app import ConsoleConfig, build_app
        from intercept.console.server import AdminAddressError, BackgroundServer, bind
        from intercept.store.secret_file import SecretUnavailable

        try:
            sock, address = bind(options)
        except AdminAddressError as exc:
            log.error("admin API is off: %s", exc)
            return
        try:
            app = build_app(ConsoleConfig(self.settings.state_dir, address))
        except SecretUnavailable as exc:
            sock.close()
            log.error("admin API is off: %s", exc)
            return
        self.admin_server = BackgroundServer(app, sock, options)
        self.admin_server.start()
        sys.stderr.write(f"intercept: admin API on {address.base_url}\n")
        sys.stderr.flush()

    def _archive(self, policy: Policy, source_text: str) -> None:
        """Note a loaded version for the policy archive; `archive_policies` writes it off the loop."""
        if self.archiver is not None:
            self.archiver.add(policy, source_text, self.settings.config.absolute())
            self._archive_wanted.set()

    async def archive_policies(self) -> None:
        """Write each loaded version to the policy archive on a thread; a version whose write
        failed is tried again with the next one loaded, and at exit (`finish`)."""
        while self.archiver is not None:
            await self._archive_wanted.wait()
            self._archive_wanted.clear()
            await asyncio.to_thread(self.archiver.write_waiting)

    async def watch_policy(self) -> None:
        if self.watcher is not None:
            await self.watcher.run()

    async def register_instance(self) -> None:
        """Off the event loop: the first answer does not wait for the database."""
        if not self._registered and self.instance is not None and self.store is not None:
            self._registered = True
            await self.store.run(self.instance.register_quietly)

    async def keep_retention(self) -> None:
        """Prune what is older than the retention, at start and hourly: on a thread and connection of
        its own (in small transactions), so calls waiting for the store thread never queue behind it."""
        from intercept.retention import DEFAULT_RETENTION_S, PRUNE_INTERVAL_S, prune_state_dir, record_pruning
        from intercept.store.database import StoreUnavailable

        retention_s = self.settings.retention_s or DEFAULT_RETENTION_S
        while self.store is not None and self.events is not None:
            try:
                pruned = await asyncio.to_thread(prune_state_dir, self.settings.state_dir, retention_s, time.time())
                record_pruning(self.events, pruned)
            except (StoreUnavailable, ValueError, OSError) as exc:
                log.warning("could not prune the state dir (retention): %s", exc)
            await asyncio.sleep(PRUNE_INTERVAL_S)

    def finish(self, **shutdown: object) -> None:
        """Record the end of the session (`exit_status=` or `reason=`)."""
        if self.events is None:  # the upstream never started: nothing was built
            from intercept.audit.events import EventLog

            self._prepare_instance()
            assert self.instance is not None
            self.events = EventLog(self.settings.state_dir, self.instance.record.id, self.hasher, shared=False)
            self.events.set_context(agent=self.settings.agent)
        if self.admin_server is not None:
            self.admin_server.stop()
        if self.webhook is not None:
            self.webhook.close()  # at most ~1 s for notifications still unsent; then dropped
        if self.store is not None:
            self.store.close()  # after the queued store work
        if self.archiver is not None and self.archiver.waiting:
            self.archiver.write_waiting()  # a session too short for the background job, or a failed write
        self.events.emit("shutdown", server=self.server, **shutdown)
        self.events.close()
        if self.instance is not None:
            self.instance.stopped()
