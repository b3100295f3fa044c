"""From rewards to the SPPO regression targets and the samples that carry them.

`algorithm.loss` picks the samples:
  soft  every sample, target eta (P_hat - 1/2)                  (the paper's objective)
  pair  per prompt the best and the worst sample, soft targets   (the original dataset)
  hard  the same pair, targets +eta/2 and -eta/2                 (TRL's sppo_hard)
In pair/hard a prompt whose K rewards are all equal has no best or worst and is left out.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from sppo_megatron.algorithm.winrate import as_rewards, batch_softmean_targets, matrix_win_rates, win_rates

LOSSES = ("soft", "pair", "hard")


def best_and_worst(grouped: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row, the index of the first maximum and of the first minimum (explicit tie rule)."""
    idx = torch.arange(grouped.shape[1], device=grouped.device).expand_as(grouped)
    beyond = grouped.shape[1]
    best = torch.where(grouped == grouped.max(dim=1, keepdim=True).values, idx, beyond).min(dim=1).values
    worst = torch.where(grouped == grouped.min(dim=1, keepdim=True).values, idx, beyond).min(dim=1).values
    return best, worst


def _no_signal(grouped: torch.Tensor) -> torch.Tensor:
    """Per group: are all rewards equal (nothing to prefer)?"""
    return grouped.max(dim=1).values == grouped.min(dim=1).values


def prompts_with_signal(rewards, group_size: int, cfg) -> torch.Tensor:
    """Per prompt [B] bool: do its K samples differ in reward (in win rate for preference=matrix)?
    One whose samples all tie has every SPPO target 0 and gives the update nothing to learn;
    dynamic sampling (trainer/generation.py) leaves it out. cfg as for compute_targets; K >= 2."""
    k = int(group_size)
    r = sample_win_rates(rewards, k, cfg) if cfg.preference == "matrix" else as_rewards(rewards)
    if k < 2 or r.numel() % k:
        raise ValueError(f"{r.numel()} rewards cannot be split into groups of group_size={k} >= 2 samples per prompt")
    return ~_no_signal(r.reshape(-1, k))


def sample_win_rates(rewards, group_size: int, cfg) -> torch.Tensor:
    """P_hat(y_i > pi_t | x) per sample under `cfg.preference` (cfg as for compute_targets).

    `rewards` is [N] scores, or [N, K] preference rows for preference=matrix. batch_softmean has
    no P_hat: its stand-in is targets/eta + 1/2 (1/2 when eta = 0), the reward's excess over the
    soft mean shifted to the same scale.
    """
    k = int(group_size)
    if cfg.preference == "matrix":
        return matrix_win_rates(rewards, k, bool(cfg.include_self))
    r = as_rewards(rewards)
    if k < 1 or r.numel() == 0 or r.numel() % k != 0:
        raise ValueError(f"{r.numel()} rewards cannot be split into groups of group_size={k} samples per prompt")
    if cfg.preference == "batch_softmean":
        eta = float(cfg.eta)
        return batch_softmean_targets(r, eta) / eta + 0.5 if eta > 0 else torch.full_like(r, 0.5)
    return win_rates(r, k, cfg.preference, float(cfg.bt_beta), bool(cfg.include_self))


def compute_targets(rewards, group_size: int, cfg) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]:
    """Targets, boolean sample mask and `sppo/*` metrics for N = B*K rewards (K consecutive per prompt;
    [N, K] preference rows for preference=matrix, whose samples are then ranked by win rate).

    `cfg` is an AlgorithmConfig or anything with preference, eta, loss, include_self, bt_beta.
    Unselected samples have target 0. Metrics (python floats), all over the selected samples:
      sppo/win_rate_mean   mean P_hat (exactly 1/2 for soft: a sanity check; for pair/hard the
                           mean of the best and worst). For batch_softmean, where no P_hat
                           exists, the mean of targets/eta + 1/2 (1/2 when eta = 0), the
                           reward's excess over the soft mean shifted to the same scale.
      sppo/target_mean, sppo/target_std (population std)
      sppo/no_signal_frac  fraction of prompts whose K rewards are all equal; with K = 1
                           (batch_softmean only) the comparison set is the batch: 1 if all equal
      sppo/selected_frac   selected samples / N
    """
    k = int(group_size)
    eta = float(cfg.eta)
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown algorithm.loss {cfg.loss!r}; expected one of {LOSSES}")
    if cfg.preference == "batch_softmean" and cfg.loss != "soft":
        raise ValueError(
            f"algorithm.preference=batch_softmean needs algorithm.loss=soft, got {cfg.loss!r} "
            "(it has no per-prompt best/worst pair)"
        )
    win_rate = sample_win_rates(rewards, k, cfg)
    # samples are ranked by reward, or by their win rate where the oracle gives a matrix
    r = win_rate if cfg.preference == "matrix" else as_rewards(rewards)
    grouped = r.reshape(-1, k)
    no_signal = _no_signal(grouped if k > 1 else r.reshape(1, -1))

    if cfg.preference == "batch_softmean":
        targets = batch_softmean_targets(r, eta)
        mask = torch.ones_like(r, dtype=torch.bool)
    else:
        soft = eta * (win_rate - 0.5)
        if cfg.loss == "soft":
            targets, mask = soft, torch.ones_like(r, dtype=torch.bool)
        else:
            best, worst = best_and_worst(grouped)
            rows = torch.arange(grouped.shape[0], device=r.device)
            signal = ~no_signal
            mask2d = torch.zeros_like(grouped, dtype=torch.bool)
            mask2d[rows, best] = signal
            mask2d[rows, worst] = signal
            mask = mask2d.reshape(-1)
            if cfg.loss == "pair":
                targets = torch.where(mask, soft, torch.zeros_like(soft))
            else:
                hard = torch.zeros_like(grouped)
                hard[rows, best] = torch.where(signal, eta / 2, 0.0).to(hard.dtype)
                hard[rows, worst] = torch.where(signal, -eta / 2, 0.0).to(hard.dtype)
                targets = hard.reshape(-1)

    sel_targets, sel_win = targets[mask], win_rate[mask]
    any_selected = sel_targets.numel() > 0
    metrics = {
        "sppo/win_rate_mean": float(sel_win.mean()) if any_selected else 0.5,
        "sppo/target_mean": float(sel_targets.mean()) if any_selected else 0.0,
        "sppo/target_std": float(sel_targets.std(unbiased=False)) if any_selected else 0.0,
        "sppo/no_signal_frac": float(no_signal.float().mean()),
        "sppo/selected_frac": float(mask.float().mean()),
    }
    return targets, mask, metrics
