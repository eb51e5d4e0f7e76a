"""In-process cost of a counted call, whole: client line in, store thread, forwarded, reply out.

Feeds `tools/call echo` lines 8 at a time (as one proxy of `counter_path.py` gets them) through a
real `Relay.on_client_data` wired to a real `Interceptor` with `contention_counter.yaml` (one
rate limit on every call) and a real store thread and SQLite file, waits until the 8 are decided
and forwarded, then feeds the upstream's replies back through `Relay.on_upstream_data`. Prints
the CPU per call of the whole process and of the event loop's thread, best of 5 rounds. No
pipes and no other processes: what it measures is our own code and the thread hand-off.

    python bench/counter_hot_path.py [--groups N] [--policy FILE] [--profile]
    python bench/counter_hot_path.py --tree /tmp/old     # an exported older tree instead
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
from typing import Any

HERE = Path(__file__).resolve().parent
IN_FLIGHT = 8


class _Pipe:
    """Stands in for a pipe transport: keeps what is written, and wakes a waiter at a line count."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lines = 0
        self.want = 0
        self.enough: asyncio.Event | None = None

    def write(self, data: bytes) -> None:
        self.data.append(data)
        self.lines += data.count(b"\n")
        if self.enough is not None and self.lines >= self.want:
            self.enough.set()

    def is_closing(self) -> bool:
        return False


async def _measure(policy_path: Path, groups: int, profile: bool) -> None:
    import orjson

    from bench.run import echo_call
    from intercept.approvals.gate import ApprovalGate, UpstreamServer
    from intercept.audit.events import EventLog
    from intercept.audit.hashing import ArgumentHasher, read_or_create_key
    from intercept.counters.call_counters import AsyncCallCounters, CallCounters
    from intercept.policy import load_policy
    from intercept.proxy.interceptor import Interceptor
    from intercept.proxy.relay import Relay, RelayOptions
    from intercept.store.worker import StoreWorker

    with tempfile.TemporaryDirectory() as state:
        state_dir = Path(state)
        hasher = ArgumentHasher(read_or_create_key(state_dir))
        events = EventLog(state_dir, "bench", hasher, shared=False)
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
        upstream, client = _Pipe(), _Pipe()
        relay._child_stdin = upstream  # type: ignore[assignment]
        relay._out = client
        next_id = 1

        async def run(count: int) -> None:
            nonlocal next_id
            for _ in range(count):
                chunk = b"".join(echo_call(i) for i in range(next_id, next_id + IN_FLIGHT))
                next_id += IN_FLIGHT
                upstream.want, upstream.enough = upstream.lines + IN_FLIGHT, asyncio.Event()
                relay.on_client_data(chunk)
                if upstream.lines < upstream.want:
                    await upstream.enough.wait()
                sent = b"".join(upstream.data)
                upstream.data.clear()
                relay.on_upstream_data(b"".join(_reply(orjson.loads(line)["id"]) for line in sent.splitlines()))
                await asyncio.sleep(0)
            events.flush()

        await run(200)  # warm: the database made, the plans built
        best: tuple[float, float] | None = None
        profiler = cProfile.Profile() if profile else None
        for _ in range(5):
            if profiler:
                profiler.enable()
            process, thread = time.process_time(), time.thread_time()
            await run(groups)
            calls = groups * IN_FLIGHT
            spent = ((time.process_time() - process) / calls * 1e6, (time.thread_time() - thread) / calls * 1e6)
            if profiler:
                profiler.disable()
            best = spent if best is None or spent[0] < best[0] else best
        assert best is not None and client.lines >= calls, "not every call was answered"
        where = Path(sys.modules["intercept"].__file__ or "").parent.parent
        print(f"{where}: {best[0]:.1f} µs CPU per counted call, {best[1]:.1f} on the event loop (best of 5 rounds of {calls})")
        store.close()
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def _reply(request_id: Any) -> bytes:
    import orjson

    result = {"content": [{"type": "text", "text": "ok"}], "isError": False}
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}) + b"\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=500, help=f"groups of {IN_FLIGHT} calls per round")
    parser.add_argument("--policy", type=Path, default=HERE / "contention_counter.yaml")
    parser.add_argument("--tree", type=Path, help="the checkout whose intercept to measure (default: this one)")
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))  # bench.run
    sys.path.insert(0, str((args.tree or HERE.parent).resolve()))
    asyncio.run(_measure(args.policy, args.groups, args.profile))


if __name__ == "__main__":
    main()
