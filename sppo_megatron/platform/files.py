"""Writes that a kill at any moment cannot leave half done: files and directories are written
under a temporary name next to their destination and renamed into place (a rename within a
file system is atomic)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from typing import Iterator, Optional

from sppo_megatron.errors import UserError

_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` via `path.tmp.PID` and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def _disk_full(path: str) -> bool:
    """True when the file system holding `path` has (almost) no space left: writers such as
    torch.save report a full disk as e.g. "unexpected pos 704 vs 598", not as ENOSPC."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize < min(16 * 1024**2, st.f_blocks * st.f_frsize // 20)


@contextlib.contextmanager
def reporting_full_disk(path: str) -> Iterator[None]:
    """A write under `path` that fails because the disk is full becomes one line (UserError)
    naming `path` and the cause; any other failure propagates unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless the disk is full
        if not ((isinstance(e, OSError) and e.errno in _FULL_DISK_ERRNOS) or _disk_full(path)):
            raise
        detail = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise UserError(f"cannot write {path}: no space left on device ({detail})") from e


def _reraise(exc: BaseException) -> None:
    raise exc


@contextlib.contextmanager
def atomic_output_dir(out: str) -> Iterator[str]:
    """Collective: yields the same new OUT.tmp-XXXX (made by rank 0) on every rank; when the
    body has finished on every rank, rank 0 renames it over `out` (`commit_dir`). If the body
    raises on any rank (e.g. rank 0 alone writing finds the disk full), it raises on every rank,
    rank 0 deletes the temporary directory and `out` is left as it was."""
    from sppo_megatron.platform.distributed import barrier, broadcast_object, is_rank0, share_outcomes

    tmp = broadcast_object(make_tmp_dir(out) if is_rank0() else None)
    try:
        with reporting_full_disk(out):
            try:
                yield tmp
            except Exception as e:  # noqa: BLE001 - handed to every rank, then raised
                share_outcomes(lambda: _reraise(e))
            share_outcomes(None)
        if is_rank0():
            commit_dir(tmp, out)
    except BaseException:
        if is_rank0():
            remove_dir(tmp)
        raise
    barrier()
