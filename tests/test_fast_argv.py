"""The proxy's command line without click: the plain form is parsed exactly as click would, and
everything else is left to click (so its help and errors stay)."""

from __future__ import annotations

from pathlib import Path

import pytest

from intercept.cmd.run_proxy import ProxyArgs, fast_proxy_args


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-c", "p.yaml", "--", "srv"], ProxyArgs(config=Path("p.yaml"), command=("srv",))),
        (
            ["--config=p.yaml", "--state-dir", "/s", "--name", "n", "--state-prefix=x:", "--state-fail-mode", "open",
             "--log-level", "DEBUG", "--shutdown-grace", "0.5", "--cancel-settle=2", "--", "npx", "-y", "--", "pkg"],
            ProxyArgs(Path("p.yaml"), ("npx", "-y", "--", "pkg"), Path("/s"), "n", "x:", "open", "DEBUG", 0.5, 2.0),
        ),
        (["-c", "a.yaml", "-c", "b.yaml", "--", "srv"], ProxyArgs(config=Path("b.yaml"), command=("srv",))),
    ],
    ids=["minimal", "every-option", "last-wins"],
)
def test_plain_command_lines_are_parsed(argv: list[str], expected: ProxyArgs) -> None:
    assert fast_proxy_args(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "p.yaml", "srv"],  # no `--`: click decides where the command starts
        ["--", "srv"],  # no policy
        ["-c", "p.yaml", "--"],  # no command
        ["-c", "p.yaml", "--log-levl", "debug", "--", "srv"],  # a typo
        ["-c", "p.yaml", "--state-fail-mode", "maybe", "--", "srv"],
        ["-c", "p.yaml", "--shutdown-grace", "-1", "--", "srv"],
        ["-c", "p.yaml", "--shutdown-grace", "nan", "--", "srv"],
        ["-c", "p.yaml", "--cancel-settle", "soon", "--", "srv"],
        ["-c", "p.yaml", "--help"],
        ["-cp.yaml", "--", "srv"],
        ["-c=p.yaml", "--", "srv"],  # click reads the value as "=p.yaml"
        ["-c", "p.yaml", "--state-dir=", "--", "srv"],
        ["-c", "p.yaml", "--state-dir", "", "--", "srv"],
        ["-c", "p.yaml", "--state-dir", "/etc/passwd", "--", "srv"],  # a file: click says so
        ["-c", "", "--", "srv"],
        ["-c"],
    ],
)
def test_anything_else_goes_to_click(argv: list[str]) -> None:
    assert fast_proxy_args(argv) is None
