"""Benchmark intercept against a direct connection and a do-nothing Python relay, interleaved round by round.

Run `python bench/run.py` (about a minute on 2 cores) or `python bench/run.py --quick`; see bench/README.md.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_POLICY = BENCH / "allow_policy.yaml"
READ_SIZE = 1 << 20
MAX_LINE = 64 << 20
BIG_SIZE = 8 * 1024 * 1024
BASELINE = "relay"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets for every intercept configuration, relative to the null relay where it says so.
TARGET_CPU_RATIO = 1.5
TARGET_P50_RATIO = 1.5
TARGET_FIRST_ANSWER_MS = 250.0
TARGET_BIG_RATIO = 1.3


# -- what is measured ----------------------------------------------------------------------


@dataclass(frozen=True)
class Configuration:
    """One way of reaching the upstream: `argv` is spawned and spoken to over its stdin/stdout."""

    name: str
    argv: tuple[str, ...]
    description: str = ""
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class Settings:
    rounds: int = 9
    calls: int = 30_000
    seq_calls: int = 3_000
    warmup_calls: int = 300
    calls_block: int = 3_000
    seq_block: int = 100
    spawns: int = 4
    big_repeats: int = 5
    big_size: int = BIG_SIZE
    session_timeout_s: float = 120.0


QUICK = Settings(rounds=2, calls=2_000, seq_calls=300, warmup_calls=50, spawns=2, big_repeats=2, calls_block=1_000)


@dataclass
class Samples:
    """Everything measured for one configuration, over all rounds."""

    cpu_us_per_call: list[float] = field(default_factory=list)
    calls_per_s: list[float] = field(default_factory=list)
    latencies_us: list[float] = field(default_factory=list)
    first_answer_ms: list[float] = field(default_factory=list)
    big_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {
            "cpu_us_per_call": statistics.median(self.cpu_us_per_call),
            "calls_per_s": statistics.median(self.calls_per_s),
            "p50_us": percentile(self.latencies_us, 0.50),
            "p99_us": percentile(self.latencies_us, 0.99),
            "first_answer_ms": statistics.median(self.first_answer_ms),
            "big_ms": statistics.median(self.big_ms),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- configurations ------------------------------------------------------------------------


def upstream_argv() -> tuple[str, ...]:
    return (sys.executable, str(BENCH / "fast_upstream.py"))


def direct_configuration() -> Configuration:
    return Configuration("direct", upstream_argv(), "client talks to fast_upstream.py")


def relay_configuration() -> Configuration:
    argv = (sys.executable, str(BENCH / "null_relay.py"), "--", *upstream_argv())
    return Configuration("relay", argv, "null_relay.py: asyncio byte copy, no parsing")


def intercept_configuration(name: str, policy: Path, state_dir: Path, tree: Path | None = None) -> Configuration:
    """`python -m intercept` of this checkout, or of another `tree` (an exported older commit)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    start = ("-m", "intercept") if tree is None else ("-c", _RUN_FROM_TREE.format(tree=str(tree)))
    argv = (
        sys.executable, *start, "-c", str(policy), "--state-dir", str(state_dir), "--", *upstream_argv(),
    )  # fmt: skip
    return Configuration(name, argv, f"python -m intercept -c {policy.name}" + (f" (from {tree})" if tree else ""))


_RUN_FROM_TREE = "import runpy, sys; sys.path.insert(0, {tree!r}); runpy.run_module('intercept', run_name='__main__')"


def build_configurations(options: argparse.Namespace, workdir: Path) -> list[Configuration]:
    """direct, relay, intercept, then one intercept per `--also NAME=POLICY`. Add new benchmarks here."""
    configurations = [
        direct_configuration(),
        relay_configuration(),
        intercept_configuration("intercept", options.policy, workdir / "state-intercept"),
    ]
    for extra in options.also:
        name, _, policy = extra.partition("=")
        if not name or not policy or name in {c.name for c in configurations}:
            raise SystemExit(f"--also wants a new NAME=POLICY, got {extra!r}")
        configurations.append(intercept_configuration(name, Path(policy).resolve(), workdir / f"state-{name}"))
    for extra in options.tree:
        name, _, tree = extra.partition("=")
        if not name or not tree or name in {c.name for c in configurations}:
            raise SystemExit(f"--tree wants a new NAME=PATH, got {extra!r}")
        root = Path(tree).resolve()
        compileall.compile_dir(root / "intercept", quiet=1)
        configurations.append(intercept_configuration(name, options.policy, workdir / f"state-{name}", root))
    if options.only:
        wanted = set(options.only.split(","))
        configurations = [c for c in configurations if c.name in wanted]
    if not configurations:
        raise SystemExit(f"--only {options.only!r} matches no configuration")
    return configurations


