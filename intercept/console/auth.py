"""Who may use the admin API and the console, and the browser defences around them.

- **Tokens.** The state dir's admin secret (`admin.key`, 32 random bytes, 0600, made on first
  use) gives the admin token, `itk_<base64url(secret)>`. A person's token, `itp_<name>.<mac>`
  (`intercept admin token --as NAME`), is an HMAC of the name under that secret: nothing per person
  is stored, and the name a token carries is the actor of every decision made with it, whatever
  the request body says. Deleting `admin.key` revokes every token and session at once. A console
  that signs votes with approvers' keys (`serve --signing-keys DIR`) takes its secret from
  `DIR/console.key` instead, out of the state dir's reach.
- **Browser sessions.** A one-time login code (printed by `intercept serve`) or a token pasted
  into the login form opens a session: an HttpOnly, SameSite=Strict cookie holding a random id
  kept in this process's memory. A state-changing request made with the cookie must carry the
  session's CSRF token in `X-CSRF-Token`; a Bearer request needs none (a browser never attaches
  a Bearer header on its own).
- **DNS rebinding and cross-site requests.** `Host` must name the bound address (or, on loopback,
  `localhost`/`127.0.0.1`/`[::1]` with the bound port); an `Origin` header, when sent, must be
  that same origin; `Sec-Fetch-Site: cross-site` is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from intercept.policy.model import PERSON_NAME
from intercept.store.secret_file import read_or_create_secret

ADMIN_KEY_FILE = "admin.key"
CONSOLE_KEY_FILE = "console.key"
ADMIN_KEY_BYTES = 32
ADMIN_TOKEN_PREFIX = "itk_"  # noqa: S105 (a prefix, not a secret)
PERSON_TOKEN_PREFIX = "itp_"  # noqa: S105
SESSION_COOKIE = "intercept_session"
CSRF_HEADER = "x-csrf-token"
SESSION_LIFETIME_S = 12 * 3600.0
LOGIN_CODE_LIFETIME_S = 600.0
MAX_SESSIONS = 1000
# A person's name as a token carries it: printable, no separator, short.
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]+\]")


def admin_secret_file(state_dir: Path, signing_keys: Path | None = None) -> Path:
    """Where the secret every token derives from is kept: `admin.key` in the state dir, or, for a
    console that signs votes (`serve --signing-keys DIR`), `console.key` in that directory: a
    secret anyone who can write the state dir could read or replace must not unlock the
    approvers' keys."""
    return signing_keys / CONSOLE_KEY_FILE if signing_keys is not None else state_dir / ADMIN_KEY_FILE


def admin_secret(state_dir: Path, signing_keys: Path | None = None) -> bytes:
    """The admin secret, created on first use (raises SecretUnavailable)."""
    return read_or_create_secret(admin_secret_file(state_dir, signing_keys), ADMIN_KEY_BYTES)


def private_dir_problem(directory: Path, state_dir: Path) -> str | None:
    """Why `directory` cannot hold the console's signing keys: it must be a directory of this
    user that nobody else can enter, and outside the state dir; None when it can."""
    import os
    import stat

    try:
        info = os.stat(directory, follow_symlinks=False)
    except OSError as exc:
        return f"cannot use --signing-keys {directory}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"--signing-keys {directory} is not a directory"
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        return f"--signing-keys {directory} must be yours and closed to others (chmod 700 {directory})"
    inside = directory.resolve()
    if inside == state_dir.resolve() or state_dir.resolve() in inside.parents:
        return f"--signing-keys {directory} is inside the state dir, which the agent's account may be able to write"
    return None


def admin_token(secret: bytes) -> str:
    return ADMIN_TOKEN_PREFIX + base64.urlsafe_b64encode(secret).decode().rstrip("=")


def _person_mac(secret: bytes, name: str) -> str:
    return hmac.new(secret, b"person\0" + name.encode(), hashlib.sha256).hexdigest()


def person_token(secret: bytes, name: str) -> str:
    """A token bound to `name`; raises ValueError for a name a token cannot carry."""
    if not PERSON_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} cannot name a person in a token: use letters, digits and _ . @ + - (at most 64, "
            "starting with a letter or digit)"
        )
    return f"{PERSON_TOKEN_PREFIX}{name}.{_person_mac(secret, name)}"


@dataclass(frozen=True, slots=True)
class Credential:
    """Who a request is: `person` is the name a person's token carries (None for the admin token,
    which may say any actor)."""

    person: str | None
    via: str  # "bearer" or "session"


