"""The event log under faults and over time: writes that fail and resume with an `events_gap`
record, a bounded backlog during a long outage, a torn write, rotation by size (`events_rotated`)
as `read_events` and `follow_events` see it, and pruning by age.

The faults are real: the events dir replaced by a regular file (fails for root too), a read-only
events dir (not for root, which ignores modes), a file size limit (`RLIMIT_FSIZE`, in a child
process). Retries are timed by an injected monotonic clock.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from intercept.audit.events import (
    RETRY_FIRST_S,
    RETRY_MAX_S,
    EventLog,
    PrunedFiles,
    event_files_size,
    events_dir,
    follow_events,
    prune_old_event_files,
    read_events,
)
from intercept.audit.hashing import ArgumentHasher
from tests.support import ROOT

HASHER = ArgumentHasher(b"k" * 32)
DAY_S = 86400.0


def _modes_are_enforced() -> bool:
    """False for root (or anyone with CAP_DAC_OVERRIDE), who can write in a read-only dir."""
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o500)
        try:
            Path(scratch, "probe").touch()
        except PermissionError:
            return True
        finally:
            os.chmod(scratch, 0o700)
    return False


MODES_ENFORCED = os.geteuid() != 0 or _modes_are_enforced()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def _lines(path: Path) -> list[dict[str, Any]]:
    """The records of a file, less the chain's checkpoints (tests/test_event_chain.py checks those)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [record for record in records if record["type"] != "chain_checkpoint"]


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events if event["type"] != "chain_checkpoint"]


# -- faults: each breaks writing to an events dir that exists and returns how to restore it ----


def replace_events_dir_with_a_file(directory: Path) -> Callable[[], None]:
    moved = directory.with_name("events.moved")
    directory.rename(moved)
    directory.write_text("not a directory")

    def restore() -> None:
        directory.unlink()
        moved.rename(directory)

    return restore


def make_events_dir_read_only(directory: Path) -> Callable[[], None]:
    """An open file stays writable whatever the modes, so the writer's file is moved away first
    (as an outside log rotation would) and it has to create a new one."""
    for path in directory.glob("*.jsonl"):
        path.rename(directory / f"moved-{path.name}")
    directory.chmod(0o500)
    return lambda: directory.chmod(0o700)


FAULTS = [
    pytest.param(replace_events_dir_with_a_file, id="events dir replaced by a file"),
    pytest.param(
        make_events_dir_read_only,
        id="read-only events dir",
        marks=pytest.mark.skipif(not MODES_ENFORCED, reason="root ignores file modes"),
    ),
]


# -- failed writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_writing_resumes_after_a_fault_and_the_gap_is_recorded_first(
    tmp_path: Path, fault: Callable[[Path], Callable[[], None]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="intercept")
    clock = Clock()
    log = EventLog(tmp_path, "srv-1-abc", HASHER, monotonic=clock)
    log.emit("startup", server="srv")
    restore = fault(events_dir(tmp_path))

    log.emit("approval_requested", approval_id="apr_1")  # fails: kept for the next try
    log.tool_call("srv", "echo", "allowed", {"n": 1})
    clock.advance(RETRY_FIRST_S)
    log.flush()  # fails again: the next try is 2 * RETRY_FIRST_S later
    restore()
    clock.advance(RETRY_FIRST_S)
    log.flush()
    assert _types(read_events(tmp_path)) == ["startup"]  # not yet due
    clock.advance(RETRY_FIRST_S)
    log.flush()
    log.emit("shutdown", server="srv")
    log.close()

    events = [event for event in read_events(tmp_path) if event["type"] != "chain_checkpoint"]
    assert _types(events) == ["startup", "approval_requested", "tool_call", "events_gap", "shutdown"]
    _, requested, _, gap, _ = events
    assert list(gap) == ["ts", "type", "severity", "instance", "lost", "since", "until", "error", "seq", "prev"]
    assert gap["lost"] == 0  # everything was kept and written late, nothing dropped
    assert requested["ts"] < gap["since"] < gap["until"] == gap["ts"]
    assert gap["error"] and "/" not in gap["error"]
    # In the file, the gap comes before the records written late.
    [resumed] = [path for path in events_dir(tmp_path).glob("*.jsonl") if "events_gap" in path.read_text()]
    assert _types(_lines(resumed))[-4:] == ["events_gap", "approval_requested", "tool_call", "shutdown"]

    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "intercept"]
    assert [level for level, _ in said] == ["WARNING", "INFO"]  # once each, not per try
    assert said[0][1].startswith(f"cannot write events to {log.path}: ")
    assert said[1][1].startswith(f"writing events to {log.path} again (0 events lost since ")


