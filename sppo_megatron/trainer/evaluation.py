"""Validation: accuracy of generated samples under the rule-based reward.

Used by the training loop (step 0, every trainer.test_freq steps and after the last) and by `sppo-eval`.
The figure is called accuracy only when every reward is 0 or 1; a custom function's other
values give `score` keys instead. Samples that failed to score (timeouts, errors) count as 0
and, beyond reward.max_error_frac of them, are a console warning: a validation where every
reward timed out must not read as a model that answers nothing right.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Tuple

import torch

from sppo_megatron.platform.console import say
from sppo_megatron.reward import Scorer
from sppo_megatron.trainer import PROG
from sppo_megatron.trainer.generation import score
from sppo_megatron.trainer.samples import RolloutBatch


def accuracy_metrics(rollout: RolloutBatch, rewards: torch.Tensor, prefix: str = "val") -> Dict[str, float]:
    """`{prefix}/accuracy` (mean reward over all samples) and one `{prefix}/accuracy/<data_source>`
    per source; with n > 1 also `{prefix}/pass_at_n` (a prompt counts when any sample is right).
    Rewards other than 0 / 1 give `{prefix}/score` and `{prefix}/score/<data_source>` instead
    (and no pass_at_n)."""
    by_source: Dict[str, List[float]] = defaultdict(list)
    for i, reward in enumerate(rewards.tolist()):
        by_source[rollout.item_of(i).data_source].append(reward)
    binary = bool(((rewards == 0) | (rewards == 1)).all())
    name = f"{prefix}/accuracy" if binary else f"{prefix}/score"
    out = {name: float(rewards.mean()), f"{prefix}/num_prompts": float(len(rollout.items))}
    for source, values in sorted(by_source.items()):
        out[f"{name}/{source}"] = sum(values) / len(values)
    if binary and rollout.n > 1:
        out[f"{prefix}/pass_at_{rollout.n}"] = float((rewards.reshape(-1, rollout.n) > 0).any(dim=1).double().mean())
    return out


def evaluate(
    scorer: Scorer, rollout: RolloutBatch, prefix: str = "val", *, max_error_frac: float = 0.0, prog: str = PROG
) -> Tuple[Dict[str, float], torch.Tensor]:
    """Score `rollout` (collective): the `{prefix}/accuracy*` metrics, the scoring failures
    (`{prefix}/reward_timeouts`, `{prefix}/reward_errors`) and `{prefix}/response_length_mean`;
    and the rewards. More than `max_error_frac` of the samples failing is a warning (as `prog`)."""
    rewards, stats = score(scorer, rollout)
    failed, total = stats.timeouts + stats.errors, len(rollout.samples)
    if failed > max_error_frac * total:
        first = " ".join((stats.first_error or "").split())
        say(
            prog,
            f"WARNING: {prefix}: {failed} of {total} reward samples failed ({stats.errors} errors, "
            f"{stats.timeouts} timeouts; reward.max_error_frac={max_error_frac:g}) and count as 0; first error: {first}",
            stderr=True,
        )
    metrics = accuracy_metrics(rollout, rewards, prefix)
    metrics[f"{prefix}/reward_timeouts"] = float(stats.timeouts)
    metrics[f"{prefix}/reward_errors"] = float(stats.errors)
    samples = rollout.samples
    metrics[f"{prefix}/response_length_mean"] = sum(len(s.response_ids) for s in samples) / len(samples)
    return metrics, rewards
