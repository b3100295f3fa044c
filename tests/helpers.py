"""Small helpers more than one test module needs: live processes, relative differences."""

from __future__ import annotations

from typing import Iterable, List

import psutil
import torch


def alive(pids: Iterable[int]) -> List[int]:
    """Those of `pids` still running (not exited, not a zombie left unreaped)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def rel(a: float, b: float) -> float:
    """|a - b| / |b| for scalars (b = 0 allowed): a relative error against the reference b."""
    return abs(a - b) / max(abs(b), 1e-12)


def tensor_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: a whole tensor's relative error against the reference b."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def max_scaled_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, |b|): absolute where |b| < 1, relative above (log-probs near 0)."""
    return ((a - b).abs() / b.abs().clamp(min=1.0)).max().item()
