"""Child processes that never outlive the trainer.

A process forked from the trainer (megatron's checkpoint-save Manager and writer processes)
inherits the trainer's Python signal handlers, so it would ignore SIGTERM, and it keeps running
when the trainer is SIGKILLed (holding memory and the job's stdout, which delays Slurm's step
teardown). `install_fork_hygiene()` gives every later fork of this process the kernel's
parent-death signal and default signal handling; fresh interpreters (the reward workers) call
`die_with_parent` themselves.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_installed = False
_forking_pid = 0


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit now if it already has.

    The parent is the *thread* that forked this process: fork only from the main thread.
    No-op where prctl does not exist (not Linux).
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(0)


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    die_with_parent(_forking_pid)
    signal.set_wakeup_fd(-1)  # the trainer's signal-watcher socket is not ours to write
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the trainer decides


def install_fork_hygiene() -> None:
    """Every process this one forks from now on dies with it and starts with default SIGTERM /
    SIGUSR1 handling (SIGINT ignored). Idempotent."""
    global _installed
    if _installed:
        return
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _installed = True
