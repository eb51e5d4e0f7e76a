"""Counters end to end: the real proxy as a subprocess around real upstreams, raw JSON-RPC on its pipes.

What ran upstream is always read from the upstream's own record (raw_server's $FIXTURE_RAW_LOG, or
$FIXTURE_EXEC_LOG of tool_server.py and scripted_server.py), never from the proxy's
word. Counters are checked through behaviour only: a budget that was given back lets the next
call through, one that was kept refuses it.

Counters use the wall clock here, so every test first makes sure it is not in the last seconds of a
UTC hour (all windows used here end on an hour boundary at the latest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    DENIED_PREFIX,
    RAW_UPSTREAM,
    SCRIPTED_UPSTREAM,
    TOOL_UPSTREAM,
    Harness,
    ProxyProcess,
    avoid_the_end_of_an_hour,
    call,
    call_tool,
    cancel_message,
    executed_tools,
    handshake,
    is_denied,
    raw_log_messages,
    read_reply,
    read_until,
    text_of,
    wait_for_started,
)

RATE_3_PER_HOUR = "Rate limit of 3 per hour reached. Try again later."
UPSTREAMS = {"scripted": SCRIPTED_UPSTREAM, "raw": RAW_UPSTREAM, "tools": TOOL_UPSTREAM}


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _not_at_the_end_of_an_hour() -> None:
    """Counters use the wall clock: never start a test in the last 15 s of a UTC hour."""
    avoid_the_end_of_an_hour()


def start(harness: Harness, upstream: str = "scripted", *extra: str, raw_log: Path | None = None) -> ProxyProcess:
    """The proxy named `upstream` around that fixture upstream, on the harness's policy and state
    dir (no handshake); raw_server records to `raw_log` instead of the harness's own when given."""
    return harness.start(UPSTREAMS[upstream], *extra, name=upstream, handshake_first=False, raw_log=raw_log)


def _proxy_id(request_id: Any) -> bool:
    return isinstance(request_id, str) and request_id.startswith("intercept-")


def raw_calls(log: Path) -> list[dict[str, Any]]:
    """tools/call requests raw_server received."""
    return [m for m in raw_log_messages(log) if isinstance(m, dict) and m.get("method") == "tools/call"]


def rate_policy(tool: str, rate: str, extra: str = "") -> str:
    return f'version: "1"\ntools:\n  {tool}:\n    rules:\n      - name: limit\n        rate_limit: "{rate}"\n{extra}'


# -- the basic limit -------------------------------------------------------------------------


def test_rate_limit_denies_the_fourth_call_and_only_three_reach_the_upstream(harness: Harness) -> None:
    log = harness.raw_log
    harness.write_policy(rate_policy("echo", "3/hour"))
    proxy = start(harness, "raw")
    answers = [call_tool(proxy, i, "echo", {"n": i}) for i in range(1, 5)]
    assert [is_denied(a) for a in answers] == [False, False, False, True]
    assert answers[3]["result"] == {"content": [{"type": "text", "text": DENIED_PREFIX + RATE_3_PER_HOUR}], "isError": True}
    # Other tools are not limited by echo's counter.
    assert not is_denied(call_tool(proxy, 5, "big", {"size": 1}))
    proxy.sync()
    # Calls that take counters reach the upstream under ids of the proxy's; the others keep theirs.
    assert [(_proxy_id(c["id"]), c["params"]["name"]) for c in raw_calls(log)] == [
        (True, "echo"),
        (True, "echo"),
        (True, "echo"),
        (False, "big"),
    ]


def test_increment_from_in_the_proxy(harness: Harness) -> None:
    log = harness.raw_log
    harness.write_policy(
        'version: "1"\n'
        "tools:\n"
        "  echo:\n"
        "    rules:\n"
        "      - name: spend\n"
        "        state: {counter: units, window: day, increment_from: args.n}\n"
        "        conditions: [{path: state.echo.units, op: lte, value: 10}]\n"
    )
    proxy = start(harness, "raw")
    internal = {"content": [{"type": "text", "text": DENIED_PREFIX + "Internal policy error"}], "isError": True}
    assert call_tool(proxy, 1, "echo", {})["result"] == internal
    assert call_tool(proxy, 2, "echo", {"n": "5"})["result"] == internal
    assert call_tool(proxy, 3, "echo", {"n": True})["result"] == internal
    assert not is_denied(call_tool(proxy, 4, "echo", {"n": 2.9}))  # takes 3: fractions round up
    assert text_of(call_tool(proxy, 5, "echo", {"n": 7.5})) == DENIED_PREFIX + "Rate limit exceeded for spend"  # 11 > 10
    assert not is_denied(call_tool(proxy, 6, "echo", {"n": 7}))  # 10 of 10
    assert text_of(call_tool(proxy, 7, "echo", {"n": 0.01})) == DENIED_PREFIX + "Rate limit exceeded for spend"
    proxy.sync()
    assert [c["params"]["arguments"] for c in raw_calls(log)] == [{"n": 2.9}, {"n": 7}]


