"""Issue 9's speed targets: many real proxies on one state dir, an approval table at scale, a lock.

Scenarios (all proxies are `python -m intercept ... -- bench/fast_upstream.py`, driven over pipes
by one cheap single-threaded client that keeps a fixed number of calls in flight per proxy):

1. requests: the state dir is seeded with 50k pending approvals of other calls; 16 proxies x 8 in
   flight send `echo` calls (require_approval) with distinct arguments -> -32003 each. Also the
   store check itself, in-process (expire_stale/consume/find_denied/find_pending in one
   transaction at 50k records).
2. consumes: the requests of scenario 1 are approved in-process, then replayed by 16 proxies x 8
   in flight (each proxy replays another proxy's calls): each consumes its approval and is forwarded.
3. counter: 16 proxies x 8 in flight call `echo` under `rate_limit: 1000000/hour` (one shared row).
4. external lock: one proxy; the bench holds BEGIN IMMEDIATE on the state db while a client sends
   pings and allowed calls one at a time, with one approval-gated call always pending.

Run `python bench/contention.py` (2-2.5 minutes on 2 cores) or `--quick` (a smoke run); see
bench/README.md, "Reliability (issue 9)".
"""

from __future__ import annotations

import argparse
import collections
import compileall
import datetime
import importlib
import json
import math
import os
import platform
import random
import resource
import secrets
import selectors
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# The intercept to measure (proxies and the in-process store work): this checkout, or another one
# given by $INTERCEPT_BENCH_ROOT (e.g. an exported older commit, to compare before and after).
ROOT = Path(os.environ.get("INTERCEPT_BENCH_ROOT") or REPO).resolve()
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from run import INITIALIZE, INITIALIZED, percentile, process_tree, request, tools_call, tree_cpu_ns  # noqa: E402

from intercept.store.approvals import ApprovalRecord, ApprovalStore  # noqa: E402
from intercept.store.database import connect, database_path  # noqa: E402
from intercept.store.timestamps import rfc3339  # noqa: E402

APPROVAL_POLICY = BENCH / "contention_approval.yaml"
COUNTER_POLICY = BENCH / "contention_counter.yaml"
UPSTREAM = (sys.executable, str(BENCH / "fast_upstream.py"))
READ_SIZE = 1 << 16
GATED_TOOL = "echo"  # require_approval in contention_approval.yaml, rate_limit in contention_counter.yaml
LOCK_WORDS = (b"unavailable", b"locked")  # how a call refused for the store reads (reply or log line)

# Targets (issue 9).
TARGET_CHECK_P50_MS = 1.0
TARGET_CONSUME_P99_OVER_P50 = 10.0
TARGET_COUNTER_P99_MS = 25.0
TARGET_LOCKED_OVER_NORMAL = 2.0
STORE_WAIT_S = 2.0  # intercept.store.worker.STORE_WAIT_S: a gated call must fail closed about then
AS_PROXY = "--as-proxy"  # `contention.py --as-proxy TRACE_FILE <intercept args>`: a traced proxy
TRACE: Path | None = None  # set by --trace-store: proxies record their store transactions here


@dataclass(frozen=True)
class Settings:
    rounds: int = 3
    proxies: int = 16
    in_flight: int = 8
    records: int = 50_000
    calls_per_proxy: int = 500  # per round, for scenarios 1-3
    warmup_per_proxy: int = 8
    check_samples: int = 2_000
    lock_s: float = 10.0
    normal_samples: int = 300  # pings and allowed calls before each lock, and as many after it
    phase_timeout_s: float = 120.0


QUICK = Settings(rounds=2, proxies=4, records=5_000, calls_per_proxy=100, check_samples=500, lock_s=3.0,
                 normal_samples=100)  # fmt: skip


# -- one proxy over pipes ------------------------------------------------------------------


