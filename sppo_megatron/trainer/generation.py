"""Prompts -> samples -> rewards: the rollout half of a step, shared by training, validation and
`sppo-eval`.

Every rank calls these with the same prompts and gets the same results: the rollout engine
gathers its samples to every rank, and rule rewards are scored once on rank 0 and broadcast (scoring
has time limits, so scoring on every rank could disagree); a preference oracle splits its work
across all ranks and gathers the results in order (reward/oracles/). So every rank also takes the
same dynamic-sampling decisions (`collect_rollout`) without communicating.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Sequence, Tuple

import torch

from sppo_megatron.actor import SequenceBatch
from sppo_megatron.algorithm.targets import prompts_with_signal, sample_win_rates
from sppo_megatron.config.rules import filters_no_signal
from sppo_megatron.config.schema import Config
from sppo_megatron.data import PromptItem
from sppo_megatron.errors import UserError
from sppo_megatron.platform.distributed import is_rank0
from sppo_megatron.reward import Scorer, ScoreStats
from sppo_megatron.rollout import FINISH_LENGTH, RolloutSample, SamplingParams, samples_logprobs

#: seeds of different steps must not collide; any large odd multiplier will do
_STEP_SEED_MULTIPLIER = 1_000_003
#: validation samples with the same seed every time, so accuracies are comparable across steps
_VAL_SEED_OFFSET = 7_919
#: extra generation rounds of a step: seeds apart from the step seeds of any run under 7M steps
_ROUND_SEED_MULTIPLIER = 7_368_787


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
        """One rollout holding `parts` in order (each with n samples per prompt)."""
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
    engine: Any, tokenizer: Any, items: Sequence[PromptItem], sampling: SamplingParams, n: int
) -> RolloutBatch:
    """Sample n responses per prompt (collective)."""
    items = list(items)
    return decode(tokenizer, items, engine.generate([it.prompt_ids for it in items], sampling, n), n)


def decode(tokenizer: Any, items: Sequence[PromptItem], samples: List[RolloutSample], n: int) -> RolloutBatch:
    """The RolloutBatch of `samples` (n per item, in order), their responses decoded."""
    texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    return RolloutBatch(list(items), n, samples, texts)


def score(scorer: Scorer, rollout: RolloutBatch) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Rewards [N] (float64; [N, K] preference rows from a matrix oracle) and `reward/*`,
    `response/*` metrics (collective)."""
    rewards, stats = _score(scorer, rollout)
    return rewards, reward_metrics(rollout, rewards, stats)


def _score(scorer: Scorer, rollout: RolloutBatch) -> Tuple[torch.Tensor, ScoreStats]:
    """Rewards and the scorer's stats; non-finite rewards are refused."""
    items = [rollout.item_of(i) for i in range(len(rollout.samples))]
    scores, stats = scorer.score_samples(items, rollout.texts, rollout.n)
    rewards = torch.tensor(scores, dtype=torch.float64)
    bad = (~torch.isfinite(rewards)).reshape(len(scores), -1).any(dim=1).nonzero().flatten().tolist()
    if bad:
        item = rollout.item_of(bad[0])
        raise UserError(
            f"the reward is {scores[bad[0]]} for {len(bad)} of {len(scores)} samples (first: data_source "
            f"{item.data_source!r}, prompt row {item.index}); rewards must be finite numbers"
        )
    return rewards, stats


def reward_metrics(rollout: RolloutBatch, rewards: torch.Tensor, stats: ScoreStats) -> Dict[str, Any]:
    """`reward/*` and `response/*` metrics of a scored rollout."""
    lengths = torch.tensor([len(s.response_ids) for s in rollout.samples], dtype=torch.float64)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std(unbiased=False)),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/clip_frac": sum(s.finish_reason == FINISH_LENGTH for s in rollout.samples) / len(rollout.samples),
        **stats.metrics(),
    }


