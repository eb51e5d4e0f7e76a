"""In-process cost of intercept's client->upstream path per allowed call, without pipes or processes.

Feeds 64 KiB-sized chunks of `tools/call echo` lines (the same lines `run.py` sends) through a real
`Relay.on_client_data` wired to a real `Interceptor` with `allow_policy.yaml`, and prints µs per
call. Use it to see what a change to parsing, deciding or event recording costs before running
`run.py`: `python bench/hot_path.py [--calls N] [--policy FILE] [--profile]`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import echo_call
from intercept.approvals.gate import ApprovalGate, UpstreamServer
from intercept.audit.events import EventLog
from intercept.audit.hashing import ArgumentHasher, read_or_create_key
from intercept.counters.call_counters import AsyncCallCounters, CallCounters
from intercept.policy import load_policy
from intercept.proxy.interceptor import Interceptor
from intercept.proxy.relay import Relay, RelayOptions
from intercept.store.worker import StoreWorker

HERE = Path(__file__).resolve().parent
CHUNK_BYTES = 64 * 1024


class _CountingPipe:
    """Stands in for the upstream's stdin transport: counts what would be written."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False


def _chunks(calls: int) -> list[bytes]:
    blob = b"".join(echo_call(i) for i in range(1, calls + 1))
    chunks, start = [], 0
    while start < len(blob):
        chunks.append(blob[start : start + CHUNK_BYTES])
        start += CHUNK_BYTES
    return chunks


async def _measure(policy_path: Path, calls: int, rounds: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as state:
        state_dir = Path(state)
        hasher = ArgumentHasher(read_or_create_key(state_dir))
        events = EventLog(state_dir, "bench", hasher, shared=False)  # one writer, as in the proxy
        store = StoreWorker()
        interceptor = Interceptor(
            load_policy(policy_path),
            "bench",
            events,
            ApprovalGate(state_dir, UpstreamServer("bench", "name:bench", '["true"]'), events, hasher, store),
            AsyncCallCounters(CallCounters(state_dir), store),
            store,
        )
        relay = Relay(interceptor, RelayOptions(command=["true"]))
        pipe = _CountingPipe()
        relay._child_stdin = pipe  # type: ignore[assignment]
        best = float("inf")
        profiler = cProfile.Profile() if profile else None
        for _ in range(rounds):
            chunks = _chunks(calls)
            if profiler:
                profiler.enable()
            start = time.perf_counter_ns()
            for chunk in chunks:
                relay.on_client_data(chunk)
            events.flush()
            elapsed = time.perf_counter_ns() - start
            if profiler:
                profiler.disable()
            best = min(best, elapsed / calls / 1000)
        print(f"{best:.2f} µs per allowed call (best of {rounds} rounds of {calls} calls; {pipe.written} bytes out)")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--policy", type=Path, default=HERE / "allow_policy.yaml")
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    args = parser.parse_args()
    asyncio.run(_measure(args.policy, args.calls, args.rounds, args.profile))


if __name__ == "__main__":
    main()
