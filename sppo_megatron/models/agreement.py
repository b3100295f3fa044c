"""When two models' logits agree: the rule `sppo-convert verify` applies.

An absolute bound on the logit difference fails correct conversions of deep models: fp32
rounding grows with depth and with the logit scale (a correct 24-layer fp32 Qwen2 differs from
its HF original by 1.9e-4 to 6.4e-4, and HF's own fp32 forward is 6.7e-4 from an fp64 one), and a
bf16 checkpoint of an fp32 model differs by its weights' rounding. So the difference is judged
relative to the logit scale (the largest |HF logit| compared), with a tolerance set by the
narrowest dtype the weights went through: loose enough for rounding, far below what a wrong
layout gives (a difference of the order of the logits themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

#: relative tolerance by the narrowest dtype of the two models' weights
RTOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
_WIDTH = {"fp32": 4, "fp16": 2, "bf16": 2}


def narrowest(*dtypes: str) -> str:
    """The dtype name with the fewest mantissa bits among `dtypes` (bf16 < fp16 < fp32)."""
    return min(dtypes, key=lambda d: (_WIDTH[d], d != "bf16"))


@dataclass(frozen=True)
class Agreement:
    """The largest logit difference, the scale it is judged against, and the verdict."""

    max_diff: float
    scale: float
    dtype: str
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
        return f"{head}; relative {self.relative:.2e} vs rtol {self.rtol:g} ({self.dtype} weights)"


def judge(
    logits: torch.Tensor,
    reference: torch.Tensor,
    dtype: str,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
) -> Agreement:
    """Compare `logits` with `reference` (same shape); `dtype` is the narrowest weight dtype
    (`narrowest`); `atol` replaces the relative rule by an absolute bound, `rtol` overrides RTOL."""
    diff = float((logits.double() - reference.double()).abs().max())
    scale = float(reference.double().abs().max())
    return Agreement(diff, scale, dtype, RTOL[dtype] if rtol is None else rtol, atol)
