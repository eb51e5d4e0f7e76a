"""Where the admin API may listen (`console.server`), one case a row: the address forms, the
loopback rule, and `--allow-remote` only with TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from intercept.console.server import AdminAddressError, ListenOptions, bind, check_listen_options, parse_addr

CERT = Path("cert.pem")
KEY = Path("key.pem")


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:9111", ("127.0.0.1", 9111)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9111", ("::1", 9111)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize(
    "addr",
    ["", "9111", "127.0.0.1", "127.0.0.1:", ":9111", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:x", "127.0.0.1:٣"],
)
def test_parse_addr_refuses_other_forms(addr: str) -> None:
    with pytest.raises(AdminAddressError, match="HOST:PORT"):
        parse_addr(addr)


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (ListenOptions("127.0.0.1:0"), ""),
        (ListenOptions("[::1]:0"), ""),
        (ListenOptions("localhost:0"), ""),
        (ListenOptions("127.0.0.1:0", tls_cert=CERT, tls_key=KEY), ""),
        (ListenOptions("0.0.0.0:0", allow_remote=True, tls_cert=CERT, tls_key=KEY), ""),
        (ListenOptions("0.0.0.0:0"), "not a loopback address"),
        (ListenOptions("[::]:0"), "not a loopback address"),
        (ListenOptions("192.168.1.2:9111"), "not a loopback address"),
        (ListenOptions("admin.example:9111"), "not a loopback address"),
        (ListenOptions("127.1:9111"), "not a loopback address"),  # not an address inet_pton reads: refused
        (ListenOptions("127.0.0.1:0", allow_remote=True), "needs --tls-cert and --tls-key"),
        (ListenOptions("0.0.0.0:0", allow_remote=True), "needs --tls-cert and --tls-key"),
        (ListenOptions("0.0.0.0:0", allow_remote=True, tls_cert=CERT), "go together"),
        (ListenOptions("127.0.0.1:0", tls_key=KEY), "go together"),
    ],
    ids=[
        "ipv4 loopback",
        "ipv6 loopback",
        "localhost",
        "loopback with tls",
        "remote with tls",
        "any ipv4",
        "any ipv6",
        "lan address",
        "a name",
        "short loopback form",
        "allow-remote without tls",
        "remote without tls",
        "cert without key",
        "key without cert",
    ],
)
def test_check_listen_options(options: ListenOptions, refusal: str) -> None:
    if refusal:
        with pytest.raises(AdminAddressError, match=refusal):
            check_listen_options(options)
    else:
        check_listen_options(options)


def test_bind_reports_the_real_port_and_a_taken_one_in_one_line() -> None:
    sock, address = bind(ListenOptions("127.0.0.1:0"))
    try:
        assert address.port == sock.getsockname()[1] != 0
        assert (address.host, address.tls, address.base_url) == ("127.0.0.1", False, f"http://127.0.0.1:{address.port}")
        assert not sock.get_inheritable()  # the upstream must not inherit the admin socket
        with pytest.raises(AdminAddressError, match=f"cannot listen on 127.0.0.1:{address.port}") as caught:
            bind(ListenOptions(f"127.0.0.1:{address.port}"))
        assert "\n" not in str(caught.value)
    finally:
        sock.close()
