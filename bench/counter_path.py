"""Issue 9's counter target, side by side: scenario 3 of `contention.py` alone, for several trees.

16 proxies on one state dir x 8 calls in flight each call `echo` under one shared rate limit
(`contention_counter.yaml`); the trees run in turn, round after round, so they share the
machine's state. Per tree: latency percentiles pooled over the rounds, calls/s, and the proxies'
CPU per call split into the event-loop thread and the others (the store thread), read from
/proc around the measured calls.

    python bench/counter_path.py                       # this checkout
    python bench/counter_path.py --tree old=/tmp/old   # and an exported older commit
"""

from __future__ import annotations

import argparse
import compileall
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import contention  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(proxies: Sequence[contention.Proxy]) -> tuple[float, float]:
    """CPU seconds of the proxies' main threads (the event loop) and of their other threads."""
    loop = other = 0.0
    for proxy in proxies:
        pid = proxy.proc.pid
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            if int(tid) == pid:
                loop += seconds
            else:
                other += seconds
    return loop, other


class Tally:
    def __init__(self) -> None:
        self.phase = contention.Phase()
        self.loop_s = 0.0
        self.other_s = 0.0


def one_round(root: Path, tally: Tally, workdir: Path, label: str, args: argparse.Namespace) -> None:
    contention.ROOT = root  # proxies are `python -m intercept` run from this tree
    state_dir, logs = workdir / f"state-{label}", workdir / f"logs-{label}"
    logs.mkdir(parents=True, exist_ok=True)
    ids = contention.Ids()
    proxies = contention.spawn(args.proxies, contention.COUNTER_POLICY, state_dir, logs, label)
    try:
        warm = [contention.echo_calls(ids, (f"{label} warm {p} {i}" for i in range(8))) for p in range(args.proxies)]
        contention.pipelined(proxies, warm, args.in_flight, 120.0, None)
        before = thread_cpu_s(proxies)
        work = [
            contention.echo_calls(ids, (f"{label} count {p} {i}" for i in range(args.calls)))
            for p in range(args.proxies)
        ]
        contention.pipelined(proxies, work, args.in_flight, 120.0, tally.phase)
        after = thread_cpu_s(proxies)
        tally.loop_s += after[0] - before[0]
        tally.other_s += after[1] - before[1]
    finally:
        contention.close_all(proxies)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH", help="another tree to measure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--proxies", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000, help="calls per proxy per round")
    args = parser.parse_args(argv)
    trees = {"this tree": contention.REPO}
    trees.update((name, Path(path).resolve()) for name, path in (tree.split("=", 1) for tree in args.tree))
    for root in trees.values():
        compileall.compile_dir(root / "intercept", quiet=1)
    tallies = {name: Tally() for name in trees}
    with tempfile.TemporaryDirectory(prefix="intercept-counter-path-") as tmp:
        for r in range(args.rounds):
            for index, (name, root) in enumerate(trees.items()):
                one_round(root, tallies[name], Path(tmp), f"r{r}-t{index}", args)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(
        f"{args.proxies} proxies x {args.in_flight} in flight x {args.calls} calls x {args.rounds} rounds, "
        f"{os.cpu_count()} CPUs\n\n"
        "| tree | calls | p50 ms | p99 ms | max ms | calls/s | proxy CPU µs/call: event loop | other threads |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for name, tally in tallies.items():
        s = tally.phase.summary(os.cpu_count() or 1, "ok")
        calls = s["calls"]
        print(
            f"| {name} | {calls:,} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.0f} | "
            f"{s['calls_per_s']:,.0f} | {tally.loop_s * 1e6 / calls:.0f} | {tally.other_s * 1e6 / calls:.0f} |"
        )
        if s["expected"] != calls:
            print(f"  ({name}: {calls - s['expected']} answers were not a forwarded result: {tally.phase.kinds()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
