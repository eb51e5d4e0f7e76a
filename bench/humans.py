"""Issue 12's figures, side by side in one run:

1. An allowed call with the admin API enabled and a webhook configured (`humans`) against the
   same proxy without them (`intercept`): CPU per call, p50/p99, first answer (run.py's
   interleaved rounds, `--rounds`).
2. The -32003 path (every call a new approval request, so every call fires the webhook) with a
   webhook receiver that accepts connections and never answers, against no webhook: p50/p99.
3. An approval decided through the admin API reaching a call held open (`approvals.wait`):
   from sending the POST to the held call's reply, p50/p99/max.

Run: `python bench/humans.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
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


def policy_file(workdir: Path, name: str, text: str) -> Path:
    path = workdir / name
    path.write_text(text)
    return path


def proxy(policy: Path, state_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "intercept", "-c", str(policy), "--state-dir", str(state_dir), "--log-level", "error",
            *extra, "--", *UPSTREAM]  # fmt: skip
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **SECRET_ENV}
    )


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


def request_path_us(workdir: Path, label: str, notify: str, calls: int) -> list[float]:
    """µs per -32003 answer, every call a new request (and a webhook POST, when configured)."""
    policy = policy_file(workdir, f"{label}.yaml", APPROVAL_POLICY.format(wait="0s", notify=notify))
    proc = proxy(policy, workdir / f"state-{label}")
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        send(
            proc,
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": f"{label} {i}"}},
            },
        )
        answer = read(proc)
        samples.append((time.perf_counter() - start) * 1e6)
        assert answer.get("error", {}).get("code") == -32003, answer
    close(proc)
    return samples[10:]


def held_decision_ms(workdir: Path, rounds: int) -> tuple[list[float], list[float]]:
    """ms from sending the approve POST to the held call's reply, and from the POST's answer."""
    policy = policy_file(workdir, "held.yaml", APPROVAL_POLICY.format(wait="60s", notify=""))
    state_dir = workdir / "state-held"
    proc = proxy(policy, state_dir, "--enable-admin-api", "--admin-addr", "127.0.0.1:0")
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    while "admin API on" not in line:
        line = proc.stderr.readline().decode()
        if not line:
            raise RuntimeError("the proxy did not start its admin API")
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
        calls = 100 if options.quick else 600
        hook = f"  notify:\n    webhook: {{url: 'http://127.0.0.1:{receiver.port}/hook', secret_env: BENCH_WEBHOOK_SECRET}}\n"
        none = request_path_us(workdir, "no-webhook", "", calls)
        hanging = request_path_us(workdir, "hanging-webhook", hook, calls)
        print("\n## 2. The -32003 path (a new request each call)\n")
        print("| webhook | p50 µs | p99 µs |\n| --- | ---: | ---: |")
        for label, values in (("none", none), ("receiver never answers", hanging)):
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
