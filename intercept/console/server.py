"""Serving the console app with uvicorn: `intercept serve` in the foreground, `--enable-admin-api`
on a thread of the proxy with its own event loop (the relay's loop never runs an HTTP request).

The socket is bound before the app is built, so port 0 works: the app's Host and Origin checks
need the real port. Listening beyond loopback needs `allow_remote` and TLS.

Stopping is prompt: the app's `state.closing` event (when it has one) is set first, which ends
its open event streams, and a request still running SHUTDOWN_GRACE_S later is cancelled; uvicorn
would otherwise wait for every connection to finish, and an event stream never does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intercept.console.auth import BoundAddress

DEFAULT_ADMIN_ADDR = "127.0.0.1:9111"
SHUTDOWN_GRACE_S = 1.0
log = logging.getLogger("intercept")


class AdminAddressError(Exception):
    """The address cannot be used (bad form, remote without TLS, taken); says what to do."""


@dataclass(frozen=True)
class ListenOptions:
    addr: str = DEFAULT_ADMIN_ADDR
    allow_remote: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None


def parse_addr(addr: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) into its parts; raises AdminAddressError."""
    host, colon, port_text = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise AdminAddressError(
            f"--admin-addr must be HOST:PORT (e.g. 127.0.0.1:9111, port 0 for any free one), got {addr!r}"
        )
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_options(options: ListenOptions) -> tuple[str, int]:
    """The host and port to bind, after the remote/TLS rules; raises AdminAddressError."""
    host, port = parse_addr(options.addr)
    tls = options.tls_cert is not None or options.tls_key is not None
    if tls and (options.tls_cert is None or options.tls_key is None):
        raise AdminAddressError("--tls-cert and --tls-key go together")
    if options.allow_remote and not tls:
        raise AdminAddressError(
            "--allow-remote needs --tls-cert and --tls-key: tokens must not cross a network in clear"
        )
    if not _is_loopback(host) and not options.allow_remote:
        raise AdminAddressError(f"{host} is not a loopback address: add --allow-remote (with --tls-cert and --tls-key)")
    return host, port


def bind(options: ListenOptions) -> tuple[socket.socket, BoundAddress]:
    """A listening socket and the address it is bound to; raises AdminAddressError."""
    host, port = check_listen_options(options)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)  # fails on a host without IPv6
    except OSError as exc:
        raise AdminAddressError(f"cannot listen on {options.addr}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise AdminAddressError(f"cannot listen on {options.addr}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    bound_port = sock.getsockname()[1]
    return sock, BoundAddress(host, bound_port, tls=options.tls_cert is not None)


def uvicorn_server(app: Any, options: ListenOptions) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the caller owns signals
    return server


def serve_in_foreground(app: Any, sock: socket.socket, options: ListenOptions) -> None:
    server = uvicorn_server(app, options)
    asyncio.run(server.serve(sockets=[sock]))


class BackgroundServer:
    """The app on a daemon thread with its own event loop (for the proxy)."""

    def __init__(self, app: Any, sock: socket.socket, options: ListenOptions) -> None:
        self._closing: threading.Event | None = getattr(getattr(app, "state", None), "closing", None)
        self._server = uvicorn_server(app, options)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="intercept-admin-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except Exception:
            log.exception("the admin API stopped")

    def stop(self, wait_s: float = 2.0) -> None:
        if self._closing is not None:
            self._closing.set()
        self._server.should_exit = True
        self._thread.join(wait_s)
