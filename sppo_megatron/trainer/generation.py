"""Prompts -> samples -> rewards: the rollout half of a step, shared by training, validation and
`sppo-eval`.

Every rank calls these with the same prompts and gets the same results: the rollout engine
gathers its samples to every rank, and rule rewards are scored once on rank 0 and broadcast (scoring
has time limits, so scoring on every rank could disagree); a preference oracle splits its work
across all ranks and gathers the results in order (reward/oracles/).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch

from sppo_megatron.actor import SequenceBatch
from sppo_megatron.algorithm.targets import sample_win_rates
from sppo_megatron.config.schema import Config
from sppo_megatron.data import PromptItem
from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import is_rank0, share_outcomes
from sppo_megatron.reward.oracles import Oracle
from sppo_megatron.rollout import FINISH_LENGTH, RolloutSample, SamplingParams, samples_logprobs

#: seeds of different steps must not collide; any large odd multiplier will do
_STEP_SEED_MULTIPLIER = 1_000_003
#: validation samples with the same seed every time, so accuracies are comparable across steps
_VAL_SEED_OFFSET = 7_919


@dataclass
class Rollout:
    """The n samples of each of `items` (samples of a prompt consecutive) and their decoded text."""

    items: List[PromptItem]
    n: int
    samples: List[RolloutSample]
    texts: List[str]

    @property
    def batch(self) -> SequenceBatch:
        return SequenceBatch([self.items[s.prompt_index].prompt_ids for s in self.samples],
                             [s.response_ids for s in self.samples])

    def item_of(self, i: int) -> PromptItem:
        return self.items[self.samples[i].prompt_index]

    def logprobs(self, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Engine-reported log-probs [N, width] (NaN where unknown) and the response mask."""
        return samples_logprobs(self.samples, width)


def train_sampling(cfg: Config, step: int) -> SamplingParams:
    """rollout.* sampling with a per-step seed: a resumed run draws the same samples."""
    r = cfg.rollout
    return SamplingParams(temperature=float(r.temperature), top_p=float(r.top_p), top_k=int(r.top_k),
                          max_new_tokens=int(cfg.data.max_response_length),
                          seed=int(cfg.trainer.seed) * _STEP_SEED_MULTIPLIER + step)


def val_sampling(cfg: Config) -> SamplingParams:
    """rollout.val_* sampling (greedy by default)."""
    r = cfg.rollout
    return SamplingParams(temperature=float(r.val_temperature), top_p=float(r.val_top_p), top_k=-1,
                          max_new_tokens=int(cfg.data.max_response_length),
                          seed=int(cfg.trainer.seed) + _VAL_SEED_OFFSET)


def generate(engine: Any, tokenizer: Any, items: Sequence[PromptItem], sampling: SamplingParams, n: int) -> Rollout:
    """Sample n responses per prompt (collective)."""
    items = list(items)
    return decode(tokenizer, items, engine.generate([it.prompt_ids for it in items], sampling, n), n)


def decode(tokenizer: Any, items: Sequence[PromptItem], samples: List[RolloutSample], n: int) -> Rollout:
    """The Rollout of `samples` (n per item, in order), their responses decoded."""
    texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    return Rollout(list(items), n, samples, texts)


def score(scorer: Any, rollout: Rollout) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Rewards [N] (float64; [N, K] preference rows from a matrix oracle) and `reward/*`,
    `response/*` metrics (collective)."""
    items = [rollout.item_of(i) for i in range(len(rollout.samples))]

    def score_on_rank0():
        return scorer.score([it.data_source for it in items], rollout.texts,
                            [it.ground_truth for it in items], [it.extra_info for it in items])

    if isinstance(scorer, Oracle):
        scores, stats = scorer.score_groups([it.messages for it in items], rollout.texts, rollout.n)
    else:
        scores, stats = share_outcomes(score_on_rank0 if is_rank0() else None)[0]
    rewards = torch.tensor(scores, dtype=torch.float64)
    bad = (~torch.isfinite(rewards)).reshape(len(scores), -1).any(dim=1).nonzero().flatten().tolist()
    if bad:
        item = rollout.item_of(bad[0])
        raise UserError(f"the reward is {scores[bad[0]]} for {len(bad)} of {len(scores)} samples (first: data_source "
                        f"{item.data_source!r}, prompt row {item.index}); rewards must be finite numbers")
    lengths = torch.tensor([len(s.response_ids) for s in rollout.samples], dtype=torch.float64)
    metrics = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std(unbiased=False)),
        "reward/timeouts": float(stats["timeouts"]),
        "reward/errors": float(stats["errors"]),
        "timing/reward_s": float(stats["seconds"]),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/clip_frac": sum(s.finish_reason == FINISH_LENGTH for s in rollout.samples) / len(rollout.samples),
        **stats.get("metrics", {}),
    }
    if stats.get("first_error"):
        metrics["reward/first_error"] = stats["first_error"]
    return rewards, metrics


def accuracy_metrics(rollout: Rollout, rewards: torch.Tensor, prefix: str = "val") -> Dict[str, float]:
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


def sample_records(rollout: Rollout, rewards: torch.Tensor, algorithm: Any, max_prompts: int = 4) -> List[Dict[str, Any]]:
    """The first `max_prompts` prompts' samples, for samples.jsonl: with the prompt messages, the
    oracle's scalar `score` (None for a preference matrix; then `reward` is the win rate) and the
    sample's `win_rate` under `algorithm` (an AlgorithmConfig; None with one sample per prompt,
    except for batch_softmean)."""
    per_prompt = rollout.n > 1 or algorithm.preference == "batch_softmean"
    win_rates = sample_win_rates(rewards, rollout.n, algorithm).tolist() if per_prompt else [None] * len(rewards)
    scalar = rewards.dim() == 1
    records = []
    for i, s in enumerate(rollout.samples):
        if s.prompt_index >= max_prompts:
            break
        item = rollout.item_of(i)
        records.append({"prompt": item.prompt_text, "response": rollout.texts[i],
                        "reward": float(rewards[i]) if scalar else win_rates[i],
                        "ground_truth": item.ground_truth, "data_source": item.data_source,
                        "sample_index": s.sample_index, "finish_reason": s.finish_reason, "messages": item.messages,
                        "score": float(rewards[i]) if scalar else None, "win_rate": win_rates[i]})
    return records
