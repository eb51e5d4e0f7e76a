"""The approval loop around a real third-party server: @modelcontextprotocol/server-filesystem from npm.

The package is installed once into `.cache/npm` (git-ignored) by the `filesystem_server` fixture
(tests/e2e/conftest.py). No network means a failing test, not a skipped one: this is the check
that intercept works with a server it did not write.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.support import (
    WRITE_NEEDS_APPROVAL,
    Harness,
    ProxyProcess,
    approval_required,
    approve,
    handshake,
    ok,
    proxy_command,
    run_cli,
    sdk_client,
    show,
)


async def test_write_file_needs_one_approval_per_write(harness: Harness, filesystem_server: Path) -> None:
    root = harness.root / "root"
    root.mkdir()
    target = root / "hello.txt"
    content = "hello from the agent\n"
    harness.write_policy(WRITE_NEEDS_APPROVAL)
    upstream = ["node", str(filesystem_server), str(root)]
    arguments = {"path": str(target), "content": content}

    async with sdk_client(harness, "legacy", upstream, "--name", "filesystem") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"write_file", "read_text_file"} <= names

        first = await approval_required(client, "write_file", arguments)
        approval_id = first.data["approval_id"]
        assert first.data["server"] == "filesystem"
        assert not target.exists()

        approve(harness.state_dir, approval_id)
        result = await client.call_tool("write_file", arguments)
        assert result.is_error is False, result
        assert target.read_text() == content
        assert show(harness.state_dir, approval_id)["status"] == "consumed"

        # An allowed call reaches the server and reads what the approved call wrote.
        read = await client.call_tool("read_text_file", {"path": str(target)})
        assert read.is_error is False
        assert read.content[0].text == content

        # Change the file behind the server's back: a forwarded retry would overwrite it.
        target.write_text("changed by the test\n")
        retry = await approval_required(client, "write_file", arguments)
        assert retry.data["approval_id"] != approval_id
        assert target.read_text() == "changed by the test\n"

        other = await approval_required(client, "write_file", {"path": str(target), "content": "second version\n"})
        assert other.data["approval_id"] not in (approval_id, retry.data["approval_id"])
        assert target.read_text() == "changed by the test\n"

    assert sorted(p.name for p in root.iterdir()) == ["hello.txt"]
    assert show(harness.state_dir, other.data["approval_id"])["status"] == "pending"


def test_policy_names_the_server_does_not_offer_are_reported(tmp_path: Path, filesystem_server: Path) -> None:
    """A policy that names `edit_files` (the server offers `edit_file`) validates and protects
    nothing: the first tools/list reply makes the proxy say so, on stderr, in an event and in
    `intercept status`; calls are not blocked for it."""

    root = tmp_path / "root"
    root.mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        'version: "1"\nhide: [move_files]\ntools:\n  edit_files:\n    rules:\n      - {name: edits need a human, action: require_approval}\n'
        "  write_file:\n    rules:\n      - name: only text\n        conditions: [{path: args.contents, op: exists, value: false}]\n"
    )
    state_dir = tmp_path / "state"
    proxy = ProxyProcess(proxy_command(policy, state_dir, ["node", str(filesystem_server), str(root)]))
    try:
        handshake(proxy)
        proxy.send({"jsonrpc": "2.0", "id": "list", "method": "tools/list"})
        assert {t["name"] for t in proxy.read()["result"]["tools"]} >= {"edit_file", "move_file"}
        proxy.wait_for_stderr("argument path write_file: args.contents")
        stderr = proxy.stderr
        assert "policy tool edit_files matches nothing the server offers (closest: edit_file)" in stderr
        assert "policy hide entry move_files matches nothing the server offers (closest: move_file)" in stderr
        assert "argument path write_file: args.contents matches nothing the server offers (closest: content)" in stderr
        proxy.send({"jsonrpc": "2.0", "id": "list2", "method": "tools/list"})
        proxy.read()
        proxy.sync()
        assert proxy.stderr.count("edit_files matches nothing") == 1  # once per session
    finally:
        proxy.stop()
    events = ok(run_cli("events", "tail", "--json", "--type", "policy_mismatch", "--state-dir", str(state_dir)))
    assert sorted(json.loads(line)["name"] for line in events.splitlines()) == [
        "edit_files",
        "move_files",
        "write_file: args.contents",
    ]
    status = ok(run_cli("status", "--state-dir", str(state_dir)))
    assert "tool edit_files (closest: edit_file)" in status
