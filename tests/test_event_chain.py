"""The hash-chained, signed event log as an attacker meets it: edited, deleted, swapped and truncated
lines, deleted segments, checkpoints signed by another key or copied elsewhere, forged prune
records; each must be found with its file and line. Also: writers racing on the CLI's shared file
never fork its chain, and the proxy key refuses files others could read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from intercept.audit.chain import ZERO_HEAD, head_of, link, read_tail, signed_payload
from intercept.audit.chain_verify import load_files, verify_files, verify_state_dir
from intercept.audit.events import EventLog, events_dir
from intercept.audit.proxy_key import ProxyKeyError, load_or_create, parse_public_line, verify
from intercept.store.timestamps import parse_rfc3339

ROOT = Path(__file__).resolve().parent.parent
PROXY = "srv-1-abc"


def make_state_dir(state_dir: Path) -> None:
    """A proxy that rotated its file several times and stopped cleanly, one still running (its tail
    unsealed), and the CLI's shared file."""
    log = EventLog(state_dir, PROXY, shared=False, max_file_bytes=2500)
    log.emit("startup", server="srv")
    for n in range(24):
        log.tool_call("srv", "echo", "allowed", {"n": n})
        log.emit("approval_requested", approval_id=f"apr_{n}")
        if n == 3:
            log.checkpoint()
    log.emit("shutdown", server="srv")
    log.close()
    running = EventLog(state_dir, "srv-2-def", shared=False)
    running.emit("startup", server="srv")
    running.checkpoint()
    running.emit("approval_requested", approval_id="apr_x")  # after the last checkpoint: not sealed
    cli = EventLog(state_dir, "approvals-cli")
    cli.emit("approval_decided", approval_id="apr_1", decision="approved")
    cli.close()


def lines_of(state_dir: Path, name: str) -> list[bytes]:
    return (events_dir(state_dir) / name).read_bytes().splitlines()


def write_lines(state_dir: Path, name: str, lines: list[bytes]) -> None:
    (events_dir(state_dir) / name).write_bytes(b"".join(line + b"\n" for line in lines))


def relink(lines: list[bytes], start: int) -> list[bytes]:
    """What an attacker without the key can do: give lines from `start` on consistent seq and prev."""
    out = lines[:start]
    for line in lines[start:]:
        record = json.loads(line)
        seq = json.loads(out[-1])["seq"] if out else 0
        prev = head_of(out[-1]) if out else ZERO_HEAD
        del record["seq"], record["prev"]
        bare = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        out.append(link(bare, seq + 1, prev))
    return out


def types_of(lines: list[bytes]) -> list[str]:
    return [json.loads(line)["type"] for line in lines]


def first_checkpoint(lines: list[bytes]) -> int:
    return types_of(lines).index("chain_checkpoint")


# Each attack changes the state dir and returns where the first break must be reported.
def edit_a_line(d: Path) -> str:
    lines = lines_of(d, f"{PROXY}.jsonl")
    lines[2] = lines[2].replace(b'"apr_0"', b'"apr_9"')
    write_lines(d, f"{PROXY}.jsonl", lines)
    return f"events/{PROXY}.jsonl:4: prev is not the hash"


def edit_and_relink(d: Path) -> str:
    lines = lines_of(d, f"{PROXY}.jsonl")
    lines[2] = lines[2].replace(b'"apr_0"', b'"apr_9"')
    lines = relink(lines, 2)
    write_lines(d, f"{PROXY}.jsonl", lines)
    return f"events/{PROXY}.jsonl:{first_checkpoint(lines) + 1}: checkpoint does not seal the record before it"


def delete_a_line(d: Path) -> str:
    lines = lines_of(d, f"{PROXY}.jsonl")
    del lines[2]
    write_lines(d, f"{PROXY}.jsonl", lines)
    return f"events/{PROXY}.jsonl:3: seq 4 follows seq 2"


def swap_two_lines(d: Path) -> str:
    lines = lines_of(d, f"{PROXY}.jsonl")
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(d, f"{PROXY}.jsonl", lines)
    return f"events/{PROXY}.jsonl:3: seq 4 follows seq 2"


