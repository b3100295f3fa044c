"""`ParallelDims`: how the world splits into tensor, pipeline and data parallel ranks, and
(mixture-of-experts layers) into expert-parallel and expert-tensor-parallel ranks.

Expert layers use their own grid over the same ranks: world = etp x ep x edp x pp, where the
expert-data-parallel size edp is what etp x ep leave of tp x dp.

One value for the one fact: config validation builds it from the launcher's world size (before
any process group exists), the actor reads it back from megatron's parallel state, and
checkpoints and the start-up line take it from there. `split_evenly` cuts work into per-rank shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

# megatron-core is imported in `current` only: config validation imports this module torch-free.


def split_evenly(count: int, parts: int) -> List[Tuple[int, int]]:
    """Contiguous [start, end) ranges covering range(count), sizes differing by at most one: each
    rank's (or engine's) share of `count` work units, in order."""
    base, extra = divmod(count, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


@dataclass(frozen=True)
class ParallelDims:
    """tp x pp x dp = world; data parallel is what the model-parallel ranks leave over."""

    tp: int
    pp: int
    dp: int
    ep: int = 1
    etp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def edp(self) -> int:
        """Expert data-parallel size: replicas of each expert."""
        return self.tp * self.dp // (self.ep * self.etp)

    @classmethod
    def for_world(cls, world: int, tp: int, pp: int, ep: int = 1, etp: int = 1) -> Optional["ParallelDims"]:
        """The sizes of `world` ranks at this TP, PP, EP and ETP, or None when tp x pp does not
        divide it or ep x etp does not divide tp x dp (the ranks of one pipeline stage)."""
        if world % (tp * pp) or (world // pp) % (ep * etp):
            return None
        return cls(tp, pp, world // (tp * pp), ep, etp)

    @classmethod
    def current(cls) -> "ParallelDims":
        """The sizes megatron's parallel state was initialised with (after init_distributed)."""
        from megatron.core import parallel_state as ps

        return cls(
            ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_world_size(),
            ps.get_data_parallel_world_size(),
            ps.get_expert_model_parallel_world_size(),
            ps.get_expert_tensor_parallel_world_size(),
        )

    def sizes(self) -> Dict[str, int]:
        """{"tp", "pp", "dp"} (and "ep", "etp" when not 1): the form recorded in checkpoint metadata."""
        sizes = {"tp": self.tp, "pp": self.pp, "dp": self.dp}
        if (self.ep, self.etp) != (1, 1):
            sizes.update(ep=self.ep, etp=self.etp)
        return sizes

    def describe(self) -> str:
        experts = f" EP={self.ep} ETP={self.etp}" if (self.ep, self.etp) != (1, 1) else ""
        return f"TP={self.tp} PP={self.pp} DP={self.dp}{experts}"
