"""Entry point of one scoring worker process: main() with argv IN_FD OUT_FD PARENT_PID [CUSTOM_SPEC].

Runs in a fresh interpreter (not a fork of the trainer, whose torch/gloo threads a fork would
copy broken, and without re-importing the trainer's main module). Reads tasks from pipe fd IN,
writes one reply per task to pipe fd OUT; stdout/stderr are /dev/null, so nothing math-verify
or user code prints reaches the console. Asks the kernel to kill it when its parent dies, so a
worker stuck inside C code never outlives the trainer.
"""

import logging
import sys
from multiprocessing.connection import Connection
from typing import Any, Dict, Optional

from sppo_megatron.platform.process import die_with_parent

# the scorer is imported once the worker knows its kind: a worker loads only what it runs.

READY = "ready"


def _load(custom_spec: Optional[str]) -> Any:
    """The custom scorer, or None after warming up math-verify (first call imports SymPy parts)."""
    if custom_spec:
        from sppo_megatron.reward.custom import CustomScorer

        return CustomScorer(custom_spec)
    from sppo_megatron.reward.math import symbolic_check

    symbolic_check("1", "1")
    return None


def _run(task: tuple, custom: Any) -> tuple[float, Optional[str], Dict[str, float]]:
    """(score, error, extra metrics): a math-verify exception is reported with the score
    math-verify gives; a custom function's dict return brings its other numeric entries."""
    if task[0] == "math":
        from sppo_megatron.reward.math import symbolic_check

        return (*symbolic_check(task[1], task[2]), {})
    score, extras = custom(*task[1:])
    return score, None, extras


def main() -> None:
    inbox, outbox = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    die_with_parent(int(sys.argv[3]))
    logging.disable(logging.CRITICAL)
    try:
        custom = _load(sys.argv[4] if len(sys.argv) > 4 else None)
    except BaseException as e:
        outbox.send(("init_error", f"{type(e).__name__}: {e}"[:500]))
        return
    outbox.send(READY)
    while True:
        try:
            task = inbox.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            reply = _run(task, custom)
        except BaseException as e:  # math-verify's TimeoutException derives from BaseException
            reply = (0.0, f"{type(e).__name__}: {e}"[:500], {})
        outbox.send(reply)
