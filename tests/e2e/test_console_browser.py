"""The web inbox in a real browser: Debian's Chromium, driven by Playwright, on `intercept serve`
beside a real proxy around the fixture tool server, with the agent's calls sent over the proxy's
raw pipes.

What a person does: open the one-time login link, watch two held calls appear without reloading,
read their exact arguments (a 2,000-character string in full; secret-looking parts highlighted,
then hidden by "Mask secrets"), approve one with a reason and deny the other; the agent's retries
then run the approved call once and get the denial for the other. And what a page on another
origin can do with the same browser's session: nothing.

Browsers are never downloaded: the test uses /usr/bin/chromium (Debian's `chromium` package, which
.ci/run installs as root) and is skipped without it, or fails under CI=true. A screenshot of the
inbox is written to tests/artifacts/console-inbox.png.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.e2e.support import (
    READ_TIMEOUT_S,
    TOOL_UPSTREAM,
    WRITE_NEEDS_APPROVAL,
    Harness,
    ProxyProcess,
    base_env,
    call_tool,
    denial_text,
    ok,
    pending_id,
    run_cli,
    show,
    text_of,
)
from tests.support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "console-inbox.png"
UI_TIMEOUT_MS = READ_TIMEOUT_S * 1000
LOGIN_LINK = re.compile(r"(http://\S+/login\?code=\S+)")

POLICY = WRITE_NEEDS_APPROVAL
LONG_TEXT = ("all work and no play makes a long line " * 60)[:2000]  # spaces: not secret-looking
APPROVED_ARGS = {"path": "/srv/notes/approved.txt", "content": LONG_TEXT}
SECRETS = ["password=hunter2hunter2", "sk-proj-abcdefghijklmnopqrstuvwx"]
DENIED_ARGS = {"path": "/srv/notes/denied.txt", "content": f"db {SECRETS[0]} and key {SECRETS[1]} end"}


def _chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    message = (
        f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium) for the browser tests"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module (a start costs seconds)."""
    executable = _chromium()
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=str(executable), headless=True)
        yield found
        found.close()


class Console:
    """`intercept serve --addr 127.0.0.1:0` on the harness's state dir, and its login link."""

    def __init__(self, harness: Harness) -> None:
        command = [
            sys.executable,
            "-m",
            "intercept",
            "serve",
            "--state-dir",
            str(harness.state_dir),
            "--addr",
            "127.0.0.1:0",
        ]
        self.process = ProxyProcess(command, env=base_env())
        self.process.wait_for_stderr("/login?code=")
        found = LOGIN_LINK.search(self.process.stderr)
        assert found, self.process.stderr
        self.login_url = found.group(1)
        self.base_url = self.login_url.split("/login", 1)[0]

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def console(harness: Harness) -> Iterator[Console]:
    started = Console(harness)
    yield started
    started.stop()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    found = browser.new_context(viewport={"width": 1100, "height": 1400})
    found.set_default_timeout(UI_TIMEOUT_MS)
    yield found
    found.close()


def _open_inbox(context: BrowserContext, console: Console) -> Page:
    page = context.new_page()
    page.goto(console.login_url)
    expect(page).to_have_url(f"{console.base_url}/")
    expect(page.locator("#connection")).to_have_text("live")
    return page


def _card(page: Page, approval_id: str) -> Any:
    return page.locator(f'article.card[data-approval-id="{approval_id}"]')


