"""SIGTERM / SIGUSR1 (Slurm preemption, `scancel --signal`): finish the step, checkpoint, exit 0.

The handler only sets a flag; the loop checks it at the end of each step, agreeing across ranks
(a signal may reach the ranks at different moments), so every rank saves the same step.
"""

from __future__ import annotations

import signal
from typing import List

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    def __init__(self) -> None:
        self.received: List[int] = []
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.received.append(signum)

    def should_stop(self) -> bool:
        """True on every rank if any rank has been signalled (a collective call)."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
