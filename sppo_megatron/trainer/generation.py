"""Prompts -> samples -> rewards: the rollout half of a training step, with dynamic sampling.

Every rank calls these with the same prompts and gets the same results: the rollout engine
gathers its samples to every rank and a scorer's results are the same on every rank
(reward/scoring.py). So every rank also takes the same dynamic-sampling decisions
(`collect_rollout`) without communicating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from sppo_megatron.algorithm.targets import prompts_with_signal
from sppo_megatron.config.rules import filters_no_signal
from sppo_megatron.config.schema import Config
from sppo_megatron.errors import UserError
from sppo_megatron.platform.console import say
from sppo_megatron.reward import Scorer, ScoreStats
from sppo_megatron.rollout import FINISH_LENGTH
from sppo_megatron.trainer import PROG
from sppo_megatron.trainer.rollouts import RolloutManager, RoundStats
from sppo_megatron.trainer.samples import RolloutBatch


def score(scorer: Scorer, rollout: RolloutBatch) -> Tuple[torch.Tensor, ScoreStats]:
    """Rewards [N] (float64; [N, K] preference rows from a matrix oracle) and the scorer's stats
    (collective); non-finite rewards are refused."""
    scores, stats = scorer.score_samples(rollout.sample_items(), rollout.texts, rollout.n)
    rewards = torch.tensor(scores, dtype=torch.float64)
    bad = (~torch.isfinite(rewards)).reshape(len(scores), -1).any(dim=1).nonzero().flatten().tolist()
    if bad:
        item = rollout.item_of(bad[0])
        raise UserError(
            f"the reward is {scores[bad[0]]} for {len(bad)} of {len(scores)} samples (first: data_source "
            f"{item.data_source!r}, prompt row {item.index}); rewards must be finite numbers"
        )
    return rewards, stats


@dataclass(frozen=True)
class SampleSummary:
    """The rewards and response lengths of a scored rollout."""

    reward_mean: float
    reward_std: float
    length_mean: float
    length_max: float
    clip_frac: float

    @staticmethod
    def of(rollout: RolloutBatch, rewards: torch.Tensor) -> "SampleSummary":
        lengths = torch.tensor([len(s.response_ids) for s in rollout.samples], dtype=torch.float64)
        return SampleSummary(
            reward_mean=float(rewards.mean()),
            reward_std=float(rewards.std(unbiased=False)),
            length_mean=float(lengths.mean()),
            length_max=float(lengths.max()),
            clip_frac=sum(s.finish_reason == FINISH_LENGTH for s in rollout.samples) / len(rollout.samples),
        )

    def metrics(self) -> Dict[str, float]:
        return {
            "reward/mean": self.reward_mean,
            "reward/std": self.reward_std,
            "response/length_mean": self.length_mean,
            "response/length_max": self.length_max,
            "response/clip_frac": self.clip_frac,
        }


@dataclass(frozen=True)
class RolloutStats:
    """What the step's rollout half measured: its generation rounds, the scoring and the summary of
    every drawn sample, and dynamic sampling's counts (`no_signal_frac` when it filters)."""

    rounds: List[RoundStats]
    score: ScoreStats
    summary: SampleSummary
    extra_rounds: int
    drawn_prompts: int
    kept_prompts: int
    no_signal_frac: Optional[float]

    def metrics(self) -> Dict[str, Any]:
        """The first round's sync and generation metrics (generation and sync seconds summed over
        every round), `reward/*` and `response/*` over every drawn sample, the counts."""
        out: Dict[str, Any] = self.rounds[0].metrics()
        if len(self.rounds) > 1:  # a refill's generation and sync time add up
            out["timing/gen_s"] = sum(r.gen_s for r in self.rounds)
            out["timing/sync_s"] = sum(r.sync_s for r in self.rounds)
        out.update(self.summary.metrics())
        out.update(self.score.metrics())
        out["rollout/extra_rounds"] = float(self.extra_rounds)
        out["rollout/drawn_prompts"] = float(self.drawn_prompts)
        out["sppo/kept_prompts"] = float(self.kept_prompts)
        if self.no_signal_frac is not None:
            out["sppo/no_signal_frac"] = self.no_signal_frac
        return out


def collect_rollout(
    rollouts: RolloutManager, scorer: Scorer, cfg: Config, step: int
) -> Tuple[RolloutBatch, torch.Tensor, RolloutStats]:
    """The step's rollout half (collective): prompts generated where rollout.placement puts the
    engine (`rollouts`), then scored.

    Dynamic sampling (algorithm.filter_no_signal, on for rule rewards by default): prompts whose
    samples all tie are dropped, and up to rollout.max_extra_rounds more rounds draw
    ceil(missing x data.oversample_factor) prompts each (the first round: train_batch_size x the
    factor) until data.train_batch_size prompts with signal are kept, in draw order; the surplus
    of the last round is dropped. Every drawn prompt advances the sampler, so resuming is exact.
    When the bound is hit the step trains on what it kept (none: the loop skips the update), and
    rank 0 says so (unless max_extra_rounds=0: filtering alone, short batches by choice). Extra
    rounds use the weights that generated the step's batch; with rollout.off_policy_steps=1 there
    are none (the next batch is already generating): it filters only.

    Returns the kept prompts' rollout, their rewards, and the stats of every round and every
    drawn sample.
    """
    n, want, filtering = cfg.rollout.n, cfg.data.train_batch_size, filters_no_signal(cfg)
    max_extra = cfg.rollout.max_extra_rounds if filtering and not cfg.rollout.off_policy_steps else 0
    rounds: List[RoundStats] = []
    drawn: List[Tuple[RolloutBatch, torch.Tensor, ScoreStats]] = []
    kept: List[Tuple[RolloutBatch, torch.Tensor]] = []
    num_kept = num_signal = extra = 0
    for extra in range(max_extra + 1 if filtering else 1):
        size = math.ceil((want - num_kept) * cfg.data.oversample_factor - 1e-9)
        rollout, round_stats = rollouts.generate_round(step, extra, size)
        rounds.append(round_stats)
        rewards, scored = score(scorer, rollout)
        drawn.append((rollout, rewards, scored))
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
    stats = RolloutStats(
        rounds=rounds,
        score=ScoreStats.merge([(len(r.samples), s) for r, _, s in drawn]),
        summary=SampleSummary.of(everything, torch.cat([r for _, r, _ in drawn])),
        extra_rounds=extra,
        drawn_prompts=len(everything.items),
        kept_prompts=num_kept,
        no_signal_frac=1.0 - num_signal / len(everything.items) if filtering else None,
    )
    if filtering and num_kept < want and max_extra:  # 0: short batches are the choice
        say(
            PROG,
            f"step {step}: {num_kept} of data.train_batch_size={want} prompts have a reward "
            f"signal after {extra} extra generation rounds (rollout.max_extra_rounds="
            f"{cfg.rollout.max_extra_rounds}); training on those {num_kept}",
        )
    return RolloutBatch.join([r for r, _ in kept], n), torch.cat([r for _, r in kept]), stats
