"""Run the proxy from parsed options, and parse the usual proxy command line without click.

An MCP client spawns the proxy and waits for its first answer, so the proxy's start path avoids
importing click (~20 ms): `fast_proxy_args` reads `[OPTIONS] -- COMMAND...` made only of the
proxy's own options in their plain forms, and returns None for anything else (help, a typo, a
bad value), which then goes through the click command in `cmd/proxy.py` for its full parsing and
messages. Both paths end in `run_proxy`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
FAIL_MODES = ("closed", "open")


@dataclass(frozen=True)
class ProxyArgs:
    """The proxy's command line, parsed."""

    config: Path
    command: tuple[str, ...]
    state_dir: Path | None = None
    name: str | None = None
    state_prefix: str = ""
    state_fail_mode: str = "closed"
    log_level: str = "info"
    shutdown_grace: float = 5.0
    cancel_settle: float | None = None
    retention_s: float | None = None  # None: the default (90 days)
    admin_api: bool = False
    admin_addr: str = "127.0.0.1:9111"
    allow_remote: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    agent: str | None = None  # who is asking (`--agent`): conditions on agent.*, recorded on approvals


_VALUE_OPTIONS = {
    "-c": "config",
    "--config": "config",
    "--state-dir": "state_dir",
    "--name": "name",
    "--state-prefix": "state_prefix",
    "--state-fail-mode": "state_fail_mode",
    "--log-level": "log_level",
    "--shutdown-grace": "shutdown_grace",
    "--cancel-settle": "cancel_settle",
    "--retention": "retention",
    "--admin-addr": "admin_addr",
    "--tls-cert": "tls_cert",
    "--tls-key": "tls_key",
    "--agent": "agent",
}
_FLAG_OPTIONS = {"--enable-admin-api": "admin_api", "--allow-remote": "allow_remote"}


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None  # NaN and negatives: click's FloatRange(min=0) refuses them


def fast_proxy_args(argv: list[str]) -> ProxyArgs | None:
    """The parsed command line if it is the plain `[OPTIONS] -- COMMAND...` form, else None."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            command = tuple(argv[index + 1 :])
            break
        if word in _FLAG_OPTIONS:
            flags.add(_FLAG_OPTIONS[word])
            index += 1
            continue
        option, equals, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        field = _VALUE_OPTIONS.get(option)
        if field is None or (not equals and index + 1 >= len(argv)):
            return None  # not an option of ours, or the command without `--`: click decides
        values[field] = inline if equals else argv[index + 1]
        index += 1 if equals else 2
    else:
        return None
    if not command or "config" not in values:
        return None
    fail_mode = values.get("state_fail_mode", "closed")
    log_level = values.get("log_level", "info")
    grace = _seconds(values.get("shutdown_grace", "5"))
    settle = _seconds(values["cancel_settle"]) if "cancel_settle" in values else None
    retention_s: float | None = None
    if "retention" in values:
        from intercept.durations import parse_duration_s

        try:
            retention_s = parse_duration_s(values["retention"])
        except ValueError:
            return None  # click says what is wrong with it
    if "agent" in values:
        from intercept.policy.agents import name_problem

        if name_problem(values["agent"]) is not None:
            return None  # click says what is wrong with it
    if (
        fail_mode not in FAIL_MODES
        or log_level.lower() not in LOG_LEVELS
        or grace is None
        or ("cancel_settle" in values and settle is None)
        or not values["config"]
        or values.get("state_dir") == ""  # click reads an empty --state-dir as the working directory
        or ("state_dir" in values and os.path.isfile(values["state_dir"]))  # click's message for that
        or any(not os.path.isfile(values[name]) for name in ("tls_cert", "tls_key") if name in values)
    ):
        return None
    return ProxyArgs(
        config=Path(values["config"]),
        command=command,
        state_dir=Path(values["state_dir"]) if values.get("state_dir") else None,
        name=values.get("name"),
        state_prefix=values.get("state_prefix", ""),
        state_fail_mode=fail_mode,
        log_level=log_level,
        shutdown_grace=grace,
        cancel_settle=settle,
        retention_s=retention_s,
        admin_api="admin_api" in flags,
        admin_addr=values.get("admin_addr", "127.0.0.1:9111"),
        allow_remote="allow_remote" in flags,
        tls_cert=Path(values["tls_cert"]) if "tls_cert" in values else None,
        tls_key=Path(values["tls_key"]) if "tls_key" in values else None,
        agent=values.get("agent"),
    )


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit 1 (as `cmd.options.fail`, without click)."""
    sys.stderr.write(f"intercept: {message}\n")
    raise SystemExit(1)


def run_proxy(args: ProxyArgs) -> NoReturn:
    """Run the proxy until the upstream or the client ends the session; exits with its status."""
    import asyncio

    from intercept.cmd.state_dir import builtin_state_dir, default_state_dir
    from intercept.proxy.relay import RelayOptions, UpstreamStartError, run_relay
    from intercept.proxy.session import InvalidPolicy, ProxySession, SessionSettings

    level = {"warn": "warning"}.get(args.log_level.lower(), args.log_level.lower())
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="intercept: %(levelname)s: %(message)s")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every file change at INFO
    if args.cancel_settle is not None:
        logging.getLogger("intercept").warning(
            "--cancel-settle is deprecated and ignored: a cancelled call never gives its approval or counters back"
        )
    state_dir = (args.state_dir or default_state_dir()).expanduser()
    admin = None
    if args.admin_api:
        from intercept.console.server import AdminAddressError, ListenOptions, check_listen_options

        admin = ListenOptions(args.admin_addr, args.allow_remote, args.tls_cert, args.tls_key)
        try:
            check_listen_options(admin)
        except AdminAddressError as exc:
            _fail(f"admin API: {exc}")
    session = ProxySession(
        SessionSettings(
            config=args.config,
            state_dir=state_dir,
            # Named in -32003 messages unless it is the built-in default: an approver's shell may
            # not have the proxy's $INTERCEPT_STATE_DIR.
            state_dir_hint=None if state_dir == builtin_state_dir() else state_dir.resolve(),
            name=args.name,
            state_prefix=args.state_prefix,
            fail_mode=args.state_fail_mode,  # type: ignore[arg-type]
            command=args.command,
            retention_s=args.retention_s,
            admin_api=admin,
            agent=args.agent,
        )
    )
    options = RelayOptions(
        list(args.command),
        args.shutdown_grace,
        args.shutdown_grace,
        [session.watch_policy, session.register_instance, session.keep_retention, session.archive_policies],
        prepare=lambda: session.policy,  # while the upstream starts; invalid: it is killed unfed
    )
    try:
        if args.name is not None:  # approvals bind the name alone: it must not be shared by another server
            refusal = session.claim_name()
            if refusal:
                _fail(refusal)
        status = asyncio.run(run_relay(session.build, options))
    except InvalidPolicy as exc:
        if exc.unreadable:
            _fail(f"nothing proxied: {exc}")
        _fail(f"invalid policy, nothing proxied: {exc} (run `intercept validate -c {args.config}` for all errors)")
    except UpstreamStartError as exc:
        session.finish(reason="upstream could not start")
        sys.stderr.write(f"intercept: {exc}\n")
        raise SystemExit(exc.exit_status) from None
    session.finish(exit_status=status)
    raise SystemExit(status)
