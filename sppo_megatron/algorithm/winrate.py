"""Win-rate estimates P_hat(y > pi_t | x) from per-sample scores, and the batch-softmean baseline.

Notation (SPPO paper, Wu et al. 2024): x a prompt, y a response sampled from the rollout policy
pi_t, K responses per prompt. P(y_i > y_j | x) is a preference between two responses; the win
rate of y_i against pi_t is estimated by averaging it over the other samples of the same prompt:

    P_hat(y_i > pi_t | x) = 1/(K-1) * sum_{j != i} P(y_i > y_j | x)

and with include_self (the original uclaml/SPPO code) the average runs over all K samples,
counting P(y_i > y_i) = 1/2. Either way the P_hat of one prompt's samples average to exactly 1/2.
"""

from __future__ import annotations

import math

import torch

PREFERENCES = ("pairwise", "bradley_terry")


def as_rewards(rewards) -> torch.Tensor:
    """A 1-D floating tensor of finite scores (ints and bools become float32)."""
    r = torch.as_tensor(rewards)
    if r.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor of B*K scores, got shape {tuple(r.shape)}")
    if not r.is_floating_point():
        r = r.float()
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards contain NaN or infinite values; check the reward function")
    return r


def win_rates(
    rewards: torch.Tensor,
    group_size: int,
    preference: str = "pairwise",
    bt_beta: float = 1.0,
    include_self: bool = False,
) -> torch.Tensor:
    """P_hat(y_i > pi_t | x) for each of the N = B*K samples (K = group_size consecutive per prompt).

    preference="pairwise": P(y_i > y_j) = 1 if r_i > r_j, 1/2 if equal, 0 otherwise (a 0/1 reward
    becomes "right beats wrong"). preference="bradley_terry": P(y_i > y_j) = sigmoid(bt_beta (r_i - r_j)),
    as PairRM scores are used in the original implementation.
    """
    r = as_rewards(rewards)
    k = int(group_size)
    if preference not in PREFERENCES:
        raise ValueError(
            f"unknown preference {preference!r}; expected one of {PREFERENCES} "
            "(batch_softmean has no per-pair preference: use batch_softmean_targets)"
        )
    if k < 1 or r.numel() % k != 0:
        raise ValueError(f"{r.numel()} rewards cannot be split into groups of group_size={k} samples per prompt")
    if k < 2 and not include_self:
        raise ValueError(
            "win rates against the other samples of a prompt need group_size >= 2 "
            "(or include_self=True, or preference batch_softmean)"
        )
    grouped = r.reshape(-1, k)
    diff = grouped[:, :, None] - grouped[:, None, :]  # [B, K, K]: r_i - r_j
    if preference == "pairwise":
        prefs = (diff > 0).to(r.dtype) + 0.5 * (diff == 0).to(r.dtype)
    else:
        prefs = torch.sigmoid(bt_beta * diff)
    total = prefs.sum(dim=-1)  # includes the diagonal P(y_i > y_i) = 1/2
    p_hat = total / k if include_self else (total - 0.5) / (k - 1)
    return p_hat.reshape(-1)


def matrix_win_rates(prefs, group_size: int, include_self: bool = False) -> torch.Tensor:
    """P_hat_i = mean over j != i of P[i, j] (over all j, diagonal counted as 1/2, with include_self)
    from a preference oracle's rows: `prefs` [N, K], row i holding P(y_i > y_j) for the K samples
    j of its prompt (K = group_size consecutive rows per prompt). The diagonal is ignored."""
    p = torch.as_tensor(prefs)
    k = int(group_size)
    if p.dim() != 2 or p.shape[1] != k or k < 1 or p.shape[0] % k != 0:
        raise ValueError(f"a preference matrix needs [B*K, K] rows with K = group_size={k}, got shape {tuple(p.shape)}")
    if k < 2 and not include_self:
        raise ValueError("win rates against the other samples of a prompt need group_size >= 2 (or include_self=True)")
    if not p.is_floating_point():
        p = p.float()
    if not bool(torch.isfinite(p).all()):
        raise ValueError("the preference matrix contains NaN or infinite values; check the oracle")
    off_diagonal = 1.0 - torch.eye(k, dtype=p.dtype).repeat(p.shape[0] // k, 1)
    total = (p * off_diagonal).sum(dim=1)
    return (total + 0.5) / k if include_self else total / (k - 1)


def softmean(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """softmean_beta(r) = (1/beta) log mean exp(beta r) over the whole batch; mean(r) at beta = 0.

    Computed in float64 with logsumexp: small beta would otherwise lose the mean to cancellation.
    It lies between mean(r) and max(r), tending to the mean as beta -> 0 and the max as beta -> inf.
    """
    r = as_rewards(rewards).double()
    if r.numel() == 0:
        raise ValueError("softmean of an empty batch")
    if beta == 0:
        return r.mean()
    return (torch.logsumexp(beta * r, dim=0) - math.log(r.numel())) / beta


def batch_softmean_targets(rewards: torch.Tensor, eta: float) -> torch.Tensor:
    """Targets eta * (r - softmean_eta(r)) of the verl SPPO recipe, one per sample.

    The baseline is taken over the WHOLE batch rather than per prompt, so it works with one
    sample per prompt: Hedge with a Monte Carlo estimate of log Z(x) and the reward in place of
    the win rate. The targets keep the dtype of `rewards` (float32 for integer rewards).
    """
    r = as_rewards(rewards)
    return (eta * (r.double() - softmean(r, eta))).to(r.dtype)