# -- JSON-RPC client -----------------------------------------------------------------------


def request(request_id: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def tools_call(request_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    return request(request_id, "tools/call", {"name": tool, "arguments": arguments})


def echo_call(request_id: int) -> bytes:
    return tools_call(request_id, "echo", {"text": f"hello {request_id}"})


INITIALIZE = request(
    0,
    "initialize",
    {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
)
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Session:
    """One spawned configuration and raw pipes to it; a watchdog kills it after `timeout_s`."""

    def __init__(self, configuration: Configuration, timeout_s: float, stderr: IO[bytes]) -> None:
        env = None if configuration.env is None else {**os.environ, **configuration.env}
        self.proc = subprocess.Popen(
            configuration.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, bufsize=0, env=env,
            cwd=REPO,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.w = self.proc.stdin.fileno()
        self.r = self.proc.stdout.fileno()
        self.buffer = bytearray()
        self.scratch = bytearray(READ_SIZE)  # reused: a fresh 1 MiB bytes per read would mmap and fault
        self.view = memoryview(self.scratch)
        self.next_id = 1
        self._watchdog = threading.Timer(timeout_s, self.proc.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def send(self, data: bytes) -> None:
        write_all(self.w, data)

    def _fill(self) -> int:
        """Read what is available into the scratch buffer; EOF (crash or watchdog) raises."""
        n = os.readv(self.r, [self.scratch])
        if not n:
            raise RuntimeError(f"{self.proc.args[:3]}... closed its stdout")
        return n

    def read_line(self) -> bytes:
        """The next response line (without LF)."""
        while (newline := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > MAX_LINE:
                raise RuntimeError(f"response line longer than {MAX_LINE} bytes")
            self.buffer += self.view[: self._fill()]
        line = bytes(self.buffer[:newline])
        del self.buffer[: newline + 1]
        return line

    def read_lines_raw(self, count: int) -> list[bytes]:
        """Read until `count` more newlines arrived; the raw chunks, unparsed (cheap for the client)."""
        chunks = [bytes(self.buffer)] if self.buffer else []
        seen = self.buffer.count(b"\n")
        self.buffer.clear()
        while seen < count:
            chunk = bytes(self.view[: self._fill()])
            seen += chunk.count(b"\n")
            chunks.append(chunk)
        if seen > count:
            raise RuntimeError(f"got {seen} lines where {count} were expected")
        return chunks

    def skip_line(self, limit: int) -> tuple[int, bytes]:
        """Read one line of at most `limit` bytes through the scratch buffer without keeping it.

        Returns its length with the LF and its first 256 bytes.
        """
        if self.buffer:
            raise RuntimeError("skip_line needs an empty read buffer")
        scratch = self.scratch
        head = b""
        total = 0
        while total <= limit:
            n = self._fill()
            if not head:
                head = bytes(scratch[: min(n, 256)])
            newline = scratch.find(b"\n", 0, n)
            if newline >= 0:
                self.buffer += scratch[newline + 1 : n]
                return total + newline + 1, head
            total += n
        raise RuntimeError(f"line longer than {limit} bytes")

    def call(self, data: bytes) -> dict[str, Any]:
        self.send(data)
        return json.loads(self.read_line())

    def close(self) -> None:
        """EOF on its stdin, then reap it; raises if it did not exit cleanly."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        _, status, _ = os.wait4(self.proc.pid, 0)
        self._watchdog.cancel()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.proc.stdout.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.proc.args[:3]}... exited with {self.proc.returncode}")

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()
        self._watchdog.cancel()


@contextmanager
def session(configuration: Configuration, settings: Settings, stderr: IO[bytes]) -> Iterator[Session]:
    s = Session(configuration, settings.session_timeout_s, stderr)
    try:
        yield s
    except BaseException:
        s.kill()
        raise
    s.close()


def handshake(s: Session) -> None:
    reply = s.call(INITIALIZE)
    if "result" not in reply:
        raise RuntimeError(f"initialize failed: {reply}")
    s.send(INITIALIZED)
    tools = s.call(request(s.new_id(), "tools/list"))
    if "echo" not in {t["name"] for t in tools["result"]["tools"]}:
        raise RuntimeError(f"tools/list lacks echo: {tools}")


# -- CPU of a process tree -----------------------------------------------------------------


def _sched_ns(task_dir: str) -> int:
    """se.sum_exec_runtime of one task (CONFIG_SCHED_DEBUG), in ns."""
    with open(f"{task_dir}/sched") as sched:
        for line in sched:
            if line.startswith("se.sum_exec_runtime"):
                return round(float(line.split(":")[1]) * 1e6)
    raise OSError("no se.sum_exec_runtime")


def _stat_fields(path: str) -> list[str]:
    """Fields of a /proc stat file from field 3 (state) on; the command name may hold spaces."""
    with open(path) as stat:
        return stat.read().rsplit(")", 1)[1].split()


def _use_sched() -> bool:
    try:
        _sched_ns(f"/proc/self/task/{threading.get_native_id()}")
    except (OSError, ValueError):
        return False
    return True


USE_SCHED = _use_sched()
CPU_METHOD = (
    "sum of se.sum_exec_runtime in /proc/<pid>/task/<tid>/sched (ns)"
    if USE_SCHED
    else f"utime+stime in /proc/<pid>/stat (1/{CLK_TCK} s ticks)"
)


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(f"/proc/{entry.name}/stat")[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_ns(pids: Sequence[int]) -> int:
    """CPU time (user + system) consumed so far by the given processes, all their threads."""
    total = 0
    for pid in pids:
        if USE_SCHED:
            total += sum(_sched_ns(task.path) for task in os.scandir(f"/proc/{pid}/task"))
        else:
            fields = _stat_fields(f"/proc/{pid}/stat")
            total += (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK
    return total


# -- metrics -------------------------------------------------------------------------------


def first_answer_ms(configuration: Configuration, settings: Settings, stderr: IO[bytes]) -> float:
    """ms from spawning a fresh process to the complete answer to `initialize` sent right after."""
    start = time.perf_counter()
    with session(configuration, settings, stderr) as s:
        s.send(INITIALIZE)
        line = s.read_line()
        elapsed = (time.perf_counter() - start) * 1e3
        if b'"result"' not in line:
            raise RuntimeError(f"initialize failed: {line[:200]!r}")
    return elapsed


def pipelined(s: Session, calls: int) -> tuple[int, float]:
    """(CPU ns of the whole process tree, wall s) for `calls` back-to-back tools/call requests."""
    first = s.next_id + 1
    blob = b"".join(echo_call(i) for i in range(first, first + calls))
    s.next_id += calls
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            write_all(s.w, blob)
        except BaseException as exc:
            errors.append(exc)

    tree = process_tree(s.proc.pid)
    thread = threading.Thread(target=writer, daemon=True)
    cpu_before = tree_cpu_ns(tree)
    start = time.perf_counter()
    thread.start()
    chunks = s.read_lines_raw(calls)
    elapsed = time.perf_counter() - start
    cpu_after = tree_cpu_ns(tree)
    thread.join()
    if errors:
        raise errors[0]
    answered = b"".join(chunks).count(b'"isError":false')
    if answered != calls:
        raise RuntimeError(f"only {answered} of {calls} pipelined calls succeeded")
    return cpu_after - cpu_before, elapsed


def sequential_us(s: Session, calls: int) -> list[float]:
    """µs per sequential tools/call (send one, wait for its answer)."""
    requests = [echo_call(s.new_id()) for _ in range(calls)]
    samples = []
    clock, send, read_line = time.perf_counter_ns, s.send, s.read_line
    for data in requests:
        start = clock()
        send(data)
        line = read_line()
        samples.append((clock() - start) / 1e3)
        if b'"isError":false' not in line:
            raise RuntimeError(f"call failed: {line[:200]!r}")
    return samples


def big_ms(s: Session, size: int) -> float:
    """ms to get one tools/call result of `size` bytes, from sending the request to its last byte."""
    data = tools_call(s.new_id(), "big", {"size": size})
    start = time.perf_counter()
    s.send(data)
    received, head = s.skip_line(size + 4096)
    elapsed = (time.perf_counter() - start) * 1e3
    if received < size or not head.startswith(b'{"jsonrpc"') or b'"result"' not in head:
        raise RuntimeError(f"big result broken: {received} bytes, starts {head[:200]!r}")
    return elapsed


def blocks(total: int, size: int) -> list[int]:
    """`total` split into blocks of `size` (the last one shorter)."""
    return [min(size, total - done) for done in range(0, total, size)]


def measure_round(
    configurations: Sequence[Configuration],
    settings: Settings,
    results: dict[str, Samples],
    stderr: dict[str, IO[bytes]],
) -> None:
    """One round of every metric for every configuration, alternating between them in small blocks.

    Fresh spawns alternate; then one long session per configuration stays open (idle ones cost
    nothing) and pipelined blocks, sequential blocks and big results alternate between them, so a
    change in machine load lasting a few hundred ms hits every configuration alike.
    """
    for _ in range(settings.spawns):
        for c in configurations:
            results[c.name].first_answer_ms.append(first_answer_ms(c, settings, stderr[c.name]))
    with ExitStack() as stack:
        sessions = {c.name: stack.enter_context(session(c, settings, stderr[c.name])) for c in configurations}
        for s in sessions.values():
            handshake(s)
            sequential_us(s, settings.warmup_calls)
        cpu_ns = dict.fromkeys(sessions, 0)
        wall_s = dict.fromkeys(sessions, 0.0)
        for calls in blocks(settings.calls, settings.calls_block):
            for name, s in sessions.items():
                cpu, wall = pipelined(s, calls)
                cpu_ns[name] += cpu
                wall_s[name] += wall
        for name in sessions:
            results[name].cpu_us_per_call.append(cpu_ns[name] / 1e3 / settings.calls)
            results[name].calls_per_s.append(settings.calls / wall_s[name])
        for calls in blocks(settings.seq_calls, settings.seq_block):
            for name, s in sessions.items():
                results[name].latencies_us.extend(sequential_us(s, calls))
        for _ in range(settings.big_repeats):
            for name, s in sessions.items():
                results[name].big_ms.append(big_ms(s, settings.big_size))


Measure = Callable[[Sequence[Configuration], Settings, dict[str, Samples], dict[str, IO[bytes]]], None]


def run(
    configurations: Sequence[Configuration], settings: Settings, logs: Path, measure: Measure = measure_round
) -> dict[str, Samples]:
    """`settings.rounds` rounds; the configuration order rotates each round to cancel order effects."""
    results = {c.name: Samples() for c in configurations}
    log_paths = {c.name: logs / f"{c.name}.stderr" for c in configurations}
    with ExitStack() as stack:
        stderr = {name: stack.enter_context(open(path, "ab")) for name, path in log_paths.items()}
        for round_index in range(settings.rounds):
            shift = round_index % len(configurations)
            started = time.perf_counter()
            try:
                measure([*configurations[shift:], *configurations[:shift]], settings, results, stderr)
            except Exception:
                for name, path in log_paths.items():
                    stderr[name].flush()
                    print(f"--- stderr of {name} ({path}):", file=sys.stderr)
                    print(path.read_text(errors="replace")[-4000:], file=sys.stderr)
                raise
            elapsed = time.perf_counter() - started
            print(f"round {round_index + 1}/{settings.rounds}: {elapsed:.1f}s", file=sys.stderr)
    return results


# -- report --------------------------------------------------------------------------------

COLUMNS = ("configuration", "CPU µs/call", "calls/s", "p50 µs", "p99 µs", "first answer ms", "8 MiB ms")


def table(summaries: dict[str, dict[str, float]], big_size: int) -> str:
    columns = list(COLUMNS)
    if big_size != BIG_SIZE:
        columns[-1] = f"{big_size} B ms"
    rows = [columns, ["---"] + ["---:"] * (len(columns) - 1)]
    for name, s in summaries.items():
        rows.append([
            name,
            f"{s['cpu_us_per_call']:.1f}",
            f"{s['calls_per_s']:,.0f}",
            f"{s['p50_us']:.0f}",
            f"{s['p99_us']:.0f}",
            f"{s['first_answer_ms']:.0f}",
            f"{s['big_ms']:.1f}",
        ])  # fmt: skip
    base = summaries.get(BASELINE)
    for name, s in summaries.items():
        if base is None or name in ("direct", BASELINE):
            continue
        rows.append([
            f"{name} / {BASELINE}",
            f"{s['cpu_us_per_call'] / base['cpu_us_per_call']:.2f}x",
            "",
            f"{s['p50_us'] / base['p50_us']:.2f}x",
            "",
            "",
            f"{s['big_ms'] / base['big_ms']:.2f}x",
        ])  # fmt: skip
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def target_checks(summaries: dict[str, dict[str, float]]) -> list[str]:
    base = summaries.get(BASELINE)
    lines = []
    for name, s in summaries.items():
        if base is None or name in ("direct", BASELINE):
            continue
        checks = [
            ("CPU/call", s["cpu_us_per_call"] / base["cpu_us_per_call"], TARGET_CPU_RATIO, "x relay"),
            ("p50", s["p50_us"] / base["p50_us"], TARGET_P50_RATIO, "x relay"),
            ("first answer", s["first_answer_ms"], TARGET_FIRST_ANSWER_MS, " ms"),
            ("8 MiB", s["big_ms"] / base["big_ms"], TARGET_BIG_RATIO, "x relay"),
        ]
        for label, value, limit, unit in checks:
            verdict = "ok" if value <= limit else "MISSED"
            lines.append(f"- {name} {label}: {value:.2f}{unit} (target <= {limit:g}{unit}) {verdict}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (small counts, 2 rounds)")
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY, help="policy for the `intercept` configuration")
    parser.add_argument(
        "--also", action="append", default=[], metavar="NAME=POLICY", help="add an intercept configuration (repeatable)"
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="intercept from another tree, e.g. an older commit",
    )
    parser.add_argument("--only", help="comma-separated configuration names to run (default: all)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument("--calls", type=int, help="pipelined calls per round (CPU/call, calls/s)")
    parser.add_argument("--seq-calls", type=int, help="sequential calls per round (p50, p99)")
    parser.add_argument("--spawns", type=int, help="fresh spawns per round (first answer)")
    parser.add_argument("--big-repeats", type=int, help="8 MiB results per round")
    parser.add_argument("--json", type=Path, help="also write raw samples and summaries to this file")
    parser.add_argument(
        "--pin", help="run the client and every child on these CPUs only, e.g. `1` (stable latency on small VMs)"
    )
    options = parser.parse_args(argv)
    options.policy = options.policy.resolve()
    return options


def settings_from(options: argparse.Namespace) -> Settings:
    base = QUICK if options.quick else Settings()
    overrides = {
        "rounds": options.rounds,
        "calls": options.calls,
        "seq_calls": options.seq_calls,
        "spawns": options.spawns,
        "big_repeats": options.big_repeats,
    }
    values = {**asdict(base), **{k: v for k, v in overrides.items() if v is not None}}
    if min(values["rounds"], values["calls"], values["seq_calls"], values["spawns"], values["big_repeats"]) < 1:
        raise SystemExit("counts must be at least 1")
    return Settings(**values)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    settings = settings_from(options)
    if options.pin:
        os.sched_setaffinity(0, {int(cpu) for cpu in options.pin.split(",")})  # children inherit it
    # An installed package has its bytecode cached; with PYTHONDONTWRITEBYTECODE set (some shells
    # and CI images) every spawn would recompile intercept's modules, ~30 ms of "first answer".
    compileall.compile_dir(REPO / "intercept", quiet=1)
    with tempfile.TemporaryDirectory(prefix="intercept-bench-") as tmp:
        workdir = Path(tmp)
        configurations = build_configurations(options, workdir)
        results = run(configurations, settings, workdir)
    summaries = {name: samples.summary() for name, samples in results.items()}
    print(
        f"{datetime.date.today().isoformat()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{settings.rounds} rounds x ({settings.calls} pipelined + {settings.seq_calls} sequential calls, "
        f"{settings.spawns} spawns, {settings.big_repeats} big results)"
    )
    pinned = f"; pinned to CPUs {sorted(os.sched_getaffinity(0))}" if options.pin else ""
    print(f"CPU: {CPU_METHOD}{pinned}\n")
    print(table(summaries, settings.big_size))
    checks = target_checks(summaries)
    if checks:
        print("\nTargets:")
        print("\n".join(checks))
    if options.json:
        dump = {
            "settings": asdict(settings),
            "configurations": [asdict(c) for c in configurations],
            "summaries": summaries,
            "samples": {name: asdict(samples) for name, samples in results.items()},
        }
        options.json.write_text(json.dumps(dump, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
