"""`console.auth` in-process, one case a row: tokens (the admin's and a person's), the Host and
Origin checks for loopback and other addresses, login codes and sessions on an injected clock."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from intercept.console.auth import (
    LOGIN_CODE_LIFETIME_S,
    MAX_SESSIONS,
    SESSION_LIFETIME_S,
    BoundAddress,
    Credential,
    Sessions,
    admin_secret,
    admin_token,
    credential_of_token,
    cross_site_refusal,
    person_token,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
ADMIN = admin_token(SECRET)
ALICE = person_token(SECRET, "alice")
NOW_S = 1_800_000_000.0

# -- tokens ----------------------------------------------------------------------------------------


def test_the_admin_secret_is_made_once_owner_only(tmp_path: Path) -> None:
    secret = admin_secret(tmp_path / "state")
    assert len(secret) == 32 and admin_secret(tmp_path / "state") == secret
    assert stat.S_IMODE((tmp_path / "state" / "admin.key").stat().st_mode) == 0o600


def test_token_shapes() -> None:
    assert ADMIN.startswith("itk_") and "=" not in ADMIN and ADMIN.isascii()
    name, dot, mac = ALICE.removeprefix("itp_").rpartition(".")
    assert (name, dot, len(mac)) == ("alice", ".", 64)
    assert person_token(SECRET, "alice") == ALICE  # nothing random: the same name, the same token
    assert person_token(OTHER_SECRET, "alice") != ALICE


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (ADMIN, Credential(None, "bearer")),
        (ALICE, Credential("alice", "bearer")),
        (person_token(SECRET, "a.b@example.com"), Credential("a.b@example.com", "bearer")),
        (person_token(SECRET, "x" * 64), Credential("x" * 64, "bearer")),
        (person_token(SECRET, "Bob+ops-1_2"), Credential("Bob+ops-1_2", "bearer")),
    ],
    ids=["admin", "person", "person with dots and at", "longest name", "person with + - _"],
)
def test_tokens_round_trip(token: str, expected: Credential) -> None:
    assert credential_of_token(SECRET, token) == expected


FORGED = {
    "empty": "",
    "prefix only": "itk_",
    "admin token of another secret": admin_token(OTHER_SECRET),
    "admin token cut short": ADMIN[:-1],
    "admin token and more": ADMIN + "A",
    "admin token with padding": ADMIN + "=",
    "admin token in upper case": ADMIN.upper(),
    "admin token without its prefix": ADMIN.removeprefix("itk_"),
    "admin secret as a person prefix": "itp_" + ADMIN.removeprefix("itk_"),
    "person token of another secret": person_token(OTHER_SECRET, "alice"),
    "person name changed": ALICE.replace("alice", "alicf"),
    "person name in another case": ALICE.replace("alice", "Alice"),
    "person mac of another name": "itp_bob." + ALICE.rpartition(".")[2],
    "person mac in upper case": "itp_alice." + ALICE.rpartition(".")[2].upper(),
    "person mac cut short": ALICE[:-1],
    "person without a mac": "itp_alice",
    "person without a name": "itp_." + ALICE.rpartition(".")[2],
    "person mac zeros": "itp_alice." + "0" * 64,
    "person name not allowed": "itp_bad name." + "0" * 64,
    "person with admin prefix": "itk_alice." + ALICE.rpartition(".")[2],
    "non-ascii admin": "itk_\xe9" + ADMIN[5:],
    "non-ascii person mac": "itp_alice.\xe9",
    "non-ascii person name": "itp_\xe9lice." + "0" * 64,
    "a nul": ADMIN + "\x00",
}


@pytest.mark.parametrize("token", list(FORGED.values()), ids=list(FORGED))
def test_anything_else_is_no_credential(token: str) -> None:
    assert credential_of_token(SECRET, token) is None


@pytest.mark.parametrize(
    "name",
    ["", "bad name", "-alice", ".alice", "_alice", "x" * 65, "al\nice", "alice\n", "\xe5lice", "al/ice", "al:ice"],
    ids=repr,
)
def test_a_name_a_token_cannot_carry_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot name a person"):
        person_token(SECRET, name)


# -- hosts and origins -----------------------------------------------------------------------------

LOOPBACK_ALIASES = {"127.0.0.1:9111", "localhost:9111", "[::1]:9111"}


@pytest.mark.parametrize(
    ("address", "hosts", "origins"),
    [
        (
            BoundAddress("127.0.0.1", 9111),
            LOOPBACK_ALIASES,
            {f"http://{h}" for h in LOOPBACK_ALIASES},
        ),
        (BoundAddress("::1", 9111), LOOPBACK_ALIASES, {f"http://{h}" for h in LOOPBACK_ALIASES}),
        (BoundAddress("localhost", 9111), LOOPBACK_ALIASES, {f"http://{h}" for h in LOOPBACK_ALIASES}),
        (
            BoundAddress("127.0.0.1", 9111, tls=True),
            LOOPBACK_ALIASES,
            {f"https://{h}" for h in LOOPBACK_ALIASES},
        ),
        (BoundAddress("10.1.2.3", 443, tls=True), {"10.1.2.3:443"}, {"https://10.1.2.3:443"}),
        (BoundAddress("fd00::5", 8443, tls=True), {"[fd00::5]:8443"}, {"https://[fd00::5]:8443"}),
        (BoundAddress("Admin.Example", 9111, tls=True), {"admin.example:9111"}, {"https://admin.example:9111"}),
    ],
    ids=["ipv4 loopback", "ipv6 loopback", "localhost", "loopback with tls", "other ipv4", "other ipv6", "a name"],
)
def test_allowed_hosts_and_origins(address: BoundAddress, hosts: set[str], origins: set[str]) -> None:
    assert address.allowed_hosts() == hosts
    assert address.allowed_origins() == origins


@pytest.mark.parametrize(
    ("address", "netloc", "base_url"),
    [
        (BoundAddress("127.0.0.1", 0), "127.0.0.1:0", "http://127.0.0.1:0"),
        (BoundAddress("::1", 9111), "[::1]:9111", "http://[::1]:9111"),
        (BoundAddress("fe80::1", 1, tls=True), "[fe80::1]:1", "https://[fe80::1]:1"),
    ],
    ids=["ipv4", "ipv6", "ipv6 with tls"],
)
def test_netloc_and_base_url(address: BoundAddress, netloc: str, base_url: str) -> None:
    assert (address.netloc, address.base_url) == (netloc, base_url)


LOCAL = BoundAddress("127.0.0.1", 9111)
REMOTE = BoundAddress("10.1.2.3", 8443, tls=True)
WILDCARD = BoundAddress("0.0.0.0", 8443, tls=True)
HTTPS_443 = BoundAddress("0.0.0.0", 443, tls=True)
WILDCARD_PLAIN = BoundAddress("0.0.0.0", 8443)


@pytest.mark.parametrize(
    ("address", "host", "origin", "fetch_site", "refused"),
    [
        (LOCAL, "127.0.0.1:9111", None, None, ""),
        (LOCAL, "LOCALHOST:9111", "http://LocalHost:9111", "same-origin", ""),
        (LOCAL, "[::1]:9111", "http://127.0.0.1:9111", "none", ""),
        (LOCAL, "127.0.0.1:9111", None, "same-site", ""),
        (LOCAL, None, None, None, "Host"),
        (LOCAL, "", None, None, "Host"),
        (LOCAL, "127.0.0.1", None, None, "Host"),
        (LOCAL, "127.0.0.1:9112", None, None, "Host"),
        (LOCAL, "evil.example:9111", None, None, "Host"),
        (LOCAL, "localhost.:9111", None, None, "Host"),
        (LOCAL, "127.0.0.1:9111 ", None, None, "Host"),
        (LOCAL, "user@127.0.0.1:9111", None, None, "Host"),
        (LOCAL, "127.0.0.1:9111", "null", None, "cross-origin"),
        (LOCAL, "127.0.0.1:9111", "", None, "cross-origin"),
        (LOCAL, "127.0.0.1:9111", "http://evil.example", None, "cross-origin"),
        (LOCAL, "127.0.0.1:9111", "http://127.0.0.1:3000", None, "cross-origin"),
        (LOCAL, "127.0.0.1:9111", "https://127.0.0.1:9111", None, "cross-origin"),
        (LOCAL, "127.0.0.1:9111", "http://127.0.0.1:9111/", None, "cross-origin"),
        (LOCAL, "127.0.0.1:9111", None, "cross-site", "cross-site"),
        (LOCAL, "127.0.0.1:9111", "http://127.0.0.1:9111", "cross-site", "cross-site"),
        (REMOTE, "10.1.2.3:8443", "https://10.1.2.3:8443", None, ""),
        (REMOTE, "localhost:8443", None, None, ""),  # a name we cannot know: TLS checks it
        (REMOTE, "10.1.2.3:8443", "http://10.1.2.3:8443", None, "cross-origin"),
        (WILDCARD, "console.example.com:8443", "https://console.example.com:8443", None, ""),
        (WILDCARD, "console.example.com:8443", "https://evil.example:8443", None, "cross-origin"),
        (WILDCARD, "console.example.com", None, None, "Host"),  # no port means 443
        (WILDCARD, "console.example.com:9443", None, None, "Host"),
        (WILDCARD, "evil example:8443", None, None, "Host"),
        (WILDCARD, "user@console.example.com:8443", None, None, "Host"),
        (HTTPS_443, "console.example.com", "https://console.example.com", None, ""),
        (WILDCARD_PLAIN, "console.example.com:8443", None, None, "Host"),  # never without TLS
    ],
    ids=[
        "loopback, nothing else",
        "case of names",
        "ipv6 alias, ipv4 origin",
        "same-site fetch",
        "no host",
        "empty host",
        "host without port",
        "host on another port",
        "rebinding",
        "trailing dot",
        "trailing space",
        "userinfo",
        "null origin",
        "empty origin",
        "evil origin",
        "origin on another port",
        "origin with another scheme",
        "origin with a path",
        "cross-site fetch",
        "cross-site fetch, good origin",
        "remote",
        "remote reached as localhost",
        "remote origin without tls",
        "wildcard bind by name",
        "wildcard bind, evil origin",
        "wildcard bind, no port",
        "wildcard bind, other port",
        "wildcard bind, space in name",
        "wildcard bind, userinfo",
        "port 443 without port",
        "wildcard bind without tls",
    ],
)
def test_cross_site_refusal(
    address: BoundAddress, host: str | None, origin: str | None, fetch_site: str | None, refused: str
) -> None:
    reason = cross_site_refusal(address, host, origin, fetch_site)
    assert (refused in reason) if refused else reason == "", reason
    assert bool(reason) == bool(refused)


# -- login codes and sessions ----------------------------------------------------------------------


def test_a_login_code_works_once_and_only_in_time() -> None:
    sessions = Sessions()
    code = sessions.new_login_code(NOW_S)
    assert len(code) >= 32
    assert sessions.use_login_code(code, NOW_S + 1)
    assert not sessions.use_login_code(code, NOW_S + 2)  # once
    late = sessions.new_login_code(NOW_S)
    assert not sessions.use_login_code(late, NOW_S + LOGIN_CODE_LIFETIME_S)  # expired at the edge
    assert not sessions.use_login_code(late, NOW_S)  # and gone, even if the clock goes back
    assert not sessions.use_login_code("", NOW_S)
    assert not sessions.use_login_code("guess", NOW_S)


def test_login_codes_are_distinct_and_expired_ones_forgotten() -> None:
    sessions = Sessions()
    codes = {sessions.new_login_code(NOW_S) for _ in range(50)}
    assert len(codes) == 50
    sessions.new_login_code(NOW_S + LOGIN_CODE_LIFETIME_S + 1)
    assert len(sessions.login_codes) == 1


def test_a_session_lasts_its_lifetime() -> None:
    sessions = Sessions()
    session_id, session = sessions.open("alice", NOW_S)
    assert session.person == "alice" and len(session.csrf) >= 32 and session.csrf != session_id
    assert sessions.get(session_id, NOW_S + SESSION_LIFETIME_S - 1) is session
    assert sessions.get(session_id, NOW_S + SESSION_LIFETIME_S) is None
    assert sessions.get("", NOW_S) is None and sessions.get("guess", NOW_S) is None


def test_closing_and_revoking_sessions() -> None:
    sessions = Sessions()
    first, _ = sessions.open(None, NOW_S)
    second, _ = sessions.open(None, NOW_S)
    code = sessions.new_login_code(NOW_S)
    sessions.close(first)
    assert sessions.get(first, NOW_S) is None and sessions.get(second, NOW_S) is not None
    sessions.revoke_all()
    assert sessions.get(second, NOW_S) is None
    assert not sessions.use_login_code(code, NOW_S)


def test_sessions_are_bounded_and_the_oldest_goes() -> None:
    sessions = Sessions()
    oldest, _ = sessions.open(None, NOW_S)
    for i in range(MAX_SESSIONS):
        sessions.open(None, NOW_S + 1 + i / 1000)
    assert len(sessions.sessions) == MAX_SESSIONS
    assert sessions.get(oldest, NOW_S + 2) is None