@pytest.mark.parametrize(
    ("failed_tries", "next_try_s"),
    [
        pytest.param(0, RETRY_FIRST_S, id="first retry"),
        pytest.param(1, 2 * RETRY_FIRST_S, id="doubled"),
        pytest.param(3, 8 * RETRY_FIRST_S, id="doubled three times"),
        pytest.param(12, RETRY_MAX_S, id="capped"),
    ],
)
def test_retries_back_off_doubling_up_to_a_cap(tmp_path: Path, failed_tries: int, next_try_s: float) -> None:
    clock = Clock()
    log = EventLog(tmp_path, "srv-1-abc", monotonic=clock)
    log.emit("startup", server="srv")
    restore = replace_events_dir_with_a_file(events_dir(tmp_path))
    log.emit("approval_requested", approval_id="apr_1")
    for n in range(failed_tries):
        clock.advance(min(RETRY_FIRST_S * 2**n, RETRY_MAX_S))
        log.flush()
    restore()
    clock.advance(next_try_s - 0.01)
    log.flush()
    assert _types(_lines(log.path)) == ["startup"]
    clock.advance(0.01)
    log.flush()
    assert _types(_lines(log.path)) == ["startup", "events_gap", "approval_requested"]


def test_a_long_outage_keeps_the_newest_records_and_counts_the_dropped_ones(tmp_path: Path) -> None:
    clock = Clock()
    log = EventLog(tmp_path, "srv-1-abc", max_unwritten_bytes=4096, monotonic=clock)
    log.emit("startup", server="srv")
    restore = replace_events_dir_with_a_file(events_dir(tmp_path))
    for n in range(200):
        log.emit("tool_call", server="srv", tool="echo", result="denied", rule="r", n=f"{n:03d}")
        if n % 10 == 9:
            clock.advance(1.0)
            log.flush()  # the relay's timer: tries again while it fails
    restore()
    clock.advance(RETRY_MAX_S)
    log.close()

    lines = log.path.read_text().splitlines(keepends=True)
    [gap] = [json.loads(line) for line in lines if '"events_gap"' in line]
    calls = [line for line in lines if '"tool_call"' in line]
    first = json.loads(calls[0])
    line_bytes = len(calls[0].encode()) - len(f',"seq":{first["seq"]},"prev":"{first["prev"]}"')  # kept unchained
    assert len(calls) == 4096 // line_bytes  # as many as fit in the limit
    assert gap["lost"] == 200 - len(calls) > 0
    assert [json.loads(line)["n"] for line in calls] == [f"{n:03d}" for n in range(gap["lost"], 200)]


def test_close_tries_once_more_at_once_and_reports_what_it_could_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    first = EventLog(tmp_path, "srv-1-abc", monotonic=clock)
    first.emit("startup", server="srv")
    restore = replace_events_dir_with_a_file(events_dir(tmp_path))
    first.emit("approval_requested", approval_id="apr_1")
    restore()
    first.emit("shutdown", server="srv")  # the retry is not due yet: kept
    first.close()  # tries anyway
    assert _types(_lines(first.path)) == ["startup", "events_gap", "approval_requested", "shutdown"]

    second = EventLog(tmp_path / "other", "srv-2-abc", monotonic=clock)
    second.emit("startup", server="srv")
    replace_events_dir_with_a_file(events_dir(tmp_path / "other"))
    second.emit("approval_requested", approval_id="apr_2")
    second.tool_call("srv", "echo", "allowed", {})
    second.emit("shutdown", server="srv")
    caplog.clear()
    second.close()  # must not raise
    [record] = caplog.records
    assert record.levelname == "ERROR"
    assert record.getMessage().startswith(f"cannot write events to {second.path}: ")
    assert "(3 events since " in record.getMessage()


