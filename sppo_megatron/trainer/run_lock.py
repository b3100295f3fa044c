"""One run per output_dir: `output_dir/.sppo-train.lock` names the holder (host, PID).

Two trainings in one directory (orphaned workers next to a requeued job, a second launch by
mistake) would interleave checkpoints and rewrite metrics.jsonl. Rank 0 creates the lock file
exclusively before the run touches the directory and removes it when the run ends; a lock
whose holder is gone (same host, that PID no longer running the process that wrote it: a
kill -9) is stale and taken over. A lock held from another host cannot be checked from here:
it refuses, naming the file to delete once that run is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Dict, Optional

from sppo_megatron.errors import UserError

LOCK_FILE = ".sppo-train.lock"
#: an unreadable lock file younger than this may be one a starting run is writing right now
_WRITE_GRACE_S = 10.0


def _start_time(pid: int) -> Optional[str]:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): with the PID it
    identifies a process even after its PID is reused; None when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_alive(holder: Dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot be checked from this host
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    started = _start_time(pid)
    return started is not None and started == holder.get("started", started)


class RunLock:
    """The lock of one output_dir, held by this process between `acquire` and `release`."""

    def __init__(self, output_dir: str) -> None:
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}
        self.held = False

    def _read_holder(self) -> Dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                holder = json.load(fh)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # being written, or half written by a holder killed at that instant

    def in_use(self) -> Optional[str]:
        """The one-line reason another live run holds this lock, or None (free or stale). Preflight
        asks first: that run's half-written checkpoint is no problem of this one."""
        try:
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return None
        holder = self._read_holder()
        if (not holder and age < _WRITE_GRACE_S) or (holder and _holder_alive(holder)):
            return (
                f"trainer.output_dir {os.path.dirname(self.path)} is in use by another run (PID "
                f"{holder.get('pid')} on host {holder.get('host')}, lock file {self.path}); wait for it to "
                "end or use another trainer.output_dir (delete the lock file only if that run is gone)"
            )
        return None

    def acquire(self) -> Optional[str]:
        """Take the lock; returns a notice when a stale lock was taken over. UserError (exit 2)
        when another live run holds it."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        notice = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                busy = self.in_use()
                if busy:
                    raise UserError(busy) from None
                os.unlink(self.path)
                notice = (
                    f"removed the stale lock {self.path} of a run that is gone "
                    f"(PID {holder.get('pid')} on host {holder.get('host')})"
                )
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.holder, fh)
            self.held = True
            return notice
        raise UserError(f"{self.path}: another run took the lock at the same moment; trainer.output_dir is in use")

    def release(self) -> None:
        """Remove the lock file if this process still holds it."""
        if self.held and self._read_holder() == self.holder:
            os.unlink(self.path)
        self.held = False
