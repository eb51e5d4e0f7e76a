"""Approver keys on real files: what keygen writes (modes, encryption, no overwrite, no symlink
followed), what load refuses (open to others, a symlink, not yours, edited, wrong passphrase, not
Ed25519), public key lines, signatures as an attacker would bend them, and RFC 8785 canonical
JSON (the CLI around them: tests/e2e/test_approvers_cli.py)."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from intercept.approvals.approver_keys import (
    PUBLIC_PREFIX,
    ApproverKeyError,
    ApproverNameError,
    KeyFileError,
    KeyFormatError,
    PassphraseError,
    canonical,
    default_key_path,
    generate_key,
    load_private_key,
    parse_public_line,
    passphrase_from_file,
    public_line,
    sign,
    verify,
)

PASSPHRASE = b"correct horse battery staple"


def never_asked() -> bytes:
    raise AssertionError("the passphrase was asked for an unencrypted key")


def given(secret: bytes) -> Callable[[], bytes]:
    return lambda: secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, message
    return message


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: whatever is not 0600/0700 comes from the code, not from the test's umask."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "alice.key"
    generate_key(path, PASSPHRASE)
    return path


# -- writing ----------------------------------------------------------------------------------------


def test_keygen_writes_0600_in_0700_directories_whatever_the_umask(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "a" / "b" / "alice.key"
    line = generate_key(path, PASSPHRASE)
    assert mode(path) == 0o600
    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700
    assert line.startswith(PUBLIC_PREFIX)
    assert public_line(load_private_key(path, given(PASSPHRASE)).public_key()) == line
    assert [p.name for p in path.parent.iterdir()] == ["alice.key"]  # no temporary file left


def test_an_encrypted_key_file_holds_neither_the_raw_private_bytes_nor_a_plain_pem(key_file: Path) -> None:
    data = key_file.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    raw = raw_private(load_private_key(key_file, given(PASSPHRASE)))
    for spelling in (raw, base64.b64encode(raw), raw.hex().encode()):
        assert spelling not in data
    # The unencrypted PKCS#8 DER ends with the 32 raw bytes: base64 of the whole DER is absent too.
    plain = Ed25519PrivateKey.from_private_bytes(raw).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert base64.b64encode(plain)[:40] not in data
    assert PASSPHRASE not in data


def test_an_unencrypted_key_loads_without_asking(tmp_path: Path) -> None:
    path = tmp_path / "bob.key"
    line = generate_key(path, None)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public_line(load_private_key(path, never_asked).public_key()) == line


def test_an_empty_passphrase_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(PassphraseError, match="--no-passphrase"):
        generate_key(tmp_path / "k.key", b"")
    assert not (tmp_path / "k.key").exists()


def test_an_existing_key_is_not_overwritten_without_force(key_file: Path) -> None:
    before = key_file.read_bytes()
    with pytest.raises(KeyFileError, match=r"already exists .*--force") as caught:
        generate_key(key_file, PASSPHRASE)
    one_line(caught.value)
    assert key_file.read_bytes() == before


def test_force_replaces_the_key_atomically(key_file: Path) -> None:
    old_line = public_line(load_private_key(key_file, given(PASSPHRASE)).public_key())
    new_line = generate_key(key_file, b"another", force=True)
    assert new_line != old_line
    assert mode(key_file) == 0o600
    assert public_line(load_private_key(key_file, given(b"another")).public_key()) == new_line
    assert [p.name for p in key_file.parent.iterdir()] == ["alice.key"]


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_symlink_planted_at_the_key_path_is_refused_and_not_followed(tmp_path: Path, force: bool) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("the attacker wants this overwritten or read\n")
    victim.chmod(0o644)
    path = tmp_path / "keys" / "alice.key"
    path.parent.mkdir()
    path.symlink_to(victim)
    with pytest.raises(KeyFileError, match="symlink") as caught:
        generate_key(path, PASSPHRASE, force=force)
    one_line(caught.value)
    assert victim.read_text() == "the attacker wants this overwritten or read\n"
    assert mode(victim) == 0o644
    assert path.is_symlink()


def test_a_dangling_symlink_is_not_followed_to_create_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "planted.key"
    target.parent.mkdir()
    path = tmp_path / "alice.key"
    path.symlink_to(target)
    with pytest.raises(KeyFileError, match="symlink"):
        generate_key(path, None)
    assert not target.exists()


def test_a_directory_at_the_key_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "alice.key").mkdir()
    with pytest.raises(KeyFileError, match="not a file"):
        generate_key(tmp_path / "alice.key", None, force=True)


# -- loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644], ids=oct)
def test_a_key_open_to_group_or_others_is_refused_like_ssh(key_file: Path, bits: int) -> None:
    key_file.chmod(bits)
    with pytest.raises(KeyFileError, match=f"mode 0{bits:o}.*chmod 600") as caught:
        load_private_key(key_file, never_asked)
    one_line(caught.value)


def test_a_key_reached_through_a_symlink_is_refused(key_file: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.key"
    link.symlink_to(key_file)
    with pytest.raises(KeyFileError, match="symlink"):
        load_private_key(link, never_asked)


def test_the_wrong_passphrase_fails_in_one_line_without_saying_it(key_file: Path) -> None:
    with pytest.raises(KeyFileError, match="wrong passphrase") as caught:
        load_private_key(key_file, given(b"Tr0ub4dor&3"))
    assert "Tr0ub4dor" not in one_line(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_passphrase_is_asked_once_and_only_for_an_encrypted_key(key_file: Path) -> None:
    asked: list[int] = []

    def counting() -> bytes:
        asked.append(1)
        return PASSPHRASE

    load_private_key(key_file, counting)
    assert asked == [1]


def test_an_empty_passphrase_cannot_decrypt(key_file: Path) -> None:
    with pytest.raises(PassphraseError, match="empty"):
        load_private_key(key_file, given(b""))


def test_a_missing_default_key_says_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with pytest.raises(KeyFileError) as caught:
        load_private_key(default_key_path("carol"), never_asked)
    assert one_line(caught.value) == (
        f"no approver key at {tmp_path}/config/intercept/approvers/carol.key "
        "(make one with `intercept approvers keygen carol`)"
    )
    with pytest.raises(KeyFileError, match=r"keygen NAME --out .*/other\.key"):
        load_private_key(tmp_path / "other.key", never_asked)


def _edited(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    # flip a base64 character inside the body (A <-> B keeps it valid base64)
    index = data.index(b"\n", offset) - 3
    data[index] = ord("B") if data[index] != ord("B") else ord("A")
    path.write_bytes(bytes(data))


def test_an_edited_encrypted_key_fails_cleanly(key_file: Path) -> None:
    _edited(key_file, 100)
    with pytest.raises(KeyFileError) as caught:
        load_private_key(key_file, given(PASSPHRASE))
    one_line(caught.value)


def test_an_edited_plain_key_is_not_loaded_as_a_different_key_silently(tmp_path: Path) -> None:
    path = tmp_path / "plain.key"
    line = generate_key(path, None)
    _edited(path, 30)
    try:
        key = load_private_key(path, never_asked)
    except KeyFileError as exc:
        one_line(exc)
    else:  # the seed's bits changed: a valid but other key, whose public line no longer matches
        assert public_line(key.public_key()) != line


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key at all\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n!!!!\n-----END ENCRYPTED PRIVATE KEY-----\n",
        b"\x00" * 100,
    ],
    ids=["empty", "text", "truncated-pem", "bad-base64-encrypted", "binary"],
)
def test_a_file_that_is_no_pem_key_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as caught:
        load_private_key(path, given(PASSPHRASE))
    one_line(caught.value)


def test_a_public_key_pem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(path, never_asked)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_key_of_another_algorithm_is_refused(tmp_path: Path, encrypted: bool) -> None:
    path = tmp_path / "k.key"
    encryption = serialization.BestAvailableEncryption(PASSPHRASE) if encrypted else serialization.NoEncryption()
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519 one") as caught:
        load_private_key(path, given(PASSPHRASE))
    one_line(caught.value)


def test_a_fifo_at_the_key_path_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    os.mkfifo(path, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_private_key(path, never_asked)


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"A" * (64 * 1024 + 1))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="larger than"):
        load_private_key(path, never_asked)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to re-encrypt with")
def test_a_key_re_encrypted_by_openssl_with_more_pbkdf2_rounds_loads(key_file: Path, tmp_path: Path) -> None:
    key = load_private_key(key_file, given(PASSPHRASE))
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    stronger = tmp_path / "stronger.key"
    pass_file = tmp_path / "pass"
    pass_file.write_bytes(b"a much longer passphrase\n")
    subprocess.run(
        [
            *("openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-iter", "200000"),
            *("-in", str(plain), "-out", str(stronger), "-passout", f"file:{pass_file}"),
        ],
        check=True,
        capture_output=True,
    )
    stronger.chmod(0o600)
    loaded = load_private_key(stronger, given(b"a much longer passphrase"))
    assert public_line(loaded.public_key()) == public_line(key.public_key())


# -- names and the default path ---------------------------------------------------------------------


def test_default_path_under_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_key_path("alice") == tmp_path / "intercept" / "approvers" / "alice.key"


@pytest.mark.parametrize("value", [None, "", "relative/config"], ids=["unset", "empty", "relative"])
def test_default_path_falls_back_to_dot_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", value)
    assert (
        default_key_path("bob.smith@example.com") == tmp_path / ".config/intercept/approvers/bob.smith@example.com.key"
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/etc/passwd",
        ".hidden",
        "-rf",
        "a\x00b",
        "a\nb",
        "a\x1b[2Jb",
        "ali\u202ece",
        "a b",
        "a\\b",
        "x" * 65,
        "élodie",
    ],
    ids=repr,
)
def test_names_that_are_not_safe_file_names_are_refused(name: str) -> None:
    with pytest.raises(ApproverNameError, match="cannot name an approver") as caught:
        default_key_path(name)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ApproverKeyError)
    one_line(caught.value)


# -- public lines -----------------------------------------------------------------------------------

GOOD_RAW = (
    Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
)
GOOD_LINE = PUBLIC_PREFIX + base64.b64encode(GOOD_RAW).decode()


def test_public_line_round_trip() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    line = public_line(key)
    assert line.startswith("ed25519:") and len(line) == len("ed25519:") + 44
    assert public_line(parse_public_line(line)) == line
    assert public_line(parse_public_line(f"  {line}\n")) == line


def _stray_bits(line: str) -> str:
    """The same 32 bytes with the unused low bits of the last base64 character set (non-canonical)."""
    body = line[len(PUBLIC_PREFIX) :]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = body[-2]
    return PUBLIC_PREFIX + body[:-2] + alphabet[alphabet.index(last) | 0b11] + "="


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("", "start with 'ed25519:'"),
        ("ssh-ed25519 " + GOOD_LINE[8:], "start with 'ed25519:'"),
        ("ED25519:" + GOOD_LINE[8:], "start with 'ed25519:'"),
        ("ed448:" + GOOD_LINE[8:], "start with 'ed25519:'"),
        ("ed25519:", "32 bytes, this one is 0"),
        ("ed25519:!!!!", "standard base64"),
        ("ed25519:" + GOOD_LINE[8:].rstrip("="), "standard base64"),
        ("ed25519:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "standard base64"),
        ("ed25519:" + GOOD_LINE[8:20] + " " + GOOD_LINE[20:], "standard base64"),
        ("ed25519:" + base64.b64encode(GOOD_RAW[:31]).decode(), "32 bytes, this one is 31"),
        ("ed25519:" + base64.b64encode(GOOD_RAW + b"\0").decode(), "32 bytes, this one is 33"),
        ("ed25519:" + base64.b64encode(b"\0" * 64).decode(), "32 bytes, this one is 64"),
        ("ed25519:\u0410" + GOOD_LINE[9:], "standard base64"),
    ],
    ids=[
        "empty",
        "ssh-format",
        "upper-prefix",
        "ed448",
        "no-body",
        "not-base64",
        "unpadded",
        "urlsafe",
        "space",
        "31-bytes",
        "33-bytes",
        "64-bytes",
        "cyrillic-A",
    ],
)
def test_parse_public_line_rejects_bad_lines(line: str, says: str) -> None:
    with pytest.raises(KeyFormatError, match=says.replace("(", r"\(")) as caught:
        parse_public_line(line)
    assert isinstance(caught.value, ValueError)
    one_line(caught.value)


def test_parse_public_line_rejects_non_canonical_base64() -> None:
    stray = _stray_bits(GOOD_LINE)
    assert stray != GOOD_LINE
    assert base64.b64decode(stray[8:]) == GOOD_RAW  # Python's decoder reads it as the same bytes
    with pytest.raises(KeyFormatError, match="standard base64"):
        parse_public_line(stray)


@pytest.mark.parametrize("value", [None, b"ed25519:AAAA", 32], ids=["none", "bytes", "int"])
def test_parse_public_line_rejects_non_strings(value: object) -> None:
    with pytest.raises(KeyFormatError, match="must be a string"):
        parse_public_line(value)  # type: ignore[arg-type]


# -- signatures -------------------------------------------------------------------------------------

SIGNER = Ed25519PrivateKey.generate()
PAYLOAD = canonical({"approval": "apr_1", "decision": "approve", "by": "alice"})
SIGNATURE = sign(SIGNER, PAYLOAD)


def test_sign_verify_round_trip() -> None:
    assert SIGNATURE.startswith("ed25519:") and len(base64.b64decode(SIGNATURE[8:])) == 64
    assert verify(SIGNER.public_key(), PAYLOAD, SIGNATURE)
    assert verify(parse_public_line(public_line(SIGNER.public_key())), PAYLOAD, SIGNATURE)


def _flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


RAW_SIGNATURE = base64.b64decode(SIGNATURE[8:])


@pytest.mark.parametrize(
    ("payload", "signature", "key"),
    [
        (canonical({"approval": "apr_1", "decision": "deny", "by": "alice"}), SIGNATURE, SIGNER),
        (PAYLOAD + b" ", SIGNATURE, SIGNER),
        (PAYLOAD, SIGNATURE, Ed25519PrivateKey.generate()),
        (PAYLOAD, SIGNATURE[:-4], SIGNER),
        (PAYLOAD, "ed25519:" + base64.b64encode(RAW_SIGNATURE[:63]).decode(), SIGNER),
        (PAYLOAD, "ed25519:" + base64.b64encode(RAW_SIGNATURE + b"\0").decode(), SIGNER),
        (PAYLOAD, "ed25519:" + base64.b64encode(_flip_last_bit(RAW_SIGNATURE)).decode(), SIGNER),
        (PAYLOAD, "ed448:" + SIGNATURE[8:], SIGNER),
        (PAYLOAD, SIGNATURE[8:], SIGNER),
        (PAYLOAD, "ED25519:" + SIGNATURE[8:], SIGNER),
        (PAYLOAD, "ed25519:" + SIGNATURE[8:].replace("=", ""), SIGNER),
        (PAYLOAD, "ed25519:%%%%" + SIGNATURE[12:], SIGNER),
        (PAYLOAD, "ed25519:" + base64.urlsafe_b64encode(RAW_SIGNATURE).decode() + "-_", SIGNER),
        (PAYLOAD, " " + SIGNATURE, SIGNER),
        (PAYLOAD, SIGNATURE + "\n", SIGNER),
        (PAYLOAD, "", SIGNER),
        (PAYLOAD, "ed25519:\u00e9" + SIGNATURE[9:], SIGNER),
        (PAYLOAD, None, SIGNER),
        (PAYLOAD, SIGNATURE.encode(), SIGNER),
        (PAYLOAD.decode(), SIGNATURE, SIGNER),
        (PAYLOAD, "ed25519:" + base64.b64encode(b"\0" * 64).decode(), SIGNER),
    ],
    ids=[
        "other-fields",
        "trailing-space",
        "other-key",
        "truncated-text",
        "63-bytes",
        "65-bytes",
        "bit-flipped",
        "wrong-prefix",
        "no-prefix",
        "upper-prefix",
        "unpadded",
        "non-base64",
        "urlsafe",
        "leading-space",
        "trailing-newline",
        "empty",
        "non-ascii",
        "none",
        "bytes",
        "str-payload",
        "zeros",
    ],
)
def test_verify_is_false_and_never_raises_for_a_bad_signature(
    payload: bytes, signature: str, key: Ed25519PrivateKey
) -> None:
    assert verify(key.public_key(), payload, signature) is False


def test_verify_rejects_a_non_canonical_spelling_of_a_good_signature() -> None:
    body = SIGNATURE[8:]  # 64 bytes: 88 characters ending in "==", the last data character has 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = body[-3]
    other = alphabet[alphabet.index(last) ^ 0b0001]
    respelled = "ed25519:" + body[:-3] + other + "=="
    assert base64.b64decode(respelled[8:]) == RAW_SIGNATURE  # the same bytes
    assert verify(SIGNER.public_key(), PAYLOAD, respelled) is False


# -- canonical JSON (RFC 8785) ------------------------------------------------------------------------


def test_canonical_is_independent_of_key_order() -> None:
    one = {"b": 1, "a": [1, {"y": 2, "x": 1}], "c": "z"}
    two = {"c": "z", "a": [1, {"x": 1, "y": 2}], "b": 1}
    assert canonical(one) == canonical(two) == b'{"a":[1,{"x":1,"y":2}],"b":1,"c":"z"}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, b"1"),
        (-0.0, b"0"),
        (4.50, b"4.5"),
        (2e-3, b"0.002"),
        (1e21, b"1e+21"),
        (1e30, b"1e+30"),
        (1e-7, b"1e-7"),
        (0.000001, b"0.000001"),
        (333333333.33333329, b"333333333.3333333"),
        (9007199254740991, b"9007199254740991"),
        (-5e-324, b"-5e-324"),
        (True, b"true"),
        (None, b"null"),
    ],
    ids=repr,
)
def test_canonical_numbers_as_rfc_8785_writes_them(value: object, expected: bytes) -> None:
    assert canonical({"n": value}) == b'{"n":' + expected + b"}"


def test_canonical_strings_and_key_order_as_rfc_8785_writes_them() -> None:
    # RFC 8785 section 3.2.3: keys sorted by UTF-16 code units (the emoji's surrogates sort before U+FB33).
    fields = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",'
        '"\u20ac":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    ).encode()
    assert canonical(fields) == expected
    assert (
        canonical({"s": '\u20ac$\u000f\nA\'\u0042"\\\\"/'}) == '{"s":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'.encode()
    )


@pytest.mark.parametrize(
    "fields",
    [{"n": float("nan")}, {"n": float("inf")}, {"n": 2**53 + 1}, {"n": b"bytes"}, {"n": {1: "int key"}}],
    ids=["nan", "inf", "beyond-2^53", "bytes", "int-key"],
)
def test_canonical_refuses_what_json_cannot_say(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        canonical(fields)


# -- passphrase files --------------------------------------------------------------------------------


def test_a_passphrase_file_gives_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"  spaces kept \r\nsecond line ignored\n")
    path.chmod(0o600)
    assert passphrase_from_file(path)() == b"  spaces kept "


@pytest.mark.parametrize(
    ("content", "bits", "says"),
    [
        (b"secret\n", 0o640, "chmod 600"),
        (b"secret\n", 0o604, "chmod 600"),
        (b"\nsecret\n", 0o600, "empty line"),
        (b"", 0o600, "empty line"),
    ],
    ids=["group-readable", "world-readable", "empty-first-line", "empty"],
)
def test_a_passphrase_file_others_can_read_or_without_a_passphrase_is_refused(
    tmp_path: Path, content: bytes, bits: int, says: str
) -> None:
    path = tmp_path / "pass"
    path.write_bytes(content)
    path.chmod(bits)
    with pytest.raises(PassphraseError, match=says) as caught:
        passphrase_from_file(path)()
    assert "secret" not in one_line(caught.value)


def test_a_missing_passphrase_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PassphraseError, match="cannot read the passphrase file"):
        passphrase_from_file(tmp_path / "nope")()