# -- what the upstream's answer does to the reservation ---------------------------------------


@pytest.mark.parametrize("code", [-32700, -32600, -32601])
def test_an_upstream_refusing_the_request_itself_gives_the_quota_back(harness: Harness, code: int) -> None:
    log = harness.exec_log
    harness.write_policy('version: "1"\ntools:\n  "*":\n    rules:\n      - name: global\n        rate_limit: 2/hour\n')
    proxy = start(harness)
    for i in range(1, 4):
        answer = call_tool(proxy, i, "reject", {"code": code})
        assert answer["error"] == {"code": code, "message": "rejected before running"}
    assert not is_denied(call_tool(proxy, 4, "echo"))
    assert not is_denied(call_tool(proxy, 5, "echo"))
    assert is_denied(call_tool(proxy, 6, "echo"))
    assert executed_tools(log) == ["reject", "reject", "reject", "echo", "echo"]


@pytest.mark.parametrize("code", [-32000, -32602, -32603])
def test_any_other_error_answer_keeps_the_quota_taken(harness: Harness, code: int) -> None:
    """A tool can act and then fail: Intercept gives budgets back on any error, we do not."""
    log = harness.exec_log
    harness.write_policy(rate_policy("reject", "1/hour"))
    proxy = start(harness)
    assert call_tool(proxy, 1, "reject", {"code": code})["error"]["code"] == code
    assert text_of(call_tool(proxy, 2, "reject", {"code": code})) == (
        DENIED_PREFIX + "Rate limit of 1 per hour reached. Try again later."
    )
    assert executed_tools(log) == ["reject"]


def test_is_error_result_counts(harness: Harness) -> None:
    log = harness.exec_log
    harness.write_policy(rate_policy("failing", "2/hour"))
    proxy = start(harness)
    for i in (1, 2):
        answer = call_tool(proxy, i, "failing")
        assert answer["result"]["isError"] is True and text_of(answer) == "it broke"
    assert text_of(call_tool(proxy, 3, "failing")) == DENIED_PREFIX + "Rate limit of 2 per hour reached. Try again later."
    assert executed_tools(log) == ["failing", "failing"]


def test_sdk_server_errors_and_tool_errors(harness: Harness) -> None:
    """MCPServer answers an unknown tool and a raising tool with isError results, and malformed
    request params with JSON-RPC error -32602: all of them count (a handler can raise -32602
    after acting)."""
    log = harness.exec_log
    harness.write_policy(
        'version: "1"\n'
        "tools:\n"
        "  echo:\n    rules:\n      - {name: echo limit, rate_limit: 2/hour}\n"
        "  fail:\n    rules:\n      - {name: fail limit, rate_limit: 1/hour}\n"
        "  no_such_tool:\n    rules:\n      - {name: unknown limit, rate_limit: 1/hour}\n"
    )
    proxy = start(harness, "tools")
    handshake(proxy)
    proxy.send({**call(1, "echo", {"text": "x"}), "params": {"name": "echo", "arguments": {"text": "x"}, "_meta": 5}})
    assert read_reply(proxy, 1)["error"]["code"] == -32602
    assert text_of(call_tool(proxy, 4, "echo", {"text": "a"})) == "a"
    assert is_denied(call_tool(proxy, 6, "echo", {"text": "c"}))

    failed = call_tool(proxy, 7, "fail")
    assert failed["result"]["isError"] is True and not is_denied(failed)
    assert is_denied(call_tool(proxy, 8, "fail"))

    unknown = call_tool(proxy, 9, "no_such_tool")
    assert "error" not in unknown, "this SDK answers an unknown tool with an isError result"
    assert unknown["result"]["isError"] is True and not is_denied(unknown)
    assert is_denied(call_tool(proxy, 10, "no_such_tool"))
    assert executed_tools(log) == ["echo", "fail"]


