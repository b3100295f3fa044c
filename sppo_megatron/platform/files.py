"""Writes that a kill at any moment cannot leave half done: files and directories are written
under a temporary name next to their destination and renamed into place (a rename within a
file system is atomic)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from typing import Callable, Iterator, Optional

from sppo_megatron.errors import UserError

# platform.distributed (torch) is imported in atomic_output_dir only: config loading imports this
# module and stays torch-free.

_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: what is not a failure of the write itself (torch's CheckpointException is a BaseException too)
_NOT_FAILURES = (KeyboardInterrupt, SystemExit, GeneratorExit)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` writes the whole file at `tmp` (`path.tmp.PID`), which is then renamed to `path`;
    on a failure the temporary file is removed and `path` is left as it was."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def append_text(path: str, text: str) -> None:
    """Append `text` (whole lines) to `path` in one write. A write that fails part-way (a full
    disk, a quota, a read-only file system) is cut back to where the file ended, so no partial
    line is left, and becomes one line (UserError) naming the file."""
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError as e:
            os.ftruncate(fd, size)
            free = f" ({_free_bytes(path) // 1024} KiB free there)" if e.errno in _FULL_DISK_ERRNOS else ""
            raise UserError(
                f"cannot append to {path}: {e.strerror}{free}; the file ends at its last complete line"
            ) from None
    finally:
        os.close(fd)


def check_writable_dir(path: str, what: str) -> None:
    """UserError naming `what` unless a file can be created in `path` (or, when it does not exist
    yet, in its nearest existing parent, where it will be made)."""
    probe = os.path.abspath(path)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=probe)
    except OSError as e:
        raise UserError(f"{what}={path}: cannot write in {probe} ({e.strerror})") from None
    os.close(fd)
    os.remove(name)


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
            old = tempfile.mkdtemp(
                prefix=os.path.basename(os.path.realpath(out)) + ".old-", dir=os.path.dirname(os.path.realpath(out))
            )
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


#: how torch.save / the dist-checkpoint writers report a write cut short (a full disk or quota)
_SHORT_WRITE = ("unexpected pos", "iostream error", "No space left on device", "Disk quota exceeded")


def _free_bytes(path: str) -> int:
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def reporting_full_disk(path: str) -> Iterator[None]:
    """A write under `path` that fails because the disk is full (ENOSPC, EDQUOT, or torch's
    "unexpected pos 704 vs 598" for a write cut short) becomes one line (UserError) naming `path`
    and the cause; any other failure propagates unchanged."""
    try:
        yield
    except (UserError, *_NOT_FAILURES):
        raise
    except BaseException as e:  # noqa: BLE001 - re-raised unless the disk is full
        text = str(e)
        if not ((isinstance(e, OSError) and e.errno in _FULL_DISK_ERRNOS) or any(s in text for s in _SHORT_WRITE)):
            raise
        detail = (text.strip().splitlines() or [type(e).__name__])[-1]
        raise UserError(
            f"cannot write {path}: no space left on device ({_free_bytes(path) // 1024} KiB free there; {detail})"
        ) from e


def _shareable(exc: BaseException) -> Exception:
    """`exc` as an Exception that share_outcomes hands to every rank."""
    if isinstance(exc, Exception):
        return exc
    wrapped = RuntimeError(f"{type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    return wrapped


def _reraise(exc: Exception) -> None:
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
        try:
            with reporting_full_disk(out):
                yield tmp
        except _NOT_FAILURES:
            raise
        except BaseException as e:  # noqa: BLE001 - handed to every rank, then raised
            failure = _shareable(e)
            share_outcomes(lambda: _reraise(failure))
        share_outcomes(None)
        if is_rank0():
            commit_dir(tmp, out)
    except BaseException:
        if is_rank0():
            remove_dir(tmp)
        raise
    barrier()
