"""An approver's Ed25519 signing key: its file, its public line in the policy, and signatures.

Each approver keeps a private key in a file only they can read (default
`$XDG_CONFIG_HOME/intercept/approvers/<name>.key`, PKCS#8 PEM, 0600 in a 0700 directory),
encrypted with a passphrase unless made with `--no-passphrase`. The policy names the public half
as `ed25519:<base64 of the 32 raw bytes>`; a decision is signed over the RFC 8785 canonical JSON
of its fields, and a signature is written `ed25519:<base64 of the 64 bytes>`.

The file is refused at load, as ssh does, when it is a symlink, not owned by this user, or
readable or writable by group or others; it is written under a temporary name and linked into
place, so it is never briefly readable by others, an existing key is never overwritten by
accident, and a symlink planted at its path is never followed. A passphrase never appears in an
error message. Every error a person can meet is an `ApproverKeyError` with a one-line message.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from intercept import signatures
from intercept.policy.model import PERSON_NAME
from intercept.signatures import PUBLIC_PREFIX as PUBLIC_PREFIX  # the signature primitives, re-exported
from intercept.signatures import canonical as canonical
from intercept.signatures import public_line as public_line
from intercept.signatures import sign as sign
from intercept.signatures import verify as verify

KEY_FILE_SUFFIX = ".key"
MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM Ed25519 key is a few hundred bytes
MAX_PASSPHRASE_FILE_BYTES = 64 * 1024


class ApproverKeyError(Exception):
    """Any error with an approver's key, name or passphrase; the message is one line."""


class KeyFormatError(ApproverKeyError, ValueError):
    """A public key line that is not `ed25519:<base64 of 32 bytes>`."""


class ApproverNameError(ApproverKeyError, ValueError):
    """A name that cannot name an approver (nor their key file)."""


class KeyFileError(ApproverKeyError):
    """A private key file that cannot be written, read, trusted or decrypted."""


class PassphraseError(ApproverKeyError):
    """No usable passphrase (empty, missing on stdin, or a passphrase file others can read)."""


# -- public keys and signatures --------------------------------------------------------------------


def parse_public_line(text: str) -> Ed25519PublicKey:
    """The public key of an approver's `ed25519:<base64>` line; raises KeyFormatError."""
    try:
        return signatures.parse_public_line(text, "an approver key")
    except signatures.KeyFormatError as exc:
        raise KeyFormatError(str(exc)) from None


# -- names and paths -------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """`name` when it can name an approver; raises ApproverNameError."""
    if not isinstance(name, str) or not PERSON_NAME.fullmatch(name):
        raise ApproverNameError(
            f"{name!r} cannot name an approver: use letters, digits and _ . @ + - "
            "(at most 64, starting with a letter or digit)"
        )
    return name


def config_home() -> Path:
    """$XDG_CONFIG_HOME, or ~/.config when it is unset, empty or relative (the XDG spec says to
    ignore a relative one)."""
    configured = os.environ.get("XDG_CONFIG_HOME", "")
    if configured and os.path.isabs(configured):
        return Path(configured)
    try:
        return Path.home() / ".config"
    except RuntimeError:  # no $HOME and no password entry
        raise KeyFileError("cannot find your home directory: set XDG_CONFIG_HOME, or name the key file") from None


def default_key_path(name: str) -> Path:
    """`$XDG_CONFIG_HOME/intercept/approvers/<name>.key`; raises ApproverNameError for a name that
    is not a safe file name."""
    return config_home() / "intercept" / "approvers" / f"{check_name(name)}{KEY_FILE_SUFFIX}"


def _how_to_create(path: Path) -> str:
    stem = path.name.removesuffix(KEY_FILE_SUFFIX)
    if path.name.endswith(KEY_FILE_SUFFIX) and PERSON_NAME.fullmatch(stem) and default_key_path(stem) == path:
        return f"intercept approvers keygen {stem}"
    return f"intercept approvers keygen NAME --out {path}"


# -- writing a key ---------------------------------------------------------------------------------


def _make_private_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents, each 0700 (mkdir -p would make parents 0755)."""
    missing: list[Path] = []
    current = directory
    while not current.exists() and not current.is_symlink():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass  # made meanwhile by another process
    if not directory.is_dir():
        raise KeyFileError(f"cannot create the key in {directory}: not a directory")


def generate_key(path: Path, passphrase: bytes | None, *, force: bool = False) -> str:
    """Make a new key pair, write the private key to `path` (PKCS#8 PEM, encrypted with
    `passphrase` unless None, 0600; missing directories 0700) and return its public line.

    Refuses an existing file unless `force` (then replaces it atomically), and a symlink at `path`
    even with `force`. Raises KeyFileError, or PassphraseError for an empty passphrase."""
    if passphrase is not None and len(passphrase) == 0:
        raise PassphraseError("an empty passphrase encrypts nothing (use --no-passphrase for a key without one)")
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption() if passphrase is None else serialization.BestAvailableEncryption(passphrase)
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    try:
        _make_private_dirs(path.parent)
        refuse_existing_key(path, force=force)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        _write_private(temporary, pem)
        try:
            if force:
                os.replace(temporary, path)  # replaces a link itself, never what it points to
            else:
                _link_new(temporary, path, pem)
        except FileExistsError:
            raise KeyFileError(f"{path} already exists (use --force to replace it)") from None
        finally:
            temporary.unlink(missing_ok=True)
        _sync_directory(path.parent)
    except OSError as exc:
        raise KeyFileError(f"cannot write the key to {path}: {exc.strerror or exc}") from None
    return public_line(key.public_key())


def _link_new(temporary: Path, path: Path, data: bytes) -> None:
    """The complete `temporary` file appears at `path` at once, or FileExistsError if anything (a
    symlink too) is there; on a file system without hard links, `data` is written there directly
    (O_EXCL, O_NOFOLLOW)."""
    try:
        os.link(temporary, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        _write_private(path, data)


def refuse_existing_key(path: Path, *, force: bool) -> None:
    """Raises KeyFileError if `generate_key(path, ..., force=force)` would refuse `path` as it is
    now (so the CLI can say so before asking for a passphrase)."""
    try:
        existing = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(existing.st_mode):
        raise KeyFileError(f"{path} is a symlink: refusing to write a key through it (remove it first)")
    if not stat.S_ISREG(existing.st_mode):
        raise KeyFileError(f"{path} exists and is not a file")
    if not force:
        raise KeyFileError(f"{path} already exists (use --force to replace it)")


def _write_private(path: Path, data: bytes) -> None:
    """`data` in a new file at `path`, created 0600 (never briefly more open), synced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the key is written either way
    finally:
        os.close(fd)


