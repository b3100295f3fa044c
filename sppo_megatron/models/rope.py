"""RoPE settings of an HF config (base, scaling kind) and the Llama 3 scaled frequencies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict

import torch

from sppo_megatron.errors import UserError


@dataclass(frozen=True)
class Rope:
    theta: float
    kind: str  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


def rope_settings(hf_config: Any) -> Rope:
    """RoPE base and scaling from transformers 5 `rope_parameters` (or 4.x `rope_theta`/`rope_scaling`)."""
    params: Dict[str, Any] = {}
    legacy = getattr(hf_config, "rope_scaling", None)
    if isinstance(legacy, dict):
        params.update(legacy)
    new = getattr(hf_config, "rope_parameters", None)
    if isinstance(new, dict):
        if new and all(isinstance(v, dict) for v in new.values()):
            raise UserError("per-layer-type rope_parameters are not supported")
        params.update(new)
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    theta = 10000.0 if theta is None else float(theta)
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    partial = getattr(hf_config, "partial_rotary_factor", None) or params.get("partial_rotary_factor")
    if partial not in (None, 1, 1.0):
        raise UserError(f"partial_rotary_factor={partial} is not supported")
    if kind == "default":
        return Rope(theta, "default")
    if kind == "linear":
        return Rope(theta, "linear", factor=float(params["factor"]))
    if kind == "llama3":
        return Rope(
            theta,
            "llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
        )
    raise UserError(f"rope_type {kind!r} is not supported (supported: default, linear, llama3)")


def context_length(hf_config: Any) -> int:
    """The positions the model covers: max_position_embeddings, stretched by linear scaling
    (factor x) or llama3 scaling (original_max_position_embeddings x factor, if larger)."""
    positions = int(getattr(hf_config, "max_position_embeddings", 0) or 0)
    rope = rope_settings(hf_config)
    if rope.kind == "linear":
        return int(positions * rope.factor)
    if rope.kind == "llama3":
        return max(positions, int(rope.original_max_position_embeddings * rope.factor))
    return positions


def llama3_inv_freq(rope: Rope, head_dim: int, device: Any = None) -> torch.Tensor:
    """Llama 3.x scaled inverse frequencies, as transformers' `_compute_llama3_parameters`."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
    high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)