def truncate_a_rotated_segment(d: Path) -> str:
    lines = lines_of(d, f"{PROXY}.jsonl")
    write_lines(d, f"{PROXY}.jsonl", lines[:5])
    return f"events/{PROXY}.2.jsonl:1: does not link to the last line of {PROXY}.jsonl"


def cut_a_line_in_half(d: Path) -> str:
    path = events_dir(d) / f"{PROXY}.jsonl"
    data = path.read_bytes()
    middle = data.index(b"\n", len(data) // 2)
    path.write_bytes(data[: middle - 10] + data[middle:])
    line = data[:middle].count(b"\n") + 1
    return f"events/{PROXY}.jsonl:{line}: not a chained record"


def delete_a_segment(d: Path) -> str:
    (events_dir(d) / f"{PROXY}.2.jsonl").unlink()
    return f"events/{PROXY}.3.jsonl:1: the previous segment {PROXY}.2.jsonl is missing"


def delete_the_start_of_a_file(d: Path) -> str:
    lines = lines_of(d, "srv-2-def.jsonl")
    write_lines(d, "srv-2-def.jsonl", lines[1:])
    return "events/srv-2-def.jsonl:1: the first record does not start a chain"


def sign_with_another_key(d: Path) -> str:
    other = load_or_create(d / "elsewhere")
    lines = lines_of(d, f"{PROXY}.jsonl")
    at = first_checkpoint(lines)
    record = json.loads(lines[at])
    record["signature"] = other.sign(signed_payload(record))
    lines[at] = json.dumps(record, separators=(",", ":")).encode()
    write_lines(d, f"{PROXY}.jsonl", relink(lines, at))
    return f"events/{PROXY}.jsonl:{at + 1}: checkpoint signature does not verify"


def move_a_checkpoint(d: Path) -> str:
    """A genuine checkpoint (its signature is right for its fields) moved to seal other records."""
    lines = lines_of(d, f"{PROXY}.jsonl")
    at = first_checkpoint(lines)
    checkpoint = lines.pop(at)
    lines.insert(at + 2, checkpoint)
    write_lines(d, f"{PROXY}.jsonl", relink(lines, at))
    return f"events/{PROXY}.jsonl:{at + 3}: checkpoint does not seal the record before it"


def copy_a_checkpoint_to_another_file(d: Path) -> str:
    source = lines_of(d, f"{PROXY}.jsonl")
    checkpoint = source[first_checkpoint(source)]
    lines = lines_of(d, "approvals-cli.jsonl")
    lines.insert(1, checkpoint)
    write_lines(d, "approvals-cli.jsonl", relink(lines, 1))
    return "events/approvals-cli.jsonl:2: checkpoint is for 'srv-1-abc.jsonl', copied from another file"


def forge_a_prune_record(d: Path) -> str:
    """Deleting a segment and appending an unsealed `events_pruned` for it is not pruning."""
    lines = lines_of(d, f"{PROXY}.2.jsonl")
    head = head_of(lines[-1])
    (events_dir(d) / f"{PROXY}.2.jsonl").unlink()
    cli = lines_of(d, "approvals-cli.jsonl")
    forged = {"ts": "2030-01-01T00:00:00.000000Z", "type": "events_pruned", "severity": "notice",
              "instance": "approvals-cli", "files": 1, "bytes": 1, "retention_s": 1.0,
              "pruned_files": [{"file": f"{PROXY}.2.jsonl", "seq": 9, "head": head}], "seq": 0, "prev": ""}  # fmt: skip
    cli.append(json.dumps(forged, separators=(",", ":")).encode())
    write_lines(d, "approvals-cli.jsonl", relink(cli, len(cli) - 1))
    return f"events/{PROXY}.3.jsonl:1: the previous segment {PROXY}.2.jsonl is missing"


ATTACKS: list[Callable[[Path], str]] = [
    edit_a_line,
    edit_and_relink,
    delete_a_line,
    swap_two_lines,
    truncate_a_rotated_segment,
    cut_a_line_in_half,
    delete_a_segment,
    delete_the_start_of_a_file,
    sign_with_another_key,
    move_a_checkpoint,
    copy_a_checkpoint_to_another_file,
    forge_a_prune_record,
]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    make_state_dir(tmp_path)
    return tmp_path


def public_key(state_dir: Path):  # type: ignore[no-untyped-def]
    return load_or_create(state_dir).public()


def test_an_untouched_state_dir_verifies(state_dir: Path) -> None:
    report = verify_state_dir(state_dir, public_key(state_dir))
    assert report.breaks == []
    assert report.files >= 5 and report.checkpoints >= 5
    assert report.unsealed == ["events/srv-2-def.jsonl (lines 3-3)"]  # the running proxy's last record


@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.__name__ for attack in ATTACKS])
def test_tampering_is_found_with_file_and_line(state_dir: Path, attack: Callable[[Path], str]) -> None:
    where = attack(state_dir)
    report = verify_state_dir(state_dir, public_key(state_dir))
    shown = [str(finding) for finding in report.breaks]
    assert any(line.startswith(where) for line in shown), shown


