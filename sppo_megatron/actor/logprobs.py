"""Token log-probs and entropy from vocab-parallel logits, without gathering the vocabulary.

Each TP rank holds logits for a contiguous slice of the (padded) vocabulary. Log-probs use
megatron's `vocab_parallel_cross_entropy` (max and sum-exp all-reduced over the TP group; its
backward is the softmax minus the one-hot, per slice), so the training gradient has the same
definition as the recomputed old log-probs. Logits are divided by the sampling temperature, and
the padded vocabulary columns (ids >= the true vocab size) are set to -inf first, so they get
probability exactly 0. `vocab_parallel_cross_entropy` overwrites its input; the scaled copy made
here is what it overwrites, never the caller's tensor unless T == 1 and fp32 (then the model's
own logits output, as megatron's GPTModel itself does).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def _tp():
    from megatron.core import parallel_state

    return (
        parallel_state.get_tensor_model_parallel_group(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_world_size(),
    )


def _valid_columns(partition: int, vocab_size: Optional[int], tp_rank: int) -> int:
    """How many of this rank's vocab columns are real tokens (the rest is padding)."""
    if vocab_size is None:
        return partition
    return max(0, min(partition, vocab_size - tp_rank * partition))


def scale_and_mask(logits: torch.Tensor, temperature: float, vocab_size: Optional[int]) -> torch.Tensor:
    """fp32 logits / T with padded vocab columns at -inf; a new tensor unless T == 1 and already fp32."""
    _, rank, _ = _tp()
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    valid = _valid_columns(x.shape[-1], vocab_size, rank)
    if valid < x.shape[-1]:
        x[..., valid:] = float("-inf")
    return x


def token_log_probs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, vocab_size: Optional[int] = None
) -> torch.Tensor:
    """log softmax(logits / T)[label] for vocab-parallel logits [..., V/tp]; differentiable.

    `labels` are global vocab ids with the shape of logits[..., 0]. The result is the same on
    every TP rank.
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    x = scale_and_mask(logits, temperature, vocab_size)
    return -vocab_parallel_cross_entropy(vocab_parallel_logits=x, target=labels)


@torch.no_grad()
def entropy_from_scaled(x: torch.Tensor, vocab_size: Optional[int]) -> torch.Tensor:
    """Entropy of softmax(x) over the full vocabulary, x = scaled vocab-parallel logits (not modified).

    H = log Z - sum_v p_v x_v with Z and the sum all-reduced over TP; padded columns excluded.
    """
    group, rank, world = _tp()
    valid = _valid_columns(x.shape[-1], vocab_size, rank)
    xs = x[..., :valid]
    if valid > 0:
        local_max = xs.max(dim=-1).values
    else:
        local_max = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype, device=x.device)
    global_max = local_max.clone()
    if world > 1:
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    shifted = xs - global_max.unsqueeze(-1)
    exp = shifted.exp()
    sums = torch.stack([exp.sum(dim=-1), (exp * shifted).sum(dim=-1)])
    if world > 1:
        dist.all_reduce(sums, group=group)
    z, weighted = sums[0], sums[1]
    return z.log() - weighted / z