# -- reading a key ---------------------------------------------------------------------------------


def _read_own_private_file(path: Path, what: str, max_bytes: int, *, follow_symlink: bool) -> bytes:
    """The bytes of `path` if it is a regular file owned by this user that group and others can
    neither read nor write; raises KeyFileError (for a key) naming the problem and the fix."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_symlink else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlink:
            raise KeyFileError(f"{what} {path} is a symlink: refusing it (use the file itself)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        if info.st_uid != os.getuid():
            raise KeyFileError(f"{what} {path} is not owned by you: refusing it")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"{what} {path} is accessible by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                f"refusing it; run chmod 600 {path}"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise KeyFileError(f"{what} {path} is larger than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_private_key(path: Path, passphrase: Callable[[], bytes]) -> Ed25519PrivateKey:
    """The Ed25519 private key in `path`; `passphrase()` is called (once) only when the file is
    encrypted. Raises KeyFileError: missing, a symlink, not yours, open to others, not a PEM
    private key, not Ed25519, or the wrong passphrase (PassphraseError from `passphrase()`
    passes through)."""
    try:
        data = _read_own_private_file(path, "the key", MAX_KEY_FILE_BYTES, follow_symlink=False)
    except FileNotFoundError:
        raise KeyFileError(f"no approver key at {path} (make one with `{_how_to_create(path)}`)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read the key {path}: {exc.strerror or exc}") from None
    not_a_key = f"{path} is not a PEM private key (intercept approvers keygen writes PKCS#8 PEM)"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        secret = passphrase()
        if not secret:
            raise PassphraseError(f"an empty passphrase cannot decrypt {path}") from None
        try:
            key = serialization.load_pem_private_key(data, password=secret)
        except ValueError:
            raise KeyFileError(f"wrong passphrase for {path}") from None
        except (TypeError, UnsupportedAlgorithm):
            raise KeyFileError(not_a_key) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(not_a_key) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__.removeprefix('_')} key, not an Ed25519 one")
    return key


# -- passphrases -----------------------------------------------------------------------------------


def _first_line(data: bytes) -> bytes:
    line = data.split(b"\n", 1)[0]
    return line.removesuffix(b"\r")


def passphrase_from_file(path: Path) -> Callable[[], bytes]:
    """The passphrase as the first line of `path` (read when asked for): a regular file owned by
    this user that group and others cannot access (else PassphraseError)."""

    def read() -> bytes:
        try:
            data = _read_own_private_file(path, "the passphrase file", MAX_PASSPHRASE_FILE_BYTES, follow_symlink=True)
        except KeyFileError as exc:
            raise PassphraseError(str(exc)) from None
        except OSError as exc:
            raise PassphraseError(f"cannot read the passphrase file {path}: {exc.strerror or exc}") from None
        secret = _first_line(data)
        if not secret:
            raise PassphraseError(f"the passphrase file {path} starts with an empty line")
        return secret

    return read


def passphrase_prompt(name: str, *, confirm: bool) -> Callable[[], bytes]:
    """Asks for `name`'s passphrase when called: on a terminal hidden (twice with `confirm`),
    otherwise the first line of stdin (so scripts can pipe it). Raises PassphraseError for an
    empty one or none at all."""

    def ask() -> bytes:
        if sys.stdin is not None and sys.stdin.isatty():
            import click

            text: str = click.prompt(
                f"Passphrase for {name}'s approver key",
                hide_input=True,
                confirmation_prompt="Repeat the passphrase" if confirm else False,
                err=True,
            )
            secret = text.encode("utf-8")
        else:
            stream = getattr(sys.stdin, "buffer", None)
            data = stream.readline(MAX_PASSPHRASE_FILE_BYTES) if stream is not None else b""
            if not data:
                raise PassphraseError(f"no passphrase for {name}'s key on stdin (pipe it, or use --passphrase-file)")
            secret = _first_line(data)
        if not secret:
            hint = " (use --no-passphrase for a key without one)" if confirm else ""
            raise PassphraseError(f"empty passphrase for {name}'s key{hint}")
        return secret

    return ask
