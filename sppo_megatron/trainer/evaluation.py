"""Validation: generate on a held-out prompt set, score with the rule-based reward, report accuracy.

Used by the training loop (step 0, every trainer.test_freq steps and after the last) and by `sppo-eval`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from sppo_megatron.data import PromptItem
from sppo_megatron.rollout import SamplingParams
from sppo_megatron.trainer.generation import RolloutBatch, accuracy_metrics, generate, score


def generate_chunks(
    engine: Any, tokenizer: Any, items: List[PromptItem], sampling: SamplingParams, n: int, batch_size: Optional[int]
) -> Iterator[RolloutBatch]:
    """The samples of `items`, `batch_size` prompts per generate call (None = all at once;
    collective). Each part's prompt indices count within the part (see join_rollouts)."""
    step = batch_size or len(items)
    for first in range(0, len(items), step):
        # a distinct seed per chunk: the HF engine seeds samples by their index within a call
        chunk_sampling = replace(sampling, seed=sampling.seed + first) if sampling.seed is not None else sampling
        yield generate(engine, tokenizer, items[first : first + step], chunk_sampling, n)


def join_rollouts(items: List[PromptItem], n: int, parts: List[RolloutBatch]) -> RolloutBatch:
    """One RolloutBatch of `items` from the consecutive parts generate_chunks produced."""
    samples, texts, first = [], [], 0
    for part in parts:
        for s in part.samples:
            s.prompt_index += first
        samples += part.samples
        texts += part.texts
        first += len(part.items)
    return RolloutBatch(items, n, samples, texts)


def evaluate(
    engine: Any,
    tokenizer: Any,
    scorer: Any,
    items: Sequence[PromptItem],
    sampling: SamplingParams,
    n: int = 1,
    batch_size: Optional[int] = None,
    prefix: str = "val",
) -> Tuple[Dict[str, float], RolloutBatch, torch.Tensor]:
    """Accuracy of the engine's current weights on `items` (collective).

    Prompts go to the engine `batch_size` at a time (None = all at once). Returns the
    `{prefix}/accuracy*` metrics plus `timing/{prefix}_s`, and the samples with their rewards.
    """
    start = time.perf_counter()
    items = list(items)
    parts, rewards = [], []
    failures = {"reward_timeouts": 0.0, "reward_errors": 0.0}
    for part in generate_chunks(engine, tokenizer, items, sampling, n, batch_size):
        part_rewards, part_metrics = score(scorer, part)
        failures["reward_timeouts"] += part_metrics["reward/timeouts"]
        failures["reward_errors"] += part_metrics["reward/errors"]
        parts.append(part)
        rewards.append(part_rewards)
    rollout = join_rollouts(items, n, parts)
    samples = rollout.samples
    all_rewards = torch.cat(rewards)
    metrics = accuracy_metrics(rollout, all_rewards, prefix)
    metrics.update({f"{prefix}/{key}": value for key, value in failures.items()})
    metrics[f"{prefix}/response_length_mean"] = sum(len(s.response_ids) for s in samples) / len(samples)
    metrics[f"timing/{prefix}_s"] = time.perf_counter() - start
    return metrics, rollout, all_rewards