def test_upstream_death_keeps_the_quota_taken_seen_from_a_new_proxy(harness: Harness) -> None:
    """A server that exits mid-call may have acted: its unit stays spent."""
    log = harness.raw_log
    harness.write_policy(rate_policy("exit", "1/hour"))
    first = start(harness, "raw")
    first.send(call(1, "exit", {"code": 3}))
    assert first.wait() == 3

    second = start(harness, "raw")
    assert is_denied(call_tool(second, 1, "exit", {"code": 4}))
    assert [c["params"]["arguments"]["code"] for c in raw_calls(log)] == [3]


def test_answered_and_unanswered_calls_keep_their_units_when_the_upstream_dies(harness: Harness) -> None:
    harness.write_policy('version: "1"\ntools:\n  "*":\n    rules:\n      - name: global\n        rate_limit: 2/hour\n')
    first = start(harness, "raw")
    assert not is_denied(call_tool(first, 1, "echo"))
    first.send(call(2, "exit", {"code": 0}))
    assert first.wait() == 0
    second = start(harness, "raw")
    assert is_denied(call_tool(second, 1, "echo"))  # echo and the unanswered exit: 2 of 2


# -- cancellation ----------------------------------------------------------------------------


def test_cancel_before_the_answer_keeps_the_quota_taken(harness: Harness) -> None:
    """A cancelled call may still run (both SDKs drop the answer of a cancelled request even when
    the tool ran): call-and-cancel loops must not get around a rate limit."""
    log = harness.exec_log
    harness.write_policy(rate_policy("slow", "1/hour"))
    proxy = start(harness, "scripted")
    proxy.send(call(1, "slow"))
    wait_for_started(proxy)
    # While call 1 holds the only unit, another call is refused.
    assert text_of(call_tool(proxy, 2, "slow")) == DENIED_PREFIX + "Rate limit of 1 per hour reached. Try again later."
    proxy.send(cancel_message(99))  # an id that is not in flight changes nothing
    proxy.sync("after-unknown-cancel")
    assert is_denied(call_tool(proxy, 3, "slow"))
    for attempt in range(4, 8):
        proxy.send(cancel_message(1 if attempt == 4 else attempt - 1))
        proxy.sync(f"after-cancel-{attempt}")
        assert is_denied(call_tool(proxy, attempt, "slow"))
    assert executed_tools(log) == ["slow"]


def test_cancel_after_the_answer_gives_nothing_back(harness: Harness) -> None:
    log = harness.exec_log
    harness.write_policy(rate_policy("echo", "1/hour"))
    proxy = start(harness)
    assert not is_denied(call_tool(proxy, 1, "echo"))
    proxy.send(cancel_message(1))
    proxy.sync()
    assert is_denied(call_tool(proxy, 2, "echo"))
    assert executed_tools(log) == ["echo"]


def test_a_cancelled_call_that_runs_anyway_still_counts(harness: Harness) -> None:
    """The upstream ignores the cancel and answers with a result: the tool ran, so its unit is spent.

    Otherwise cancel-then-read-the-late-answer runs a 1/hour tool any number of times.
    """
    log = harness.exec_log
    harness.write_policy(rate_policy("stubborn", "1/hour"))
    proxy = start(harness)
    proxy.send(call(1, "stubborn"))
    wait_for_started(proxy)
    proxy.send(cancel_message(1))
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
    assert executed_tools(log).count("stubborn") == (2 if "method" in answer else 1)
    assert "method" not in answer, "a 1/hour tool ran twice within the hour: call 2 was forwarded"
    assert is_denied(answer)


# -- sharing, prefixes, restarts -------------------------------------------------------------


