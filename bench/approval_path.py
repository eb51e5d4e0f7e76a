"""What the approval gate adds to a call: sequential p50 of allowed vs approval paths, one proxy.

Paths: `allowed` (evaluated rule, forwarded), `request` (new approval: fingerprint, insert,
-32003), `reuse` (identical retry while pending: fingerprint, lookup, update, -32003), `consume`
(approved: fingerprint, conditional update, forwarded). Run: `python bench/approval_path.py`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from intercept.store.approvals import ApprovalStore  # noqa: E402
from intercept.store.database import connect  # noqa: E402

CALLS = 300


def main() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="intercept-bench-approval-"))
    command = [sys.executable, "-m", "intercept", "-c", str(ROOT / "bench" / "approval_policy.yaml"),
               "--state-dir", str(state_dir), "--log-level", "error", "--",
               sys.executable, str(ROOT / "bench" / "fast_upstream.py")]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    next_id = 0

    def call(tool: str, arguments: dict[str, object]) -> tuple[float, dict[str, object]]:
        nonlocal next_id
        next_id += 1
        line = json.dumps({"jsonrpc": "2.0", "id": next_id, "method": "tools/call",
                           "params": {"name": tool, "arguments": arguments}}).encode() + b"\n"
        start = time.perf_counter()
        proc.stdin.write(line)  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        answer = proc.stdout.readline()  # type: ignore[union-attr]
        return (time.perf_counter() - start) * 1e6, json.loads(answer)

    store = ApprovalStore(connect(state_dir))
    samples: dict[str, list[float]] = {"allowed": [], "request": [], "reuse": [], "consume": []}
    for i in range(CALLS):
        arguments = {"text": f"call {i}"}
        elapsed, _ = call("big", {"size": 10})
        samples["allowed"].append(elapsed)
        elapsed, answer = call("echo", arguments)
        samples["request"].append(elapsed)
        approval_id = answer["error"]["data"]["approval_id"]  # type: ignore[index]
        elapsed, _ = call("echo", arguments)
        samples["reuse"].append(elapsed)
        with store.transaction():
            store.decide(approval_id, True, "bench", None, time.time())
        elapsed, answer = call("echo", arguments)
        assert "result" in answer, answer
        samples["consume"].append(elapsed)
    proc.stdin.close()
    proc.wait(timeout=30)
    allowed = statistics.median(samples["allowed"][20:])
    print("| path | p50 µs | p99 µs | p50 beyond allowed µs |")
    print("| --- | ---: | ---: | ---: |")
    for path, values in samples.items():
        kept = sorted(values[20:])
        p50, p99 = statistics.median(kept), kept[int(len(kept) * 0.99) - 1]
        print(f"| {path} | {p50:.0f} | {p99:.0f} | {p50 - allowed:+.0f} |")


if __name__ == "__main__":
    main()
