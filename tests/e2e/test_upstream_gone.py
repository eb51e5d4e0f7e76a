"""An upstream that closes its stdout but keeps running counts as gone.

Nothing it does can reach the client any more: the proxy answers the requests it watches with an
error saying so, closes its own stdout (the client fails its other requests on EOF), stops the
upstream (stdin closed, then SIGTERM after the grace) and exits with the upstream's status.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.support import RAW_UPSTREAM, ProxyProcess, call, initialize_message, proxy_command

COUNTED = 'version: "1"\ntools:\n  mute:\n    rules:\n      - name: "mute once a minute"\n        rate_limit: 5/minute\n'


def test_an_upstream_that_closes_stdout_and_keeps_running_is_stopped(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(COUNTED)
    proxy = ProxyProcess(
        proxy_command(policy, tmp_path / "state", RAW_UPSTREAM, "--shutdown-grace", "0.5")
    )
    try:
        assert "result" in proxy.request(initialize_message(0))
        proxy.send(call(1, "mute"))  # counted, so watched: the proxy knows it awaits an answer
        answer = proxy.read()
        assert answer["id"] == 1 and answer["error"]["code"] == -32603, answer
        assert "closed its output" in answer["error"]["message"], answer
        try:
            extra = proxy.read(timeout_s=10)
        except EOFError:
            extra = None
        assert extra is None, extra  # our stdout ends there
        assert proxy.wait() == 128 + signal.SIGTERM  # the upstream's own status: it was terminated
        assert "closed its stdout but is still running" in proxy.stderr
    finally:
        proxy.stop()
