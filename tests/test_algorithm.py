"""SPPO math against hand-computed values (the facts used are in sppo_megatron/algorithm/'s docstrings)."""

import math

import pytest
import torch

from sppo_megatron.algorithm import (
    batch_softmean_targets,
    best_and_worst,
    compute_targets,
    softmean,
    sppo_loss,
    win_rates,
)
from sppo_megatron.config.schema import AlgorithmConfig


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol)


# ---------------------------------------------------------------- win_rates


def test_pairwise_excluding_self_with_ties():
    # one prompt, K=4: rewards 1, 0, 1, 0.5
    p = win_rates(torch.tensor([1.0, 0.0, 1.0, 0.5]), 4)
    # sample 0 vs (0, 1, 0.5): 1 + 0.5 + 1 -> 2.5/3 ; sample 1: 0+0+0 ; sample 3: 0+1+0 -> 1/3
    assert close(p, [2.5 / 3, 0.0, 2.5 / 3, 1 / 3])
    assert p.dtype == torch.float32


def test_pairwise_including_self():
    p = win_rates(torch.tensor([1.0, 0.0, 1.0, 0.5]), 4, include_self=True)
    assert close(p, [3 / 4, 0.5 / 4, 3 / 4, 1.5 / 4])


def test_k2_and_integer_rewards():
    p = win_rates(torch.tensor([1, 0, 0, 0, 3, 3]), 2)
    assert close(p, [1.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    assert p.dtype == torch.float32


def test_all_equal_group_gives_one_half():
    for include_self in (False, True):
        for pref in ("pairwise", "bradley_terry"):
            p = win_rates(torch.full((6,), 0.7), 3, preference=pref, include_self=include_self)
            assert close(p, [0.5] * 6)


def test_binary_rewards_including_self_match_centered_reward():
    r = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1])
    p = win_rates(r, 5, include_self=True)
    mean = r.reshape(3, 5).mean(dim=1, keepdim=True)
    assert close(p - 0.5, ((r.reshape(3, 5) - mean) / 2).reshape(-1))


def test_win_rates_average_to_one_half_per_prompt():
    r = torch.randn(24, generator=torch.Generator().manual_seed(0))
    for pref in ("pairwise", "bradley_terry"):
        for include_self in (False, True):
            p = win_rates(r, 4, preference=pref, bt_beta=0.7, include_self=include_self)
            assert close(p.reshape(6, 4).mean(dim=1), [0.5] * 6)


def test_bradley_terry_values():
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    p = win_rates(torch.tensor([2.0, 0.0, 1.0]), 3, preference="bradley_terry", bt_beta=0.5)
    expected = [
        (sig(1.0) + sig(0.5)) / 2,
        (sig(-1.0) + sig(-0.5)) / 2,
        (sig(-0.5) + sig(0.5)) / 2,
    ]
    assert close(p, expected)
    p_self = win_rates(torch.tensor([2.0, 0.0, 1.0]), 3, preference="bradley_terry", bt_beta=0.5, include_self=True)
    assert close(p_self, [(sig(1.0) + sig(0.5) + 0.5) / 3, (sig(-1.0) + sig(-0.5) + 0.5) / 3, 0.5])


