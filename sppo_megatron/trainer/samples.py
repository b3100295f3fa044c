"""Prompts -> samples: the sampling settings of training and validation, generation in chunks, and
the batch of samples (`RolloutBatch`) that scoring, the actor and samples.jsonl read.

Every rank calls `generate` with the same prompts and gets the same samples: the rollout engine
gathers its samples to every rank (rollout/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from sppo_megatron.actor import SequenceBatch
from sppo_megatron.algorithm.targets import sample_win_rates
from sppo_megatron.config.schema import AlgorithmConfig, Config
from sppo_megatron.data import PromptItem
from sppo_megatron.rollout import RolloutEngine, RolloutSample, SamplingParams, samples_logprobs

#: seeds of different steps must not collide; any large odd multiplier will do
_STEP_SEED_MULTIPLIER = 1_000_003
#: validation samples with the same seed every time, so accuracies are comparable across steps
_VAL_SEED_OFFSET = 7_919
#: extra generation rounds of a step: seeds apart from the step seeds of any run under 7M steps
_ROUND_SEED_MULTIPLIER = 7_368_787


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the trainer uses."""

    def batch_decode(self, sequences: List[List[int]], skip_special_tokens: bool = ...) -> List[str]: ...


@dataclass
class RolloutBatch:
    """The n samples of each of `items` (samples of a prompt consecutive) and their decoded text."""

    items: List[PromptItem]
    n: int
    samples: List[RolloutSample]
    texts: List[str]

    @property
    def batch(self) -> SequenceBatch:
        return SequenceBatch(
            [self.items[s.prompt_index].prompt_ids for s in self.samples], [s.response_ids for s in self.samples]
        )

    def item_of(self, i: int) -> PromptItem:
        return self.items[self.samples[i].prompt_index]

    def sample_items(self) -> List[PromptItem]:
        """Each sample's prompt, in sample order."""
        return [self.items[s.prompt_index] for s in self.samples]

    def logprobs(self, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Engine-reported log-probs [N, width] (NaN where unknown) and the response mask."""
        return samples_logprobs(self.samples, width)

    def select(self, prompts: Sequence[int]) -> "RolloutBatch":
        """The rollout of `prompts` (indices into items, ascending) alone."""
        new = {p: i for i, p in enumerate(prompts)}
        keep = [i for i, s in enumerate(self.samples) if s.prompt_index in new]
        return RolloutBatch(
            [self.items[p] for p in prompts],
            self.n,
            [replace(self.samples[i], prompt_index=new[self.samples[i].prompt_index]) for i in keep],
            [self.texts[i] for i in keep],
        )

    @staticmethod
    def join(parts: Sequence["RolloutBatch"], n: int) -> "RolloutBatch":
        """One rollout holding `parts` in order (each with n samples per prompt); the parts are left as they are."""
        items: List[PromptItem] = []
        samples: List[RolloutSample] = []
        texts: List[str] = []
        for part in parts:
            samples += [replace(s, prompt_index=s.prompt_index + len(items)) for s in part.samples]
            items += part.items
            texts += part.texts
        return RolloutBatch(items, n, samples, texts)


def train_sampling(cfg: Config, step: int, extra_round: int = 0) -> SamplingParams:
    """rollout.* sampling with a seed per step and extra round: a resumed run draws the same samples."""
    r = cfg.rollout
    return SamplingParams(
        temperature=float(r.temperature),
        top_p=float(r.top_p),
        top_k=int(r.top_k),
        max_new_tokens=int(cfg.data.max_response_length),
        seed=(int(cfg.trainer.seed) * _STEP_SEED_MULTIPLIER + step + extra_round * _ROUND_SEED_MULTIPLIER),
    )


def val_sampling(cfg: Config) -> SamplingParams:
    """rollout.val_* sampling (greedy by default)."""
    r = cfg.rollout
    return SamplingParams(
        temperature=float(r.val_temperature),
        top_p=float(r.val_top_p),
        top_k=-1,
        max_new_tokens=int(cfg.data.max_response_length),
        seed=int(cfg.trainer.seed) + _VAL_SEED_OFFSET,
    )


def generate(
    engine: RolloutEngine,
    tokenizer: Tokenizer,
    items: Sequence[PromptItem],
    sampling: SamplingParams,
    n: int,
    batch_size: Optional[int] = None,
) -> RolloutBatch:
    """Sample n responses per prompt, `batch_size` prompts per engine call (None: all at once;
    collective). Each chunk gets its own seed, the first the one given: the HF engine seeds
    samples by their index within a call."""
    items = list(items)
    size = batch_size or max(len(items), 1)
    parts = []
    for first in range(0, len(items), size):
        chunk = items[first : first + size]
        chunk_sampling = replace(sampling, seed=sampling.seed + first) if sampling.seed is not None else sampling
        parts.append(decode(tokenizer, chunk, engine.generate([it.prompt_ids for it in chunk], chunk_sampling, n), n))
    return RolloutBatch.join(parts, n)


def decode(tokenizer: Tokenizer, items: Sequence[PromptItem], samples: List[RolloutSample], n: int) -> RolloutBatch:
    """The RolloutBatch of `samples` (n per item, in order), their responses decoded."""
    texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    return RolloutBatch(list(items), n, samples, texts)


def sample_records(
    rollout: RolloutBatch, rewards: torch.Tensor, algorithm: AlgorithmConfig, max_prompts: int = 4
) -> List[Dict[str, Any]]:
    """The first `max_prompts` prompts' samples, for samples.jsonl: with the prompt messages, the
    oracle's scalar `score` (None for a preference matrix; then `reward` is the win rate) and the
    sample's `win_rate` under `algorithm` (None with one sample per prompt, except for batch_softmean)."""
    per_prompt = rollout.n > 1 or algorithm.preference == "batch_softmean"
    win_rates = sample_win_rates(rewards, rollout.n, algorithm).tolist() if per_prompt else [None] * len(rewards)
    scalar = rewards.dim() == 1
    records = []
    for i, s in enumerate(rollout.samples):
        if s.prompt_index >= max_prompts:
            break
        item = rollout.item_of(i)
        records.append(
            {
                "prompt": item.prompt_text,
                "response": rollout.texts[i],
                "reward": float(rewards[i]) if scalar else win_rates[i],
                "ground_truth": item.ground_truth,
                "data_source": item.data_source,
                "sample_index": s.sample_index,
                "finish_reason": s.finish_reason,
                "messages": item.messages,
                "score": float(rewards[i]) if scalar else None,
                "win_rate": win_rates[i],
            }
        )
    return records
