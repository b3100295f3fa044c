"""The memory ledger: the peak host RSS of each phase of a step and, on a GPU, the peak CUDA memory
allocated and reserved, logged as `memory/*` metrics.

A phase's host peak is the kernel's high-water mark (VmHWM in /proc/self/status) since the phase
began: the mark is reset on entry by writing 5 to /proc/self/clear_refs (Linux >= 4.0). Where the
mark cannot be reset the peak is the process's peak so far, an upper bound, and `resettable` says
so. CUDA peaks use torch's own counters (`reset_peak_memory_stats`).

Phases nest (validation contains a weight sync and a generation): before a reset the current marks
are folded into every open phase, so an outer phase's peak still covers what happened before its
inner one began. A phase entered more than once in a step (dynamic sampling's refill rounds)
reports its largest peak.
"""

from __future__ import annotations

import contextlib
import resource
from typing import Dict, Iterator, List

import torch

GIB = 1024**3
_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def host_peak_rss_bytes() -> int:
    """The process's RSS high-water mark (since the last reset) in bytes."""
    try:
        with open(_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def host_rss_bytes() -> int:
    """The process's resident set size now, in bytes."""
    with open(_STATUS, encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_host_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryLedger:
    """Per-phase memory peaks of one step: `with ledger.phase("update"): ...`, then `metrics()`
    returns and clears `memory/<phase>_peak_rss_gib` (and on a GPU `memory/<phase>_cuda_max_allocated_gib`,
    `memory/<phase>_cuda_max_reserved_gib`) plus `memory/step_peak_rss_gib`, the largest of them."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.resettable = reset_host_peak()
        self._open: List[str] = []
        self._peaks: Dict[str, Dict[str, int]] = {}

    def _read(self) -> Dict[str, int]:
        marks = {"peak_rss": host_peak_rss_bytes()}
        if self.cuda:
            marks["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
            marks["cuda_max_reserved"] = torch.cuda.max_memory_reserved()
        return marks

    def _fold(self) -> None:
        """The marks so far into every open phase."""
        marks = self._read()
        for name in self._open:
            peaks = self._peaks.setdefault(name, {})
            for key, value in marks.items():
                peaks[key] = max(peaks.get(key, 0), value)

    def _reset(self) -> None:
        reset_host_peak()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the peaks of the block under `name`."""
        self._fold()
        self._open.append(name)
        self._reset()
        try:
            yield
        finally:
            self._fold()
            self._open.remove(name)

    def metrics(self) -> Dict[str, float]:
        """The phases' peaks since the last call, in GiB, and clear them."""
        out: Dict[str, float] = {}
        for name, peaks in self._peaks.items():
            for key, value in peaks.items():
                out[f"memory/{name}_{key}_gib"] = value / GIB
        if self._peaks:
            out["memory/step_peak_rss_gib"] = max(p["peak_rss"] for p in self._peaks.values()) / GIB
        self._peaks = {}
        return out
