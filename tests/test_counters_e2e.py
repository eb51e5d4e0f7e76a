"""Counters end to end: the real proxy as a subprocess around real upstreams, raw JSON-RPC on its pipes.

What ran upstream is always read from the upstream's own record (raw_server's $FIXTURE_RAW_LOG, or
$FIXTURE_EXEC_LOG of tool_server.py and of the scripted upstream below), never from the proxy's
word. Counters are checked through behaviour only: a budget that was given back lets the next
call through, one that was kept refuses it.

Counters use the wall clock here, so every test first makes sure it is not in the last seconds of a
UTC hour (all windows used here end on an hour boundary at the latest).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import RAW_SERVER, ROOT, TOOL_SERVER, ProxyProcess, call, proxy_command

DENIED = "[INTERCEPT POLICY DENIED] "
RATE_3_PER_HOUR = "Rate limit of 3 per hour reached. Try again later."

# The scripted upstream (fixtures/servers/scripted_server.py), started as a script.
SCRIPTED_UPSTREAM = str(ROOT / "fixtures" / "servers" / "scripted_server.py")


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _not_at_the_end_of_an_hour() -> None:
    """Counters use the wall clock: never start a test in the last 15 s of a UTC hour."""
    left = 3600 - time.time() % 3600
    if left < 15:
        time.sleep(left + 0.05)


class Env:
    """Paths of one test: policies, a state dir, upstream records; starts proxies and cleans up."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.state_dir = tmp_path / "state"
        (tmp_path / "policies").mkdir()
        (tmp_path / "logs").mkdir()
        self.proxies: list[ProxyProcess] = []

    def policy(self, text: str, name: str = "policy.yaml") -> Path:
        path = self.root / "policies" / name
        path.write_text(text)
        return path

    def log(self, name: str) -> Path:
        return self.root / "logs" / name

    def start(
        self,
        policy: Path,
        upstream: str = "scripted",
        *extra: str,
        log: Path | None = None,
        state_dir: Path | None = None,
    ) -> ProxyProcess:
        command = {
            "scripted": [sys.executable, SCRIPTED_UPSTREAM],
            "raw": [sys.executable, str(RAW_SERVER)],
            "tools": [sys.executable, str(TOOL_SERVER)],
        }[upstream]
        log = log or self.log(f"{upstream}.log")
        proxy = ProxyProcess(
            proxy_command(policy, state_dir or self.state_dir, command, "--name", upstream, *extra),
            env={"FIXTURE_RAW_LOG": str(log), "FIXTURE_EXEC_LOG": str(log)},
        )
        self.proxies.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path)
    yield environment
    environment.close()


def read_until(proxy: ProxyProcess, wanted: Callable[[Any], bool], timeout_s: float = 20.0) -> Any:
    """The next message `wanted` accepts; messages before it are skipped."""
    while True:
        message = proxy.read(timeout_s)
        if wanted(message):
            return message


def reply(proxy: ProxyProcess, request_id: Any) -> dict[str, Any]:
    return read_until(proxy, lambda m: isinstance(m, dict) and m.get("id") == request_id and "method" not in m)


def _proxy_id(request_id: Any) -> bool:
    return isinstance(request_id, str) and request_id.startswith("intercept-")


def started(proxy: ProxyProcess, request_id: Any) -> None:
    """Wait for the scripted upstream's notification that it holds a call (the one just sent:
    calls that take counters reach the upstream under an id of the proxy's, not `request_id`)."""
    read_until(
        proxy, lambda m: isinstance(m, dict) and str((m.get("params") or {}).get("data", "")).startswith("started ")
    )


def text_of(answer: dict[str, Any]) -> str:
    return answer["result"]["content"][0]["text"]


def is_denied(answer: dict[str, Any]) -> bool:
    result = answer.get("result") or {}
    content = result.get("content") or [{}]
    return result.get("isError") is True and str(content[0].get("text", "")).startswith(DENIED)


def tool_call(proxy: ProxyProcess, request_id: Any, tool: str, arguments: dict[str, Any] | None = None) -> dict:
    proxy.send(call(request_id, tool, arguments))
    return reply(proxy, request_id)


