"""The policy archive on real files: literal secrets redacted however they are written, the digest
kept, a version written once and never rewritten, and a reader that refuses edited, renamed,
planted and corrupt files, malformed digests and ambiguous prefixes."""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from intercept.audit.policy_archive import (
    REDACTED,
    PolicyArchiveError,
    PolicyArchiver,
    archive_path,
    archive_policy,
    archived_policy,
    archived_policy_text,
    list_archived_policies,
    policies_dir,
    redact_policy_source,
)
from intercept.policy import Policy, parse_policy

SECRET = "whsec-0123456789-abcdef"
TOOLS = 'tools:\n  echo:\n    rules:\n      - name: "echo off"\n        action: deny\n'


def webhook_policy(secret_yaml: str, before: str = "", after: str = "") -> str:
    """A valid policy whose approvals.notify.webhook.secret is written as `secret_yaml`."""
    return (
        f'{before}version: "1"\napprovals:\n  notify:\n    webhook:\n      url: https://hooks.example/x\n'
        f"      secret: {secret_yaml}\n      timeout: 5s\n{after}{TOOLS}"
    )


PLAIN = webhook_policy(f"{SECRET}   # the literal one", before="# team policy\n")

# (id, source text, the archive keeps comments) — each holds SECRET as the webhook's literal secret.
REDACTION_CASES = [
    ("plain", PLAIN, True),
    ("double-quoted", webhook_policy(f'"{SECRET}"'), True),
    ("single-quoted", webhook_policy(f"'{SECRET}'"), True),
    ("literal block", webhook_policy(f"|-\n        {SECRET}"), True),
    ("folded block", webhook_policy(f">-\n        {SECRET}\n"), True),
    (
        "flow mapping",
        f'version: "1"\napprovals:\n  notify:\n    webhook: {{url: "https://h.example/", secret: {SECRET}}}\n{TOOLS}',
        True,
    ),
    ("anchored", webhook_policy(f"&s {SECRET}"), True),
    ("also in a comment", webhook_policy(SECRET, before=f"# rotated from {SECRET} on Monday\n"), False),
    ("with a BOM", "\ufeff" + PLAIN, True),
    ("YAML directive", "%YAML 1.1\n---\n" + webhook_policy(SECRET), True),
]


@pytest.mark.parametrize(
    ("text", "comments_kept"), [c[1:] for c in REDACTION_CASES], ids=[c[0] for c in REDACTION_CASES]
)
def test_every_way_of_writing_the_secret_is_redacted_and_the_policy_reads_back(
    tmp_path: Path, text: str, comments_kept: bool
) -> None:
    policy = parse_policy(text)
    assert policy.approvals.webhook is not None and policy.approvals.webhook.secret == SECRET
    archive_policy(tmp_path, policy, text, "/etc/intercept/policy.yaml")
    stored = archive_path(tmp_path, policy.digest).read_text()
    assert SECRET not in stored
    assert ("# kept: source text (comments kept)" in stored) is comments_kept
    back = archived_policy(tmp_path, policy.digest)
    assert back is not None
    assert back.digest == policy.digest  # the digest approvals and receipts name
    assert back.approvals.webhook is not None and back.approvals.webhook.secret == REDACTED
    assert back.tools == policy.tools


def test_the_source_text_is_kept_with_its_comments_and_a_header_saying_what_it_is(tmp_path: Path) -> None:
    policy = parse_policy(PLAIN)
    archive_policy(tmp_path, policy, PLAIN, "/etc/intercept/policy.yaml")
    digest, text = archived_policy_text(tmp_path, policy.digest)
    assert digest == policy.digest
    header, body = text.split("# team policy\n", 1)
    assert header.splitlines()[1:] == [
        f"# digest: {policy.digest}",
        header.splitlines()[2],
        '# source: "/etc/intercept/policy.yaml"',
        "# redacted: approvals.notify.webhook.secret",
        "# kept: source text (comments kept)",
        f"# redacted-digest: {redact_policy_source(PLAIN, policy.digest).digest}",
    ]
    assert header.splitlines()[2].startswith("# first-archived: 20")
    assert f'secret: "{REDACTED}"   # the literal one\n' in body
    assert body == PLAIN.split("# team policy\n", 1)[1].replace(SECRET, f'"{REDACTED}"')


def test_a_policy_without_a_literal_secret_is_archived_as_written(tmp_path: Path) -> None:
    text = (
        '# reviewed\nversion: "1"\napprovals:\n  notify:\n    webhook:\n      url: https://h.example/\n      secret_env: HOOK\n'
        + TOOLS
    )
    policy = parse_policy(text)
    archive_policy(tmp_path, policy, text, "p.yaml")
    _, stored = archived_policy_text(tmp_path, policy.digest)
    assert stored.endswith(text)
    assert "# redacted: none" in stored
    assert archived_policy(tmp_path, policy.digest) == policy


