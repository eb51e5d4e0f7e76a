"""Issue 12's figures, side by side in one run:

1. An allowed call with the admin API enabled and a webhook configured (`humans`) against the
   same proxy without them (`intercept`): CPU per call, p50/p99, first answer (run.py's
   interleaved rounds, `--rounds`).
2. The -32003 path (every call a new approval request, so every call fires the webhook): no
   webhook, a receiver that answers at once, and one that accepts connections and never answers,
   interleaved in blocks: p50/p99. "Never answers" against "answers at once" is what a hanging
   receiver adds; "answers at once" against none is what sending a webhook costs at all.
3. An approval decided through the admin API reaching a call held open (`approvals.wait`):
   from sending the POST to the held call's reply, p50/p99/max.

Run: `python bench/humans.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as runner  # noqa: E402

SECRET_ENV = {"BENCH_WEBHOOK_SECRET": "bench-secret"}
UPSTREAM = (sys.executable, str(BENCH / "fast_upstream.py"))


class HangingReceiver:
    """Accepts HTTP connections on loopback and never answers (the worst webhook receiver)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)


ANSWERING_RECEIVER = """
import http.server, sys
class Answer(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def answering_receiver() -> tuple[subprocess.Popen[str], int]:
    """A receiver in a process of its own (its CPU stays out of the client's) answering 204 at once."""
    proc = subprocess.Popen([sys.executable, "-c", ANSWERING_RECEIVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def policy_file(workdir: Path, name: str, text: str) -> Path:
    path = workdir / name
    path.write_text(text)
    return path


def proxy(policy: Path, state_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """The proxy on `policy`; its stderr is read on a thread (a full pipe would stop it) and its
    lines queued in `STDERR[proc.pid]`."""
    argv = [sys.executable, "-m", "intercept", "-c", str(policy), "--state-dir", str(state_dir), "--log-level", "error",
            *extra, "--", *UPSTREAM]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **SECRET_ENV}
    )
    lines: queue.Queue[str] = queue.Queue()
    STDERR[proc.pid] = lines
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: [lines.put(line.decode(errors="replace")) for line in stream], daemon=True).start()
    return proc


STDERR: dict[int, queue.Queue[str]] = {}


def send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


def read(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    return json.loads(proc.stdout.readline())


def close(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


APPROVAL_POLICY = """\
version: "1"
approvals:
  wait: {wait}
{notify}tools:
  echo:
    rules:
      - name: "echo needs a human"
        action: require_approval
"""


def request_path_us(workdir: Path, notifies: dict[str, str], calls: int, block: int = 50) -> dict[str, list[float]]:
    """µs per -32003 answer for each configuration (every call a new request, and a webhook POST
    where one is configured), alternating blocks of `block` calls between the proxies so a change
    in machine load hits them alike."""
    procs = {}
    for label, notify in notifies.items():
        policy = policy_file(workdir, f"{label}.yaml", APPROVAL_POLICY.format(wait="0s", notify=notify))
        procs[label] = proxy(policy, workdir / f"state-{label}")
    samples: dict[str, list[float]] = {label: [] for label in procs}
    for start in range(0, calls, block):
        for label, proc in procs.items():
            for i in range(start, min(start + block, calls)):
                arguments = {"text": f"{label} {i}"}
                began = time.perf_counter()
                send(
                    proc,
                    {
                        "jsonrpc": "2.0",
                        "id": i,
                        "method": "tools/call",
                        "params": {"name": "echo", "arguments": arguments},
                    },
                )
                answer = read(proc)
                samples[label].append((time.perf_counter() - began) * 1e6)
                assert answer.get("error", {}).get("code") == -32003, answer
    for proc in procs.values():
        close(proc)
    return {label: values[block:] for label, values in samples.items()}


def held_decision_ms(workdir: Path, rounds: int) -> tuple[list[float], list[float]]:
    """ms from sending the approve POST to the held call's reply, and from the POST's answer."""
    policy = policy_file(workdir, "held.yaml", APPROVAL_POLICY.format(wait="60s", notify=""))
    state_dir = workdir / "state-held"
    proc = proxy(policy, state_dir, "--enable-admin-api", "--admin-addr", "127.0.0.1:0")
    line = STDERR[proc.pid].get(timeout=30)
    while "admin API on" not in line:
        line = STDERR[proc.pid].get(timeout=30)
    base = line.split("admin API on ", 1)[1].strip()
    token = subprocess.check_output(
        [sys.executable, "-m", "intercept", "admin", "token", "--state-dir", str(state_dir)], text=True
    ).strip()
    from_post, from_answer = [], []
    for i in range(rounds):
        send(proc, {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": f"held {i}"}, "_meta": {"progressToken": i}}})  # fmt: skip
        note = read(proc)
        approval_id = re.search(r"apr_[0-9a-f]{32}", note["params"]["message"]).group(0)  # type: ignore[union-attr]
        post = urllib.request.Request(
            f"{base}/api/approve/{approval_id}", data=b"{}", method="POST", headers={"Authorization": f"Bearer {token}"}
        )
        time.sleep(random.uniform(0, 0.2))  # a human decides at any moment, not in step with the poller
        start = time.perf_counter()
        with urllib.request.urlopen(post) as answer:
            answer.read()
        answered = time.perf_counter()
        reply = read(proc)
        done = time.perf_counter()
        assert "result" in reply, reply
        from_post.append((done - start) * 1e3)
        from_answer.append((done - answered) * 1e3)
    close(proc)
    return from_post, from_answer


def pct(values: Sequence[float], q: float) -> float:
    return runner.percentile(values, q)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of part 1")
    options = parser.parse_args(argv)
    settings = runner.QUICK if options.quick else runner.Settings(rounds=5, calls=20_000, seq_calls=2_000)
    if options.rounds:
        settings = runner.Settings(**{**settings.__dict__, "rounds": options.rounds})
    receiver = HangingReceiver()
    with tempfile.TemporaryDirectory(prefix="intercept-bench-humans-") as tmp:
        workdir = Path(tmp)
        humans_policy = policy_file(
            workdir, "humans.yaml",
            (BENCH / "humans_policy.yaml").read_text().replace("127.0.0.1:9/", f"127.0.0.1:{receiver.port}/"),
        )  # fmt: skip
        plain = runner.intercept_configuration("intercept", BENCH / "allow_policy.yaml", workdir / "state-plain")
        humans = runner.intercept_configuration("humans", humans_policy, workdir / "state-humans")
        humans = runner.Configuration(
            "humans",
            (*humans.argv[: -len(UPSTREAM) - 1], "--enable-admin-api", "--admin-addr", "127.0.0.1:0", "--", *UPSTREAM),
            "admin API on, webhook to a receiver that never answers",
            env=SECRET_ENV,
        )
        results = runner.run([plain, humans], settings, workdir)
        print("## 1. Allowed call, admin API and webhook configured\n")
        print(runner.table({name: samples.summary() for name, samples in results.items()}, settings.big_size))
        calls = 200 if options.quick else 900  # below the 1,010 a hanging receiver lets wait
        answering, answering_port = answering_receiver()
        hook = "  notify:\n    webhook: {{url: 'http://127.0.0.1:{}/hook', secret_env: BENCH_WEBHOOK_SECRET}}\n"
        paths = request_path_us(
            workdir,
            {
                "none": "",
                "receiver answers at once": hook.format(answering_port),
                "receiver never answers": hook.format(receiver.port),
            },
            calls,
        )
        answering.kill()
        print("\n## 2. The -32003 path (a new request each call)\n")
        print("| webhook | p50 µs | p99 µs |\n| --- | ---: | ---: |")
        for label, values in paths.items():
            print(f"| {label} | {statistics.median(values):.0f} | {pct(values, 0.99):.0f} |")
        print(f"\n(the hanging receiver holds {len(receiver.held)} connections)")
        from_post, from_answer = held_decision_ms(workdir, 10 if options.quick else 40)
        print("\n## 3. Admin API approval → held call's reply\n")
        print("| from | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: |")
        for label, values in (("sending the POST", from_post), ("the POST's answer", from_answer)):
            print(f"| {label} | {statistics.median(values):.0f} | {pct(values, 0.99):.0f} | {max(values):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
