"""Redacted, truncated views of call arguments for approvers: secrets never leave the proxy."""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[REDACTED]"
MAX_STRING_CHARS = 200
MAX_ITEMS = 50
MAX_DEPTH = 6

# Searched anywhere in the key, lowercased (`PGPASSWORD`, `refreshToken`, `x-api-key`), except for
# the few ordinary words that contain a secret word (`author`, `tokenizer`, `passenger`).
_SECRET_KEY = re.compile(
    r"pass(?:word|wd|phrase)|(?:^|[^a-z])pass(?:$|[^a-z])|pwd|secret|token(?!iz)|api[-_]?key|apikey|"
    r"auth(?!or(?!iz))|credential|private[-_]?key|cookie|session[-_]?id|access[-_]?key|signature|bearer"
)
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_SECRET_VALUE = re.compile(
    r"^(?:sk|pk|rk)[-_](?:live|test|proj)?[-_]?[A-Za-z0-9]{12,}"  # Stripe / OpenAI style keys
    r"|^gh[pousr]_[A-Za-z0-9]{20,}|^github_pat_[A-Za-z0-9_]{20,}"
    r"|^xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|^AKIA[0-9A-Z]{16}$|^ASIA[0-9A-Z]{16}$"  # AWS access key ids
    r"|^AIza[0-9A-Za-z_-]{30,}"  # Google API keys
    r"|^eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\."  # JWTs
    r"|^(?:bearer|basic|token)\s+\S{8,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----",
    re.IGNORECASE,
)
_OPAQUE_TOKEN = re.compile(r"^[A-Za-z0-9_\-+/=]{32,}$")
# The same kinds of secret inside longer text (a command line, a header, a config snippet).
_SECRET_IN_TEXT = re.compile(
    r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}|\b(?:sk|pk)-(?:proj-)?[A-Za-z0-9_-]{20,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bAIza[0-9A-Za-z_-]{30,}|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r"|(?i:\b(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|(?i:(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)[\"']?\s*[=:]\s*)[^\s\"'&,;]{4,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"  # user:password in a URL
)


def _looks_secret(text: str) -> bool:
    """The whole value is one secret-looking token (no spaces: text with spaces is redacted piecewise,
    so an approver still sees a payload such as `sk-...; curl evil | sh`)."""
    stripped = text.strip()
    if not stripped or any(c.isspace() for c in stripped):
        return False
    if _SECRET_VALUE.search(stripped):
        return True
    # A long unbroken run mixing letters and digits reads like a key, not prose or a path.
    return (
        bool(_OPAQUE_TOKEN.match(stripped))
        and any(c.isdigit() for c in stripped)
        and any(c.isalpha() for c in stripped)
    )


def _secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(_CAMEL.sub(r"\1_\2", key).lower()))


def redact_text(text: str) -> str:
    """`text` with every secret-looking part replaced (for command lines and similar values)."""
    return REDACTED if _looks_secret(text) else _SECRET_IN_TEXT.sub(REDACTED, text)


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with secret-looking keys and values replaced and long strings cut."""
    if depth > MAX_DEPTH:
        return "[…]"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i == MAX_ITEMS:
                out["…"] = f"{len(value) - MAX_ITEMS} more keys"
                break
            out[str(key)] = REDACTED if _secret_key(str(key)) else redact(item, depth + 1)
        return out
    if isinstance(value, list):
        items = [redact(item, depth + 1) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"… {len(value) - MAX_ITEMS} more items")
        return items
    if isinstance(value, str):
        if _looks_secret(value):
            return REDACTED
        length = len(value)
        value = _SECRET_IN_TEXT.sub(REDACTED, value)  # before cutting, so no half-key survives the cut
        if length > MAX_STRING_CHARS:
            return value[:MAX_STRING_CHARS] + f"… ({length} chars)"
        return value
    return value


def preview(redacted: Any, width: int = 80) -> str:
    """One line of already-redacted arguments, cut to `width` characters."""
    text = json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


# Option words in a command line whose value is a secret: `--db-password V`, `--api-key=V`, `-token V`.
_SECRET_OPTION_WORDS = frozenset(
    {"password", "passwd", "pass", "pwd", "secret", "token", "key", "apikey", "auth", "credential", "credentials"}
)
_ATTACHED_P = re.compile(r"^-p(?=.)(?![a-z-]+$)")  # mysql-style `-pSECRET` (not a Go-style `-port`)


def _secret_option(word: str) -> bool:
    name = word.lstrip("-").split("=", 1)[0]
    if not name or not word.startswith("-"):
        return False
    parts = re.split(r"[-_.]", _CAMEL.sub(r"\1_\2", name).lower())
    return any(part in _SECRET_OPTION_WORDS for part in parts) or _secret_key(name)


def redact_argv(command: list[str]) -> list[str]:
    """A command line safe to show: the value after a secret-named option (`--db-password V`,
    `--api-key=V`, `-pV`) and every secret-looking word replaced."""
    shown: list[str] = []
    value_next = False
    for word in command:
        if value_next and not word.startswith("-"):
            shown.append(REDACTED)
            value_next = False
            continue
        value_next = False
        if _ATTACHED_P.match(word):
            shown.append("-p" + REDACTED)
            continue
        if _secret_option(word):
            if "=" in word:
                shown.append(word.split("=", 1)[0] + "=" + REDACTED)
            else:
                shown.append(word)
                value_next = True
            continue
        shown.append(redact_text(word))
    return shown
