"""The SPPO square loss on sequence log-likelihood ratios.

    loss = mean over selected samples of ( log pi_theta(y|x) - log pi_t(y|x) - target )^2

with log pi(y|x) the SUM of the response token log-probs and target = eta (P_hat - 1/2) (or a
variant, see targets.py). pi_t is the rollout policy, frozen during the update, so
old_logp_sum and the targets carry no gradient.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch


def sppo_loss(
    logp_sum: torch.Tensor,
    old_logp_sum: torch.Tensor,
    targets: torch.Tensor,
    sample_mask: Optional[torch.Tensor] = None,
    denominator: Optional[float] = None,
) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Square loss over the samples where `sample_mask` is true (all when None).

    The sum of squared errors is divided by the number of selected samples, or by `denominator`
    when given: with gradient accumulation over micro-batches, pass the number of selected
    samples in the whole mini-batch so that the accumulated gradient is that of the mean.
    Unselected samples get exactly zero gradient even if their log-probs are not finite, and an
    empty selection gives a zero loss that still backpropagates.

    The selection is taken where `sample_mask` lives: a CPU mask costs the accelerator no host
    synchronisation (the actor calls this once per micro-batch).
    metrics: `loss` and `log_ratio_mean` (mean log pi_theta - log pi_t over selected samples, 0
    when none) as detached 0-dim tensors on the loss's device, `num_selected` as an int.
    """
    if not (logp_sum.shape == old_logp_sum.shape == targets.shape) or logp_sum.dim() != 1:
        raise ValueError(
            f"logp_sum, old_logp_sum and targets must be 1-D of the same length, got "
            f"{tuple(logp_sum.shape)}, {tuple(old_logp_sum.shape)}, {tuple(targets.shape)}"
        )
    if sample_mask is None:
        sample_mask = torch.ones(logp_sum.shape, dtype=torch.bool)
    elif sample_mask.shape != logp_sum.shape:
        raise ValueError(f"sample_mask shape {tuple(sample_mask.shape)} != logp_sum shape {tuple(logp_sum.shape)}")
    index = sample_mask.to(torch.bool).nonzero().squeeze(1)
    num_selected = int(index.numel())
    index = index.to(logp_sum.device, non_blocking=True)
    log_ratio = logp_sum.index_select(0, index) - old_logp_sum.detach().index_select(0, index).to(logp_sum.dtype)
    error = log_ratio - targets.detach().index_select(0, index).to(logp_sum.dtype)
    divisor = float(denominator) if denominator is not None else max(num_selected, 1)
    loss = (error * error).sum() / divisor
    ratio_mean = log_ratio.detach().mean() if num_selected else torch.zeros((), dtype=loss.dtype, device=loss.device)
    metrics = {"loss": loss.detach(), "log_ratio_mean": ratio_mean, "num_selected": num_selected}
    return loss, metrics
