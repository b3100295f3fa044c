"""Validation: accuracy of generated samples under the rule-based reward.

Used by the training loop (step 0, every trainer.test_freq steps and after the last) and by `sppo-eval`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Tuple

import torch

from sppo_megatron.reward import Scorer
from sppo_megatron.trainer.generation import score
from sppo_megatron.trainer.samples import RolloutBatch


def accuracy_metrics(rollout: RolloutBatch, rewards: torch.Tensor, prefix: str = "val") -> Dict[str, float]:
    """`{prefix}/accuracy` (mean reward over all samples) and one `{prefix}/accuracy/<data_source>`
    per source; with n > 1 also `{prefix}/pass_at_n` (a prompt counts when any sample is right)."""
    by_source: Dict[str, List[float]] = defaultdict(list)
    for i, reward in enumerate(rewards.tolist()):
        by_source[rollout.item_of(i).data_source].append(reward)
    out = {f"{prefix}/accuracy": float(rewards.mean()), f"{prefix}/num_prompts": float(len(rollout.items))}
    for source, values in sorted(by_source.items()):
        out[f"{prefix}/accuracy/{source}"] = sum(values) / len(values)
    if rollout.n > 1:
        out[f"{prefix}/pass_at_{rollout.n}"] = float((rewards.reshape(-1, rollout.n) > 0).any(dim=1).double().mean())
    return out


def evaluate(scorer: Scorer, rollout: RolloutBatch, prefix: str = "val") -> Tuple[Dict[str, float], torch.Tensor]:
    """Score `rollout` (collective): the `{prefix}/accuracy*` metrics, the scoring failures
    (`{prefix}/reward_timeouts`, `{prefix}/reward_errors`) and `{prefix}/response_length_mean`;
    and the rewards."""
    rewards, stats = score(scorer, rollout)
    metrics = accuracy_metrics(rollout, rewards, prefix)
    metrics[f"{prefix}/reward_timeouts"] = float(stats.timeouts)
    metrics[f"{prefix}/reward_errors"] = float(stats.errors)
    samples = rollout.samples
    metrics[f"{prefix}/response_length_mean"] = sum(len(s.response_ids) for s in samples) / len(samples)
    return metrics, rewards
