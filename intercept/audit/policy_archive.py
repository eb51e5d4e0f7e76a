"""The policy archive: every policy version a proxy loaded, kept in the state dir by its digest.

`<state-dir>/policies/<digest>.yaml` holds the policy's source text with its literal secrets
replaced by `[REDACTED]` (comments and layout kept), under a header of YAML comments that says
what it is: the digest, when it was first archived, the file it came from, what was redacted,
and the digest of the redacted text as parsed (what a reader checks the file against). The
digest is `Policy.digest`, which approval records keep as `policy_revision` and receipts carry, so
"the policy a request was made under" can be read back (`archived_policy`) and shown
(`intercept audit policy`).

A file is written once, atomically (a 0600 temporary file linked into place: racing proxies
agree on one) and never rewritten. The archive is a convenience written by the proxy, not
evidence: whoever can write the state dir can edit it; the digest in a signed receipt binds.

`PolicyArchiver` is the proxy's side: it keeps the versions loaded but not yet written and writes
them off the event loop; a failed write is logged once and tried again at the next load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from intercept.policy import Policy, PolicyError, parse_policy
from intercept.policy.rule_steps import digest as document_digest
from intercept.policy.strict_yaml import load_yaml
from intercept.store.secret_file import write_once
from intercept.store.timestamps import rfc3339

log = logging.getLogger("intercept")

POLICIES_DIR = "policies"
REDACTED = "[REDACTED]"
REDACTED_URL = "https://redacted.invalid/"  # a redacted URL field: still a URL, so the archive parses
# Fields that are a credential only in some policies (see `_url_is_secret`).
URL_FIELDS: tuple[tuple[str, ...], ...] = (("approvals", "notify", "webhook", "url"),)
# The literal secrets a policy file may hold, as paths of mapping keys; each is replaced by
# REDACTED in the archive. A new literal secret field is one more line here.
SECRET_FIELDS: tuple[tuple[str, ...], ...] = (("approvals", "notify", "webhook", "secret"),)
# A secret this long that still appears in the text once its field is redacted (in a comment, say)
# sends the archive to the parsed document's form, which has no comments. Shorter ones would match
# ordinary words; they are replaced in their field all the same.
MIN_SECRET_SEARCH_CHARS = 8
MIN_PREFIX_CHARS = 8
MAX_ARCHIVE_BYTES = 8 * 1024 * 1024  # far above any policy; a planted huge file is refused

_DIGEST = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]+")
_TITLE = "# intercept policy archive: a policy a proxy loaded, literal secrets redacted"
# The header's lines after the title, in order: `# <key>: <value>`.
_HEADER_KEYS = ("digest", "first-archived", "source", "redacted", "kept", "redacted-digest")
_KEPT_SOURCE = "source text (comments kept)"
_KEPT_DOCUMENT = "parsed document (a secret could not be redacted in the source text; comments not kept)"
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class PolicyArchiveError(Exception):
    """A digest that is unknown, ambiguous or malformed, or an archive file that cannot be read
    or does not hold what its header says (the message says which, on one line)."""


class ArchivedPolicyInfo(NamedTuple):
    """One archived version as its header describes it (`problem` set when the file is unusable)."""

    digest: str
    first_archived: str
    source: str
    redacted: tuple[str, ...]
    problem: str = ""


@dataclass(frozen=True, slots=True)
class RedactedSource:
    """A policy's text ready to archive: `text` with every literal secret replaced."""

    text: str
    redacted: tuple[str, ...]  # dotted paths of the fields replaced
    comments_kept: bool
    digest: str  # of `text` as parsed: the document with the secrets replaced


def policies_dir(state_dir: Path) -> Path:
    return Path(state_dir) / POLICIES_DIR


def archive_path(state_dir: Path, digest: str) -> Path:
    return policies_dir(state_dir) / f"{digest}.yaml"


# -- writing ---------------------------------------------------------------------------------------


