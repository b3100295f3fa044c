"""Rollout/actor log-prob parity: `rollout/logp_abs_diff` = mean |rollout log-prob - actor
log-prob| over response tokens, from the engine-reported log-probs of the samples (see base.py for
what engines report)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch


def logp_abs_diff(rollout_logp: torch.Tensor, actor_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |rollout_logp - actor_logp| over response tokens (mask != 0); positions where the
    rollout log-prob is NaN (engine could not report it) are left out. NaN when nothing is left."""
    rollout_logp = rollout_logp.detach().to(torch.float64).cpu()
    actor_logp = actor_logp.detach().to(torch.float64).cpu()
    if rollout_logp.shape != actor_logp.shape:
        raise ValueError(
            f"log-prob shapes differ: rollout {tuple(rollout_logp.shape)} vs actor {tuple(actor_logp.shape)}"
        )
    keep = mask.detach().cpu().bool() & ~torch.isnan(rollout_logp)
    if keep.shape != rollout_logp.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} != log-prob shape {tuple(rollout_logp.shape)}")
    if not bool(keep.any()):
        return float("nan")
    return float((rollout_logp - actor_logp).abs()[keep].mean())


def samples_logprobs(samples: Sequence, width: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rollout log-probs of samples as a right-padded [N, width] float32 tensor (NaN where
    unknown) and its response-token mask."""
    width = width if width is not None else max((len(s.response_ids) for s in samples), default=0)
    out = torch.full((len(samples), width), float("nan"), dtype=torch.float32)
    mask = torch.zeros((len(samples), width), dtype=torch.bool)
    for i, s in enumerate(samples):
        k = min(len(s.response_ids), width)
        mask[i, :k] = True
        if s.logprobs is not None:
            out[i, :k] = torch.tensor(s.logprobs[:k], dtype=torch.float32)
    return out, mask
