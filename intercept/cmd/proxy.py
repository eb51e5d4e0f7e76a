"""The root command as a click command: run the proxy in front of an upstream MCP server over stdio.

The usual command line skips click (`cmd.run_proxy.fast_proxy_args`); this command parses
everything else, with click's help and error messages.
"""

from __future__ import annotations

from pathlib import Path

import click

from intercept.cmd.admin_options import ADMIN_API_GROUP, GroupedHelpCommand, GroupedOption, listen_options
from intercept.cmd.options import AGENT_NAME, DURATION, state_dir_option
from intercept.cmd.run_proxy import FAIL_MODES, LOG_LEVELS, ProxyArgs, run_proxy


@click.command(
    "intercept",
    cls=GroupedHelpCommand,
    # An unknown option before the command is a typo (click names it and suggests the closest);
    # everything from the first word that is not an option on is the command and its arguments.
    context_settings={"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]},
)
@click.option("-c", "--config", "config", required=True, type=click.Path(path_type=Path), help="Policy YAML file.")
@state_dir_option
@click.option("--name", default=None, help="Server name for approvals and events (default: derived from the command).")
@click.option(
    "--agent",
    type=AGENT_NAME,
    default=None,
    help="Who is asking: the agent this client runs, for conditions on agent.name and agent.roles (roles from "
    "the policy's agents block) and on every approval it requests.",
)
@click.option(
    "--state-prefix", default="", help="Prefix for counter keys, to give proxies sharing a state dir separate budgets."
)
@click.option(
    "--state-fail-mode",
    type=click.Choice(FAIL_MODES),
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
@click.option(
    "--retention",
    type=DURATION,
    default=None,
    metavar="DURATION",
    help="How long denied, consumed and expired approvals, stopped instances and event files are kept "
    "(default 90d; where proxies sharing a state dir disagree, the longest applies).",
)
@click.option(
    "--enable-admin-api",
    is_flag=True,
    cls=GroupedOption,
    help_group=ADMIN_API_GROUP,
    help="Serve the admin API (Intercept's approval routes and ours) from this proxy; `intercept serve` serves it "
    "for every proxy of the state dir.",
)
@listen_options("--admin-addr")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="[--] COMMAND [ARGS]...")
def proxy_command(
    config: Path,
    state_dir: Path | None,
    name: str | None,
    agent: str | None,
    state_prefix: str,
    state_fail_mode: str,
    log_level: str,
    shutdown_grace: float,
    cancel_settle: float | None,
    retention: float | None,
    enable_admin_api: bool,
    addr: str,
    allow_remote: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as the upstream MCP server and enforce the policy on every tools/call.

    COMMAND [ARGS]... is the server's own command line, after `--`, for example:

    \b
        intercept -c policy.yaml -- npx -y @modelcontextprotocol/server-filesystem ~/work
    """
    run_proxy(
        ProxyArgs(
            config=config,
            command=command,
            state_dir=state_dir,
            name=name,
            state_prefix=state_prefix,
            state_fail_mode=state_fail_mode,
            log_level=log_level,
            shutdown_grace=shutdown_grace,
            cancel_settle=cancel_settle,
            retention_s=retention,
            admin_api=enable_admin_api,
            admin_addr=addr,
            allow_remote=allow_remote,
            tls_cert=tls_cert,
            tls_key=tls_key,
            agent=agent,
        )
    )