def test_win_rates_errors():
    with pytest.raises(ValueError, match="group_size=4"):
        win_rates(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        win_rates(torch.zeros(3), 1)
    assert close(win_rates(torch.zeros(3), 1, include_self=True), [0.5] * 3)
    with pytest.raises(ValueError, match="unknown preference"):
        win_rates(torch.zeros(4), 2, preference="elo")
    with pytest.raises(ValueError, match="1-D"):
        win_rates(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="NaN"):
        win_rates(torch.tensor([1.0, float("nan")]), 2)


# ---------------------------------------------------------------- batch softmean


def test_softmean_hand_value_and_bounds():
    r = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert close(softmean(r, 1.0), math.log((2 + 2 * math.e) / 4))
    assert softmean(r, 1.0) >= r.mean()
    assert close(softmean(r, 1e-6), r.mean(), tol=1e-6)
    assert close(softmean(r, 0.0), r.mean())
    assert close(softmean(r, 200.0), r.max(), tol=1e-2)


def test_batch_softmean_targets():
    r = torch.tensor([0.0, 1.0, 1.0, 0.0])
    eta = 2.0
    b = math.log((2 + 2 * math.exp(2.0)) / 4) / 2
    assert close(batch_softmean_targets(r, eta), [eta * (0 - b), eta * (1 - b), eta * (1 - b), eta * (0 - b)], tol=1e-5)
    # baseline >= mean, so targets sum to <= 0; eta -> 0: targets / eta -> r - mean
    assert float(batch_softmean_targets(r, eta).sum()) <= 0
    assert close(batch_softmean_targets(r, 1e-6) / 1e-6, r - r.mean(), tol=1e-4)
    assert close(batch_softmean_targets(r, 0.0), [0.0] * 4)


def test_batch_softmean_one_sample_per_prompt():
    cfg = AlgorithmConfig(preference="batch_softmean", eta=1.0)
    r = torch.tensor([1.0, 0.0, 0.0])
    targets, mask, m = compute_targets(r, 1, cfg)
    b = math.log((math.e + 2) / 3)
    assert close(targets, [1 - b, -b, -b], tol=1e-6)
    assert mask.all()
    assert m["sppo/selected_frac"] == 1.0
    assert m["sppo/no_signal_frac"] == 0.0
    assert math.isclose(m["sppo/win_rate_mean"], (1 - 3 * b) / 3 + 0.5, abs_tol=1e-6)
    _, _, m_flat = compute_targets(torch.ones(3), 1, cfg)
    assert m_flat["sppo/no_signal_frac"] == 1.0
    _, _, m0 = compute_targets(r, 1, AlgorithmConfig(preference="batch_softmean", eta=0.0))
    assert m0["sppo/win_rate_mean"] == 0.5


def test_batch_softmean_needs_soft_loss():
    with pytest.raises(ValueError, match="loss=soft"):
        compute_targets(torch.zeros(4), 2, AlgorithmConfig(preference="batch_softmean", loss="pair"))


# ---------------------------------------------------------------- compute_targets


def test_soft_targets_and_metrics():
    cfg = AlgorithmConfig(preference="pairwise", eta=2.0, loss="soft")
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # K=3: [1,0,0] and [0,1,1]
    targets, mask, m = compute_targets(r, 3, cfg)
    # P_hat: [1, .25, .25] and [0, .75, .75]; targets 2 * (P - .5)
    assert close(targets, [1.0, -0.5, -0.5, -1.0, 0.5, 0.5])
    assert mask.all() and mask.dtype == torch.bool
    assert m == pytest.approx(
        {
            "sppo/win_rate_mean": 0.5,
            "sppo/target_mean": 0.0,
            "sppo/target_std": math.sqrt((1 + 0.25 * 2) * 2 / 6),
            "sppo/no_signal_frac": 0.0,
            "sppo/selected_frac": 1.0,
        }
    )
    assert all(isinstance(v, float) for v in m.values())


def test_all_equal_groups_soft_targets_zero():
    targets, mask, m = compute_targets(torch.tensor([1.0, 1, 1, 0, 0, 0]), 3, AlgorithmConfig(eta=5.0))
    assert close(targets, [0.0] * 6)
    assert mask.all()
    assert m["sppo/no_signal_frac"] == 1.0


def test_best_and_worst_tie_rule():
    best, worst = best_and_worst(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5], [0.0, 2.0, 2.0, -1.0]]))
    assert best.tolist() == [0, 0, 1]
    assert worst.tolist() == [1, 0, 3]


def test_pair_selection_excludes_no_signal_groups():
    cfg = AlgorithmConfig(preference="pairwise", eta=1.0, loss="pair")
    # groups: [0,1,1,0] (best 1, worst 0), [1,1,1,1] (no signal), [0.2,0.9,0.5,0.9] (best 1, worst 0)
    r = torch.tensor([0.0, 1, 1, 0, 1, 1, 1, 1, 0.2, 0.9, 0.5, 0.9])
    targets, mask, m = compute_targets(r, 4, cfg)
    assert mask.tolist() == [True, True, False, False, False, False, False, False, True, True, False, False]
    # soft targets of the selected: group 0: P = [1/3... ] sample0 (0 vs 1,1,0): 0.5/3 ; sample1: 2.5/3
    # group 2: sample8 (0.2) loses all: 0 ; sample9 (0.9): 1 + 0.5 + 1 over 3
    assert close(targets, [0.5 / 3 - 0.5, 2.5 / 3 - 0.5, 0, 0, 0, 0, 0, 0, -0.5, 2.5 / 3 - 0.5, 0, 0])
    assert m["sppo/no_signal_frac"] == pytest.approx(1 / 3)
    assert m["sppo/selected_frac"] == pytest.approx(4 / 12)
    assert m["sppo/win_rate_mean"] == pytest.approx((0.5 / 3 + 2.5 / 3 + 0 + 2.5 / 3) / 4)


def test_hard_selection_targets():
    cfg = AlgorithmConfig(preference="pairwise", eta=3.0, loss="hard")
    r = torch.tensor([0.0, 1, 1, 0, 2, 2, 2, 2])
    targets, mask, m = compute_targets(r, 4, cfg)
    assert mask.tolist() == [True, True, False, False, False, False, False, False]
    assert close(targets, [-1.5, 1.5, 0, 0, 0, 0, 0, 0])
    assert m["sppo/target_mean"] == 0.0 and m["sppo/target_std"] == 1.5
    assert m["sppo/no_signal_frac"] == 0.5 and m["sppo/selected_frac"] == 0.25


def test_pair_k2_selects_both_and_nothing_when_all_flat():
    cfg = AlgorithmConfig(preference="pairwise", eta=1.0, loss="pair", include_self=False, bt_beta=1.0)
    targets, mask, _ = compute_targets(torch.tensor([0.0, 1.0]), 2, cfg)
    assert mask.all() and close(targets, [-0.5, 0.5])
    targets, mask, m = compute_targets(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2, cfg)
    assert not mask.any() and close(targets, [0.0] * 4)
    assert m["sppo/selected_frac"] == 0.0 and m["sppo/no_signal_frac"] == 1.0
    assert m["sppo/target_std"] == 0.0


