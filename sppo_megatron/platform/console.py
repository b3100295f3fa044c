"""Lines for the user: one per message, prefixed with the program's name, printed by rank 0 only
(every rank runs the same code; the others would repeat it)."""

from __future__ import annotations

import os
import sys

from sppo_megatron.platform.distributed import is_rank0


def say(prog: str, message: str, *, stderr: bool = False) -> None:
    """`prog: message` on rank 0, flushed at once; warnings and errors go to stderr."""
    if is_rank0():
        print(f"{prog}: {message}", file=sys.stderr if stderr else sys.stdout, flush=True)


def say_now(prog: str, message: str) -> None:
    """`say` to stderr as one unbuffered write: safe from a signal-watching thread and right before
    os._exit, which flushes nothing."""
    if is_rank0():
        os.write(2, f"{prog}: {message}\n".encode())