def test_a_secret_also_used_as_a_value_elsewhere_is_not_archived(tmp_path: Path) -> None:
    text = webhook_policy("&s " + SECRET, after="description: *s\n")
    policy = parse_policy(text)
    with pytest.raises(PolicyArchiveError, match="also appears elsewhere"):
        archive_policy(tmp_path, policy, text, "p.yaml")
    assert not archive_path(tmp_path, policy.digest).exists()


def test_source_text_that_is_not_the_policy_is_refused(tmp_path: Path) -> None:
    policy = parse_policy('version: "1"\n' + TOOLS)
    with pytest.raises(PolicyArchiveError, match="does not parse to the policy"):
        archive_policy(tmp_path, policy, 'version: "1"\n', "p.yaml")


def test_written_once_0600_in_a_0700_directory_and_never_rewritten(tmp_path: Path) -> None:
    state = tmp_path / "state"
    policy = parse_policy(PLAIN)
    archive_policy(state, policy, PLAIN, "first.yaml")
    path = archive_path(state, policy.digest)
    first = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(policies_dir(state).stat().st_mode) == 0o700
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    recommented = PLAIN.replace("# team policy", "# edited comment: same digest")
    assert parse_policy(recommented).digest == policy.digest
    archive_policy(state, parse_policy(recommented), recommented, "second.yaml")
    assert path.read_bytes() == first
    assert os.listdir(policies_dir(state)) == [path.name]  # no temporary file left behind


def test_racing_writers_leave_one_complete_file(tmp_path: Path) -> None:
    policy = parse_policy(PLAIN)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write() -> None:
        barrier.wait()
        try:
            archive_policy(tmp_path, policy, PLAIN, "p.yaml")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.listdir(policies_dir(tmp_path)) == [f"{policy.digest}.yaml"]
    assert archived_policy(tmp_path, policy.digest) is not None


def archived(tmp_path: Path, text: str = PLAIN) -> tuple[Policy, Path]:
    policy = parse_policy(text)
    archive_policy(tmp_path, policy, text, "p.yaml")
    return policy, archive_path(tmp_path, policy.digest)