def archive_policy(state_dir: Path, policy: Policy, source_text: str, source_path: str | Path) -> None:
    """Archive `policy`, parsed from `source_text` (read from `source_path`), unless a version with
    its digest is archived already. Raises OSError when it cannot be written and
    PolicyArchiveError when its secrets cannot be redacted."""
    if not _DIGEST.fullmatch(policy.digest):
        raise PolicyArchiveError(f"policy has no digest to archive it by: {policy.digest!r}")
    path = archive_path(state_dir, policy.digest)
    if os.path.lexists(path):
        return  # never rewritten: the first text archived for a digest stays
    redacted = redact_policy_source(source_text, policy.digest)
    header = _header(policy.digest, rfc3339(time.time()), str(source_path), redacted)
    _write_once(path, (header + redacted.text).encode("utf-8"))


def redact_policy_source(source_text: str, policy_digest: str) -> RedactedSource:
    """`source_text` with each literal secret (SECRET_FIELDS) replaced by REDACTED in place, or, if
    that cannot be done safely, the parsed document written out with them replaced. Either way the
    result parses to the original document with the secrets replaced, and the secrets are gone;
    raises PolicyArchiveError otherwise."""
    text = source_text.removeprefix("\ufeff")  # a BOM is only allowed first; the header goes there
    document = load_yaml(text)
    paths = SECRET_FIELDS + tuple(path for path in URL_FIELDS if _url_is_secret(document, path))
    found = [(path, value) for path in paths if (value := _value_at(document, path)) is not None]
    if not found:
        if parse_policy(text).digest != policy_digest:
            raise PolicyArchiveError("the source text does not parse to the policy being archived")
        return RedactedSource(text, (), True, policy_digest)
    redacted_document = _with_redacted(document, [path for path, _ in found])
    wanted = document_digest(redacted_document)
    names = tuple(".".join(path) for path, _ in found)
    spliced = _splice(text, [path for path, _ in found])
    if spliced is not None and _redacted_well(spliced, found, wanted):
        return RedactedSource(spliced, names, True, wanted)
    dumped = yaml.safe_dump(redacted_document, sort_keys=False, allow_unicode=True, default_flow_style=False)
    if _redacted_well(dumped, found, wanted):
        return RedactedSource(dumped, names, False, wanted)
    raise PolicyArchiveError("a literal secret of the policy also appears elsewhere in it: not archived")


