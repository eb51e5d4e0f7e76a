"""Files planted in the state dir by someone who can write it must not hang, redirect or chmod.

Whoever can write the state dir can approve anything (DESIGN, "Who may approve"), so these are not
privilege boundaries; but the proxy must stay up and keep its writes where they belong: a FIFO or
a symlink in place of an event file, a symlinked database, a FIFO or /dev/zero named as a running
proxy's policy file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from intercept.approvals.staleness import _read_small_file
from intercept.audit.events import EventLog, events_dir
from intercept.store.database import StoreUnavailable, connect, database_path


def finishes(action: object, timeout_s: float = 5.0) -> bool:
    thread = threading.Thread(target=action, daemon=True)  # type: ignore[arg-type]
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


def test_a_fifo_in_place_of_the_event_file_does_not_block_the_writer(tmp_path: Path) -> None:
    events_dir(tmp_path).mkdir(parents=True)
    os.mkfifo(events_dir(tmp_path) / "p.jsonl")
    log = EventLog(tmp_path, "p")
    assert finishes(lambda: (log.emit("startup", server="s"), log.close()))


def test_a_symlinked_event_file_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.sh"
    events_dir(tmp_path).mkdir(parents=True)
    (events_dir(tmp_path) / "p.jsonl").symlink_to(target)
    log = EventLog(tmp_path, "p")
    log.emit("startup", server="$(rm -rf ~)")
    log.close()
    assert not target.exists()


def test_a_symlinked_database_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "index.html"
    elsewhere.write_text("<html>")
    elsewhere.chmod(0o644)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    database_path(state_dir).symlink_to(elsewhere)
    with pytest.raises(StoreUnavailable, match="symbolic link"):
        connect(state_dir)
    assert elsewhere.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "missing"])
def test_a_policy_path_from_the_database_is_read_only_if_small_and_regular(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "policy"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_bytes(b"#" * (2 << 20))
    target = "/dev/zero" if kind == "device" else str(path)
    result: list[str | None] = []
    assert finishes(lambda: result.append(_read_small_file(target)))
    assert result == [None]
