"""The JSONL event log: routine records rendered at flush, the file kept open and reopened."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from intercept.audit.events import MAX_BUFFERED_EVENTS, EventLog, _render, read_events, tool_call_record
from intercept.audit.hashing import ArgumentHasher
from intercept.store.timestamps import parse_rfc3339, rfc3339

HASHER = ArgumentHasher(b"k" * 32)
arguments_hash = HASHER.arguments


def _lines(path: Path) -> list[dict[str, object]]:
    """The records of a file, less the chain's checkpoints (tests/test_event_chain.py checks those)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [record for record in records if record["type"] != "chain_checkpoint"]


def test_routine_and_other_events_keep_their_order_and_fields(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "srv-1-abc", HASHER)
    log.tool_call("srv", 'to"ol', "allowed", {"b": 2, "a": [1, "é"]})
    log.emit("tool_call", server="srv", tool="x", result="denied", rule="r", args_hash="h")
    log.tool_call("srv", "x", "allowed", {})
    log.close()
    first, second, third = _lines(log.path)
    chain = ["seq", "prev"]
    assert list(first) == ["ts", "type", "severity", "instance", "server", "tool", "result", "args_hash", *chain]
    assert first["tool"] == 'to"ol' and first["instance"] == "srv-1-abc"
    assert first["args_hash"] == arguments_hash({"a": [1, "é"], "b": 2})  # key order does not matter
    assert second["rule"] == "r"
    assert third["args_hash"] == arguments_hash({})
    calls = [event for event in read_events(tmp_path) if event["type"] == "tool_call"]
    assert [event["ts"] for event in calls] == sorted(e["ts"] for e in (first, second, third))


def test_a_routine_record_is_byte_for_byte_the_one_definition_of_a_tool_call(tmp_path: Path) -> None:
    """The routine record is rendered in bulk from a template; it must equal `tool_call_record`
    encoded like every other record, and a record with a rule must only add `rule` after it."""
    log = EventLog(tmp_path, 'in"st', HASHER)
    arguments = {"path": "/tmp/é\u2028", "n": [1, 2.5, None]}
    log.tool_call("se\\rver", "to\"ol\u0001", "allowed", arguments)
    log.tool_call("se\\rver", "to\"ol\u0001", "denied", arguments, "no writes", approval_id="apr_1")
    log.close()
    routine, ruled, _checkpoint = log.path.read_text().splitlines()
    ts = json.loads(routine)["ts"]
    expected = tool_call_record(ts, 'in"st', "se\\rver", "to\"ol\u0001", "allowed", arguments_hash(arguments))
    chained = {**expected, "seq": 1, "prev": "0" * 64}
    assert routine == json.dumps(chained, ensure_ascii=False, separators=(",", ":"))
    fields = json.loads(ruled)
    assert list(fields) == [*expected, "rule", "approval_id", "seq", "prev"]
    assert fields["rule"] == "no writes" and fields["args_hash"] == expected["args_hash"]


def test_routine_events_wait_for_the_flush_and_the_buffer_limit(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "srv-1-abc")
    log.tool_call("srv", "echo", "allowed", {"n": 0})
    assert not log.path.exists()
    for n in range(1, MAX_BUFFERED_EVENTS):
        log.tool_call("srv", "echo", "allowed", {"n": n})
    assert len(_lines(log.path)) == MAX_BUFFERED_EVENTS
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600
    log.close()


def test_a_deleted_events_file_is_created_again(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "srv-1-abc")
    log.emit("startup", server="srv")
    log.path.unlink()
    log.tool_call("srv", "echo", "allowed", {})
    log.close()
    assert [event["type"] for event in _lines(log.path)] == ["tool_call"]


def test_rendered_timestamps_match_rfc3339_across_second_boundaries() -> None:
    middle = '","type":"tool_call","instance":"i","server":"s","tool":"t","result":"'
    stamps = [1_763_763_734_999_999_999, 1_763_763_735_000_000_001, 1_000_000_000_000_000_000, 999_999_999_999_999_999]
    lines = _render([(ns, middle, "allowed", {}) for ns in stamps], HASHER).splitlines()
    for ns, line in zip(stamps, lines, strict=True):
        ts = json.loads(line)["ts"]
        assert ts == rfc3339((ns // 1000) / 1e6)[:20] + f"{ns // 1000 % 1_000_000:06d}Z"
        assert abs(parse_rfc3339(ts) - ns / 1e9) < 1e-5


def test_a_renamed_events_file_is_not_written_to_again(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "srv-1-abc")
    log.emit("startup", server="srv")
    log.path.rename(tmp_path / "rotated.jsonl")
    log.emit("shutdown", server="srv")
    log.close()
    assert [event["type"] for event in _lines(log.path)] == ["shutdown"]
    assert [event["type"] for event in _lines(tmp_path / "rotated.jsonl")] == ["startup"]


def test_long_tool_names_are_not_kept_after_the_flush(tmp_path: Path) -> None:
    log = EventLog(tmp_path, "srv-1-abc")
    log.tool_call("srv", "t" * 10_000, "allowed", {})
    log.tool_call("srv", "short", "allowed", {})
    log.close()
    assert [tool for _, tool in log._escaped] == ["short"]
    assert [event["tool"] for event in _lines(log.path)] == ["t" * 10_000, "short"]
