"""How a rollout batch is cut: mini-batches (one optimizer step each), DP shares, micro-batches.

Everything here is a pure function of the sample lengths, so every rank computes the same plan
without communicating. Megatron's pipeline schedule runs the same number of micro-batches on
every rank of a step, so each DP rank gets exactly `num_micro` micro-batches; a rank with too
few samples gets empty micro-batches (a 2-token dummy row with zero weight).

Forward-only passes (old log-probs) keep no activations for a backward, so they may use bigger
micro-batches (train.logprob_micro_batch_size / train.logprob_max_tokens): fewer micro-batches,
fewer TP collectives per pass.

Two micro-batching modes:
  count   `micro_batch_size` samples per micro-batch (sorted by length within the DP share, so
          samples of similar length are padded together);
  tokens  dynamic batching under `max_tokens` padded tokens per micro-batch (rows x longest
          row): samples are spread over DP ranks longest-first to balance tokens, then packed
          first-fit-decreasing; ranks that need fewer bins split their fullest bins so that
          empty micro-batches are rare. A sample longer than the budget gets a bin of its own.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, TypedDict

Plan = List[List[List[int]]]  # [dp_rank][micro_batch] -> sample indices ([] = empty micro-batch)


def mini_batches(num_samples: int, group_size: int, prompts_per_step: int) -> List[List[int]]:
    """Consecutive mini-batches of `prompts_per_step` prompts x `group_size` samples (the last may be short)."""
    if group_size < 1 or num_samples % group_size:
        raise ValueError(f"{num_samples} samples are not whole groups of {group_size} samples per prompt")
    step = prompts_per_step * group_size
    return [list(range(s, min(s + step, num_samples))) for s in range(0, num_samples, step)]


def _split_by_count(indices: Sequence[int], dp: int) -> List[List[int]]:
    n = len(indices)
    bounds = [n * r // dp for r in range(dp + 1)]
    return [list(indices[bounds[r] : bounds[r + 1]]) for r in range(dp)]


def _split_by_tokens(indices: Sequence[int], lengths: Sequence[int], dp: int) -> List[List[int]]:
    shares: List[List[int]] = [[] for _ in range(dp)]
    loads = [0] * dp
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        r = min(range(dp), key=lambda r: (loads[r], len(shares[r]), r))
        shares[r].append(i)
        loads[r] += lengths[i]
    return shares


def _pack(indices: Sequence[int], lengths: Sequence[int], max_tokens: int) -> List[List[int]]:
    bins: List[List[int]] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        for b in bins:
            if lengths[b[0]] * (len(b) + 1) <= max_tokens:  # b[0] is the bin's longest row
                b.append(i)
                break
        else:
            bins.append([i])
    return bins


def _bin_cost(b: List[int], lengths: Sequence[int]) -> int:
    return max(lengths[i] for i in b) * len(b) if b else 0


def _grow_to(bins: List[List[int]], n: int, lengths: Sequence[int]) -> List[List[int]]:
    """Split the costliest multi-row bins until there are n bins; pad with empties if impossible."""
    bins = [list(b) for b in bins]
    while len(bins) < n:
        splittable = [b for b in bins if len(b) > 1]
        if not splittable:
            break
        b = max(splittable, key=lambda b: _bin_cost(b, lengths))
        bins.remove(b)
        half = len(b) // 2
        bins.extend([b[:half], b[half:]])
    bins.sort(key=lambda b: -_bin_cost(b, lengths))
    return bins + [[] for _ in range(n - len(bins))]


def plan_micro_batches(
    indices: Sequence[int],
    lengths: Sequence[int],
    dp: int,
    micro_batch_size: int = 1,
    max_tokens: Optional[int] = None,
) -> Plan:
    """Per DP rank, its micro-batches (lists of sample indices), all ranks with the same count.

    `lengths[i]` is the padded cost of sample i (input tokens). `max_tokens` switches to dynamic
    batching; otherwise `micro_batch_size` samples per micro-batch.
    """
    if dp < 1:
        raise ValueError("dp must be >= 1")
    if max_tokens is not None:
        shares = _split_by_tokens(indices, lengths, dp)
        per_rank = [_pack(s, lengths, max_tokens) for s in shares]
    else:
        if micro_batch_size < 1:
            raise ValueError("micro_batch_size must be >= 1")
        shares = _split_by_count(indices, dp)
        per_rank = []
        for s in shares:
            s = sorted(s, key=lambda i: (-lengths[i], i))
            per_rank.append([s[k : k + micro_batch_size] for k in range(0, len(s), micro_batch_size)])
    num_micro = max(1, max(len(b) for b in per_rank))
    return [_grow_to(b, num_micro, lengths) for b in per_rank]


class MicroBatchSizes(TypedDict):
    """`plan_micro_batches`' keyword arguments."""

    micro_batch_size: int
    max_tokens: Optional[int]


def micro_batch_sizes(train: Any, forward_only: bool) -> MicroBatchSizes:
    """`plan_micro_batches`' micro_batch_size / max_tokens for the update or a forward-only pass
    (train.logprob_* when set, else the update's; a token budget overrides a count)."""
    if forward_only and train.logprob_max_tokens is not None:
        return {"micro_batch_size": 1, "max_tokens": train.logprob_max_tokens}
    if forward_only and train.logprob_micro_batch_size is not None:
        return {"micro_batch_size": train.logprob_micro_batch_size, "max_tokens": None}
    return {"micro_batch_size": train.micro_batch_size, "max_tokens": train.max_tokens_per_micro_batch}
