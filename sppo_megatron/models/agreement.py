"""When two models' logits agree: the rule `sppo-convert verify` applies.

Both models run in fp32 from the same weights (`verify` rounds the HF weights to the checkpoint's
dtype first, so a bf16 checkpoint of an fp32 model is compared with what it holds). An absolute
bound on the logit difference still fails correct conversions of deep models: fp32 rounding grows
with depth and with the logit scale (a correct 24-layer fp32 Qwen2 differs from its HF original by
1.9e-4 to 6.4e-4, and HF's own fp32 forward is 6.7e-4 from an fp64 one). So the difference is
judged relative to the logit scale (the largest |HF logit| compared): loose enough for fp32
rounding, far below what a wrong layout gives (a difference of the order of the logits themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

#: relative tolerance of two fp32 forwards of the same weights
RTOL = 1e-4


@dataclass(frozen=True)
class Agreement:
    """The largest logit difference, the scale it is judged against, and the verdict."""

    max_diff: float
    scale: float
    rtol: float
    atol: Optional[float] = None

    @property
    def relative(self) -> float:
        return self.max_diff / max(self.scale, 1e-30)

    @property
    def ok(self) -> bool:
        if self.atol is not None:
            return self.max_diff <= self.atol
        return self.relative <= self.rtol

    def describe(self) -> str:
        """What was compared and against which bound."""
        head = f"max |logit difference| = {self.max_diff:.3e}, logit scale (max |HF logit|) = {self.scale:.3g}"
        if self.atol is not None:
            return f"{head}; absolute bound --atol {self.atol:g}"
        return f"{head}; relative {self.relative:.2e} vs rtol {self.rtol:g}"


def judge(
    logits: torch.Tensor, reference: torch.Tensor, atol: Optional[float] = None, rtol: Optional[float] = None
) -> Agreement:
    """Compare `logits` with `reference` (same shape); `atol` replaces the relative rule by an
    absolute bound, `rtol` overrides RTOL."""
    diff = float((logits.double() - reference.double()).abs().max())
    scale = float(reference.double().abs().max())
    return Agreement(diff, scale, RTOL if rtol is None else rtol, atol)
