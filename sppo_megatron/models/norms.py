"""RMSNorm for the local layer spec that works under sequence parallelism.

megatron-core's local spec builds torch.nn.RMSNorm through `WrappedTorchNorm`, which refuses
sequence parallelism; mixture-of-experts layers under TP need it. Under sequence parallelism each
TP rank normalises its own slice of the sequence, so the norm weight's gradient is partial per
rank: the `sequence_parallel` attribute makes megatron's finalize_model_grads sum it over TP (as
Transformer Engine's norms and megatron's router do). Same parameter name and math as torch's.
"""

from __future__ import annotations

from typing import Any

import torch


class SequenceParallelRMSNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm built from megatron's norm arguments, its weight marked sequence-parallel."""

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-5, **unused: Any) -> None:
        super().__init__(normalized_shape=hidden_size, eps=eps)
        self.weight.sequence_parallel = bool(config.sequence_parallel)  # type: ignore[attr-defined]
