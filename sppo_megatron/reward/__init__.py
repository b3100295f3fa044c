"""Rewards: rule-based (MATH, GSM8K, arith) and custom reward functions with time-bounded batched
scoring, and the `Scorer` interface that they and the preference oracles (`reward.oracles`) share."""

from sppo_megatron.reward.dispatch import check_data_sources, default_compute_score, scorer_kind
from sppo_megatron.reward.scorer import RewardScorer
from sppo_megatron.reward.scoring import ScoredPrompt, Scorer, ScoreStats

__all__ = [
    "RewardScorer",
    "ScoreStats",
    "ScoredPrompt",
    "Scorer",
    "check_data_sources",
    "default_compute_score",
    "scorer_kind",
]
