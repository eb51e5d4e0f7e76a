"""The inbox's pages through the app in-process: the page and its files are served under the
CSP, a token pasted into the login form opens a session, and logging out needs its CSRF token.
(The page at work in a real browser: tests/e2e/test_console_browser.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from intercept.console.app import ConsoleConfig, build_app
from intercept.console.auth import SESSION_COOKIE, BoundAddress, admin_secret, admin_token

ADDRESS = BoundAddress("127.0.0.1", 8000)


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(build_app(ConsoleConfig(tmp_path, ADDRESS)), base_url=ADDRESS.base_url, follow_redirects=False)


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/", "text/html"),
        ("/static/inbox.js", "text/javascript"),
        ("/static/inbox.css", "text/css"),
        ("/login", "text/html"),
        ("/approvals/apr_0123456789abcdef0123456789abcdef", "text/html"),
    ],
    ids=["index", "script", "styles", "login form", "a webhook's link to a request"],
)
def test_pages_are_served_under_the_csp(client: TestClient, path: str, media_type: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # With no-referrer, Chromium sends `Origin: null` on the page's own form posts (login, logout),
    # which the Origin check must refuse; same-origin still sends nothing to other sites.
    assert response.headers["referrer-policy"] == "same-origin"


def test_the_pages_have_no_inline_script_or_style() -> None:
    static = Path(__file__).parent.parent / "intercept" / "console" / "static"
    for page in ("index.html", "login.html"):
        text = (static / page).read_text()
        assert "style=" not in text and "<style" not in text and "<script>" not in text, page


def test_login_with_a_token_then_logout_with_the_csrf_token(client: TestClient, tmp_path: Path) -> None:
    assert client.post("/login", data={"token": "itk_wrong"}).status_code == 401
    logged_in = client.post("/login", data={"token": admin_token(admin_secret(tmp_path))})
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/"
    assert SESSION_COOKIE in logged_in.cookies
    client.cookies.set(SESSION_COOKIE, logged_in.cookies[SESSION_COOKIE])
    csrf = client.get("/api/session").json()["csrf"]

    assert client.post("/logout", data={"csrf": "wrong"}).status_code == 403
    logged_out = client.post("/logout", data={"csrf": csrf})
    assert logged_out.status_code == 303 and logged_out.headers["location"] == "/login"
    assert client.get("/api/session").status_code == 401