class Proxy:
    """A spawned `python -m intercept` with raw pipes; its stderr goes to a file (lock denials are
    counted there)."""

    def __init__(self, policy: Path, state_dir: Path, stderr_path: Path) -> None:
        launcher = [sys.executable, "-m", "intercept"]
        if TRACE is not None:
            launcher = [sys.executable, __file__, AS_PROXY, str(TRACE)]
        argv = [*launcher, "-c", str(policy), "--state-dir", str(state_dir), "--", *UPSTREAM]
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # closed in close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     bufsize=0, cwd=ROOT)  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.w = self.proc.stdin.fileno()
        self.r = self.proc.stdout.fileno()
        self.pending = b""
        self.todo: collections.deque[tuple[int, bytes]] = collections.deque()
        self.sent: dict[int, int] = {}  # request id -> perf_counter_ns at send
        self.tree: list[int] = []

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view) :]

    def read_available(self) -> list[bytes]:
        """The complete lines of one read (call when readable); EOF raises."""
        chunk = os.read(self.r, READ_SIZE)
        if not chunk:
            raise RuntimeError(f"proxy {self.proc.pid} closed its stdout; stderr in {self.stderr_path}")
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()
        return lines

    def read_line(self, timeout_s: float) -> bytes:
        lines: list[bytes] = []
        return self.read_lines(1, timeout_s, lines)[0]

    def read_lines(self, count: int, timeout_s: float, into: list[bytes]) -> list[bytes]:
        """Read until `into` holds `count` lines (more may arrive in the last read: kept)."""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.r, selectors.EVENT_READ)
            while len(into) < count:
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"proxy {self.proc.pid}: no answer within {timeout_s} s")
                into.extend(self.read_available())
        return into

    def send_next(self, count: int) -> None:
        """Send up to `count` more queued requests in one write, stamping each."""
        parts = []
        now = time.perf_counter_ns()
        for _ in range(min(count, len(self.todo))):
            request_id, data = self.todo.popleft()
            self.sent[request_id] = now
            parts.append(data)
        if parts:
            self.send(b"".join(parts))

    def stderr_lock_lines(self, since: int = 0) -> tuple[int, int]:
        """(lines naming an unavailable/locked store after byte `since`, the file's size)."""
        data = self.stderr_path.read_bytes()
        lines = data[since:].splitlines()
        return sum(1 for line in lines if any(word in line for word in LOCK_WORDS)), len(data)

    def close(self, deadline: float) -> None:
        """Reap it after its stdin was closed; killed if it has not exited by `deadline` (monotonic)."""
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


def spawn(count: int, policy: Path, state_dir: Path, logs: Path, label: str) -> list[Proxy]:
    """`count` proxies, all spawned before any is waited for, each past its handshake (listing
    included, so no call waits for the proxy's own listing)."""
    proxies = [Proxy(policy, state_dir, logs / f"{label}-{i}.stderr") for i in range(count)]
    try:
        for p in proxies:
            p.send(INITIALIZE)
        for p in proxies:
            if b'"result"' not in p.read_line(60):
                raise RuntimeError(f"initialize failed; see {p.stderr_path}")
            p.send(INITIALIZED + request(1, "tools/list"))
        for p in proxies:
            if b'"tools"' not in p.read_line(60):
                raise RuntimeError(f"tools/list failed; see {p.stderr_path}")
            p.tree = process_tree(p.proc.pid)
    except BaseException:
        close_all(proxies)
        raise
    return proxies


def close_all(proxies: Sequence[Proxy], timeout_s: float = 15.0) -> None:
    """EOF to every proxy at once, then reap them all (killed after `timeout_s` in all)."""
    for p in proxies:
        if p.proc.stdin is not None and not p.proc.stdin.closed:
            p.proc.stdin.close()
    deadline = time.monotonic() + timeout_s
    for p in proxies:
        p.close(deadline)


# -- pipelined calls through many proxies --------------------------------------------------


@dataclass
class Phase:
    """One scenario's samples, pooled over rounds."""

    latencies_ms: dict[str, list[float]] = field(default_factory=dict)  # by kind of answer (see classify)
    examples: list[str] = field(default_factory=list)  # a few unexpected replies
    wall_s: float = 0.0
    proxy_cpu_s: float = 0.0  # intercept processes (all threads)
    upstream_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    stderr_lock_lines: int = 0
    windows: list[tuple[float, float]] = field(default_factory=list)  # (start, end) perf_counter, per round

    def kinds(self) -> dict[str, int]:
        return {kind: len(values) for kind, values in self.latencies_ms.items()}

    def summary(self, cpus: int, expected: str) -> dict[str, float]:
        """Latencies of the answers of the `expected` kind; rates and CPU over all calls."""
        calls = sum(self.kinds().values())
        wanted = self.latencies_ms.get(expected) or [math.nan]
        return {
            "calls": calls,
            "expected": len(self.latencies_ms.get(expected, ())),
            "p50_ms": percentile(wanted, 0.50),
            "p99_ms": percentile(wanted, 0.99),
            "max_ms": max(wanted),
            "calls_per_s": calls / self.wall_s,
            "lock_denied": len(self.latencies_ms.get("lock_denied", ())),
            "stderr_lock_lines": self.stderr_lock_lines,
            "proxy_cpu_ms_per_call": self.proxy_cpu_s * 1e3 / calls,
            "busy_fraction": (self.proxy_cpu_s + self.upstream_cpu_s + self.client_cpu_s) / (self.wall_s * cpus),
            "client_cpu_fraction": self.client_cpu_s / self.wall_s,
        }


def classify(message: dict[str, Any], line: bytes) -> str:
    error = message.get("error")
    if isinstance(error, dict):
        if error.get("code") == -32003:
            return "approval_required"
        return "lock_denied" if any(word in line for word in LOCK_WORDS) else "error"
    result = message.get("result")
    if isinstance(result, dict) and result.get("isError") is False:
        return "ok"
    return "lock_denied" if any(word in line for word in LOCK_WORDS) else "denied"


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_split(proxies: Sequence[Proxy]) -> tuple[float, float]:
    """(CPU s of the intercept processes, of everything below them) so far."""
    own = sum(tree_cpu_ns([p.proc.pid]) for p in proxies)
    return own / 1e9, (sum(tree_cpu_ns(p.tree) for p in proxies) - own) / 1e9


def pipelined(
    proxies: Sequence[Proxy],
    work: Sequence[Iterable[tuple[int, bytes]]],
    in_flight: int,
    timeout_s: float,
    phase: Phase | None,
    on_reply: Callable[[dict[str, Any], str], None] | None = None,
) -> None:
    """Send each proxy its `work` (id, line) keeping `in_flight` outstanding; latency of each reply
    from its send to the read that brought it. `phase=None`: a warm-up, nothing recorded."""
    selector = selectors.DefaultSelector()
    remaining = 0
    for p, items in zip(proxies, work, strict=True):
        p.todo.extend(items)
        remaining += len(p.todo)
        selector.register(p.r, selectors.EVENT_READ, p)
    stderr_sizes = [p.stderr_lock_lines()[1] for p in proxies]
    cpu_before = cpu_split(proxies)
    client_before = client_cpu_s()
    start = time.perf_counter()
    for p in proxies:
        p.send_next(in_flight)
    deadline = start + timeout_s
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    examples: list[str] = []
    try:
        while remaining:
            events = selector.select(max(0.0, deadline - time.perf_counter()))
            if not events:
                raise TimeoutError(f"{remaining} answers missing after {timeout_s} s")
            for key, _ in events:
                p = key.data
                lines = p.read_available()
                arrived = time.perf_counter_ns()
                for line in lines:
                    message = orjson.loads(line)
                    kind = classify(message, line)
                    latencies[kind].append((arrived - p.sent.pop(message["id"])) / 1e6)
                    if kind in ("error", "denied") and len(examples) < 3:
                        examples.append(line[:300].decode(errors="replace"))
                    if on_reply is not None:
                        on_reply(message, kind)
                remaining -= len(lines)
                p.send_next(len(lines))
    finally:
        selector.close()
    wall = time.perf_counter() - start
    client = client_cpu_s() - client_before
    cpu_after = cpu_split(proxies)
    if phase is None:
        return
    phase.windows.append((start, start + wall))
    for kind, values in latencies.items():
        phase.latencies_ms.setdefault(kind, []).extend(values)
    phase.examples += examples[: 3 - len(phase.examples)]
    phase.wall_s += wall
    phase.proxy_cpu_s += cpu_after[0] - cpu_before[0]
    phase.upstream_cpu_s += cpu_after[1] - cpu_before[1]
    phase.client_cpu_s += client
    phase.stderr_lock_lines += sum(p.stderr_lock_lines(size)[0] for p, size in zip(proxies, stderr_sizes, strict=True))


class Ids:
    def __init__(self) -> None:
        self.next = 1000

    def take(self) -> int:
        self.next += 1
        return self.next


def echo_calls(ids: Ids, texts: Iterable[str]) -> list[tuple[int, bytes]]:
    return [(i, tools_call(i, GATED_TOOL, {"text": text})) for text in texts for i in (ids.take(),)]


# -- the state dir -------------------------------------------------------------------------


def seed(state_dir: Path, count: int) -> float:
    """`count` pending approvals of other calls (as the gate writes them), one transaction; seconds."""
    start = time.perf_counter()
    connection = connect(state_dir)
    store = ApprovalStore(connection)
    now = time.time()
    rng = random.Random(9)
    with store.transaction():
        for n in range(count):
            created = now - rng.uniform(0, 1800)
            arguments = json.dumps({"path": f"/srv/data/file-{n}.txt", "mode": "w"})
            store.insert(ApprovalRecord(
                id="apr_" + secrets.token_hex(16), fingerprint=secrets.token_hex(32), server="other-server",
                tool="write_file", args_hash=secrets.token_hex(32), args_redacted=arguments,
                rule="writes need a human", rule_digest="0" * 64, policy_revision="1" * 64, status="pending",
                timeout_s=3600.0, created_at=rfc3339(created), expires_at=rfc3339(created + 3600.0),
                args_exact=arguments, command='["other-server"]',
            ))  # fmt: skip
    connection.close()
    return time.perf_counter() - start


def time_store_check(state_dir: Path, samples: int) -> dict[str, list[float]]:
    """ms per gate transaction, in-process: the check alone (a new call: four lookups, nothing
    found), the check of a pending call (found by find_pending), and check + insert (a request)."""
    connection = connect(state_dir)
    store = ApprovalStore(connection)
    pending = [row[0] for row in connection.execute(
        "SELECT fingerprint FROM approvals WHERE status = 'pending' ORDER BY random() LIMIT ?", (samples,)
    )]  # fmt: skip
    results: dict[str, list[float]] = {"check (new call)": [], "check (pending call)": [], "check + insert": []}
    clock = time.perf_counter_ns
    for n in range(samples):
        now = time.time()
        for label, fingerprint in (("check (new call)", secrets.token_hex(32)),
                                   ("check (pending call)", pending[n % len(pending)])):  # fmt: skip
            start = clock()
            with store.transaction():
                store.expire_stale(now, fingerprint)
                store.consume(fingerprint, now)
                store.find_denied(fingerprint, now)
                store.find_pending(fingerprint, now, now - 3600.0)
            results[label].append((clock() - start) / 1e6)
        fingerprint = secrets.token_hex(32)
        record = ApprovalRecord(
            id="apr_" + secrets.token_hex(16), fingerprint=fingerprint, server="bench-check", tool="echo",
            args_hash=secrets.token_hex(32), args_redacted='{"text": "x"}', rule="r", rule_digest="0" * 64,
            policy_revision="1" * 64, status="pending", timeout_s=3600.0, created_at=rfc3339(now),
            expires_at=rfc3339(now + 3600.0), args_exact='{"text": "x"}',
        )  # fmt: skip
        start = clock()
        with store.transaction():
            store.expire_stale(now, fingerprint)
            store.consume(fingerprint, now)
            store.find_denied(fingerprint, now)
            store.find_pending(fingerprint, now, now - 3600.0)
            store.insert(record)
        results["check + insert"].append((clock() - start) / 1e6)
    connection.close()
    return results


def approve(state_dir: Path, approval_ids: Sequence[str]) -> float:
    """Approve every id through the store API (as `intercept approvals approve` does), one
    transaction; seconds."""
    start = time.perf_counter()
    connection = connect(state_dir)
    store = ApprovalStore(connection)
    now = time.time()
    with store.transaction():
        for approval_id in approval_ids:
            store.decide(approval_id, True, "bench", None, now)
    connection.close()
    return time.perf_counter() - start


# -- scenario 4: an external write lock ----------------------------------------------------


@dataclass
class LockSamples:
    ping_normal_ms: list[float] = field(default_factory=list)
    allowed_normal_ms: list[float] = field(default_factory=list)
    ping_locked_ms: list[float] = field(default_factory=list)
    allowed_locked_ms: list[float] = field(default_factory=list)
    gated_locked: list[tuple[float, str]] = field(default_factory=list)  # (s until answered, kind)
    gated_at_release: list[tuple[float, str]] = field(default_factory=list)
    gated_after_ms: list[float] = field(default_factory=list)  # a new gated call once the lock is gone
    stderr_lock_lines: int = 0


class Sequential:
    """One request at a time on one proxy; replies to other ids (the pending gated call) go to
    `on_other` with the time they arrived."""

    def __init__(self, proxy: Proxy, ids: Ids, on_other: Callable[[dict[str, Any], bytes, float], None]) -> None:
        self.proxy = proxy
        self.ids = ids
        self.on_other = on_other
        self.lines: list[bytes] = []

    def drain(self, wanted: int | None = None) -> bytes | None:
        found = None
        arrived = time.perf_counter()
        for line in self.lines:
            message = orjson.loads(line)
            if message.get("id") == wanted:
                found = line
            else:
                self.on_other(message, line, arrived)
        self.lines.clear()
        return found

    def roundtrip(self, data: bytes, request_id: int, timeout_s: float = 30.0) -> float:
        """ms from sending `data` to its reply."""
        start = time.perf_counter_ns()
        self.proxy.send(data)
        while True:
            self.proxy.read_lines(1, timeout_s, self.lines)
            if self.drain(request_id) is not None:
                return (time.perf_counter_ns() - start) / 1e6

    def ping(self) -> float:
        request_id = self.ids.take()
        return self.roundtrip(request(request_id, "ping"), request_id)

    def allowed(self) -> float:
        request_id = self.ids.take()
        return self.roundtrip(tools_call(request_id, "big", {"size": 10}), request_id)


def lock_round(state_dir: Path, logs: Path, label: str, settings: Settings, ids: Ids, out: LockSamples) -> None:
    (proxy,) = spawn(1, APPROVAL_POLICY, state_dir, logs, label)
    try:
        gated: dict[int, float] = {}  # id -> perf_counter at send
        answered: list[tuple[int, float, str]] = []

        def on_other(message: dict[str, Any], line: bytes, arrived: float) -> None:
            answered.append((message["id"], arrived - gated.pop(message["id"]), classify(message, line)))

        def send_gated() -> int:
            request_id = ids.take()
            gated[request_id] = time.perf_counter()
            proxy.send(tools_call(request_id, GATED_TOOL, {"text": f"{label} gated {request_id}"}))
            return request_id

        client = Sequential(proxy, ids, on_other)
        for _ in range(20):  # warm-up: the store connection is open, the paths are hot
            client.ping()
            client.allowed()
        client.roundtrip(tools_call(i := ids.take(), GATED_TOOL, {"text": f"{label} warm"}), i)
        for _ in range(settings.normal_samples):
            out.ping_normal_ms.append(client.ping())
            out.allowed_normal_ms.append(client.allowed())
        _, stderr_size = proxy.stderr_lock_lines()

        locker = sqlite3.connect(database_path(state_dir), isolation_level=None, timeout=30)
        locker.execute("BEGIN IMMEDIATE")  # the write lock, held until the ROLLBACK below
        locked_at = time.perf_counter()
        try:
            send_gated()
            while time.perf_counter() - locked_at < settings.lock_s:
                out.ping_locked_ms.append(client.ping())
                out.allowed_locked_ms.append(client.allowed())
                if not gated:  # the previous gated call was answered: keep one pending
                    send_gated()
        finally:
            locker.execute("ROLLBACK")
            released_at = time.perf_counter()
            locker.close()
        out.gated_locked += [(s, kind) for _, s, kind in answered]
        answered.clear()
        if gated:  # sent less than the store wait before the release: answered after it
            (sent_at,) = gated.values()
            proxy.read_lines(1, 10, client.lines)
            client.drain()
            out.gated_at_release += [(s, f"{kind}, sent {released_at - sent_at:.1f} s before the release")
                                     for _, s, kind in answered]  # fmt: skip
        request_id = ids.take()
        out.gated_after_ms.append(client.roundtrip(tools_call(request_id, GATED_TOOL, {"text": f"{label} after"}),
                                                   request_id))  # fmt: skip
        for _ in range(settings.normal_samples):
            out.ping_normal_ms.append(client.ping())
            out.allowed_normal_ms.append(client.allowed())
        out.stderr_lock_lines += proxy.stderr_lock_lines(stderr_size)[0]
    finally:
        close_all([proxy])