def test_compute_targets_errors():
    with pytest.raises(ValueError, match="algorithm.loss"):
        compute_targets(torch.zeros(4), 2, AlgorithmConfig(loss="dpo"))
    with pytest.raises(ValueError, match="group_size=3"):
        compute_targets(torch.zeros(4), 3, AlgorithmConfig())


# ---------------------------------------------------------------- sppo_loss


def test_sppo_loss_value_and_metrics():
    logp = torch.tensor([-3.0, -5.0, -2.0], requires_grad=True)
    old = torch.tensor([-4.0, -5.0, -2.5])
    targets = torch.tensor([0.5, -0.5, 0.0])
    loss, m = sppo_loss(logp, old, targets)
    # log ratios 1, 0, 0.5 ; errors 0.5, 0.5, 0.5
    assert math.isclose(loss.item(), 0.25, abs_tol=1e-6)
    assert float(m["loss"]) == pytest.approx(0.25) and float(m["log_ratio_mean"]) == pytest.approx(0.5)
    assert m["num_selected"] == 3


def test_sppo_loss_masked_samples_get_no_gradient():
    logp = torch.tensor([-3.0, float("-inf"), -2.0], requires_grad=True)
    old = torch.tensor([-4.0, -5.0, -2.5])
    targets = torch.tensor([0.5, 100.0, 1.5])
    mask = torch.tensor([True, False, True])
    loss, m = sppo_loss(logp, old, targets, mask)
    assert math.isclose(loss.item(), (0.25 + 1.0) / 2, abs_tol=1e-6)
    loss.backward()
    assert close(logp.grad, [2 * 0.5 / 2, 0.0, 2 * (0.5 - 1.5) / 2])
    assert float(m["log_ratio_mean"]) == pytest.approx(0.75) and m["num_selected"] == 2


def test_sppo_loss_empty_selection():
    logp = torch.tensor([-3.0, -1.0], requires_grad=True)
    loss, m = sppo_loss(logp, torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0 and float(m["log_ratio_mean"]) == 0.0 and m["num_selected"] == 0
    loss.backward()
    assert close(logp.grad, [0.0, 0.0])


def test_sppo_loss_gradcheck_and_analytic_gradient():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    old = torch.randn(6, dtype=torch.float64, generator=g)
    targets = torch.randn(6, dtype=torch.float64, generator=g)
    mask = torch.tensor([True, False, True, True, False, True])
    assert torch.autograd.gradcheck(lambda x: sppo_loss(x, old, targets, mask)[0], (logp,))
    loss, _ = sppo_loss(logp, old, targets, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    expected = torch.where(mask, 2 * (logp - old - targets) / 4, torch.zeros_like(logp))
    assert torch.allclose(grad, expected.detach())


def test_first_minibatch_gradient_is_reinforce_with_baseline():
    logp = torch.tensor([-7.0, -3.0, -4.0, -9.0], requires_grad=True)
    targets, mask, _ = compute_targets(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, AlgorithmConfig(eta=2.0))
    loss, m = sppo_loss(logp, logp.detach().clone(), targets, mask)
    assert float(m["log_ratio_mean"]) == 0.0
    (grad,) = torch.autograd.grad(loss, logp)
    assert close(grad, -2 * targets / 4)


def test_sppo_loss_denominator_for_accumulation():
    logp = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    old, targets = torch.zeros(4), torch.zeros(4)
    full, _ = sppo_loss(logp, old, targets)
    halves = [sppo_loss(logp[i : i + 2], old[i : i + 2], targets[i : i + 2], denominator=4)[0] for i in (0, 2)]
    assert math.isclose(sum(halves).item(), full.item(), rel_tol=1e-6)


@pytest.mark.gpu
def test_sppo_loss_with_a_cpu_mask_never_synchronises_the_device():
    """The actor calls sppo_loss once per micro-batch: with the mask on the CPU nothing in it
    waits for the GPU (CUDA's sync debug mode raises on any synchronising call)."""
    logp = torch.randn(6, dtype=torch.float64, device="cuda", requires_grad=True)
    old, targets = torch.zeros(6, dtype=torch.float64, device="cuda"), torch.ones(6, dtype=torch.float64, device="cuda")
    mask = torch.tensor([True, False, True, True, False, True])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, m = sppo_loss(logp, old, targets, mask, denominator=1.0)
        stats = torch.stack([m["loss"], m["log_ratio_mean"] * m["num_selected"]])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert m["num_selected"] == 4 and stats.device.type == "cuda"
    assert float(m["loss"]) == float(((logp.detach() - 1.0)[mask.cuda()] ** 2).sum())


def test_sppo_loss_shape_errors():
    with pytest.raises(ValueError, match="same length"):
        sppo_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="sample_mask"):
        sppo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.ones(2, dtype=torch.bool))
