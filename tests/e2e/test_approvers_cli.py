"""`intercept approvers keygen` and `public-key` as subprocesses on real files: the passphrase
piped on stdin, read from a file or typed on a real terminal (a pty: hidden, asked twice); the
policy line they print; what they refuse (an existing key, a planted symlink, a key or passphrase
file others can read, the wrong passphrase, an empty one, a bad name), always in one line
(the key functions themselves: tests/test_approver_keys.py)."""

from __future__ import annotations

import os
import pty
import re
import select
import stat
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from intercept.approvals.approver_keys import parse_public_line, public_line
from intercept.audit.policy_archive import archive_policy
from intercept.policy import parse_policy
from tests.e2e.support import READ_TIMEOUT_S, base_env, ok, one_line_error, run_cli
from tests.support import ROOT

PASSPHRASE = "a passphrase nobody guesses"
POLICY_LINE = re.compile(r'^  (?P<name>\S+): \{roles: \[\], key: "(?P<key>ed25519:[A-Za-z0-9+/]{43}=)"\}\n$')


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "config"


@pytest.fixture
def env(tmp_path: Path, config: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return base_env(XDG_CONFIG_HOME=str(config), HOME=str(home))


def key_path(config: Path, name: str) -> Path:
    return config / "intercept" / "approvers" / f"{name}.key"


def keygen(env: dict[str, str], *args: str, stdin: str = PASSPHRASE + "\n") -> str:
    """`intercept approvers keygen ARGS` with `stdin`; asserts success; returns the public line."""
    result = run_cli("approvers", "keygen", *args, env=env, stdin=stdin)
    match = POLICY_LINE.match(ok(result))
    assert match, result.stdout
    return match["key"]


def public_key(env: dict[str, str], *args: str, stdin: str = PASSPHRASE + "\n") -> str:
    return ok(run_cli("approvers", "public-key", *args, env=env, stdin=stdin)).rstrip("\n")


def no_traceback_one_line(result: object, *fragments: str) -> str:
    line = one_line_error(result)  # type: ignore[arg-type]
    assert line.startswith("intercept: "), line
    assert PASSPHRASE not in line
    for fragment in fragments:
        assert fragment in line, line
    return line


# -- keygen and public-key with the passphrase piped -------------------------------------------------


def test_keygen_pipes_the_passphrase_and_public_key_gives_the_same_line(env: dict[str, str], config: Path) -> None:
    result = run_cli("approvers", "keygen", "alice", env=env, stdin=PASSPHRASE + "\n")
    match = POLICY_LINE.match(ok(result))
    assert match and match["name"] == "alice", result.stdout
    path = key_path(config, "alice")
    assert result.stderr == f"intercept: alice's private key is in {path}, encrypted with your passphrase\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((config / "intercept").stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert public_line(parse_public_line(match["key"])) == match["key"]
    assert public_key(env, "alice") == match["key"]


def test_the_wrong_passphrase_is_one_line_without_a_traceback(env: dict[str, str], config: Path) -> None:
    keygen(env, "alice")
    result = run_cli("approvers", "public-key", "alice", env=env, stdin="not the passphrase\n")
    line = no_traceback_one_line(result, "wrong passphrase", str(key_path(config, "alice")))
    assert "not the passphrase" not in line and "Traceback" not in result.stderr


def test_no_passphrase_on_stdin_is_one_line(env: dict[str, str]) -> None:
    no_traceback_one_line(run_cli("approvers", "keygen", "alice", env=env, stdin=""), "no passphrase", "stdin")
    keygen(env, "alice")
    no_traceback_one_line(run_cli("approvers", "public-key", "alice", env=env, stdin=""), "no passphrase")


def test_an_empty_passphrase_is_refused(env: dict[str, str], config: Path) -> None:
    no_traceback_one_line(run_cli("approvers", "keygen", "alice", env=env, stdin="\n"), "empty", "--no-passphrase")
    assert not key_path(config, "alice").exists()


def test_no_passphrase_key_asks_nothing(env: dict[str, str], config: Path) -> None:
    result = run_cli("approvers", "keygen", "bob", "--no-passphrase", env=env, stdin="")
    line = POLICY_LINE.match(ok(result))
    assert line
    assert "NOT encrypted" in result.stderr and len(result.stderr.splitlines()) == 1
    assert key_path(config, "bob").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key(env, "bob", stdin="") == line["key"]


def test_out_and_key_name_another_file(env: dict[str, str], tmp_path: Path, config: Path) -> None:
    out = tmp_path / "elsewhere" / "mine.key"
    line = keygen(env, "carol", "--out", str(out))
    assert out.exists() and not key_path(config, "carol").exists()
    assert public_key(env, "carol", "--key", str(out)) == line
    missing = run_cli("approvers", "public-key", "carol", env=env, stdin="")
    no_traceback_one_line(missing, "no approver key at", "intercept approvers keygen carol")


def test_a_relative_xdg_config_home_is_ignored(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = base_env(XDG_CONFIG_HOME="relative/config", HOME=str(home))
    keygen(env, "dave")
    assert (home / ".config" / "intercept" / "approvers" / "dave.key").exists()
    assert not (ROOT / "relative").exists()


def test_a_name_that_is_not_a_safe_file_name_is_refused(env: dict[str, str], config: Path) -> None:
    for name in ("../../escape", ".hidden", "a/b", "evil\x1b[2J"):
        line = no_traceback_one_line(run_cli("approvers", "keygen", name, env=env, stdin=PASSPHRASE), "cannot name")
        assert "\x1b" not in line
    assert not config.exists()


def test_a_yaml_special_name_is_quoted_in_the_policy_line(env: dict[str, str]) -> None:
    result = run_cli("approvers", "keygen", "null", "--no-passphrase", env=env, stdin="")
    assert ok(result).startswith('  "null": {roles: [], key: "ed25519:')


# -- what keygen refuses --------------------------------------------------------------------------------


def test_an_existing_key_is_kept_without_force_and_replaced_with_it(env: dict[str, str], config: Path) -> None:
    first = keygen(env, "alice")
    before = key_path(config, "alice").read_bytes()
    again = run_cli("approvers", "keygen", "alice", env=env, stdin=PASSPHRASE + "\n")
    no_traceback_one_line(again, "already exists", "--force")
    assert key_path(config, "alice").read_bytes() == before
    second = keygen(env, "alice", "--force", stdin="another passphrase\n")
    assert second != first
    assert public_key(env, "alice", stdin="another passphrase\n") == second


def test_a_planted_symlink_is_refused_and_its_target_untouched(
    env: dict[str, str], config: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("do not touch\n")
    path = key_path(config, "alice")
    path.parent.mkdir(parents=True)
    path.symlink_to(victim)
    for extra in ((), ("--force",)):
        result = run_cli("approvers", "keygen", "alice", *extra, env=env, stdin=PASSPHRASE + "\n")
        no_traceback_one_line(result, "symlink")
    assert victim.read_text() == "do not touch\n" and path.is_symlink()
    victim.write_bytes(b"")
    no_traceback_one_line(run_cli("approvers", "public-key", "alice", env=env, stdin=PASSPHRASE), "symlink")


def test_a_key_others_can_read_is_refused(env: dict[str, str], config: Path) -> None:
    keygen(env, "alice")
    path = key_path(config, "alice")
    path.chmod(0o640)
    result = run_cli("approvers", "public-key", "alice", env=env, stdin=PASSPHRASE + "\n")
    no_traceback_one_line(result, "mode 0640", f"chmod 600 {path}")


# -- --passphrase-file ---------------------------------------------------------------------------------


def test_a_passphrase_file_of_yours_works_and_an_open_one_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    line = keygen(env, "erin", "--passphrase-file", str(secret), stdin="")
    assert public_key(env, "erin", stdin=PASSPHRASE + "\n") == line
    assert public_key(env, "erin", "--passphrase-file", str(secret), stdin="") == line
    secret.chmod(0o644)
    result = run_cli("approvers", "public-key", "erin", "--passphrase-file", str(secret), env=env, stdin="")
    no_traceback_one_line(result, "passphrase file", "chmod 600")
    both = run_cli("approvers", "keygen", "frank", "--no-passphrase", "--passphrase-file", str(secret), env=env)
    no_traceback_one_line(both, "--no-passphrase", "--passphrase-file")


# -- on a real terminal ---------------------------------------------------------------------------------


class Terminal:
    """`intercept ARGS` on a pseudo-terminal (its controlling terminal, so getpass uses it)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        env = {**env, "PYTHONPATH": str(ROOT)}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: nothing but exec
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "intercept", *args], env)
        self.output = b""
        self.seen = 0  # output before this was matched by an earlier read_until

    def read_until(self, fragment: bytes) -> None:
        """Waits for `fragment` after what earlier calls matched."""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while (found := self.output.find(fragment, self.seen)) < 0:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {fragment!r} on the terminal: {self.output!r}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child is gone
                    chunk = b""
                assert chunk, f"the terminal closed before {fragment!r}: {self.output!r}"
                self.output += chunk
        self.seen = found + len(fragment)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode() + b"\r")

    def finish(self) -> int:
        """Reads the rest; returns the exit code."""
        while True:
            ready, _, _ = select.select([self.fd], [], [], READ_TIMEOUT_S)
            assert ready, f"the command did not end: {self.output!r}"
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk
        os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def test_on_a_terminal_the_passphrase_is_hidden_and_asked_twice(env: dict[str, str], config: Path) -> None:
    terminal = Terminal(["approvers", "keygen", "alice"], env)
    terminal.read_until(b"Passphrase for alice's approver key:")
    terminal.type("first try")
    terminal.read_until(b"Repeat the passphrase:")
    terminal.type("a typo")
    terminal.read_until(b"do not match")
    terminal.read_until(b"Passphrase for alice's approver key:")  # asked again, both times
    terminal.type(PASSPHRASE)
    terminal.read_until(b"Repeat the passphrase:")
    terminal.type(PASSPHRASE)
    assert terminal.finish() == 0, terminal.output
    shown = terminal.output.decode(errors="replace")
    assert "first try" not in shown and "a typo" not in shown and PASSPHRASE not in shown  # never echoed
    match = re.search(r'key: "(ed25519:[^"]+)"', shown)
    assert match, shown
    assert public_key(env, "alice") == match[1]

    terminal = Terminal(["approvers", "public-key", "alice"], env)
    terminal.read_until(b"Passphrase for alice's approver key:")
    terminal.type(PASSPHRASE)
    assert terminal.finish() == 0, terminal.output
    assert b"Repeat" not in terminal.output and match[1].encode() in terminal.output


# -- help -----------------------------------------------------------------------------------------------


def test_help_texts_say_what_each_command_does() -> None:
    group = ok(run_cli("approvers", "--help"))
    assert "keygen" in group and "public-key" in group
    keygen_help = ok(run_cli("approvers", "keygen", "--help"))
    for option in ("--out", "--no-passphrase", "--force", "--passphrase-file", "0600", "approvers:"):
        assert option in keygen_help
    public_help = ok(run_cli("approvers", "public-key", "--help"))
    for option in ("--key", "--passphrase-file", "ed25519:"):
        assert option in public_help


# -- keygen and public-key against the state dir's newest policy ------------------------------------


def archived(state: Path, approvers: str) -> Path:
    """A state dir whose newest (only) archived policy has this `approvers:` block."""
    text = f'version: "1"\napprovers:\n{approvers}tools:\n  push:\n    rules:\n      - name: owners\n'
    text += "        action: require_approval\n        approvers: {roles: [owner], quorum: 1}\n"
    archive_policy(state, parse_policy(text), text, state / "policy.yaml")
    return state


def test_keygen_and_public_key_say_whether_the_newest_policy_names_the_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    other = public_line(Ed25519PrivateKey.generate().public_key())
    names_another = archived(tmp_path / "a", f'  alice: {{roles: [owner], key: "{other}"}}\n')
    result = run_cli("approvers", "keygen", "alice", "--state-dir", str(names_another), env=env, stdin=PASSPHRASE)
    key = POLICY_LINE.match(ok(result))["key"]  # type: ignore[index]
    assert "names another key for alice" in result.stderr and "refused" in result.stderr
    names_it = archived(tmp_path / "b", f'  alice: {{roles: [owner], key: "{key}"}}\n')
    shown = run_cli("approvers", "public-key", "alice", "--state-dir", str(names_it), env=env, stdin=PASSPHRASE)
    assert ok(shown).rstrip("\n") == key and "names this key for alice" in shown.stderr
    from_env = run_cli("approvers", "public-key", "alice", env={**env, "INTERCEPT_STATE_DIR": str(names_it)},
                       stdin=PASSPHRASE)  # fmt: skip
    assert "names this key for alice" in from_env.stderr
    missing = run_cli("approvers", "keygen", "bob", "--no-passphrase", "--state-dir", str(names_it), env=env)
    assert "does not name bob as an approver yet" in missing.stderr and ok(missing)
    no_archive = tmp_path / "empty"
    no_archive.mkdir()
    quiet = run_cli("approvers", "public-key", "bob", "--state-dir", str(no_archive), env=env)
    assert ok(quiet) and "policy" not in quiet.stderr  # nothing to compare with: nothing said


def test_a_wrong_state_dir_fails_before_a_key_is_made(env: dict[str, str], config: Path, tmp_path: Path) -> None:
    result = run_cli("approvers", "keygen", "carol", "--no-passphrase", "--state-dir", str(tmp_path / "nope"), env=env)
    no_traceback_one_line(result, "no state dir at")
    assert not key_path(config, "carol").exists()
