"""Checkpoint expert names -> transformers' fused expert parameters (the HF engine's weight sync).

The bridge streams mixture-of-experts weights under their checkpoint names, one tensor per
expert (``model.layers.{L}.mlp.experts.{e}.gate_proj.weight``; Mixtral
``block_sparse_moe.experts.{e}.w1/w3/w2``), which is what HF checkpoints and SGLang use.
transformers 5 holds the experts of a layer fused, ``mlp.experts.gate_up_proj`` [E, 2I, H]
(gate rows then up rows) and ``mlp.experts.down_proj`` [E, H, I]; it converts on load (its
conversion_mapping.py, the same rules as here). `ExpertSlots` resolves a streamed name to the
slice of the fused parameter it fills.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Set, Tuple

import torch

_EXPERT = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<e>\d+)\.(?P<part>gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$")
_GATE, _UP = ("gate_proj", "w1"), ("up_proj", "w3")


class ExpertSlots:
    """Streamed per-expert names -> (fused parameter name, view to copy into)."""

    def __init__(self, params: Dict[str, torch.nn.Parameter]) -> None:
        self.params = params
        self.filled: Dict[str, Set[Tuple[int, str]]] = {}

    def resolve(self, name: str) -> Optional[Tuple[str, torch.Tensor]]:
        """(fused parameter name, the slice of it that `name` fills), or None if not an expert."""
        match = _EXPERT.match(name.replace(".block_sparse_moe.", ".mlp."))
        if match is None:
            return None
        prefix, e, part = match["prefix"], int(match["e"]), match["part"]
        fused = prefix + (".gate_up_proj" if part in _GATE + _UP else ".down_proj")
        param = self.params.get(fused)
        if param is None or param.dim() != 3 or e >= param.shape[0]:
            return None
        view, kind = param[e], "down"
        if part in _GATE + _UP:
            half = param.shape[1] // 2
            view, kind = (view[:half], "gate") if part in _GATE else (view[half:], "up")
        self.filled.setdefault(fused, set()).add((e, kind))
        return fused, view

    def complete(self, fused: str) -> bool:
        """Every expert's slices of `fused` have been streamed."""
        param = self.params[fused]
        parts = 1 if fused.endswith("down_proj") else 2
        return len(self.filled.get(fused, ())) == param.shape[0] * parts