def test_a_write_cut_short_leaves_no_record_spoilt(tmp_path: Path) -> None:
    """A file size limit lets part of a record through before the write fails (as a full disk
    can): the fragment stays on a line of its own and the whole record is written again."""
    script = """
import resource, signal, sys
from pathlib import Path
from intercept.audit.events import EventLog

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
clock = [0.0]
log = EventLog(Path(sys.argv[1]), "srv-1-abc", monotonic=lambda: clock[0])
log.emit("startup", server="srv")
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (log.path.stat().st_size + 100, hard))
log.emit("approval_requested", reason="x" * 300)
log.emit("approval_decided", decision="approved")
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
clock[0] += 1
log.flush()
log.emit("shutdown", server="srv")
log.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "File too large" in done.stderr
    path = events_dir(tmp_path) / "srv-1-abc.jsonl"
    raw = path.read_text().splitlines()
    fragment = raw[1]
    with pytest.raises(ValueError):
        json.loads(fragment)
    assert _types([json.loads(line) for line in raw[:1] + raw[2:]]) == [
        "startup",
        "chain_restarted",  # says why the fragment is not part of the chain
        "events_gap",
        "approval_requested",
        "approval_decided",
        "shutdown",
    ]
    assert raw[4].startswith(fragment)  # the record it was cut from, written whole
    assert _types(read_events(tmp_path)) == [
        "startup",
        "approval_requested",
        "approval_decided",
        "events_gap",
        "chain_restarted",
        "shutdown",
    ]


# -- rotation ----------------------------------------------------------------------------------


def test_a_full_file_is_left_for_the_next_one_of_the_instance(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "srv-1-abc", max_file_bytes=1000)
    for n in range(120):
        log.emit("approval_requested", n=n)
    log.close()
    # A second writer with the same instance id (the CLI's writers share one) carries on in the
    # file in use, or starts the next one, and says so once.
    later = EventLog(tmp_path, "srv-1-abc", max_file_bytes=1000)
    later.emit("approval_requested", n=120)
    later.close()

    names = {path.name for path in events_dir(tmp_path).glob("*.jsonl")}
    count = len(names)
    assert count > 10  # numbered past 9: the order is numeric, not by name
    expected = ["srv-1-abc.jsonl"] + [f"srv-1-abc.{n}.jsonl" for n in range(2, count + 1)]
    assert names == set(expected)
    for previous, current in pairwise(expected):
        previous_path, current_path = events_dir(tmp_path) / previous, events_dir(tmp_path) / current
        first = _lines(current_path)[0]
        assert (first["type"], first["previous_file"], first["previous_bytes"]) == (
            "events_rotated",
            previous,
            previous_path.stat().st_size,
        )
        assert 1000 <= previous_path.stat().st_size < 1000 + 600  # the last record and a checkpoint
    events = read_events(tmp_path)
    assert [e["n"] for e in events if e["type"] == "approval_requested"] == list(range(121))
    assert _types(events).count("events_rotated") == count - 1


def start_following(state_dir: Path, log: EventLog) -> tuple[threading.Thread, queue.Queue[dict[str, Any]]]:
    """`follow_events` in a thread until a "done" event, once it follows: it starts after what is
    already written, so `log` emits pings until one is reported."""
    seen: queue.Queue[dict[str, Any]] = queue.Queue()

    def follow() -> None:
        for event in follow_events(state_dir, stop_after_s=60):
            seen.put(event)
            if event["type"] == "done":
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    for _ in range(300):
        log.emit("ping")
        try:
            if seen.get(timeout=0.1)["type"] == "ping":
                return follower, seen
        except queue.Empty:
            continue
    pytest.fail("follow_events reported nothing")


def test_follow_events_goes_on_into_the_next_file(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "srv-1-abc", max_file_bytes=600)
    log.emit("startup", server="srv")
    follower, seen = start_following(tmp_path, log)
    for n in range(30):
        log.emit("step", n=n)
    log.emit("done")
    follower.join(timeout=60)
    assert not follower.is_alive()

    followed = []
    while not seen.empty():
        followed.append(seen.get())
    assert [e["n"] for e in followed if e["type"] == "step"] == list(range(30))
    assert "events_rotated" in _types(followed)
    assert len(list(events_dir(tmp_path).glob("*.jsonl"))) >= 3


def test_follow_events_reads_a_file_made_again_under_the_same_name_from_its_start(tmp_path: Path) -> None:
    """A file pruned (or deleted) and written again is shorter than what was read of the old one:
    its records must still be followed."""
    path = events_dir(tmp_path) / "srv-1-abc.jsonl"
    log = EventLog(tmp_path, "srv-1-abc")
    for n in range(50):
        log.emit("filler", n=n, text="x" * 100)
    follower, seen = start_following(tmp_path, log)
    log.close()
    path.unlink()
    again = EventLog(tmp_path, "srv-1-abc")
    for n in range(80):  # longer than the old file by now: only its first bytes tell them apart
        again.emit("after", n=n, text="y" * 100)
    again.emit("done")
    again.close()
    follower.join(timeout=60)
    assert not follower.is_alive()
    followed = []
    while not seen.empty():
        followed.append(seen.get())
    assert [e.get("n") for e in followed if e["type"] in ("after", "done")] == [*range(80), None]


# -- pruning -----------------------------------------------------------------------------------

NOW_S = 1_800_000_000.0


@pytest.fixture
def aged_files(tmp_path: Path) -> dict[str, Path]:
    """Event files last modified 100, 91, 89 and 1 days before NOW_S, and a file of another kind."""
    directory = events_dir(tmp_path)
    directory.mkdir()
    files = {}
    for name, age_days, size in [("a", 100, 300), ("b", 91, 200), ("c", 89, 50), ("d", 1, 10)]:
        path = files[name] = directory / f"{name}.jsonl"
        path.write_bytes(b"x" * (size - 1) + b"\n")
        os.utime(path, (NOW_S - age_days * DAY_S, NOW_S - age_days * DAY_S))
    other = files["other"] = directory / "notes.txt"
    other.write_text("not an event file")
    os.utime(other, (NOW_S - 400 * DAY_S, NOW_S - 400 * DAY_S))
    return files


@pytest.mark.parametrize(
    ("retention", "pruned", "left"),
    [
        pytest.param({}, PrunedFiles(2, 500), ["c", "d"], id="90 days by default"),
        pytest.param({"retention_s": 2 * DAY_S}, PrunedFiles(3, 550), ["d"], id="2 days"),
        pytest.param({"retention_s": 365 * DAY_S}, PrunedFiles(0, 0), ["a", "b", "c", "d"], id="a year"),
    ],
)
def test_pruning_deletes_files_older_than_the_retention(
    tmp_path: Path, aged_files: dict[str, Path], retention: dict[str, float], pruned: PrunedFiles, left: list[str]
) -> None:
    assert event_files_size(tmp_path) == (4, 560)
    assert prune_old_event_files(tmp_path, NOW_S, **retention) == pruned
    assert sorted(path.stem for path in events_dir(tmp_path).glob("*.jsonl")) == left
    assert aged_files["other"].exists()
    assert event_files_size(tmp_path) == (len(left), 560 - pruned.bytes)


def test_the_file_being_written_is_never_old_enough_to_prune(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "srv-1-abc")
    log.emit("startup", server="srv")
    os.utime(log.path, (NOW_S - 100 * DAY_S, NOW_S - 100 * DAY_S))
    log.emit("heartbeat", server="srv", counters={})  # a live writer touches its file every minute
    assert prune_old_event_files(tmp_path) == PrunedFiles(0, 0)
    log.close()
    assert _types(_lines(log.path)) == ["startup", "heartbeat"]
