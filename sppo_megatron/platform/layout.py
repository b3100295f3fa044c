"""`ParallelLayout`: how the world splits into tensor, pipeline and data parallel ranks.

One value for the one fact: config validation builds it from the launcher's world size (before
any process group exists), the actor reads it back from megatron's parallel state, and
checkpoints and the start-up line take it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class ParallelLayout:
    """tp x pp x dp = world; data parallel is what the model-parallel ranks leave over."""

    tp: int
    pp: int
    dp: int

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @classmethod
    def for_world(cls, world: int, tp: int, pp: int) -> Optional["ParallelLayout"]:
        """The layout of `world` ranks at this TP and PP, or None when tp x pp does not divide it."""
        if world % (tp * pp):
            return None
        return cls(tp, pp, world // (tp * pp))

    @classmethod
    def current(cls) -> "ParallelLayout":
        """The layout megatron's parallel state was initialised with (after init_distributed)."""
        from megatron.core import parallel_state as ps

        return cls(
            ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_world_size(),
            ps.get_data_parallel_world_size(),
        )

    def sizes(self) -> Dict[str, int]:
        """{"tp", "pp", "dp"}: the form recorded in checkpoint metadata."""
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp}

    def describe(self) -> str:
        return f"TP={self.tp} PP={self.pp} DP={self.dp}"