# An attacker (or a disk) changed the file: (id, edit of the file's text).
TAMPERING = [
    ("rule weakened", lambda text: text.replace("action: deny", "action: require_approval")),
    ("rule removed", lambda text: text.replace(TOOLS, "tools:\n  echo:\n    rules: []\n")),
    ("header digest changed", lambda text: text.replace("# digest: ", "# digest: 0", 1)),
    (
        "redacted digest changed",
        lambda text: re.sub(r"(?m)^# redacted-digest: .*$", "# redacted-digest: " + "0" * 64, text),
    ),
    ("header removed", lambda text: text.split("\n", 7)[7]),
    (
        "header reordered",
        lambda text: "\n".join([text.splitlines()[0], *reversed(text.splitlines()[1:7]), *text.splitlines()[7:]]),
    ),
    ("not YAML any more", lambda text: text + "tools: [\n"),
    ("truncated", lambda text: text[: len(text) // 2]),
]


@pytest.mark.parametrize("edit", [c[1] for c in TAMPERING], ids=[c[0] for c in TAMPERING])
def test_an_edited_archive_is_refused_not_read(tmp_path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    policy, path = archived(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(PolicyArchiveError, match="corrupt"):
        archived_policy(tmp_path, policy.digest)


def test_an_archive_renamed_to_another_digest_is_refused(tmp_path: Path) -> None:
    policy, path = archived(tmp_path)
    other = "f" * 64
    path.rename(archive_path(tmp_path, other))
    with pytest.raises(PolicyArchiveError, match="corrupt"):
        archived_policy(tmp_path, other)
    with pytest.raises(PolicyArchiveError, match="corrupt"):
        archived_policy_text(tmp_path, other[:10])
    assert archived_policy(tmp_path, policy.digest) is None


def test_a_planted_symlink_is_neither_followed_nor_replaced(tmp_path: Path) -> None:
    policy = parse_policy(PLAIN)
    target = tmp_path / "elsewhere.yaml"
    target.write_text("not mine\n")
    path = archive_path(tmp_path / "state", policy.digest)
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    archive_policy(tmp_path / "state", policy, PLAIN, "p.yaml")
    assert target.read_text() == "not mine\n"
    with pytest.raises(PolicyArchiveError, match="cannot read"):
        archived_policy(tmp_path / "state", policy.digest)


def test_a_planted_fifo_does_not_block_the_reader(tmp_path: Path) -> None:
    digest = "a" * 64
    path = archive_path(tmp_path, digest)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with pytest.raises(PolicyArchiveError, match="not a policy archive file"):
        archived_policy(tmp_path, digest)
    assert list_archived_policies(tmp_path)[0].problem


def test_a_source_path_with_a_line_break_stays_in_its_header_line(tmp_path: Path) -> None:
    policy = parse_policy(PLAIN)
    source = "/tmp/x\ntools:\n  echo:\n    rules: []\n.yaml"
    archive_policy(tmp_path, policy, PLAIN, source)
    back = archived_policy(tmp_path, policy.digest)
    assert back is not None and back.tools == policy.tools  # still denies: nothing injected
    assert [info.source for info in list_archived_policies(tmp_path)] == [source]


@pytest.mark.parametrize("digest", ["", "../../etc/passwd", "A" * 64, "g" * 64, "a" * 63, "a" * 65])
def test_what_is_not_a_digest_is_not_archived(tmp_path: Path, digest: str) -> None:
    assert archived_policy(tmp_path, digest) is None


# (id, what is asked for, the error)
PREFIX_ERRORS = [
    ("too short", "1234567", "at least 8 hex characters"),
    ("not hex", "zzzzzzzzz", "not a policy digest"),
    ("a path", "../policies/x", "not a policy digest"),
    ("too long", "a" * 65, "not a policy digest"),
    ("unknown", "0123456789", "no archived policy with digest 0123456789"),
]


@pytest.mark.parametrize(("asked", "error"), [c[1:] for c in PREFIX_ERRORS], ids=[c[0] for c in PREFIX_ERRORS])
def test_prefixes_that_name_no_single_version_are_errors(tmp_path: Path, asked: str, error: str) -> None:
    archived(tmp_path)
    with pytest.raises(PolicyArchiveError, match=error):
        archived_policy_text(tmp_path, asked)


def test_a_unique_prefix_of_8_finds_a_version_and_a_shared_one_is_ambiguous(tmp_path: Path) -> None:
    policy, _ = archived(tmp_path)
    assert archived_policy_text(tmp_path, policy.digest[:8].upper())[0] == policy.digest
    twin = policy.digest[:12] + ("1" if policy.digest[12] == "0" else "0") + "0" * 51  # differs from the 13th on
    archive_path(tmp_path, twin).write_text("anything")
    with pytest.raises(PolicyArchiveError, match="ambiguous: 2 archived policies"):
        archived_policy_text(tmp_path, policy.digest[:12])
    assert archived_policy_text(tmp_path, policy.digest[:13])[0] == policy.digest


def test_the_list_is_oldest_first_and_names_a_damaged_file(tmp_path: Path) -> None:
    first, _ = archived(tmp_path)
    second, _ = archived(tmp_path, PLAIN.replace("echo off", "echo never"))
    third, third_path = archived(tmp_path, 'version: "1"\n')
    third_path.write_text("garbage")
    listed = list_archived_policies(tmp_path)
    assert [info.digest for info in listed[1:]] == [first.digest, second.digest]
    assert listed[0].digest == third.digest and "corrupt" in listed[0].problem
    assert listed[1].redacted == ("approvals.notify.webhook.secret",)


def test_the_archiver_logs_a_failing_write_once_and_writes_it_at_the_next_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    policies_dir(state).write_text("a file where the directory goes")
    archiver = PolicyArchiver(state)
    first = parse_policy(PLAIN)
    archiver.add(first, PLAIN, "p.yaml")
    with caplog.at_level(logging.WARNING, logger="intercept"):
        archiver.write_waiting()
        second_text = PLAIN.replace("echo off", "echo never")
        archiver.add(parse_policy(second_text), second_text, "p.yaml")
        archiver.write_waiting()
    failures = [r for r in caplog.records if "could not archive policy" in r.getMessage()]
    assert len(failures) == 1 and SECRET not in failures[0].getMessage()
    assert archiver.waiting == 2
    policies_dir(state).unlink()
    third_text = PLAIN.replace("5s", "6s")
    archiver.add(parse_policy(third_text), third_text, "p.yaml")
    archiver.write_waiting()
    assert archiver.waiting == 0
    assert len(list_archived_policies(state)) == 3
    back = archived_policy(state, first.digest)  # the version whose write failed first
    assert back is not None and back.digest == first.digest and back.tools == first.tools
