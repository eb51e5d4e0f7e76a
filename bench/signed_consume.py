"""Issue 13's consume figure: what checking signed votes adds to running an approved call.

Two proxies side by side on the same fast upstream, each with its own state dir: `plain` (a
`require_approval` rule, no approvers block: the database is trusted) and `signed` (the same rule
with `approvers: {roles: [owner], quorum: 2}` and two approvers with Ed25519 keys: before running
the call the proxy re-derives what the votes must say from the call, verifies both signatures
against the policy's keys and checks quorum, scope and times). Every call is a distinct approved
request, so every measured call consumes one approval (and appends its receipt, in both). The
approvals are made and decided in-process (`decisions.decide`, signing as the CLI does) so the
setup takes seconds; the calls are timed from the client's side, alternating blocks between the
proxies. Also timed in-process: `vote_check.check_approval` alone.

Run: `python bench/signed_consume.py [--calls N]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from intercept.approvals import approver_keys  # noqa: E402
from intercept.approvals.decisions import decide  # noqa: E402
from intercept.approvals.vote_check import check_approval  # noqa: E402
from intercept.approvals.who_may_decide import CallFacts, arguments_sha256  # noqa: E402
from intercept.audit.receipts import Receipts  # noqa: E402
from intercept.policy.load import parse_policy  # noqa: E402
from intercept.store.approvals import ApprovalStore  # noqa: E402
from intercept.store.database import connect  # noqa: E402
from intercept.store.votes import votes_of  # noqa: E402

UPSTREAM = (sys.executable, str(ROOT / "bench" / "fast_upstream.py"))
KEYS = {name: Ed25519PrivateKey.generate() for name in ("alice", "bob")}
RULE = '      - name: "echo needs a human"\n        action: require_approval\n'


def policy_text(signed: bool) -> str:
    if not signed:
        return f'version: "1"\ntools:\n  echo:\n    rules:\n{RULE}'
    approvers = "".join(
        f'  {name}: {{roles: [owner], key: "{approver_keys.public_line(key.public_key())}"}}\n'
        for name, key in KEYS.items()
    )
    return (
        f'version: "1"\napprovers:\n{approvers}tools:\n  echo:\n    rules:\n{RULE}'
        "        approvers: {roles: [owner], quorum: 2}\n"
    )


class Proxy:
    def __init__(self, workdir: Path, label: str, signed: bool) -> None:
        self.label = label
        self.policy_path = workdir / f"{label}.yaml"
        self.policy_path.write_text(policy_text(signed))
        self.policy = parse_policy(self.policy_path.read_text())
        self.state_dir = workdir / f"state-{label}"
        argv = [sys.executable, "-m", "intercept", "-c", str(self.policy_path), "--state-dir", str(self.state_dir),
                "--log-level", "error", "--", *UPSTREAM]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.next_id = 0

    def call(self, text: str) -> tuple[float, dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.next_id += 1
        line = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": text}}}  # fmt: skip
        began = time.perf_counter()
        self.proc.stdin.write(json.dumps(line).encode() + b"\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return (time.perf_counter() - began) * 1e6, reply

    def approve_all(self) -> int:
        """Every pending request decided in-process, as the CLI would: two signed votes where the
        policy names approvers, one vote otherwise."""
        store = ApprovalStore(connect(self.state_dir))
        receipts = Receipts(self.state_dir)
        voters = list(KEYS) if self.policy.approvers else ["bench"]
        pending = store.list(("pending",))
        for record in pending:
            for name in voters:
                decide(
                    store, _Quiet(), record.id, approve=True, actor=name, reason=None, channel="cli",
                    now_s=time.time(), policy_of=lambda _r: self.policy,
                    sign=lambda actor, payload: approver_keys.sign(KEYS[actor], payload), receipts=receipts,
                )  # fmt: skip
        return len(pending)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class _Quiet:
    def emit(self, event_type: str, **fields: Any) -> None:
        pass


def check_alone_us(proxy: Proxy, rounds: int) -> list[float]:
    """`check_approval` alone on one approved record of `proxy` (signatures verified each time)."""
    store = ApprovalStore(connect(proxy.state_dir))
    record = store.list(("approved",))[0]
    rule = proxy.policy.tools["echo"].rules[0]
    votes = votes_of(store, record.id)
    facts = CallFacts(record.server, "echo", arguments_sha256(json.loads(record.args_exact or "{}")), None)
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        refusal = check_approval(proxy.policy, rule, record, votes, time.time(), facts)
        samples.append((time.perf_counter() - began) * 1e6)
        assert refusal is None, refusal
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--block", type=int, default=50)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="intercept-bench-signed-"))
    proxies = [Proxy(workdir, "plain", signed=False), Proxy(workdir, "signed", signed=True)]
    for proxy in proxies:  # one request per distinct call; warm both up
        for i in range(args.calls + 21):  # the last one stays approved, for check_alone_us
            _, reply = proxy.call(f"{proxy.label} {i}")
            assert reply.get("error", {}).get("code") == -32003, reply
        assert proxy.approve_all() == args.calls + 21
        for i in range(20):  # the first runs load the proxy key (receipts) and cryptography (signed)
            _, reply = proxy.call(f"{proxy.label} {args.calls + i}")
            assert "result" in reply, reply
    samples: dict[str, list[float]] = {proxy.label: [] for proxy in proxies}
    for start in range(0, args.calls, args.block):
        for proxy in proxies:
            for i in range(start, min(start + args.block, args.calls)):
                took, reply = proxy.call(f"{proxy.label} {i}")
                assert "result" in reply, (proxy.label, reply)
                samples[proxy.label].append(took)
    alone = check_alone_us(proxies[1], 2000)
    for proxy in proxies:
        proxy.close()

    def quantile(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[q - 1] if q < 100 else max(values)

    print(f"approved calls consumed, {args.calls} per proxy, interleaved in blocks of {args.block}:")
    for label, values in samples.items():
        print(f"  {label:<7} p50 {statistics.median(values):7.0f} µs   p99 {quantile(values, 99):7.0f} µs")
    added = statistics.median(samples["signed"]) - statistics.median(samples["plain"])
    print(f"  signed - plain at p50: {added:+.0f} µs")
    print(
        f"check_approval alone (2 signed votes): p50 {statistics.median(alone):.0f} µs, "
        f"p99 {quantile(alone, 99):.0f} µs"
    )


if __name__ == "__main__":
    main()