def test_a_truncated_tail_is_reported_as_not_sealed(state_dir: Path) -> None:
    """Cutting records after the last checkpoint, or back to an earlier one, leaves a valid chain:
    verify cannot call it a break, so it names what is not sealed (SECURITY.md says so)."""
    lines = lines_of(state_dir, "srv-2-def.jsonl")
    write_lines(state_dir, "srv-2-def.jsonl", lines[:-1])
    report = verify_state_dir(state_dir, public_key(state_dir))
    assert report.breaks == [] and "srv-2-def" not in " ".join(report.unsealed)
    last = lines_of(state_dir, "approvals-cli.jsonl")
    write_lines(state_dir, "approvals-cli.jsonl", last[:-1])  # its checkpoint cut off
    report = verify_state_dir(state_dir, public_key(state_dir))
    assert report.breaks == [] and report.unsealed == ["events/approvals-cli.jsonl (lines 1-1)"]


def test_without_a_key_checkpoints_are_breaks(state_dir: Path) -> None:
    report = verify_state_dir(state_dir, None)
    assert any("no public key" in str(finding) for finding in report.breaks)


def test_a_pruned_segment_is_accounted_for(state_dir: Path) -> None:
    """Pruning names each file with its last hash in a sealed record: not a break."""
    from intercept.audit.events import prune_old_event_files
    from intercept.retention import Pruned, record_pruning

    old = events_dir(state_dir) / f"{PROXY}.jsonl"
    os.utime(old, (1, 1))
    # The retention has passed for the file and its last record, not for any later file.
    written_s = parse_rfc3339(json.loads(old.read_bytes().splitlines()[-1])["ts"])
    files = prune_old_event_files(state_dir, now_s=written_s + 90 * 86400 + 1e-6)
    assert files.count == 1 and files.heads[0]["file"] == old.name
    pruner = EventLog(state_dir, "prune-cli")
    record_pruning(pruner, Pruned(90.0, 0, 0, files.count, files.bytes, files.heads, []))
    pruner.close()
    report = verify_files(load_files(state_dir), public_key(state_dir), now_s=time.time())
    assert report.breaks == [], [str(finding) for finding in report.breaks]


def test_a_torn_write_is_explained_not_a_break(tmp_path: Path) -> None:
    log = EventLog(tmp_path, PROXY, shared=False)
    log.emit("startup", server="srv")
    log.close()
    with open(log.path, "ab") as stream:
        stream.write(b'{"ts":"2030-01-01T00:00:00.000000Z","type":"appr')  # a write cut short
    again = EventLog(tmp_path, PROXY, shared=False)
    again.emit("shutdown", server="srv")
    again.close()
    report = verify_state_dir(tmp_path, public_key(tmp_path))
    assert report.breaks == [] and report.unsealed == []
    assert [str(note) for note in report.notes] == [
        f"events/{PROXY}.jsonl:3: incomplete line left by a failed write (skipped by chain_restarted)"
    ]


def test_a_garbled_tail_starts_a_new_chain_that_says_why(tmp_path: Path) -> None:
    log = EventLog(tmp_path, PROXY)
    log.emit("startup", server="srv")
    log.close()
    with open(log.path, "ab") as stream:
        stream.write(b"garbage\n")
    again = EventLog(tmp_path, PROXY)
    again.emit("shutdown", server="srv")
    again.close()
    restarted = json.loads(lines_of(tmp_path, f"{PROXY}.jsonl")[3])
    assert (restarted["type"], restarted["seq"], restarted["prev"]) == ("chain_restarted", 1, ZERO_HEAD)
    assert restarted["reason"] == "its last complete line is not JSON"
    shown = [str(finding) for finding in verify_state_dir(tmp_path, public_key(tmp_path)).breaks]
    assert shown == [f"events/{PROXY}.jsonl:3: unreadable line; the chain starts again after it"]