def credential_of_token(secret: bytes, token: str) -> Credential | None:
    """The credential a token stands for, or None for anything else (compared in constant time)."""
    if not token.isascii():  # every token is; compare_digest raises TypeError on other text
        return None
    if token.startswith(ADMIN_TOKEN_PREFIX):
        return Credential(None, "bearer") if hmac.compare_digest(token, admin_token(secret)) else None
    if token.startswith(PERSON_TOKEN_PREFIX):
        name, dot, mac = token[len(PERSON_TOKEN_PREFIX) :].rpartition(".")
        if dot and PERSON_NAME.fullmatch(name) and hmac.compare_digest(mac, _person_mac(secret, name)):
            return Credential(name, "bearer")
    return None


@dataclass(slots=True)
class Session:
    person: str | None
    csrf: str
    expires_at: float


@dataclass(slots=True)
class Sessions:
    """Login codes and browser sessions of this process (in memory: a restart logs everyone out)."""

    login_codes: dict[str, float] = field(default_factory=dict)  # code -> expiry
    sessions: dict[str, Session] = field(default_factory=dict)  # cookie value -> session

    def new_login_code(self, now_s: float | None = None) -> str:
        now_s = time.time() if now_s is None else now_s
        self._forget_expired(now_s)
        code = secrets.token_urlsafe(24)
        self.login_codes[code] = now_s + LOGIN_CODE_LIFETIME_S
        return code

    def use_login_code(self, code: str, now_s: float | None = None) -> bool:
        """True once for a code that was issued and has not expired."""
        now_s = time.time() if now_s is None else now_s
        expiry = self.login_codes.pop(code, None)
        return expiry is not None and expiry > now_s

    def open(self, person: str | None, now_s: float | None = None) -> tuple[str, Session]:
        now_s = time.time() if now_s is None else now_s
        self._forget_expired(now_s)
        if len(self.sessions) >= MAX_SESSIONS:  # the oldest goes
            del self.sessions[min(self.sessions, key=lambda key: self.sessions[key].expires_at)]
        session_id = secrets.token_urlsafe(32)
        session = Session(person, secrets.token_urlsafe(32), now_s + SESSION_LIFETIME_S)
        self.sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str, now_s: float | None = None) -> Session | None:
        session = self.sessions.get(session_id)
        if session is None or session.expires_at <= (time.time() if now_s is None else now_s):
            return None
        return session

    def close(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def revoke_all(self) -> None:
        """Every session and login code ends (the admin secret changed)."""
        self.login_codes.clear()
        self.sessions.clear()

    def _forget_expired(self, now_s: float) -> None:
        self.login_codes = {code: expiry for code, expiry in self.login_codes.items() if expiry > now_s}
        self.sessions = {key: s for key, s in self.sessions.items() if s.expires_at > now_s}


@dataclass(frozen=True, slots=True)
class BoundAddress:
    """Where the app listens, for the Host and Origin checks."""

    host: str
    port: int
    tls: bool = False

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.netloc}"

    def allowed_hosts(self) -> frozenset[str]:
        hosts = {self.netloc}
        if self.host in ("127.0.0.1", "::1", "localhost"):
            hosts.update(f"{name}:{self.port}" for name in _LOOPBACK_NAMES)
        return frozenset(host.lower() for host in hosts)

    def allowed_origins(self) -> frozenset[str]:
        scheme = "https" if self.tls else "http"
        return frozenset(f"{scheme}://{host}" for host in self.allowed_hosts())


def _remote_host_ok(address: BoundAddress, host: str) -> bool:
    """Beyond loopback (only with --allow-remote, always TLS) the server is reached by names we
    cannot know (a DNS name, a public address for a 0.0.0.0 bind), so any name with the bound port
    goes (no port: 443). DNS rebinding needs no guard there: a rebound name fails the TLS
    certificate check, and the cookie and tokens are never sent to the rebinding site."""
    if address.host in ("127.0.0.1", "::1", "localhost") or not address.tls:
        return False
    name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not colon:
        name, port = host, "443"
    return _HOST_NAME.fullmatch(name) is not None and port == str(address.port)


def cross_site_refusal(address: BoundAddress, host: str | None, origin: str | None, fetch_site: str | None) -> str:
    """Why a request must be refused as misdirected or cross-site, or "" (see the module doc)."""
    if host is None:
        return "the Host header does not name this server (DNS rebinding?)"
    host = host.lower()
    remote = host not in address.allowed_hosts()
    if remote and not _remote_host_ok(address, host):
        return "the Host header does not name this server (DNS rebinding?)"
    allowed_origins = {f"https://{host}"} if remote else address.allowed_origins()
    if origin is not None and origin.lower() not in allowed_origins:
        return "cross-origin requests are refused"
    if fetch_site == "cross-site":
        return "cross-site requests are refused"
    return ""
