"""RunLock: one run per output_dir; a lock whose holder is gone is stale, one from another host is not."""

from __future__ import annotations

import json
import subprocess

import pytest

from sppo_megatron.errors import UserError
from sppo_megatron.trainer.run_lock import LOCK_FILE, RunLock


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_second_holder_is_refused_until_release(tmp_path):
    first = RunLock(str(tmp_path))
    assert first.acquire() is None
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    with pytest.raises(UserError, match=f"in use by another run \\(PID {holder['pid']} on host {holder['host']}"):
        RunLock(str(tmp_path)).acquire()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    second = RunLock(str(tmp_path))
    assert second.acquire() is None
    second.release()


@pytest.mark.parametrize("holder", ["dead_pid", "reused_pid", "garbage"])
def test_stale_lock_is_taken_over(tmp_path, holder):
    import os
    import socket

    content = {
        "dead_pid": json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": "1"}),
        # a live PID that started at another time is another process: the holder is gone
        "reused_pid": json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "-1"}),
        "garbage": "{half written",
    }[holder]
    (tmp_path / LOCK_FILE).write_text(content)
    if holder == "garbage":
        with pytest.raises(UserError, match="in use"):  # maybe a run writing it right now
            RunLock(str(tmp_path)).acquire()
        os.utime(tmp_path / LOCK_FILE, (1, 1))
    lock = RunLock(str(tmp_path))
    assert "removed the stale lock" in lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_from_another_host_is_not_guessed_stale(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": _dead_pid()}))
    with pytest.raises(UserError, match="on host elsewhere"):
        RunLock(str(tmp_path)).acquire()
    assert (tmp_path / LOCK_FILE).exists()