def test_a_file_replaced_under_its_only_writer_is_said(tmp_path: Path) -> None:
    log = EventLog(tmp_path, PROXY, shared=False)
    log.emit("startup", server="srv")
    log.emit("approval_requested", approval_id="apr_1")
    lines = log.path.read_bytes().splitlines()
    replaced = log.path.with_suffix(".new")
    replaced.write_bytes(lines[0] + b"\n")  # the approval request removed
    replaced.rename(log.path)
    log.emit("shutdown", server="srv")
    log.close()
    shown = [str(finding) for finding in verify_state_dir(tmp_path, public_key(tmp_path)).breaks]
    assert shown == [
        f"events/{PROXY}.jsonl:2: the writer found its file changed: {PROXY}.jsonl changed under its only writer after record 2 (replaced or truncated)"
    ]


_APPENDER = """
import sys
from pathlib import Path
from intercept.audit.events import EventLog
log = EventLog(Path(sys.argv[1]), "approvals-cli")
for n in range(int(sys.argv[2])):
    log.emit("approval_decided", approval_id=f"apr_{sys.argv[3]}_{n}", decision="approved")
    if n % 10 == 0:
        log.checkpoint()
log.close()
"""


def test_concurrent_cli_appends_never_fork_the_chain(tmp_path: Path) -> None:
    writers, each = 6, 60
    processes = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), str(each), str(w)], cwd=ROOT)
        for w in range(writers)
    ]
    assert [process.wait(timeout=60) for process in processes] == [0] * writers
    lines = lines_of(tmp_path, "approvals-cli.jsonl")
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert types_of(lines).count("approval_decided") == writers * each
    report = verify_state_dir(tmp_path, public_key(tmp_path))
    assert report.breaks == [] and report.unsealed == []


def test_the_key_is_made_once_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    key = load_or_create(tmp_path)
    assert load_or_create(tmp_path).public_line() == key.public_line()
    assert verify(parse_public_line(key.public_line()), b"x", key.sign(b"x"))
    assert not verify(parse_public_line(key.public_line()), b"y", key.sign(b"x"))
    path = tmp_path / "proxy.key"
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    with pytest.raises(ProxyKeyError, match="readable by group or others"):
        load_or_create(tmp_path)
    path.chmod(0o600)
    path.rename(tmp_path / "real.key")
    path.symlink_to(tmp_path / "real.key")
    with pytest.raises(ProxyKeyError, match="symlink"):
        load_or_create(tmp_path)


_KEY_RACER = """
import sys
from pathlib import Path
from intercept.audit.proxy_key import load_or_create
print(load_or_create(Path(sys.argv[1])).public_line())
"""


