"""The root command: run the proxy in front of an upstream MCP server over stdio."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from intercept.cmd.options import fail, state_dir_option

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


@click.command(
    "intercept",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("-c", "--config", "config", required=True, type=click.Path(path_type=Path), help="Policy YAML file.")
@state_dir_option
@click.option("--name", default=None, help="Server name for approvals and events (default: derived from the command).")
@click.option(
    "--state-prefix", default="", help="Prefix for counter keys, to give proxies sharing a state dir separate budgets."
)
@click.option(
    "--state-fail-mode",
    type=click.Choice(["closed", "open"]),
    default="closed",
    show_default=True,
    help="When the state store is unusable: deny calls that need counters (closed) or allow them as if counters were zero (open).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Verbosity of the log on stderr.",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds the upstream gets to exit after its stdin closes or a signal, before SIGTERM/SIGKILL.",
)
@click.option(
    "--cancel-settle",
    type=click.FloatRange(min=0),
    default=None,
    help="Deprecated, ignored: a cancelled call keeps its approval and counters (it may have run).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def proxy_command(
    config: Path,
    state_dir: Path | None,
    name: str | None,
    state_prefix: str,
    state_fail_mode: str,
    log_level: str,
    shutdown_grace: float,
    cancel_settle: float | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as the upstream MCP server and enforce the policy on every tools/call.

    intercept -c POLICY [OPTIONS] -- COMMAND [ARGS]...
    """
    from intercept.policy import Policy, PolicyError, load_policy

    level = {"warn": "warning"}.get(log_level.lower(), log_level.lower())
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="intercept: %(levelname)s: %(message)s")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every file change at INFO
    if cancel_settle is not None:
        log = logging.getLogger("intercept")
        log.warning("--cancel-settle is deprecated and ignored: a cancelled call never gives its approval or counters back")
    try:
        policy = load_policy(config)
    except PolicyError as exc:
        fail(f"invalid policy, nothing proxied: {exc} (run `intercept validate -c {config}` for all errors)")
        return
    import asyncio

    from intercept.approvals.gate import ApprovalGate, UpstreamServer
    from intercept.approvals.redact import redact_argv
    from intercept.audit.events import EventLog, new_instance_id, prune_old_event_files
    from intercept.audit.hashing import ArgumentHasher, load_key
    from intercept.cmd.options import default_state_dir
    from intercept.proxy.counting import CallCounters
    from intercept.proxy.interceptor import Interceptor
    from intercept.proxy.live_instance import LiveInstance
    from intercept.proxy.policy_watcher import PolicyWatcher
    from intercept.proxy.relay import RelayOptions, UpstreamStartError, run_relay
    from intercept.proxy.server_identity import absolute_command, server_identity
    from intercept.proxy.server_name import derive_server_name
    from intercept.store.database import StoreUnavailable
    from intercept.store.instances import InstanceRecord, NameInUse
    from intercept.store.timestamps import rfc3339

    server = name or derive_server_name(list(command))
    resolved_state_dir = (state_dir or default_state_dir()).expanduser()
    hasher = ArgumentHasher(load_key(resolved_state_dir))
    cwd = Path.cwd()
    identity = server_identity(list(command), name, cwd)
    upstream_shown = redact_argv(absolute_command(list(command), cwd))  # argv often carries tokens and DSNs
    upstream = UpstreamServer(server, identity, json.dumps(upstream_shown, ensure_ascii=False))
    instance_id = new_instance_id(server)
    now = rfc3339(time.time())
    instance = LiveInstance(
        resolved_state_dir,
        InstanceRecord(
            id=instance_id,
            server=server,
            named=name is not None,
            identity=hasher.digest(server_identity(list(command), None, cwd).encode()),
            command=upstream.command,
            pid=os.getpid(),
            config=str(config.absolute()),
            policy_digest=policy.digest,
            started_at=now,
            seen_at=now,
        ),
    )
    if name is not None:  # approvals bind the name alone: it must not be shared by another server
        try:
            instance.register()
        except NameInUse as exc:
            fail(str(exc))
            return
        except StoreUnavailable as exc:  # approvals cannot work either: calls needing them fail closed
            logging.getLogger("intercept").warning("cannot check that --name %r is free: %s", name, exc)
    events = EventLog(resolved_state_dir, instance_id, hasher)
    prune_old_event_files(resolved_state_dir)
    gate = ApprovalGate(resolved_state_dir, upstream, events, hasher)
    hint = None if resolved_state_dir == default_state_dir() else resolved_state_dir.resolve()
    counters = CallCounters(resolved_state_dir, state_prefix, state_fail_mode)  # type: ignore[arg-type]
    interceptor = Interceptor(policy, server, events, gate, counters, hint, on_heartbeat=instance.seen)

    def swap_policy(new_policy: Policy) -> None:
        interceptor.policy = new_policy  # one reference swap: in-flight calls keep what they decided
        instance.seen(new_policy.digest)

    watcher = PolicyWatcher(config, swap_policy, events)

    async def register_instance() -> None:
        if name is None:  # off the event loop: the first answer does not wait for the database
            await asyncio.to_thread(instance.register_quietly)

    events.emit("startup", server=server, pid=os.getpid(), upstream=upstream_shown, config=str(config))
    try:
        status = asyncio.run(
            run_relay(
                interceptor,
                RelayOptions(list(command), shutdown_grace, shutdown_grace, [watcher.run, register_instance]),
            )
        )
    except UpstreamStartError as exc:
        events.emit("shutdown", server=server, reason="upstream could not start")
        events.close()
        instance.stopped()
        click.echo(f"intercept: {exc}", err=True)
        raise SystemExit(exc.exit_status) from None
    events.emit("shutdown", server=server, exit_status=status)
    events.close()
    instance.stopped()
    raise SystemExit(status)