def collect_rollout(
    rollouts: Any, scorer: Scorer, cfg: Config, step: int
) -> Tuple[RolloutBatch, torch.Tensor, Dict[str, Any]]:
    """The step's rollout half (collective): prompts generated where rollout.placement puts the
    engine (`rollouts`, trainer/placement.py: Rollouts), then scored.

    Dynamic sampling (algorithm.filter_no_signal, on for rule rewards by default): prompts whose
    samples all tie are dropped, and up to rollout.max_extra_rounds more rounds draw
    ceil(missing x data.oversample_factor) prompts each (the first round: train_batch_size x the
    factor) until data.train_batch_size prompts with signal are kept, in draw order; the surplus
    of the last round is dropped. Every drawn prompt advances the sampler, so resuming is exact.
    When the bound is hit the step trains on what it kept (none: the loop skips the update), and
    rank 0 says so (unless max_extra_rounds=0: filtering alone, short batches by choice). Extra
    rounds use the weights that generated the step's batch; with rollout.off_policy_steps=1 there
    are none (the next batch is already generating): it filters only.

    Returns the kept prompts' rollout, their rewards, and the sync, `timing/gen_s` (all rounds),
    `reward/*` and `response/*` (all drawn samples) metrics, plus `rollout/extra_rounds`,
    `rollout/drawn_prompts`, `sppo/kept_prompts` and, when filtering, `sppo/no_signal_frac` over
    every drawn prompt.
    """
    n, want, filtering = cfg.rollout.n, cfg.data.train_batch_size, filters_no_signal(cfg)
    max_extra = cfg.rollout.max_extra_rounds if filtering and not cfg.rollout.off_policy_steps else 0
    metrics: Dict[str, Any] = {}
    drawn: List[Tuple[RolloutBatch, torch.Tensor, ScoreStats]] = []
    kept: List[Tuple[RolloutBatch, torch.Tensor]] = []
    num_kept = num_signal = extra = 0
    for extra in range(max_extra + 1 if filtering else 1):
        size = math.ceil((want - num_kept) * cfg.data.oversample_factor - 1e-9)
        rollout, round_metrics = rollouts.generate_round(step, extra, size)
        if extra:  # a refill's generation and sync time add up; the other metrics are the first round's
            metrics.update(
                {key: metrics.get(key, 0.0) + round_metrics.get(key, 0.0) for key in ("timing/gen_s", "timing/sync_s")}
            )
        else:
            metrics.update(round_metrics)
        rewards, stats = _score(scorer, rollout)
        drawn.append((rollout, rewards, stats))
        signal = (
            prompts_with_signal(rewards, n, cfg.algorithm)
            if filtering
            else torch.ones(len(rollout.items), dtype=torch.bool)
        )
        num_signal += int(signal.sum())
        take = signal.nonzero().flatten()[: want - num_kept].tolist()
        samples = torch.tensor([p * n + j for p in take for j in range(n)], dtype=torch.long)
        kept.append((rollout.select(take), rewards[samples]))
        num_kept += len(take)
        if num_kept == want:
            break
    everything = RolloutBatch.join([r for r, _, _ in drawn], n)
    metrics.update(
        reward_metrics(
            everything,
            torch.cat([r for _, r, _ in drawn]),
            ScoreStats.merge([(len(r.samples), s) for r, _, s in drawn]),
        )
    )
    metrics.update(
        {
            "rollout/extra_rounds": float(extra),
            "rollout/drawn_prompts": float(len(everything.items)),
            "sppo/kept_prompts": float(num_kept),
        }
    )
    if filtering:
        metrics["sppo/no_signal_frac"] = 1.0 - num_signal / len(everything.items)
        if num_kept < want and max_extra and is_rank0():  # 0: short batches are the choice
            print(
                f"sppo-train: step {step}: {num_kept} of data.train_batch_size={want} prompts have a reward "
                f"signal after {extra} extra generation rounds (rollout.max_extra_rounds="
                f"{cfg.rollout.max_extra_rounds}); training on those {num_kept}",
                flush=True,
            )
    return RolloutBatch.join([r for r, _ in kept], n), torch.cat([r for _, r in kept]), metrics


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


def sample_records(
    rollout: RolloutBatch, rewards: torch.Tensor, algorithm: Any, max_prompts: int = 4
) -> List[Dict[str, Any]]:
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
