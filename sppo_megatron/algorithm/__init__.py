"""SPPO: win rates P_hat(y > pi_t | x) from rewards, regression targets, and the square loss."""

from sppo_megatron.algorithm.loss import sppo_loss
from sppo_megatron.algorithm.targets import best_and_worst, compute_targets, prompts_with_signal
from sppo_megatron.algorithm.winrate import batch_softmean_targets, softmean, win_rates

__all__ = [
    "win_rates",
    "softmean",
    "batch_softmean_targets",
    "best_and_worst",
    "compute_targets",
    "prompts_with_signal",
    "sppo_loss",
]
