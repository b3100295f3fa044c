"""Token log-probs and entropy from vocab-parallel logits in one fused pass, without gathering the vocabulary.

Each TP rank holds logits for a contiguous slice of the (padded) vocabulary. The logits are read
in chunks of tokens, each chunk cast to fp32 and divided by the sampling temperature (a copy
only when one of the two is needed); padded columns (ids >= the true vocab size) are left out,
so they get probability exactly 0. Peak extra memory is O(chunk x vocab/tp), the caller's
logits are never modified.

  TP = 1  one fused `log_softmax` per chunk, gathered at the labels (entropy from the same
          log-softmax);
  TP > 1  a local max, ONE max all-reduce, then per chunk the local sum of exp(x - max) and the
          target logit (0 on ranks that do not hold the label), and ONE stacked sum all-reduce
          of (sum-exp, target[, sum exp * shifted]) — the same arithmetic as megatron's
          `vocab_parallel_cross_entropy`, with two collectives instead of three and no softmax
          in no-grad passes.

Entropy, when asked, comes from the same pass (TP > 1: H = log Z - sum_v p_v (x_v - max)); the
log-probs are the same with or without it. The gradient (d log p_label / d logits =
(onehot - softmax) / T) recomputes the softmax chunk by chunk in the backward from the saved
logits and overwrites them with it, so neither pass allocates anything of size tokens x vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

# megatron-core is imported inside the functions that use it: the trainer and the tests import
# the actor's batch types without paying for it.

# fp32 elements of one [tokens, vocab/tp] chunk, by device type: on CPU 16 MiB, under glibc's
# largest mmap threshold (32 MiB), so a freed chunk buffer is reused instead of being mapped and
# page-faulted afresh for every chunk; on GPUs 256 MiB (the caching allocator reuses blocks)
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


@dataclass(frozen=True)
class _Shard:
    """This rank's vocab slice and the scaling applied to it."""

    group: Any
    chunk: int  # elements per chunk
    rank: int
    world: int
    width: int  # columns of the local logits (padded slice)
    valid: int  # of which real tokens
    temperature: float

    @classmethod
    def current(cls, logits: torch.Tensor, vocab_size: Optional[int], temperature: float) -> "_Shard":
        from megatron.core import parallel_state as ps

        rank, width = ps.get_tensor_model_parallel_rank(), logits.shape[-1]
        valid = width if vocab_size is None else max(0, min(width, vocab_size - rank * width))
        chunk = CHUNK_ELEMENTS["cpu" if logits.device.type == "cpu" else "cuda"]
        return cls(
            ps.get_tensor_model_parallel_group(),
            chunk,
            rank,
            ps.get_tensor_model_parallel_world_size(),
            width,
            valid,
            float(temperature),
        )

    def rows(self, n: int) -> List[slice]:
        """Token chunks of at most `chunk` logits (none when this slice holds no real column)."""
        if self.valid == 0:
            return []
        step = max(1, self.chunk // max(self.width, 1))
        return [slice(s, min(s + step, n)) for s in range(0, n, step)]

    def scaled(self, logits: torch.Tensor) -> torch.Tensor:
        """fp32 real-vocab columns / T of a [rows, width] chunk (a view when no cast or scale is needed)."""
        x = logits[:, : self.valid]
        if x.dtype != torch.float32:
            x = x.float()
            return x.div_(self.temperature) if self.temperature != 1.0 else x
        return x / self.temperature if self.temperature != 1.0 else x

    def local_labels(self, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(label column in this slice, clamped to 0 when not here; whether it is here)."""
        local = labels - self.rank * self.width
        here = (local >= 0) & (local < self.valid)
        return torch.where(here, local, torch.zeros_like(local)), here

    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=op, group=self.group)
        return t


def _fused(logits: torch.Tensor, labels: torch.Tensor, shard: _Shard, entropy: bool, for_backward: bool = False):
    """(log-probs [n], entropy [n] or None, what the backward needs) of [n, width] logits."""
    n = logits.shape[0]
    lp = torch.empty(n, dtype=torch.float32, device=logits.device)
    if shard.world == 1:
        ent = torch.empty(n, dtype=torch.float32, device=logits.device) if entropy else None
        log_z = torch.empty(n, dtype=torch.float32, device=logits.device) if for_backward else None
        for sl in shard.rows(n):
            x = shard.scaled(logits[sl])
            log_p = torch.log_softmax(x, dim=-1)
            label = labels[sl].unsqueeze(-1)
            lp[sl] = log_p.gather(-1, label).squeeze(-1)
            if log_z is not None:  # log Z = x - log p at the label (a gather; CPU amax passes cost more)
                log_z[sl] = x.gather(-1, label).squeeze(-1) - lp[sl]
            if ent is not None:
                ent[sl] = (log_p.exp() * log_p).sum(dim=-1).neg_()
        return lp, ent, (log_z,) if for_backward else ()
    col, here = shard.local_labels(labels)
    peak = torch.full((n,), float("-inf"), dtype=torch.float32, device=logits.device)
    for sl in shard.rows(n):
        peak[sl] = shard.scaled(logits[sl]).amax(dim=-1)
    shard.all_reduce(peak, dist.ReduceOp.MAX)
    sums = torch.zeros(3 if entropy else 2, n, dtype=torch.float32, device=logits.device)
    for sl in shard.rows(n):
        shifted = shard.scaled(logits[sl]) - peak[sl].unsqueeze(-1)
        sums[1, sl] = shifted.gather(-1, col[sl].unsqueeze(-1)).squeeze(-1).masked_fill_(~here[sl], 0.0)
        if entropy:
            exp = shifted.exp()
            sums[2, sl] = (exp * shifted).sum(dim=-1)
        else:
            exp = shifted.exp_()
        sums[0, sl] = exp.sum(dim=-1)
    shard.all_reduce(sums)
    log_z = sums[0].log()
    lp = sums[1] - log_z
    ent = log_z - sums[2] / sums[0] if entropy else None
    return lp, ent, (peak, sums[0])


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits / T)[label] over the vocab-parallel rows; softmax recomputed in backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, shard: _Shard) -> torch.Tensor:
        lp, _, norm = _fused(logits, labels, shard, entropy=False, for_backward=True)
        ctx.shard = shard
        ctx.save_for_backward(logits, labels, *norm)
        return lp

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels, *norm = ctx.saved_tensors
        shard: _Shard = ctx.shard
        out = logits  # each chunk is read before its gradient overwrites it (see token_log_probs)
        out[:, shard.valid :].zero_()  # padded columns: zero gradient
        col, here = shard.local_labels(labels)
        for sl in shard.rows(logits.shape[0]):
            x = shard.scaled(logits[sl])
            dst = out[sl, : shard.valid]
            p = dst if dst.dtype == torch.float32 else torch.empty_like(x)  # fp32 math, then one cast
            # softmax: TP = 1 exp(x - log Z); TP > 1 exp(x - max) / sum as megatron computes it
            torch.sub(x, norm[0][sl].unsqueeze(-1), out=p).exp_()
            if len(norm) == 2:
                p.div_(norm[1][sl].unsqueeze(-1))
            p.neg_().scatter_add_(-1, col[sl].unsqueeze(-1), here[sl].unsqueeze(-1).to(p.dtype))
            p.mul_(grad[sl].unsqueeze(-1))
            if shard.temperature != 1.0:
                p.div_(shard.temperature)
            if p is not dst:
                dst.copy_(p)
        return out, None, None


def _flat(logits: torch.Tensor, labels: torch.Tensor):
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def token_log_probs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, vocab_size: Optional[int] = None
) -> torch.Tensor:
    """log softmax(logits / T)[label] for vocab-parallel logits [..., V/tp]; differentiable.

    `labels` are global vocab ids with the shape of logits[..., 0]; `vocab_size` the true
    vocabulary (None: every column is real). The result is the same on every TP rank.
    The backward writes the gradient into `logits`' own memory (as megatron's cross entropy
    does: no [tokens x vocab] allocation), so pass the model's output, which nothing else reads
    after the loss, not a tensor you keep.
    """
    flat, flat_labels = _flat(logits, labels)
    shard = _Shard.current(flat, vocab_size, temperature)
    return _TokenLogProbs.apply(flat, flat_labels, shard).view(labels.shape)


@torch.no_grad()
def token_log_probs_and_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    vocab_size: Optional[int] = None,
    with_entropy: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """No-grad `token_log_probs` and (with_entropy) the entropy of softmax(logits / T) per token,
    from the same pass."""
    flat, flat_labels = _flat(logits, labels)
    shard = _Shard.current(flat, vocab_size, temperature)
    lp, ent, _ = _fused(flat, flat_labels, shard, with_entropy)
    return lp.view(labels.shape), None if ent is None else ent.view(labels.shape)