def test_approve_and_deny_from_the_inbox(harness: Harness, console: Console, context: BrowserContext) -> None:
    harness.write_policy(POLICY)
    proxy = harness.start(TOOL_UPSTREAM)
    page = _open_inbox(context, console)
    expect(page.locator("#pending-empty")).to_be_visible()

    approved_id = pending_id(call_tool(proxy, 1, "write_file", APPROVED_ARGS))
    denied_id = pending_id(call_tool(proxy, 2, "write_file", DENIED_ARGS))

    # Both appear without a reload, with their exact arguments.
    approved_card, denied_card = _card(page, approved_id), _card(page, denied_id)
    expect(approved_card).to_be_visible()
    expect(denied_card).to_be_visible()
    expect(approved_card.get_by_role("button", name="Approve")).to_be_enabled()
    expect(denied_card.get_by_role("button", name="Deny")).to_be_enabled()
    expect(approved_card).to_contain_text("writes need a human")
    expect(approved_card).to_contain_text("one run of this exact call")  # what approving allows (scope)
    assert json.loads(approved_card.locator("pre.json").text_content() or "") == APPROVED_ARGS
    assert LONG_TEXT in (approved_card.locator("pre.json").text_content() or "")
    assert json.loads(denied_card.locator("pre.json").inner_text()) == DENIED_ARGS

    # Secret-looking parts are highlighted, then hidden (not removed) by the mask toggle.
    secrets = denied_card.locator(".secret-text")
    expect(secrets).to_have_text(SECRETS)
    expect(secrets.first).to_be_visible()
    background = secrets.first.evaluate("node => getComputedStyle(node.parentElement).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent"), background
    page.screenshot(path=str(_screenshot_path()), full_page=True)
    print(f"screenshot of the inbox: {SCREENSHOT}")
    page.get_by_label("Mask secrets").check()
    expect(secrets.first).to_be_hidden()
    expect(denied_card.locator(".secret-mask")).to_have_count(2)
    expect(denied_card.locator(".secret-mask").first).to_be_visible()
    shown = denied_card.locator("pre.json").inner_text()
    assert "hunter2" not in shown and "sk-proj" not in shown and "db " in shown and "••••••" in shown
    page.get_by_label("Mask secrets").uncheck()
    expect(secrets.first).to_be_visible()

    # Decide: one approved with a reason, one denied.
    approved_card.get_by_label("Reason (optional)").fill("looks right")
    approved_card.get_by_role("button", name="Approve").click()
    expect(page.locator("#notices")).to_contain_text(f"Approved write_file on fixture ({approved_id})")
    expect(approved_card).to_have_count(0)
    denied_card.get_by_label("Reason (optional)").fill("not that file")
    denied_card.get_by_role("button", name="Deny").click()
    expect(page.locator("#notices")).to_contain_text(f"Denied write_file on fixture ({denied_id})")
    expect(denied_card).to_have_count(0)
    expect(page.locator("#pending-empty")).to_be_visible()
    assert show(harness.state_dir, approved_id)["reason"] == "looks right"

    # The agent's retries: the approved call runs once, the denied one gets the denial.
    retried = call_tool(proxy, 3, "write_file", APPROVED_ARGS)
    assert "error" not in retried and not retried["result"].get("isError"), retried
    assert text_of(retried) == f"wrote 2000 bytes to {APPROVED_ARGS['path']}"
    refused = call_tool(proxy, 4, "write_file", DENIED_ARGS)
    text = denial_text(refused)
    assert text is not None and "denied" in text and "not that file" in text, refused
    assert harness.ran("write_file") == [APPROVED_ARGS]

    # History follows, live: the approved request is now consumed.
    expect(page.locator(f'#history-rows tr[data-approval-id="{approved_id}"]')).to_contain_text("consumed")
    denied_row = page.locator(f'#history-rows tr[data-approval-id="{denied_id}"]')
    expect(denied_row).to_contain_text("denied")
    expect(denied_row).to_contain_text("not that file")
    expect(page.locator("#stat-pending")).to_have_text("0")
    expect(page.locator("#stat-proxies")).to_have_text(re.compile(r"^[1-9]"))

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{console.base_url}/login")
    page.goto(f"{console.base_url}/")
    expect(page).to_have_url(f"{console.base_url}/login")  # the session is gone: the inbox sends us back
    page.get_by_label("Admin token").fill(
        ok(run_cli("admin", "token", "--as", "alice", "--state-dir", str(harness.state_dir))).strip()
    )
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{console.base_url}/")
    expect(page.locator("#actor")).to_have_text("alice")


def test_a_page_on_another_origin_cannot_approve(
    harness: Harness, console: Console, context: BrowserContext, tmp_path: Path
) -> None:
    harness.write_policy(POLICY)
    proxy = harness.start(TOOL_UPSTREAM)
    approval_id = pending_id(call_tool(proxy, 1, "write_file", APPROVED_ARGS))
    inbox = _open_inbox(context, console)  # this browser holds a logged-in session
    expect(_card(inbox, approval_id)).to_be_visible()

    site = tmp_path / "attacker"
    site.mkdir()
    targets = [
        f"{console.base_url}/api/approvals/{approval_id}/approve",
        f"{console.base_url}/api/approve/{approval_id}",
    ]
    (site / "index.html").write_text("<!doctype html><title>evil</title><script src='attack.js'></script>")
    (site / "attack.js").write_text(
        f"const targets = {json.dumps(targets)};\n"
        "const tries = [];\n"
        "for (const url of targets) {\n"
        "  for (const mode of ['cors', 'no-cors']) {\n"
        "    tries.push(fetch(url, {method: 'POST', credentials: 'include', mode, body: '{}'})\n"
        "      .then(r => mode + ' ' + r.status, e => mode + ' ' + e));\n"
        "  }\n"
        "}\n"
        "Promise.all(tries).then(results => { document.title = 'done: ' + results.join(', '); });\n"
    )
    handler = functools.partial(_QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as attacker:
        threading.Thread(target=attacker.serve_forever, daemon=True).start()
        try:
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/index.html")
            expect(page).to_have_title(re.compile("^done: "))
        finally:
            attacker.shutdown()

    assert show(harness.state_dir, approval_id)["status"] == "pending"
    assert not [line for line in _console_events(harness) if line.get("type") == "approval_decided"]
    expect(_card(inbox, approval_id).get_by_role("button", name="Approve")).to_be_enabled()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _console_events(harness: Harness) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for path in sorted((harness.state_dir / "events").glob("*.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return events


def _screenshot_path() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT
