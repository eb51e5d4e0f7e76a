"""The approval loop around a real third-party server: @modelcontextprotocol/server-filesystem from npm.

The package is installed once into `.cache/npm` (git-ignored). No network means a failing test,
not a skipped one: this is the check that intercept works with a server it did not write.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.approval_support import Session, approval_required, approve, sdk_client, show
from tests.support import ROOT

NPM_DIR = ROOT / ".cache" / "npm"
PACKAGE = "@modelcontextprotocol/server-filesystem"
BIN_NAME = "mcp-server-filesystem"
INSTALL_TIMEOUT_S = 300
POLICY = """
version: "1"
tools:
  write_file:
    rules:
      - name: "writes need a human"
        action: require_approval
"""


@pytest.fixture(scope="session")
def filesystem_server() -> Path:
    """The package's real entry point (from its package.json `bin`), installing it if needed."""
    node = shutil.which("node")
    assert node, "node is required for the filesystem server test"
    if not (NPM_DIR / "node_modules" / ".bin" / BIN_NAME).exists():
        npm = shutil.which("npm")
        assert npm, "npm is required to install the filesystem server"
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NPM_DIR), PACKAGE],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"npm install {PACKAGE} failed:\n{result.stdout}\n{result.stderr}"
    package_dir = NPM_DIR / "node_modules" / PACKAGE
    manifest = json.loads((package_dir / "package.json").read_text())
    bins = manifest["bin"]
    entry = package_dir / (bins if isinstance(bins, str) else bins[BIN_NAME])
    assert entry.is_file(), f"{PACKAGE} has no entry point at {entry}"
    return entry


async def test_write_file_needs_one_approval_per_write(tmp_path: Path, filesystem_server: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    target = root / "hello.txt"
    content = "hello from the agent\n"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    session = Session(policy=policy, state_dir=tmp_path / "state", exec_log=tmp_path / "unused.log")
    upstream = ["node", str(filesystem_server), str(root)]
    arguments = {"path": str(target), "content": content}

    async with sdk_client(session, "legacy", upstream, "--name", "filesystem") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"write_file", "read_text_file"} <= names

        first = await approval_required(client, "write_file", arguments)
        approval_id = first.data["approval_id"]
        assert first.data["server"] == "filesystem"
        assert not target.exists()

        approve(session.state_dir, approval_id)
        result = await client.call_tool("write_file", arguments)
        assert result.is_error is False, result
        assert target.read_text() == content
        assert show(session.state_dir, approval_id)["status"] == "consumed"

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
    assert show(session.state_dir, other.data["approval_id"])["status"] == "pending"


def test_policy_names_the_server_does_not_offer_are_reported(tmp_path: Path, filesystem_server: Path) -> None:
    """A policy that names `edit_files` (the server offers `edit_file`) validates and protects
    nothing: the first tools/list reply makes the proxy say so, on stderr, in an event and in
    `intercept status`; calls are not blocked for it."""

    from tests.approval_support import handshake, intercept, ok
    from tests.support import ProxyProcess, proxy_command

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
    events = ok(intercept("events", "tail", "--json", "--type", "policy_mismatch", "--state-dir", str(state_dir)))
    assert sorted(json.loads(line)["name"] for line in events.splitlines()) == [
        "edit_files",
        "move_files",
        "write_file: args.contents",
    ]
    status = ok(intercept("status", "--state-dir", str(state_dir)))
    assert "tool edit_files (closest: edit_file)" in status