def raw_calls(log: Path) -> list[dict[str, Any]]:
    """tools/call requests raw_server received."""
    if not log.exists():
        return []
    messages = [json.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    return [m for m in messages if isinstance(m, dict) and m.get("method") == "tools/call"]


def executed(log: Path) -> list[str]:
    """Tool names tool_server.py / the scripted upstream executed, in order."""
    if not log.exists():
        return []
    return [json.loads(line)["tool"] for line in log.read_text().splitlines() if line.strip()]


def cancel(proxy: ProxyProcess, request_id: Any) -> None:
    proxy.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}})


def initialize(proxy: ProxyProcess) -> None:
    proxy.send(
        {
            "jsonrpc": "2.0",
            "id": "init",
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
    )
    assert "result" in reply(proxy, "init")
    proxy.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def finish(proxy: ProxyProcess) -> int:
    proxy.close_stdin()
    return proxy.wait()


def rate_policy(tool: str, rate: str, extra: str = "") -> str:
    return f'version: "1"\ntools:\n  {tool}:\n    rules:\n      - name: limit\n        rate_limit: "{rate}"\n{extra}'


# -- the basic limit -------------------------------------------------------------------------


def test_rate_limit_denies_the_fourth_call_and_only_three_reach_the_upstream(env: Env) -> None:
    log = env.log("raw.log")
    proxy = env.start(env.policy(rate_policy("echo", "3/hour")), "raw", log=log)
    answers = [tool_call(proxy, i, "echo", {"n": i}) for i in range(1, 5)]
    assert [is_denied(a) for a in answers] == [False, False, False, True]
    assert answers[3]["result"] == {"content": [{"type": "text", "text": DENIED + RATE_3_PER_HOUR}], "isError": True}
    # Other tools are not limited by echo's counter.
    assert not is_denied(tool_call(proxy, 5, "big", {"size": 1}))
    proxy.sync()
    # Calls that take counters reach the upstream under ids of the proxy's; the others keep theirs.
    assert [(_proxy_id(c["id"]), c["params"]["name"]) for c in raw_calls(log)] == [
        (True, "echo"),
        (True, "echo"),
        (True, "echo"),
        (False, "big"),
    ]


def test_increment_from_in_the_proxy(env: Env) -> None:
    log = env.log("raw.log")
    policy = env.policy(
        'version: "1"\n'
        "tools:\n"
        "  echo:\n"
        "    rules:\n"
        "      - name: spend\n"
        "        state: {counter: units, window: day, increment_from: args.n}\n"
        "        conditions: [{path: state.echo.units, op: lte, value: 10}]\n"
    )
    proxy = env.start(policy, "raw", log=log)
    internal = {"content": [{"type": "text", "text": DENIED + "Internal policy error"}], "isError": True}
    assert tool_call(proxy, 1, "echo", {})["result"] == internal
    assert tool_call(proxy, 2, "echo", {"n": "5"})["result"] == internal
    assert tool_call(proxy, 3, "echo", {"n": True})["result"] == internal
    assert not is_denied(tool_call(proxy, 4, "echo", {"n": 2.9}))  # takes 3: fractions round up
    assert text_of(tool_call(proxy, 5, "echo", {"n": 7.5})) == DENIED + "Rate limit exceeded for spend"  # 11 > 10
    assert not is_denied(tool_call(proxy, 6, "echo", {"n": 7}))  # 10 of 10
    assert text_of(tool_call(proxy, 7, "echo", {"n": 0.01})) == DENIED + "Rate limit exceeded for spend"
    proxy.sync()
    assert [c["params"]["arguments"] for c in raw_calls(log)] == [{"n": 2.9}, {"n": 7}]


# -- what the upstream's answer does to the reservation ---------------------------------------


@pytest.mark.parametrize("code", [-32700, -32600, -32601])
def test_an_upstream_refusing_the_request_itself_gives_the_quota_back(env: Env, code: int) -> None:
    log = env.log("exec.log")
    policy = env.policy('version: "1"\ntools:\n  "*":\n    rules:\n      - name: global\n        rate_limit: 2/hour\n')
    proxy = env.start(policy, log=log)
    for i in range(1, 4):
        answer = tool_call(proxy, i, "reject", {"code": code})
        assert answer["error"] == {"code": code, "message": "rejected before running"}
    assert not is_denied(tool_call(proxy, 4, "echo"))
    assert not is_denied(tool_call(proxy, 5, "echo"))
    assert is_denied(tool_call(proxy, 6, "echo"))
    assert executed(log) == ["reject", "reject", "reject", "echo", "echo"]


@pytest.mark.parametrize("code", [-32000, -32602, -32603])
def test_any_other_error_answer_keeps_the_quota_taken(env: Env, code: int) -> None:
    """A tool can act and then fail: Intercept gives budgets back on any error, we do not."""
    log = env.log("exec.log")
    proxy = env.start(env.policy(rate_policy("reject", "1/hour")), log=log)
    assert tool_call(proxy, 1, "reject", {"code": code})["error"]["code"] == code
    assert text_of(tool_call(proxy, 2, "reject", {"code": code})) == (
        DENIED + "Rate limit of 1 per hour reached. Try again later."
    )
    assert executed(log) == ["reject"]


def test_is_error_result_counts(env: Env) -> None:
    log = env.log("exec.log")
    proxy = env.start(env.policy(rate_policy("failing", "2/hour")), log=log)
    for i in (1, 2):
        answer = tool_call(proxy, i, "failing")
        assert answer["result"]["isError"] is True and text_of(answer) == "it broke"
    assert text_of(tool_call(proxy, 3, "failing")) == DENIED + "Rate limit of 2 per hour reached. Try again later."
    assert executed(log) == ["failing", "failing"]


def test_sdk_server_errors_and_tool_errors(env: Env) -> None:
    """MCPServer answers an unknown tool and a raising tool with isError results, and malformed
    request params with JSON-RPC error -32602: all of them count (a handler can raise -32602
    after acting)."""
    log = env.log("exec.log")
    policy = env.policy(
        'version: "1"\n'
        "tools:\n"
        "  echo:\n    rules:\n      - {name: echo limit, rate_limit: 2/hour}\n"
        "  fail:\n    rules:\n      - {name: fail limit, rate_limit: 1/hour}\n"
        "  no_such_tool:\n    rules:\n      - {name: unknown limit, rate_limit: 1/hour}\n"
    )
    proxy = env.start(policy, "tools", log=log)
    initialize(proxy)
    proxy.send({**call(1, "echo", {"text": "x"}), "params": {"name": "echo", "arguments": {"text": "x"}, "_meta": 5}})
    assert reply(proxy, 1)["error"]["code"] == -32602
    assert text_of(tool_call(proxy, 4, "echo", {"text": "a"})) == "a"
    assert is_denied(tool_call(proxy, 6, "echo", {"text": "c"}))

    failed = tool_call(proxy, 7, "fail")
    assert failed["result"]["isError"] is True and not is_denied(failed)
    assert is_denied(tool_call(proxy, 8, "fail"))

    unknown = tool_call(proxy, 9, "no_such_tool")
    assert "error" not in unknown, "this SDK answers an unknown tool with an isError result"
    assert unknown["result"]["isError"] is True and not is_denied(unknown)
    assert is_denied(tool_call(proxy, 10, "no_such_tool"))
    assert executed(log) == ["echo", "fail"]


def test_upstream_death_keeps_the_quota_taken_seen_from_a_new_proxy(env: Env) -> None:
    """A server that exits mid-call may have acted: its unit stays spent."""
    log = env.log("raw.log")
    policy = env.policy(rate_policy("exit", "1/hour"))
    first = env.start(policy, "raw", log=log)
    first.send(call(1, "exit", {"code": 3}))
    assert first.wait() == 3

    second = env.start(policy, "raw", log=log)
    assert is_denied(tool_call(second, 1, "exit", {"code": 4}))
    assert [c["params"]["arguments"]["code"] for c in raw_calls(log)] == [3]


def test_answered_and_unanswered_calls_keep_their_units_when_the_upstream_dies(env: Env) -> None:
    log = env.log("raw.log")
    policy = env.policy('version: "1"\ntools:\n  "*":\n    rules:\n      - name: global\n        rate_limit: 2/hour\n')
    first = env.start(policy, "raw", log=log)
    assert not is_denied(tool_call(first, 1, "echo"))
    first.send(call(2, "exit", {"code": 0}))
    assert first.wait() == 0
    second = env.start(policy, "raw", log=log)
    assert is_denied(tool_call(second, 1, "echo"))  # echo and the unanswered exit: 2 of 2


# -- cancellation ----------------------------------------------------------------------------


def test_cancel_before_the_answer_keeps_the_quota_taken(env: Env) -> None:
    """A cancelled call may still run (both SDKs drop the answer of a cancelled request even when
    the tool ran): call-and-cancel loops must not get around a rate limit."""
    log = env.log("exec.log")
    proxy = env.start(env.policy(rate_policy("slow", "1/hour")), "scripted", log=log)
    proxy.send(call(1, "slow"))
    started(proxy, 1)
    # While call 1 holds the only unit, another call is refused.
    assert text_of(tool_call(proxy, 2, "slow")) == DENIED + "Rate limit of 1 per hour reached. Try again later."
    cancel(proxy, 99)  # an id that is not in flight changes nothing
    proxy.sync("after-unknown-cancel")
    assert is_denied(tool_call(proxy, 3, "slow"))
    for attempt in range(4, 8):
        cancel(proxy, 1 if attempt == 4 else attempt - 1)
        proxy.sync(f"after-cancel-{attempt}")
        assert is_denied(tool_call(proxy, attempt, "slow"))
    assert executed(log) == ["slow"]


def test_cancel_after_the_answer_gives_nothing_back(env: Env) -> None:
    log = env.log("exec.log")
    proxy = env.start(env.policy(rate_policy("echo", "1/hour")), log=log)
    assert not is_denied(tool_call(proxy, 1, "echo"))
    cancel(proxy, 1)
    proxy.sync()
    assert is_denied(tool_call(proxy, 2, "echo"))
    assert executed(log) == ["echo"]


def test_a_cancelled_call_that_runs_anyway_still_counts(env: Env) -> None:
    """The upstream ignores the cancel and answers with a result: the tool ran, so its unit is spent.

    Otherwise cancel-then-read-the-late-answer runs a 1/hour tool any number of times.
    """
    log = env.log("exec.log")
    proxy = env.start(env.policy(rate_policy("stubborn", "1/hour")), log=log)
    proxy.send(call(1, "stubborn"))
    started(proxy, 1)
    cancel(proxy, 1)
    proxy.sync()  # "ran anyway" reached the proxy before the ping's answer, and was dropped
    proxy.send(call(2, "stubborn"))
    # Either the proxy refuses call 2, or it forwards it and the upstream announces it.
    answer = read_until(
        proxy,
        lambda m: (
            isinstance(m, dict)
            and (m.get("id") == 2 or str((m.get("params") or {}).get("data", "")).startswith("started "))
        ),
    )
    assert executed(log).count("stubborn") == (2 if "method" in answer else 1)
    assert "method" not in answer, "a 1/hour tool ran twice within the hour: call 2 was forwarded"
    assert is_denied(answer)


# -- sharing, prefixes, restarts -------------------------------------------------------------


def test_two_proxies_on_one_state_dir_share_one_budget(env: Env) -> None:
    policy = env.policy(rate_policy("echo", "4/hour"))
    a = env.start(policy, "raw", log=env.log("a.log"))
    b = env.start(policy, "raw", log=env.log("b.log"))
    assert not is_denied(tool_call(a, 1, "echo"))
    assert not is_denied(tool_call(b, 1, "echo"))
    assert not is_denied(tool_call(a, 2, "echo"))
    assert not is_denied(tool_call(b, 2, "echo"))
    assert text_of(tool_call(a, 3, "echo")) == DENIED + "Rate limit of 4 per hour reached. Try again later."
    assert is_denied(tool_call(b, 3, "echo"))
    a.sync()
    b.sync()
    assert len(raw_calls(env.log("a.log"))) + len(raw_calls(env.log("b.log"))) == 4


def test_state_prefix_gives_each_proxy_its_own_budget(env: Env) -> None:
    policy = env.policy(rate_policy("echo", "2/hour"))
    a = env.start(policy, "raw", "--state-prefix", "team-a:", log=env.log("a.log"))
    b = env.start(policy, "raw", "--state-prefix", "team-b:", log=env.log("b.log"))
    plain = env.start(policy, "raw", log=env.log("plain.log"))
    for proxy in (a, b, plain):
        assert [is_denied(tool_call(proxy, i, "echo")) for i in range(1, 4)] == [False, False, True]
    # A fourth proxy with an existing prefix shares that prefix's (spent) budget.
    again = env.start(policy, "raw", "--state-prefix", "team-a:", log=env.log("again.log"))
    assert is_denied(tool_call(again, 1, "echo"))


def test_counters_survive_a_restart(env: Env) -> None:
    log = env.log("raw.log")
    policy = env.policy(rate_policy("echo", "3/hour"))
    first = env.start(policy, "raw", log=log)
    assert not is_denied(tool_call(first, 1, "echo"))
    assert not is_denied(tool_call(first, 2, "echo"))
    assert finish(first) == 0
    second = env.start(policy, "raw", log=log)
    assert not is_denied(tool_call(second, 1, "echo"))
    assert text_of(tool_call(second, 2, "echo")) == DENIED + RATE_3_PER_HOUR
    assert len(raw_calls(log)) == 3


# -- fail mode -------------------------------------------------------------------------------

FAIL_MODE_POLICY = rate_policy("echo", "1/hour") + "  big:\n    rules: []\n"


@pytest.mark.parametrize("mode", ["closed", "open", None], ids=["closed", "open", "default-is-closed"])
def test_fail_mode_with_a_corrupt_database(env: Env, mode: str | None) -> None:
    env.state_dir.mkdir()
    garbage = b"garbage, not SQLite\x00\x01\x02" * 100
    (env.state_dir / "intercept.sqlite").write_bytes(garbage)
    log = env.log("raw.log")
    extra = ("--state-fail-mode", mode) if mode else ()
    proxy = env.start(env.policy(FAIL_MODE_POLICY), "raw", *extra, log=log)
    answers = [tool_call(proxy, i, "echo") for i in range(1, 4)]
    # Calls that need no counter work either way.
    assert text_of(tool_call(proxy, 4, "big", {"size": 3})) == "xxx"
    assert not is_denied(tool_call(proxy, 5, "unlisted"))
    proxy.sync()
    forwarded = [c["id"] for c in raw_calls(log)]
    if mode == "open":
        assert not any(is_denied(a) for a in answers)
        assert forwarded == [1, 2, 3, 4, 5]
        proxy.wait_for_stderr("STATE STORE UNAVAILABLE", count=3)
    else:
        for answer in answers:
            assert is_denied(answer)
            assert "Internal policy error" in text_of(answer)
        assert forwarded == [4, 5]
    assert proxy.proc.poll() is None
    assert (env.state_dir / "intercept.sqlite").read_bytes() == garbage


# -- robustness ------------------------------------------------------------------------------


def test_an_amount_sqlite_cannot_store_does_not_wedge_the_proxy(env: Env) -> None:
    """A counter with no lt/lte limit and `increment_from` fed 1e300: the call must get an answer and
    the proxy must keep serving (not swallow this and every later line)."""
    log = env.log("raw.log")
    policy = env.policy(
        'version: "1"\n'
        "tools:\n"
        "  echo:\n"
        "    rules:\n"
        "      - name: tally\n"
        "        state: {counter: total, window: day, increment_from: args.n}\n"
        "        conditions: [{path: state.echo.total, op: gte, value: 0}]\n"
    )
    proxy = env.start(policy, "raw", log=log)
    proxy.send(call(1, "echo", {"n": 1e300}))
    proxy.send({"jsonrpc": "2.0", "id": "ping", "method": "ping"})
    try:
        first = proxy.read(timeout_s=3)
    except Exception as exc:  # queue.Empty: nothing came back
        pytest.fail(f"no answer to a call with increment_from 1e300 nor to a later ping ({type(exc).__name__})")
    assert first.get("id") in (1, "ping")
    assert not is_denied(tool_call(proxy, 2, "echo", {"n": 2}))
