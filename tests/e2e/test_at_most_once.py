"""An approved call runs at most once, and a counted call counts once, against real servers.

An approval (or a counter reservation) is given back only when the call provably never started:
the proxy never forwarded it, or the upstream answered JSON-RPC -32700, -32600 or -32601. A cancel,
silence, the upstream exiting or crashing, any other error code, or an `isError` result leaves it
taken. After a cancel, a late reply to the cancelled call is never delivered and the client may
reuse the id at once. `--cancel-settle` is a deprecated no-op.

Proxies here run with `--cancel-settle 0`: a proxy that still gives a cancelled call back after a
settle time does so at once, so the attack (call, cancel, call again) needs no waiting. Every run is
counted from the upstream's own record (the fixture's $FIXTURE_EXEC_LOG, or the file that
@modelcontextprotocol/server-filesystem edited), never from the proxy's replies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    ERROR_CODE_UPSTREAM,
    SCRIPTED_UPSTREAM,
    TYPED_UPSTREAM,
    Harness,
    ProxyProcess,
    approval_id_of,
    ask_and_approve,
    avoid_the_end_of_an_hour,
    await_give_back,
    call,
    call_tool,
    cancel_message,
    denial_text,
    describe,
    executed_tools,
    is_reply,
    line,
    read_reply,
    send_call_and_cancel,
    show,
    started_or_answered,
    sync_collect,
)

RATE_LIMITED = "[INTERCEPT POLICY DENIED] Rate limit of 1 per hour reached. Try again later."
NO_SETTLE = ("--cancel-settle", "0")


def approval_rules(*tools: str) -> str:
    """Every listed tool needs a human; everything else is allowed."""
    rules = "".join(
        f'  {tool}:\n    rules:\n      - name: "{tool} needs a human"\n        action: require_approval\n'
        for tool in tools
    )
    return f'version: "1"\ntools:\n{rules}'


def rate_limited(*tools: str) -> str:
    """Every listed tool may run once an hour."""
    rules = "".join(
        f'  {tool}:\n    rules:\n      - name: "{tool} once an hour"\n        rate_limit: 1/hour\n' for tool in tools
    )
    return f'version: "1"\ntools:\n{rules}'


def call_and_cancel_mid_run(
    proxy: ProxyProcess, request_id: Any, tool: str, arguments: dict[str, Any], forwarded: int
) -> tuple[dict[str, Any] | None, int]:
    """Send the call; if the tool starts upstream, cancel it and give the proxy its chance to hand
    back what the call took. Returns the proxy's own answer (None if forwarded) and the new count
    of forwarded calls."""
    proxy.send(call(request_id, tool, arguments))
    answer = started_or_answered(proxy, request_id)
    if answer is None:
        forwarded += 1
        proxy.send(cancel_message(request_id))
        sync_collect(proxy, f"after-cancel-{request_id}")
        await_give_back(proxy, forwarded)
    return answer, forwarded


# -- 1. a real third-party server: call + cancel in one write, three times ----------------------


def test_filesystem_edit_cancelled_in_the_same_write_applies_at_most_once(
    harness: Harness,
    filesystem_server: Path,
) -> None:
    """A call and its cancel in one write: the cancel reaches the proxy while the call still
    waits for the store, so the call is never forwarded, nothing is answered, and the approval
    is given back, three times over. The next plain call then applies the edit exactly once."""
    root = (harness.root / "served").resolve()
    root.mkdir()
    target = root / "counter.txt"
    target.write_text("a")
    harness.write_policy(approval_rules("edit_file"))
    # Each application of this edit adds one "a": n applications leave n + 1.
    arguments = {"path": str(target), "edits": [{"oldText": "a", "newText": "aa"}]}

    def applications() -> int:
        return target.read_text().count("a") - 1

    proxy = harness.start(["node", str(filesystem_server), str(root)], *NO_SETTLE, name="filesystem")
    approval_id = ask_and_approve(proxy, harness.state_dir, 1, "edit_file", arguments)

    for given_back, request_id in enumerate((10, 11, 12), start=1):
        send_call_and_cancel(proxy, request_id, "edit_file", arguments)
        assert await_give_back(proxy, given_back), f"call {request_id}: the approval was not given back"
        seen = sync_collect(proxy, f"after-{request_id}")
        assert not [m for m in seen if is_reply(m, request_id)], seen  # a cancelled call gets no answer
        assert show(harness.state_dir, approval_id)["status"] == "approved"
    assert applications() == 0

    answer = call_tool(proxy, 20, "edit_file", arguments)
    assert "result" in answer and not answer["result"].get("isError"), answer
    assert applications() == 1 and show(harness.state_dir, approval_id)["status"] == "consumed"
    assert describe(call_tool(proxy, 21, "edit_file", arguments)).startswith("-32003")
    assert applications() == 1


# -- 2. an SDK tool cancelled mid-run ----------------------------------------------------------


def test_sdk_tool_cancelled_mid_run_runs_once_on_one_approval(harness: Harness) -> None:
    harness.write_policy(approval_rules("long_job"))
    arguments = {"job": "migrate the database"}
    proxy = harness.start(TYPED_UPSTREAM, *NO_SETTLE)
    approval_id = ask_and_approve(proxy, harness.state_dir, 1, "long_job", arguments)

    outcomes: list[str] = []
    forwarded = 0
    for request_id in (2, 3, 4):
        answer, forwarded = call_and_cancel_mid_run(proxy, request_id, "long_job", arguments, forwarded)
        outcomes.append(describe(answer))

    runs = harness.ran("long_job")
    status = show(harness.state_dir, approval_id)["status"]
    assert (len(runs), status) == (1, "consumed"), (
        f"one approval ran the tool {len(runs)} times; status {status!r}; the three attempts: {outcomes}"
    )
    assert outcomes[0].startswith("forwarded"), outcomes
    assert all(o.startswith("-32003") for o in outcomes[1:]), outcomes
    assert approval_id not in " ".join(outcomes[1:])


# -- 3, 4. the tool ran, then the answer says it failed ------------------------------------------


@pytest.mark.parametrize(
    ("tool", "first_answer"),
    [("act_then_fail", "JSON-RPC error -32603"), ("act_then_raise", "result")],
    ids=["jsonrpc-error-32603", "isError-result"],
)
def test_a_call_that_ran_then_failed_keeps_its_approval(harness: Harness, tool: str, first_answer: str) -> None:
    harness.write_policy(approval_rules(tool))
    arguments = {"job": "charge the card"}
    proxy = harness.start(TYPED_UPSTREAM)
    approval_id = ask_and_approve(proxy, harness.state_dir, 1, tool, arguments)

    answers = [call_tool(proxy, request_id, tool, arguments) for request_id in (2, 3, 4)]
    outcomes = [describe(a) for a in answers]
    runs = harness.ran(tool)
    status = show(harness.state_dir, approval_id)["status"]
    assert (len(runs), status) == (1, "consumed"), (
        f"one approval ran {tool} {len(runs)} times; status {status!r}; answers: {outcomes}"
    )
    assert outcomes[0].startswith(first_answer), outcomes
    if tool == "act_then_raise":
        assert answers[0]["result"]["isError"] is True and denial_text(answers[0]) is None, answers[0]
    new_ids = {approval_id_of(a) for a in answers[1:]}
    assert None not in new_ids and approval_id not in new_ids, outcomes


# -- 5. the session ends (or the upstream dies) while the approved call is in flight ---------------


@pytest.mark.parametrize("how", ["stdin-closed-mid-run", "stdin-closed-right-after-sending", "upstream-crashes"])
def test_a_call_in_flight_when_the_session_ends_needs_a_new_approval(harness: Harness, how: str) -> None:
    tool = "act_then_exit" if how == "upstream-crashes" else "long_job"
    harness.write_policy(approval_rules(tool))
    arguments = {"job": "rotate the keys"}
    grace = ("--shutdown-grace", "0.2")

    first = harness.start(TYPED_UPSTREAM, *grace)
    approval_id = ask_and_approve(first, harness.state_dir, 1, tool, arguments)
    if how == "stdin-closed-right-after-sending":
        first.send_raw(line(call(2, tool, arguments)))
        first.close_stdin()
    else:
        first.send(call(2, tool, arguments))
        if how == "stdin-closed-mid-run":
            assert started_or_answered(first, 2) is None  # the tool is running upstream
            first.close_stdin()
    first.wait()
    runs_before = len(harness.ran(tool))

    second = harness.start(TYPED_UPSTREAM, *grace)
    second.send(call(3, tool, arguments))
    answer = started_or_answered(second, 3) if tool == "long_job" else _answer_or_exit(second, 3)
    runs = harness.ran(tool)
    status = show(harness.state_dir, approval_id)["status"]
    assert len(runs) <= 1 and answer is not None and approval_id_of(answer) not in (None, approval_id), (
        f"the tool ran {len(runs)} times in total ({runs_before} in the first session); the identical call in a "
        f"new session was {describe(answer)}; the first approval is {status!r}"
    )
    assert status == "consumed"


def _answer_or_exit(proxy: ProxyProcess, request_id: Any) -> dict[str, Any] | None:
    """The reply to `request_id`, or None if the upstream exited first (the call ran and killed
    it): the proxy then answers a request it watches with -32603 saying so, or just ends."""
    try:
        answer = read_reply(proxy, request_id)
    except EOFError:
        return None
    error = answer.get("error") or {}
    if error.get("code") == -32603 and "exited before answering" in str(error.get("message")):
        return None
    return answer


# -- 6. counters ---------------------------------------------------------------------------------


def test_call_and_cancel_loop_cannot_get_around_a_rate_limit(harness: Harness) -> None:
    avoid_the_end_of_an_hour()
    harness.write_policy(rate_limited("long_job"))
    proxy = harness.start(TYPED_UPSTREAM, *NO_SETTLE)
    arguments = {"job": "send the newsletter"}

    outcomes: list[str] = []
    forwarded = 0
    for request_id in range(1, 6):
        answer, forwarded = call_and_cancel_mid_run(proxy, request_id, "long_job", arguments, forwarded)
        outcomes.append(describe(answer))
    proxy.send(call(6, "long_job", arguments))
    last = started_or_answered(proxy, 6)
    outcomes.append(describe(last))

    runs = harness.ran("long_job")
    assert len(runs) <= 1, f"a 1/hour rate limit let the tool run {len(runs)} times; the six calls: {outcomes}"
    assert outcomes[0].startswith("forwarded"), outcomes
    assert all(o == f"denied: {RATE_LIMITED}" for o in outcomes[1:]), outcomes


@pytest.mark.parametrize("tool", ["act_then_fail", "act_then_exit"])
def test_a_counted_call_that_ran_then_failed_stays_counted(harness: Harness, tool: str) -> None:
    avoid_the_end_of_an_hour()
    harness.write_policy(rate_limited(tool))
    arguments = {"job": "wire the money"}
    first = harness.start(TYPED_UPSTREAM)
    first.send(call(1, tool, arguments))
    if tool == "act_then_exit":
        assert _answer_or_exit(first, 1) is None
        second = harness.start(TYPED_UPSTREAM)  # the same state dir: counters are shared
    else:
        assert read_reply(first, 1)["error"]["code"] == -32603
        second = first
    second.send(call(2, tool, arguments))
    answer = _answer_or_exit(second, 2)
    runs = harness.ran(tool)
    assert len(runs) == 1 and answer is not None and denial_text(answer) == RATE_LIMITED, (
        f"a 1/hour rate limit let {tool} run {len(runs)} times; the second call was {describe(answer)}"
    )


# -- 7. give-back only when the call provably never started -------------------------------------


@pytest.mark.parametrize("code", [-32700, -32600, -32601])
def test_an_error_proving_the_call_never_started_gives_the_approval_back(harness: Harness, code: int) -> None:
    harness.write_policy(approval_rules("flaky"))
    arguments = {"code": code, "job": "deploy"}
    proxy = harness.start(ERROR_CODE_UPSTREAM)
    approval_id = ask_and_approve(proxy, harness.state_dir, 1, "flaky", arguments)

    refused = call_tool(proxy, 2, "flaky", arguments)
    assert refused["error"]["code"] == code, refused
    assert show(harness.state_dir, approval_id)["status"] == "approved"
    retry = call_tool(proxy, 3, "flaky", arguments)
    assert retry.get("result", {}).get("content") == [{"type": "text", "text": "ran flaky"}], describe(retry)
    assert [r["outcome"] for r in harness.exec_records()] == [f"error {code}", "ran"]
    assert show(harness.state_dir, approval_id)["status"] == "consumed"


@pytest.mark.parametrize("code", [-32602, -32603, -32000, -32800])
def test_any_other_error_keeps_the_approval_consumed(harness: Harness, code: int) -> None:
    harness.write_policy(approval_rules("flaky"))
    arguments = {"code": code, "job": "deploy"}
    proxy = harness.start(ERROR_CODE_UPSTREAM)
    approval_id = ask_and_approve(proxy, harness.state_dir, 1, "flaky", arguments)

    refused = call_tool(proxy, 2, "flaky", arguments)
    assert refused["error"]["code"] == code, refused
    status = show(harness.state_dir, approval_id)["status"]
    retry = call_tool(proxy, 3, "flaky", arguments)
    outcomes = [r["outcome"] for r in harness.exec_records()]
    assert (status, outcomes) == ("consumed", [f"error {code}"]), (
        f"after error {code} the approval was {status!r}; the identical retry was then {describe(retry)}; "
        f"the server saw {outcomes}"
    )
    assert approval_id_of(retry) not in (None, approval_id), describe(retry)


@pytest.mark.parametrize(("code", "given_back"), [(-32601, True), (-32600, True), (-32602, False), (-32603, False)])
def test_counters_are_given_back_only_when_the_call_never_started(
    harness: Harness, code: int, given_back: bool
) -> None:
    avoid_the_end_of_an_hour()
    harness.write_policy(rate_limited("flaky"))
    arguments = {"code": code, "job": "deploy"}
    proxy = harness.start(ERROR_CODE_UPSTREAM)
    assert call_tool(proxy, 1, "flaky", arguments)["error"]["code"] == code
    retry = call_tool(proxy, 2, "flaky", arguments)
    outcomes = [r["outcome"] for r in harness.exec_records()]
    if given_back:
        assert outcomes == [f"error {code}", "ran"], describe(retry)
        assert "result" in retry and denial_text(retry) is None, describe(retry)
    else:
        assert (outcomes, denial_text(retry)) == ([f"error {code}"], RATE_LIMITED), (
            f"after error {code} the retry was {describe(retry)}; the server saw {outcomes}"
        )


# -- after a cancel: no late reply, and the id is free at once -----------------------------------


def test_late_reply_to_a_cancelled_call_is_dropped_and_the_id_reusable(harness: Harness) -> None:
    """The scripted upstream's `stubborn` tool answers a call when it is cancelled (MCP allows it)."""
    harness.write_policy(approval_rules("stubborn"))
    arguments = {"job": "send the newsletter"}
    proxy = harness.start(SCRIPTED_UPSTREAM)
    approval_id = ask_and_approve(proxy, harness.state_dir, 1, "stubborn", arguments)

    proxy.send(call(2, "stubborn", arguments))
    assert started_or_answered(proxy, 2) is None
    # The cancel, and at once a new request reusing id 2.
    proxy.send_raw(line(cancel_message(2)) + line({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
    seen = sync_collect(proxy, "after-reuse")
    with_id_2 = [m for m in seen if is_reply(m, 2)]
    assert with_id_2 == [{"jsonrpc": "2.0", "id": 2, "result": {}}], (
        f"the client got {with_id_2} for id 2; wanted only the ping's answer (the cancelled call's late reply dropped)"
    )
    assert executed_tools(harness.exec_log) == ["stubborn"]
    assert show(harness.state_dir, approval_id)["status"] == "consumed"


# -- 8. --cancel-settle is deprecated ------------------------------------------------------------


def test_cancel_settle_is_a_deprecated_no_op(harness: Harness) -> None:
    harness.write_policy(approval_rules("slow"))
    proxy = harness.start(SCRIPTED_UPSTREAM, "--cancel-settle", "2")
    answer = call_tool(proxy, 1, "echo", {"text": "still serving"})
    assert answer["result"]["content"][0]["text"] == "still serving"
    assert executed_tools(harness.exec_log) == ["echo"]
    try:
        proxy.wait_for_stderr("deprecated", timeout_s=5.0)
    except TimeoutError:
        pytest.fail(f"no deprecation warning for --cancel-settle on stderr:\n{proxy.stderr}")
    assert "cancel-settle" in next(ln for ln in proxy.stderr.splitlines() if "deprecated" in ln)