def _value_at(document: Any, path: tuple[str, ...]) -> Any:
    value = document
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _with_redacted(document: Any, paths: list[tuple[str, ...]]) -> Any:
    """A copy of `document` with the value at each path replaced by REDACTED."""
    copied = _copy(document)
    for path in paths:
        parent = copied
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = _replacement(path)
    return copied


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _splice(text: str, paths: list[tuple[str, ...]]) -> str | None:
    """`text` with the value node at each path replaced by a quoted REDACTED (line breaks that
    ended it kept); None if a path does not lead to a node of its own."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)  # pure Python: marks count characters
    spans: list[tuple[int, int, str]] = []
    for path in paths:
        node = root
        for key in path:
            if not isinstance(node, yaml.MappingNode):
                return None
            matches = [value for key_node, value in node.value if getattr(key_node, "value", None) == key]
            if len(matches) != 1:
                return None
            node = matches[0]
        spans.append((node.start_mark.index, node.end_mark.index, _replacement(path)))
    spans.sort(reverse=True)
    if any(later_end > start for (start, _, _), (_, later_end, _) in pairwise(spans)):
        return None  # two paths on one node (an alias): not a place of its own
    for start, end, replacement in spans:
        original = text[start:end]
        tail = original[len(original.rstrip()) :]
        text = f'{text[:start]}"{replacement}"{tail}{text[end:]}'
    return text


def _replacement(path: tuple[str, ...]) -> str:
    """What a redacted value reads: a URL that still validates for a URL field, else REDACTED."""
    return REDACTED_URL if path in URL_FIELDS else REDACTED


def _url_is_secret(document: Any, path: tuple[str, ...]) -> bool:
    """A webhook URL that is itself a credential: Slack's incoming webhooks (the path is the
    token), or any URL carrying a user:password or a query string."""
    url = _value_at(document, path)
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    webhook = _value_at(document, path[:-1])
    slack = isinstance(webhook, dict) and webhook.get("format") == "slack"
    return slack or "@" in parts.netloc or bool(parts.query)


def _redacted_well(text: str, found: list[tuple[tuple[str, ...], Any]], wanted_digest: str) -> bool:
    """`text` parses to the policy with its secrets replaced, and no long secret is left in it."""
    for _, value in found:
        if not isinstance(value, str):
            continue
        for part in (value, *value.splitlines()):  # a multi-line secret: each of its lines too
            if len(part.strip()) >= MIN_SECRET_SEARCH_CHARS and part.strip() in text:
                return False
    try:
        return parse_policy(text).digest == wanted_digest
    except (PolicyError, yaml.YAMLError):
        return False


def _header(digest: str, archived_at: str, source_path: str, redacted: RedactedSource) -> str:
    values = {
        "digest": digest,
        "first-archived": archived_at,
        "source": json.dumps(source_path, ensure_ascii=True),  # one line whatever the path holds
        "redacted": ", ".join(redacted.redacted) or "none",
        "kept": _KEPT_SOURCE if redacted.comments_kept else _KEPT_DOCUMENT,
        "redacted-digest": redacted.digest,
    }
    return "".join([f"{_TITLE}\n", *(f"# {key}: {values[key]}\n" for key in _HEADER_KEYS)])


def _write_once(path: Path, data: bytes) -> None:
    """`data` at `path` unless something is there already (another proxy archived the same
    version first): see `store.secret_file.write_once`."""
    path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the state dir
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_once(path, data)


# -- reading ---------------------------------------------------------------------------------------


def archived_policy(state_dir: Path, digest: str) -> Policy | None:
    """The archived policy with this digest (secrets redacted: not one to send webhooks with), or
    None if it is not archived (or `digest` is not a digest). Raises PolicyArchiveError for a file
    that is unreadable or does not hold what its header says."""
    if not _DIGEST.fullmatch(digest):
        return None
    path = archive_path(state_dir, digest)
    if not os.path.lexists(path):
        return None
    text = _read_archive_file(path)
    info = _parse_header(digest, text)
    try:
        policy = parse_policy(text, str(path))
    except PolicyError as exc:
        raise PolicyArchiveError(f"archived policy {path} is corrupt: {exc}") from None
    if policy.digest != info["redacted-digest"] or (info["redacted"] == "none" and policy.digest != digest):
        raise PolicyArchiveError(f"archived policy {path} is corrupt: its text does not match its digest")
    return replace(policy, digest=digest)


def archived_policy_text(state_dir: Path, digest_or_prefix: str) -> tuple[str, str]:
    """The full digest and the archived file's text for a digest or a unique prefix of at least
    MIN_PREFIX_CHARS hex characters; raises PolicyArchiveError (unknown, ambiguous, malformed)."""
    prefix = digest_or_prefix.strip().lower()
    if not _PREFIX.fullmatch(prefix) or len(prefix) > 64:
        raise PolicyArchiveError(f"{digest_or_prefix!r} is not a policy digest (64 hex characters, or a prefix)")
    if len(prefix) < MIN_PREFIX_CHARS:
        raise PolicyArchiveError(f"give at least {MIN_PREFIX_CHARS} hex characters of the policy digest")
    matches = [digest for digest in _archived_digests(state_dir) if digest.startswith(prefix)]
    if not matches:
        raise PolicyArchiveError(f"no archived policy with digest {prefix}… in {policies_dir(state_dir)}")
    if len(matches) > 1:
        raise PolicyArchiveError(f"digest prefix {prefix} is ambiguous: {len(matches)} archived policies match")
    digest = matches[0]
    text = _read_archive_file(archive_path(state_dir, digest))
    _parse_header(digest, text)
    return digest, text


def list_archived_policies(state_dir: Path) -> list[ArchivedPolicyInfo]:
    """Every archived version, oldest first; a file that cannot be used is listed with its problem."""
    found = []
    for digest in _archived_digests(state_dir):
        try:
            info = _parse_header(digest, _read_archive_file(archive_path(state_dir, digest)))
        except PolicyArchiveError as exc:
            found.append(ArchivedPolicyInfo(digest, "", "", (), str(exc)))
            continue
        redacted = () if info["redacted"] == "none" else tuple(info["redacted"].split(", "))
        found.append(ArchivedPolicyInfo(digest, info["first-archived"], info["source"], redacted))
    return sorted(found, key=lambda info: (info.first_archived, info.digest))


def _archived_digests(state_dir: Path) -> list[str]:
    try:
        names = os.listdir(policies_dir(state_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PolicyArchiveError(f"cannot read {policies_dir(state_dir)}: {exc.strerror or exc}") from None
    return sorted(name[:-5] for name in names if name.endswith(".yaml") and _DIGEST.fullmatch(name[:-5]))


def _read_archive_file(path: Path) -> str:
    """The text of an archive file: a regular file (no symlink, FIFO or device), at most
    MAX_ARCHIVE_BYTES, UTF-8."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise PolicyArchiveError(f"no archived policy at {path}") from None
    except OSError as exc:
        raise PolicyArchiveError(f"cannot read archived policy {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ARCHIVE_BYTES:
            raise PolicyArchiveError(f"archived policy {path} is not a policy archive file")
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(MAX_ARCHIVE_BYTES + 1)
    except OSError as exc:
        raise PolicyArchiveError(f"cannot read archived policy {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyArchiveError(f"archived policy {path} is corrupt: not UTF-8") from None


def _parse_header(digest: str, text: str) -> dict[str, str]:
    """The header's values; raises PolicyArchiveError if it is missing or names another digest."""
    lines = text.split("\n", len(_HEADER_KEYS) + 1)
    corrupt = PolicyArchiveError(f"archived policy {digest} is corrupt: its header is missing or damaged")
    if len(lines) < len(_HEADER_KEYS) + 2 or lines[0] != _TITLE:
        raise corrupt
    values: dict[str, str] = {}
    for key, line in zip(_HEADER_KEYS, lines[1:], strict=False):
        name, colon, value = line.removeprefix("# ").partition(": ")
        if not line.startswith("# ") or name != key or not colon:
            raise corrupt
        values[key] = value
    try:
        source = json.loads(values["source"])
    except (ValueError, RecursionError):  # a header planted nested too deep to read
        raise corrupt from None
    if not isinstance(source, str) or values["digest"] != digest or not _DIGEST.fullmatch(values["redacted-digest"]):
        raise corrupt
    values["source"] = source
    return values


# -- the proxy's side ------------------------------------------------------------------------------


class PolicyArchiver:
    """The versions a proxy loaded and has not archived yet. `add` is called where a policy is
    loaded (cheap: it only notes it); `write_waiting` writes them (on a thread, never on the event
    loop) and never raises: a failure is logged once, until a write succeeds again, and the
    version stays waiting for the next try."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._waiting: dict[str, tuple[Policy, str, str]] = {}
        self._lock = threading.Lock()  # one writer at a time; `add` may come from another thread
        self._failing = False

    def add(self, policy: Policy, source_text: str, source_path: str | Path) -> None:
        with self._lock:
            self._waiting.setdefault(policy.digest, (policy, source_text, str(source_path)))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def write_waiting(self) -> None:
        with self._lock:
            for digest, (policy, text, source) in list(self._waiting.items()):
                try:
                    archive_policy(self.state_dir, policy, text, source)
                except Exception as exc:  # archiving never fails the proxy, whatever went wrong
                    if not self._failing:
                        self._failing = True
                        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                        log.warning(
                            "could not archive policy %s in %s: %s (tried again at the next policy load)",
                            digest[:12],
                            policies_dir(self.state_dir),
                            why,
                        )
                    continue
                del self._waiting[digest]
                self._failing = False
