"""Rule-based rewards (MATH, GSM8K, arith), custom reward functions, and time-bounded batched scoring."""

from sppo_megatron.reward.dispatch import check_data_sources, default_compute_score, scorer_kind
from sppo_megatron.reward.scorer import RewardScorer

__all__ = ["RewardScorer", "default_compute_score", "check_data_sources", "scorer_kind"]
