"""Writes that a kill at any moment cannot leave half done: files and directories are written
under a temporary name next to their destination and renamed into place (a rename within a
file system is atomic)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` via `path.tmp.PID` and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def make_tmp_dir(out: str) -> str:
    """A new empty directory OUT.tmp-XXXX next to OUT (same file system, so `commit_dir` is a rename)."""
    out_abs = os.path.realpath(out)
    os.makedirs(os.path.dirname(out_abs), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_abs) + ".tmp-", dir=os.path.dirname(out_abs))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like any directory
    return tmp


def commit_dir(tmp: str, out: str) -> None:
    """Move the finished `tmp` to `out`, replacing what is there: the old OUT is renamed aside
    first and deleted after, so OUT is always either the old or the new complete directory
    (absent only for the instant between the two renames)."""
    old = None
    if os.path.isdir(out):
        if os.listdir(out):
            old = tempfile.mkdtemp(prefix=os.path.basename(os.path.realpath(out)) + ".old-",
                                   dir=os.path.dirname(os.path.realpath(out)))
            os.rmdir(old)
            os.rename(out, old)
        else:
            os.rmdir(out)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_dir(path: Optional[str]) -> None:
    """Delete a temporary directory left by a failed write (no error if it is gone)."""
    if path is not None and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