# -- --trace-store: where a proxy's store time goes ----------------------------------------


def install_trace(path: str) -> None:
    """Wrap the proxy's write transactions and job starts to append one line each to `path`:
    `txn KIND asked waited held cpu runq` (s: BEGIN IMMEDIATE asked at, its wait, BEGIN..COMMIT,
    this thread's CPU and run-queue wait in that span) and `start asked since` (a decided call's
    job starting `since` s after its decision began). Diagnosis only: it patches intercept's
    internals (by name; what it cannot find it says and leaves alone)."""
    import contextlib

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    clock, cpu = time.perf_counter, time.thread_time

    def emit(*fields: object) -> None:
        os.write(fd, (" ".join(map(str, fields)) + "\n").encode())

    def runq() -> float:
        with open("/proc/thread-self/schedstat") as stat:  # run time, run-queue wait (ns), slices
            return int(stat.read().split()[1]) / 1e9

    def module(name: str) -> Any:
        try:
            return importlib.import_module(name)
        except ImportError:  # a module of another intercept version
            return None

    def trace_transactions(found: Any, kind: str) -> bool:
        original = getattr(found, "write_transaction", None)
        if original is None:
            return False

        @contextlib.contextmanager
        def traced(connection: sqlite3.Connection, store: str) -> Any:
            asked = clock()
            with original(connection, store):
                got, cpu_at, runq_at = clock(), cpu(), runq()
                yield
            emit("txn", kind, asked, got - asked, clock() - got, cpu() - cpu_at, runq() - runq_at)

        found.write_transaction = traced
        return True

    approvals_traced = trace_transactions(module("intercept.store.approvals"), "approval")
    counters_traced = trace_transactions(module("intercept.counters.store"), "counter")
    old_counters = module("intercept.store.counters")  # before the counters package: begin/commit
    store_class: Any = getattr(old_counters, "CounterStore", None)
    if not counters_traced and store_class is not None and hasattr(store_class, "begin"):
        begin, commit = store_class.begin, store_class.commit

        def traced_begin(self: Any) -> None:
            asked = clock()
            begin(self)
            self._trace = (asked, clock(), cpu(), runq())

        def traced_commit(self: Any) -> None:
            commit(self)
            asked, got, cpu_at, runq_at = self.__dict__.pop("_trace", (0.0, 0.0, 0.0, 0.0))
            if asked:
                emit("txn", "counter", asked, got - asked, clock() - got, cpu() - cpu_at, runq() - runq_at)

        store_class.begin, store_class.commit = traced_begin, traced_commit
        counters_traced = True
    try:
        worker_module = importlib.import_module("intercept.store.worker")
    except ImportError:  # an intercept from before the store thread
        worker_module = None
    arm = getattr(worker_module, "arm", None)
    wait_s = getattr(worker_module, "STORE_WAIT_S", STORE_WAIT_S)
    if arm is not None:

        def traced_arm(connection: sqlite3.Connection, deadline: float | None) -> None:
            if deadline is not None:
                emit("start", clock(), wait_s - (deadline - time.monotonic()))
            arm(connection, deadline)

        for name in ("intercept.approvals.gate", "intercept.counters.call_counters", "intercept.proxy.counting"):
            found = module(name)
            if found is not None and getattr(found, "arm", None) is arm:
                found.arm = traced_arm
    missing = [what for what, traced in (("approval transactions", approvals_traced),
                                         ("counter transactions", counters_traced),
                                         ("worker.arm", arm is not None)) if not traced]  # fmt: skip
    if missing:
        print(f"contention.py --as-proxy: cannot trace {', '.join(missing)}", file=sys.stderr)


def as_proxy(argv: Sequence[str]) -> int:
    """Run intercept's proxy (argv after the trace file) with its store work traced."""
    install_trace(argv[0])
    from intercept.cmd.main import main as intercept_main

    intercept_main(list(argv[1:]))
    return 0


