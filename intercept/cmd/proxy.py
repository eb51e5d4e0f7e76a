"""The root command: run the proxy in front of an upstream MCP server over stdio."""

from __future__ import annotations

import logging
import os
import sys
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
    default=5.0,
    show_default=True,
    help="Seconds a cancelled call keeps its approval and counters while the upstream may still answer it.",
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
    cancel_settle: float,
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
    try:
        policy = load_policy(config)
    except PolicyError as exc:
        fail(f"invalid policy, nothing proxied: {exc} (run `intercept validate -c {config}` for all errors)")
        return
    import asyncio

    from intercept.approvals.gate import ApprovalGate
    from intercept.audit.events import EventLog, new_instance_id, prune_old_event_files
    from intercept.cmd.options import default_state_dir
    from intercept.proxy.counting import CallCounters
    from intercept.proxy.interceptor import Interceptor
    from intercept.proxy.policy_watcher import PolicyWatcher
    from intercept.proxy.relay import RelayOptions, UpstreamStartError, run_relay
    from intercept.proxy.server_name import derive_server_name

    server = name or derive_server_name(list(command))
    resolved_state_dir = (state_dir or default_state_dir()).expanduser()
    events = EventLog(resolved_state_dir, new_instance_id(server))
    prune_old_event_files(resolved_state_dir)
    gate = ApprovalGate(resolved_state_dir, server, events)
    hint = None if resolved_state_dir == default_state_dir() else resolved_state_dir.resolve()
    counters = CallCounters(resolved_state_dir, state_prefix, state_fail_mode)  # type: ignore[arg-type]
    interceptor = Interceptor(policy, server, events, gate, counters, hint, cancel_settle)

    def swap_policy(new_policy: Policy) -> None:
        interceptor.policy = new_policy  # one reference swap: in-flight calls keep what they decided

    watcher = PolicyWatcher(config, swap_policy, events)
    from intercept.approvals.redact import redact_text

    upstream_shown = [redact_text(word) for word in command]  # argv often carries tokens and DSNs
    events.emit("startup", server=server, pid=os.getpid(), upstream=upstream_shown, config=str(config))
    try:
        status = asyncio.run(
            run_relay(interceptor, RelayOptions(list(command), shutdown_grace, shutdown_grace, [watcher.run]))
        )
    except UpstreamStartError as exc:
        events.emit("shutdown", server=server, reason="upstream could not start")
        events.close()
        click.echo(f"intercept: {exc}", err=True)
        raise SystemExit(exc.exit_status) from None
    events.emit("shutdown", server=server, exit_status=status)
    events.close()
    raise SystemExit(status)