def test_two_proxies_on_one_state_dir_share_one_budget(harness: Harness) -> None:
    harness.write_policy(rate_policy("echo", "4/hour"))
    a = start(harness, "raw", raw_log=harness.root / "a.log")
    b = start(harness, "raw", raw_log=harness.root / "b.log")
    assert not is_denied(call_tool(a, 1, "echo"))
    assert not is_denied(call_tool(b, 1, "echo"))
    assert not is_denied(call_tool(a, 2, "echo"))
    assert not is_denied(call_tool(b, 2, "echo"))
    assert text_of(call_tool(a, 3, "echo")) == DENIED_PREFIX + "Rate limit of 4 per hour reached. Try again later."
    assert is_denied(call_tool(b, 3, "echo"))
    a.sync()
    b.sync()
    assert len(raw_calls(harness.root / "a.log")) + len(raw_calls(harness.root / "b.log")) == 4


def test_state_prefix_gives_each_proxy_its_own_budget(harness: Harness) -> None:
    harness.write_policy(rate_policy("echo", "2/hour"))
    a = start(harness, "raw", "--state-prefix", "team-a:", raw_log=harness.root / "a.log")
    b = start(harness, "raw", "--state-prefix", "team-b:", raw_log=harness.root / "b.log")
    plain = start(harness, "raw", raw_log=harness.root / "plain.log")
    for proxy in (a, b, plain):
        assert [is_denied(call_tool(proxy, i, "echo")) for i in range(1, 4)] == [False, False, True]
    # A fourth proxy with an existing prefix shares that prefix's (spent) budget.
    again = start(harness, "raw", "--state-prefix", "team-a:", raw_log=harness.root / "again.log")
    assert is_denied(call_tool(again, 1, "echo"))


def test_counters_survive_a_restart(harness: Harness) -> None:
    log = harness.raw_log
    harness.write_policy(rate_policy("echo", "3/hour"))
    first = start(harness, "raw")
    assert not is_denied(call_tool(first, 1, "echo"))
    assert not is_denied(call_tool(first, 2, "echo"))
    assert first.finish() == 0
    second = start(harness, "raw")
    assert not is_denied(call_tool(second, 1, "echo"))
    assert text_of(call_tool(second, 2, "echo")) == DENIED_PREFIX + RATE_3_PER_HOUR
    assert len(raw_calls(log)) == 3


# -- fail mode -------------------------------------------------------------------------------

FAIL_MODE_POLICY = rate_policy("echo", "1/hour") + "  big:\n    rules: []\n"


@pytest.mark.parametrize("mode", ["closed", "open", None], ids=["closed", "open", "default-is-closed"])
def test_fail_mode_with_a_corrupt_database(harness: Harness, mode: str | None) -> None:
    harness.state_dir.mkdir()
    garbage = b"garbage, not SQLite\x00\x01\x02" * 100
    (harness.state_dir / "intercept.sqlite").write_bytes(garbage)
    log = harness.raw_log
    extra = ("--state-fail-mode", mode) if mode else ()
    harness.write_policy(FAIL_MODE_POLICY)
    proxy = start(harness, "raw", *extra)
    answers = [call_tool(proxy, i, "echo") for i in range(1, 4)]
    # Calls that need no counter work either way.
    assert text_of(call_tool(proxy, 4, "big", {"size": 3})) == "xxx"
    assert not is_denied(call_tool(proxy, 5, "unlisted"))
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
    assert (harness.state_dir / "intercept.sqlite").read_bytes() == garbage


# -- robustness ------------------------------------------------------------------------------


def test_an_amount_sqlite_cannot_store_does_not_wedge_the_proxy(harness: Harness) -> None:
    """A counter with no lt/lte limit and `increment_from` fed 1e300: the call must get an answer and
    the proxy must keep serving (not swallow this and every later line)."""
    harness.write_policy(
        'version: "1"\n'
        "tools:\n"
        "  echo:\n"
        "    rules:\n"
        "      - name: tally\n"
        "        state: {counter: total, window: day, increment_from: args.n}\n"
        "        conditions: [{path: state.echo.total, op: gte, value: 0}]\n"
    )
    proxy = start(harness, "raw")
    proxy.send(call(1, "echo", {"n": 1e300}))
    proxy.send({"jsonrpc": "2.0", "id": "ping", "method": "ping"})
    try:
        first = proxy.read(timeout_s=3)
    except Exception as exc:  # queue.Empty: nothing came back
        pytest.fail(f"no answer to a call with increment_from 1e300 nor to a later ping ({type(exc).__name__})")
    assert first.get("id") in (1, "ping")
    assert not is_denied(call_tool(proxy, 2, "echo", {"n": 2}))
