"""A fault in the relay's chunked path costs one message, as judging each line alone does.

A chunk of canonical lines goes `parse_client_lines` -> `Interceptor.allowed_as_sent`; lines one
by one go `_outcome` -> `on_client_line`. Both must answer the same: after the interceptor could
not be assembled, every line gets "intercept internal error: not forwarded" (not an exception out
of `data_received` that loses the chunk); a fault inside the fast path after the call was recorded
answers that one call with the internal error, leaves exactly one record and never judges it
again (found in review).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import orjson

from intercept.approvals.gate import ApprovalGate, UpstreamServer
from intercept.audit.events import CHECKPOINT_INTERVAL_S, MAX_BUFFERED_EVENTS, EventLog
from intercept.audit.hashing import ArgumentHasher
from intercept.counters.call_counters import AsyncCallCounters, CallCounters
from intercept.policy import parse_policy
from intercept.proxy.interceptor import Interceptor
from intercept.proxy.relay import Relay, RelayOptions
from intercept.store.worker import StoreWorker
from tests.support import MemoryPipe

LINES = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","arguments":{}}}',
    b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read","arguments":{}}}',
]


def _broken_maker() -> Any:
    raise RuntimeError("the session could not be assembled")


def _relay_whose_interceptor_failed() -> tuple[Relay, MemoryPipe, MemoryPipe]:
    relay = Relay(_broken_maker, RelayOptions(command=["true"]))
    upstream, client = MemoryPipe(), MemoryPipe()
    relay._child_stdin, relay._out = upstream, client  # type: ignore[assignment]
    relay._make_interceptor_now()  # logs the failure; the interceptor stays the stand-in
    return relay, upstream, client


async def test_one_line_per_chunk_is_answered_after_a_failed_assembly() -> None:
    relay, upstream, client = _relay_whose_interceptor_failed()
    for line in LINES:
        relay.on_client_data(line + b"\n")
    assert upstream.data == b""
    assert [m["id"] for m in client.messages()] == [None, None]
    assert all("internal error" in m["error"]["message"] for m in client.messages())


async def test_a_chunk_of_lines_is_answered_like_its_lines_alone_after_a_failed_assembly() -> None:
    relay, upstream, client = _relay_whose_interceptor_failed()
    relay.on_client_data(b"".join(line + b"\n" for line in LINES))
    assert upstream.data == b""
    assert [m["id"] for m in client.messages()] == [None, None]


# -- a fault inside the fast path after the call was recorded ---------------------------------------
#
# `allowed_outright` records the call (`routine_call`), and the buffer reaching MAX_BUFFERED_EVENTS
# flushes it there; `flush` first starts the key-loading thread once the last checkpoint is half
# an interval old (`load_key_in_background`), before it takes the buffer. When that thread cannot
# be started (RuntimeError "can't start new thread": a process or memory limit), the exception
# leaves the fast path with the record already buffered. Alone or in a chunk, that call is then
# answered with the internal error, recorded once and not judged again (judged again, it would be
# recorded twice and forwarded).


HASHER = ArgumentHasher(b"k" * 32)
POLICY = 'version: "1"\ntools:\n  read: {rules: []}\n'


def _call(request_id: int) -> bytes:
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
               "params": {"name": "read", "arguments": {"n": request_id}}}  # fmt: skip
    return orjson.dumps(message)


async def _records_after_a_thread_fault(
    tmp_path: Path, monkeypatch: Any, chunks: list[bytes]
) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    now = [0.0]
    events = EventLog(tmp_path, "fault", HASHER, shared=False, monotonic=lambda: now[0])
    worker = StoreWorker()
    gate = ApprovalGate(tmp_path, UpstreamServer("fault", "name:fault", '["fault"]'), events, HASHER, worker)
    interceptor = Interceptor(
        parse_policy(POLICY), "fault", events, gate, AsyncCallCounters(CallCounters(tmp_path), worker), worker
    )
    relay = Relay(interceptor, RelayOptions(command=["true"]))
    upstream, client = MemoryPipe(), MemoryPipe()
    relay._child_stdin, relay._out = upstream, client  # type: ignore[assignment]
    for n in range(MAX_BUFFERED_EVENTS - 1):  # earlier allowed calls, still buffered
        events.routine_call("fault", "read", "allowed", {"earlier": n})
    now[0] = CHECKPOINT_INTERVAL_S * 0.75  # the key is to be loaded at the next flush; no seal yet

    def cannot_start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    for chunk in chunks:
        relay.on_client_data(chunk)
    monkeypatch.undo()
    events.flush()
    records = [json.loads(line) for line in events.path.read_bytes().splitlines()]
    while worker.busy:
        await worker.drain(5)
    worker.close()
    events.close()
    return records, upstream.messages(), client.messages()


def _count(records: list[dict[str, Any]], request_id: int) -> int:
    digest = HASHER.arguments({"n": request_id})
    return sum(1 for r in records if r.get("type") == "tool_call" and r.get("args_hash") == digest)


async def test_alone_a_fault_after_recording_leaves_one_record(tmp_path: Path, monkeypatch: Any) -> None:
    records, _forwarded, _ = await _records_after_a_thread_fault(
        tmp_path, monkeypatch, [_call(1) + b"\n", _call(2) + b"\n"]
    )
    assert (_count(records, 1), _count(records, 2)) == (1, 1)


async def test_in_a_chunk_a_fault_after_recording_leaves_one_record(tmp_path: Path, monkeypatch: Any) -> None:
    records, _forwarded, _ = await _records_after_a_thread_fault(
        tmp_path, monkeypatch, [_call(1) + b"\n" + _call(2) + b"\n"]
    )
    assert (_count(records, 1), _count(records, 2)) == (1, 1)  # judged again after the fault it would be (2, 1)