def test_processes_racing_to_make_the_key_agree_on_one(tmp_path: Path) -> None:
    racers = [
        subprocess.Popen([sys.executable, "-c", _KEY_RACER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    assert len({racer.communicate(timeout=60)[0] for racer in racers}) == 1
    assert [path.name for path in tmp_path.iterdir()] == ["proxy.key"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("rsa:AAAA", "the proxy's public key must start with 'ed25519:'"),
        ("ed25519:not base64!", "must be followed by standard base64"),
        ("ed25519:AAAA", "32 bytes, this one is 3"),
    ],
)
def test_bad_public_key_lines_say_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_public_line(line)


def test_the_tail_of_a_file_is_read_back_across_chunks(tmp_path: Path) -> None:
    log = EventLog(tmp_path, PROXY)
    log.emit("approval_requested", reason="x" * 20_000)
    log.emit("approval_requested", reason="y" * 20_000)
    log.flush()
    last = lines_of(tmp_path, f"{PROXY}.jsonl")[-1]
    fd = os.open(log.path, os.O_RDONLY)
    try:
        tail = read_tail(fd)
    finally:
        os.close(fd)
    assert (tail.seq, tail.head, tail.torn, tail.problem) == (2, head_of(last), False, "")


_LAZY = """
import sys
from pathlib import Path
from intercept.audit.events import EventLog
log = EventLog(Path(sys.argv[1]), "srv-1-abc", shared=False)
log.emit("startup", server="srv")
log.tool_call("srv", "echo", "allowed", {})
log.flush()
print("cryptography" in sys.modules, (Path(sys.argv[1]) / "proxy.key").exists())
log.close()
print("cryptography" in sys.modules, (Path(sys.argv[1]) / "proxy.key").exists())
"""


def test_the_key_and_cryptography_wait_for_the_first_checkpoint(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LAZY, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["False", "False", "True", "True"], done.stderr


def test_a_key_that_cannot_be_used_is_said_once_and_writing_goes_on(tmp_path: Path) -> None:
    (tmp_path / "proxy.key").write_text("not a key")
    (tmp_path / "proxy.key").chmod(0o600)
    log = EventLog(tmp_path, PROXY, shared=False)
    log.emit("startup", server="srv")
    log.checkpoint()
    log.emit("shutdown", server="srv")
    log.close()
    records = [json.loads(line) for line in lines_of(tmp_path, f"{PROXY}.jsonl")]
    assert [record["type"] for record in records] == ["startup", "chain_checkpoint_failed", "shutdown"]
    assert records[1]["severity"] == "critical" and "not a PEM private key" in records[1]["reason"]


def test_periodic_checkpoints_follow_the_clock_and_the_key_is_loaded_ahead(tmp_path: Path) -> None:
    from intercept.audit.events import CHECKPOINT_INTERVAL_S

    now = [0.0]
    log = EventLog(tmp_path, PROXY, shared=False, monotonic=lambda: now[0])
    log.emit("startup", server="srv")
    now[0] += CHECKPOINT_INTERVAL_S / 2
    log.flush()
    assert (tmp_path / "proxy.key").exists() or log._file._key_requested  # loading on its thread
    log.emit("heartbeat", server="srv", counters={})
    now[0] += CHECKPOINT_INTERVAL_S / 2
    log.emit("heartbeat", server="srv", counters={})
    now[0] += 1
    log.flush()  # nothing new since the checkpoint: none more
    log.emit("heartbeat", server="srv", counters={})
    types = types_of(lines_of(tmp_path, f"{PROXY}.jsonl"))
    assert types == ["startup", "heartbeat", "heartbeat", "chain_checkpoint", "heartbeat"]


def test_context_and_severity_reach_every_record_routine_ones_included(tmp_path: Path) -> None:
    from intercept.audit.events import tool_call_record

    log = EventLog(tmp_path, PROXY, shared=False)
    log.tool_call("srv", "echo", "allowed", {})  # a template made before the context: dropped with it
    log.set_context(agent="claude", client="cursor")
    log.tool_call("srv", "echo", "allowed", {})
    log.tool_call("srv", "rm", "denied", {}, "no rm", severity="warning")
    log.emit("approval_tampered", approval_id="apr_1")
    log.emit("config_reload", status="failure", severity="warning")
    log.set_context(client=None)
    log.tool_call("srv", "echo", "allowed", {})
    with pytest.raises(ValueError, match="severity must be one of"):
        log.emit("heartbeat", severity="loud")
    with pytest.raises(ValueError, match="chain's fields"):
        log.emit("heartbeat", seq=1)
    log.close()
    lines = lines_of(tmp_path, f"{PROXY}.jsonl")
    records = [json.loads(line) for line in lines][:-1]
    assert [(r["type"], r["severity"], r.get("agent"), r.get("client")) for r in records] == [
        ("tool_call", "info", None, None),
        ("tool_call", "info", "claude", "cursor"),
        ("tool_call", "warning", "claude", "cursor"),
        ("approval_tampered", "critical", "claude", "cursor"),
        ("config_reload", "warning", "claude", "cursor"),
        ("tool_call", "info", "claude", None),
    ]
    routine = records[1]
    expected = tool_call_record(
        routine["ts"],
        PROXY,
        "srv",
        "echo",
        "allowed",
        routine["args_hash"],
        context={"agent": "claude", "client": "cursor"},
    )
    chained = {**expected, "seq": 2, "prev": head_of(lines[0])}
    assert lines[1] == json.dumps(chained, separators=(",", ":")).encode()  # the template equals the one definition