def trace_table(path: Path, phases: dict[str, Phase]) -> str:
    """Per scenario, from the proxies' trace lines inside that scenario's measured windows."""
    transactions: list[tuple[float, float, float, float, float]] = []  # asked, waited, held, cpu, runq
    starts: list[tuple[float, float]] = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields[0] == "txn":
            transactions.append(tuple(map(float, fields[2:7])))  # type: ignore[arg-type]
        elif fields[0] == "start":
            starts.append((float(fields[1]), float(fields[2])))
    rows = [
        "| scenario | write txns/s | lock held | hold mean / p99 ms | holder CPU mean ms | holder run-queue wait "
        "mean ms | BEGIN wait p50 / p99 / max ms | job start after decision p50 / p99 / max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, phase in phases.items():
        inside = [t for t in transactions if any(a <= t[0] < b for a, b in phase.windows)]
        started = [s for at, s in starts if any(a <= at < b for a, b in phase.windows)]
        if not inside:
            continue
        span = sum(b - a for a, b in phase.windows)
        held, last = 0.0, 0.0  # the union of BEGIN..COMMIT spans
        for got, end in sorted((t[0] + t[1], t[0] + t[1] + t[2]) for t in inside):
            if end > last:
                held += end - max(got, last)
                last = end
        n = len(inside)
        waits, holds = [t[1] * 1e3 for t in inside], [t[2] * 1e3 for t in inside]
        started_ms = [s * 1e3 for s in started]
        start_cell = (
            f"{p50(started_ms):.1f} / {percentile(started_ms, 0.99):.0f} / {max(started_ms):.0f}" if started_ms else "-"
        )
        rows.append(
            f"| {name} | {n / span:,.0f} | {held / span * 100:.0f} % | {sum(holds) / n:.2f} / "
            f"{percentile(holds, 0.99):.1f} | {sum(t[3] for t in inside) / n * 1e3:.2f} | "
            f"{sum(t[4] for t in inside) / n * 1e3:.2f} | {p50(waits):.2f} / {percentile(waits, 0.99):.0f} / "
            f"{max(waits):.0f} | {start_cell} |"
        )
    return "\n".join(rows)


# -- the run -------------------------------------------------------------------------------


@dataclass
class Results:
    requests: Phase = field(default_factory=Phase)
    consumes: Phase = field(default_factory=Phase)
    counter: Phase = field(default_factory=Phase)
    lock: LockSamples = field(default_factory=LockSamples)
    check: dict[str, list[float]] = field(default_factory=dict)
    seed_s: float = 0.0
    approve_s: list[float] = field(default_factory=list)
    unconsumed: int = 0  # replays answered -32003: their approval was not found
    trace: str = ""  # the --trace-store table


def measure_round(r: int, settings: Settings, state_dir: Path, logs: Path, ids: Ids, results: Results) -> None:
    n, k = settings.proxies, settings.calls_per_proxy
    # Scenarios 1 and 2 on the same proxies: request, approve all, replay.
    proxies = spawn(n, APPROVAL_POLICY, state_dir, logs, f"r{r}-approval")
    try:
        warm = [echo_calls(ids, (f"r{r} warm {p} {i}" for i in range(settings.warmup_per_proxy))) for p in range(n)]
        pipelined(proxies, warm, settings.in_flight, settings.phase_timeout_s, None)
        texts = [[f"r{r} call {p} {i}" for i in range(k)] for p in range(n)]
        approval_ids: list[str] = []

        def keep_id(message: dict[str, Any], kind: str) -> None:
            if kind == "approval_required":
                approval_ids.append(message["error"]["data"]["approval_id"])

        work = [echo_calls(ids, texts[p]) for p in range(n)]
        pipelined(proxies, work, settings.in_flight, settings.phase_timeout_s, results.requests, keep_id)
        results.approve_s.append(approve(state_dir, approval_ids))
        replay = [echo_calls(ids, texts[(p + 1) % n]) for p in range(n)]  # another proxy's calls

        def count_unconsumed(message: dict[str, Any], kind: str) -> None:
            if kind == "approval_required":
                results.unconsumed += 1

        pipelined(proxies, replay, settings.in_flight, settings.phase_timeout_s, results.consumes, count_unconsumed)
    finally:
        close_all(proxies)
    # Scenario 3: one shared counter.
    proxies = spawn(n, COUNTER_POLICY, state_dir, logs, f"r{r}-counter")
    try:
        warm = [echo_calls(ids, (f"r{r} cwarm {i}" for i in range(settings.warmup_per_proxy))) for _ in range(n)]
        pipelined(proxies, warm, settings.in_flight, settings.phase_timeout_s, None)
        work = [echo_calls(ids, (f"r{r} count {p} {i}" for i in range(k))) for p in range(n)]
        pipelined(proxies, work, settings.in_flight, settings.phase_timeout_s, results.counter)
    finally:
        close_all(proxies)
    # Scenario 4: an external write lock.
    lock_round(state_dir, logs, f"r{r}-lock", settings, ids, results.lock)


def run(settings: Settings, workdir: Path, trace: bool = False) -> Results:
    global TRACE
    TRACE = workdir / "store-trace.txt" if trace else None
    state_dir = workdir / "state"
    logs = workdir / "logs"
    logs.mkdir()
    results = Results()
    results.seed_s = seed(state_dir, settings.records)
    results.check = time_store_check(state_dir, settings.check_samples)
    ids = Ids()
    for r in range(settings.rounds):
        started = time.perf_counter()
        measure_round(r, settings, state_dir, logs, ids, results)
        print(f"round {r + 1}/{settings.rounds}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if TRACE is not None:
        phases = {"1. request": results.requests, "2. consume": results.consumes, "3. counter": results.counter}
        results.trace = trace_table(TRACE, phases)
    return results


# -- report --------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def p50(values: Sequence[float]) -> float:
    return percentile(values, 0.50)


def report(results: Results, settings: Settings) -> tuple[str, list[str], dict[str, Any]]:
    cpus = os.cpu_count() or 1
    lines = [
        "| scenario | calls | p50 ms | p99 ms | max ms | calls/s | lock-denied replies | lock lines on stderr | "
        "proxy CPU ms/call | CPUs busy | client CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summaries = {}
    for name, phase, expected in (
        ("1. request (-32003)", results.requests, "approval_required"),
        ("2. consume (forwarded)", results.consumes, "ok"),
        ("3. counter (forwarded)", results.counter, "ok"),
    ):
        s = phase.summary(cpus, expected)
        s["unexpected"] = s["calls"] - s["expected"] - s["lock_denied"]
        summaries[name] = s
        lines.append(
            f"| {name} | {s['calls']:,} | {ms(s['p50_ms'])} | {ms(s['p99_ms'])} | {ms(s['max_ms'])} | "
            f"{s['calls_per_s']:,.0f} | {s['lock_denied']} | {s['stderr_lock_lines']} | "
            f"{s['proxy_cpu_ms_per_call']:.2f} | {s['busy_fraction'] * 100:.0f} % | {s['client_cpu_fraction'] * 100:.0f} % |"
        )
    lines += ["", "Latencies: send to answer, as the client sees it, of the answers of the scenario's kind "
              "(-32003, a forwarded result); calls/s and CPU over all calls. CPUs busy: proxies, upstreams and "
              "the client, over all CPUs.",
              "", "| store check in-process (gate transaction) | samples | p50 ms | p99 ms | max ms |",
              "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for label, values in results.check.items():
        lines.append(f"| {label} | {len(values):,} | {p50(values):.3f} | {percentile(values, 0.99):.3f} | "
                     f"{max(values):.3f} |")  # fmt: skip
    lock = results.lock
    lines += ["", "| one proxy, sequential | normal p50 ms | during the lock p50 ms | ratio | during the lock p99 ms | "
              "samples in the lock |", "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for label, normal, locked in (("ping", lock.ping_normal_ms, lock.ping_locked_ms),
                                  ("allowed call", lock.allowed_normal_ms, lock.allowed_locked_ms)):  # fmt: skip
        lines.append(f"| {label} | {p50(normal):.3f} | {p50(locked):.3f} | {p50(locked) / p50(normal):.2f}x | "
                     f"{percentile(locked, 0.99):.3f} | {len(locked):,} |")  # fmt: skip
    gated_kinds = collections.Counter(kind for _, kind in lock.gated_locked)
    gated_s = [s for s, _ in lock.gated_locked]
    lines.append("")
    if gated_s:
        lines.append(
            f"Gated calls sent and answered while the lock was held: {len(gated_s)}, {dict(gated_kinds)}, answered "
            f"after {min(gated_s):.2f}-{max(gated_s):.2f} s (median {p50(gated_s):.2f} s)."
        )
    else:
        lines.append("No gated call was answered while the lock was held.")
    if lock.gated_at_release:
        lines.append("The gated call pending at each release: " + "; ".join(
            f"answered after {s:.2f} s ({what})" for s, what in lock.gated_at_release) + ".")  # fmt: skip
    lines.append(
        f"Normal p50 = pings and allowed calls before and after each lock ({len(lock.ping_normal_ms):,} each)."
    )
    lines.append(f"A new gated call right after the release: {', '.join(f'{v:.1f}' for v in lock.gated_after_ms)} ms. "
                 f"Lock lines on the proxy's stderr: {lock.stderr_lock_lines}.")  # fmt: skip
    lines.append(f"Seeding {settings.records:,} records: {results.seed_s:.1f} s; approving the requests of a round "
                 f"in one transaction: {', '.join(f'{s:.2f}' for s in results.approve_s)} s; replays that found no "
                 f"approval (-32003): {results.unconsumed}.")  # fmt: skip
    for name, phase in (("request", results.requests), ("consume", results.consumes), ("counter", results.counter)):
        if phase.examples:
            lines.append(f"Unexpected {name} replies ({phase.kinds()}): " + " | ".join(phase.examples))

    requests, consumes, counter = summaries.values()
    check = p50(results.check["check (new call)"])
    ping_ratio = p50(lock.ping_locked_ms) / p50(lock.ping_normal_ms)
    allowed_ratio = p50(lock.allowed_locked_ms) / p50(lock.allowed_normal_ms)
    fail_closed = bool(gated_s) and all(k == "lock_denied" for k in gated_kinds) and max(gated_s) <= STORE_WAIT_S + 1
    consume_ratio = consumes["p99_ms"] / consumes["p50_ms"]
    checks = [
        ("1. requests: no call denied for lock contention", f"{requests['lock_denied']} denied "
         f"({requests['stderr_lock_lines']} lock lines on stderr)", requests["lock_denied"] == 0),
        ("1. store check p50 <= 1 ms at scale", f"{check:.3f} ms", check <= TARGET_CHECK_P50_MS),
        ("2. consumes: p99 within 10x p50", f"{ms(consumes['p99_ms'])} / {ms(consumes['p50_ms'])} ms = "
         f"{consume_ratio:.1f}x", consume_ratio <= TARGET_CONSUME_P99_OVER_P50),
        ("2. consumes: no call denied for lock contention", f"{consumes['lock_denied']} denied",
         consumes["lock_denied"] == 0),
        ("3. counter: p99 <= 25 ms", f"{ms(counter['p99_ms'])} ms", counter["p99_ms"] <= TARGET_COUNTER_P99_MS),
        ("3. counter: no call denied for lock contention", f"{counter['lock_denied']} denied",
         counter["lock_denied"] == 0),
        ("4. ping p50 during a lock within 2x", f"{ping_ratio:.2f}x", ping_ratio <= TARGET_LOCKED_OVER_NORMAL),
        ("4. allowed p50 during a lock within 2x", f"{allowed_ratio:.2f}x", allowed_ratio <= TARGET_LOCKED_OVER_NORMAL),
        ("4. gated call fails closed within the store wait", f"max {max(gated_s, default=0):.2f} s", fail_closed),
    ]  # fmt: skip
    verdicts = [f"- {label}: {value} {'ok' if ok else 'MISSED'}" for label, value, ok in checks]
    dump = {
        "settings": asdict(settings),
        "summaries": summaries,
        "check": {label: {"p50_ms": p50(v), "p99_ms": percentile(v, 0.99)} for label, v in results.check.items()},
        "lock": {"ping_ratio": ping_ratio, "allowed_ratio": allowed_ratio, "gated_locked": lock.gated_locked},
    }
    return "\n".join(lines), verdicts, dump


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (4 proxies, 5k records, 2 short rounds)")
    parser.add_argument("--rounds", type=int, help="rounds (samples are pooled over them)")
    parser.add_argument("--proxies", type=int, help="proxies on the shared state dir (scenarios 1-3)")
    parser.add_argument("--in-flight", type=int, help="calls outstanding per proxy")
    parser.add_argument("--records", type=int, help="pending approvals of other calls seeded before the run")
    parser.add_argument("--calls", type=int, help="calls per proxy per round and scenario")
    parser.add_argument("--lock-s", type=float, help="seconds the external write lock is held per round")
    parser.add_argument("--keep", type=Path, help="use this (new) directory for the state dir and logs, and keep it")
    parser.add_argument("--json", type=Path, help="also write the summaries to this file")
    parser.add_argument(
        "--trace-store", action="store_true",
        help="run the proxies with their store transactions traced and print where the time goes (diagnosis; "
        "patches intercept internals, adds a little work per transaction)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == [AS_PROXY]:
        return as_proxy(args[1:])
    options = parse_args(args)
    base = QUICK if options.quick else Settings()
    overrides = {"rounds": options.rounds, "proxies": options.proxies, "in_flight": options.in_flight,
                 "records": options.records, "calls_per_proxy": options.calls, "lock_s": options.lock_s}  # fmt: skip
    settings = Settings(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})
    compileall.compile_dir(ROOT / "intercept", quiet=1)  # spawns must not recompile (see run.py)
    started = time.perf_counter()
    if options.keep:
        options.keep.mkdir(parents=True)
        results = run(settings, options.keep, options.trace_store)
    else:
        with tempfile.TemporaryDirectory(prefix="intercept-contention-") as tmp:
            results = run(settings, Path(tmp), options.trace_store)
    table, verdicts, dump = report(results, settings)
    print(
        f"{datetime.date.today().isoformat()}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{settings.rounds} rounds; {settings.proxies} proxies x {settings.in_flight} in flight x "
        f"{settings.calls_per_proxy} calls per scenario and round; {settings.records:,} seeded approvals; "
        f"lock held {settings.lock_s:g} s per round; {time.perf_counter() - started:.0f} s in all"
        + ("" if ROOT == REPO else f"; intercept from {ROOT}")
        + "\n"
    )
    print(table)
    if results.trace:
        print("\nWhere the store time goes (--trace-store; the proxies' write transactions in the measured windows):\n")
        print(results.trace)
    print("\nTargets:")
    print("\n".join(verdicts))
    if options.json:
        options.json.write_text(json.dumps(dump, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
