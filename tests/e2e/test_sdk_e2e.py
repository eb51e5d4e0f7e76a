"""The proxy as a subprocess around an MCPServer fixture, driven by the SDK Client in both eras."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, types

from tests.e2e.support import FIXTURES, MODES, TOOL_UPSTREAM, Harness, exec_records, sdk_client

DEMO_POLICY = FIXTURES / "policies" / "demo.yaml"


def proxied_client(
    tmp_path: Path, mode: str, policy: Path = DEMO_POLICY, **client_options: Any
) -> AbstractAsyncContextManager[Client]:
    """The SDK client on a proxy around tool_server.py with `policy`, state and exec log in tmp_path."""
    harness = Harness(tmp_path)
    harness.policy = policy
    return sdk_client(harness, mode, TOOL_UPSTREAM, **client_options)


@pytest.mark.parametrize("mode", MODES)
async def test_hidden_tool_is_not_listed(tmp_path: Path, mode: str) -> None:
    async with proxied_client(tmp_path, mode) as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
    assert "delete_repository" not in names
    assert {"echo", "write_file", "create_charge", "drop_table"} <= set(names)


@pytest.mark.parametrize("mode", MODES)
async def test_allowed_call_runs_upstream(tmp_path: Path, mode: str) -> None:
    async with proxied_client(tmp_path, mode) as client:
        result = await client.call_tool("create_charge", {"amount": 4200, "currency": "eur"})
    assert result.is_error is False
    assert result.content[0].text == "charged 4200.0 eur"
    assert exec_records(tmp_path / "exec.log") == [
        {"tool": "create_charge", "arguments": {"amount": 4200, "currency": "eur"}}
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("drop_table", {"table": "users"}, "Dropping tables is not permitted via AI agents"),
        ("create_charge", {"amount": 90000, "currency": "usd"}, "Single charge cannot exceed $500.00"),
        ("create_charge", {"amount": 10, "currency": "gbp"}, 'Denied by rule "allowed currencies"'),
        ("delete_repository", {"name": "prod"}, 'Tool "delete_repository" is hidden by policy'),
    ],
    ids=["deny-rule", "condition-on-deny", "default-message", "hidden"],
)
async def test_denied_call_never_runs(
    tmp_path: Path, mode: str, tool: str, arguments: dict[str, Any], message: str
) -> None:
    async with proxied_client(tmp_path, mode) as client:
        result = await client.call_tool(tool, arguments)
        assert (await client.call_tool("echo", {"text": "after"})).content[0].text == "after"
    assert result.is_error is True
    assert result.content[0].text == f"[INTERCEPT POLICY DENIED] {message}"
    assert [e["tool"] for e in exec_records(tmp_path / "exec.log")] == ["echo"]


@pytest.mark.parametrize("mode", MODES)
async def test_tool_error_result_passes_through(tmp_path: Path, mode: str) -> None:
    async with proxied_client(tmp_path, mode) as client:
        result = await client.call_tool("fail", {"reason": "disk full"})
    assert result.is_error is True
    assert result.content[0].text == "Error executing tool fail"
    assert "INTERCEPT" not in result.content[0].text


async def test_elicitation_from_upstream_reaches_the_client(tmp_path: Path) -> None:
    """Handshake era only: a server->client request on the same pipe (stateless servers ask via input_required)."""
    mode = "legacy"
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"confirmed": True})

    async with proxied_client(tmp_path, mode, elicitation_callback=answer) as client:
        result = await client.call_tool("confirm", {"question": "Really?"})
    assert asked == ["Really?"]
    assert result.content[0].text == "accept:True"


@pytest.mark.parametrize("mode", MODES)
async def test_default_deny_policy(tmp_path: Path, mode: str, write_policy: Callable[[str], Path]) -> None:
    policy = write_policy('version: "1"\ndefault: deny\ntools:\n  echo:\n    rules: []\n')
    async with proxied_client(tmp_path, mode, policy=policy) as client:
        allowed = await client.call_tool("echo", {"text": "ok"})
        denied = await client.call_tool("write_file", {"path": "a", "content": "b"})
    assert allowed.content[0].text == "ok"
    assert denied.content[0].text == '[INTERCEPT POLICY DENIED] Tool "write_file" is not permitted by policy'
