"""`sppo-convert verify`'s rule: logit differences relative to the logit scale, by weight dtype."""

import pytest
import torch

from sppo_megatron.models.agreement import RTOL, judge, narrowest


def _logits(scale: float = 20.0) -> torch.Tensor:
    return scale * torch.randn(2, 16, 500, generator=torch.Generator().manual_seed(0))


def test_fp32_rounding_of_a_deep_model_passes_where_an_absolute_1e_4_failed():
    ref = _logits(30.0)
    ours = ref + 6.4e-4 * torch.sign(torch.randn_like(ref))  # the 24-layer fp32 figure
    got = judge(ours, ref, "fp32")
    assert got.ok and got.max_diff > 1e-4 and got.relative < RTOL["fp32"]
    assert not judge(ours, ref, "fp32", atol=1e-4).ok


def test_bf16_weights_pass_at_their_tolerance_and_a_wrong_layout_fails_at_any():
    ref = _logits()
    rounded = ref.to(torch.bfloat16).float()
    assert judge(rounded, ref, "bf16").ok and not judge(rounded, ref, "fp32").ok
    wrong = ref[..., torch.randperm(ref.shape[-1], generator=torch.Generator().manual_seed(1))]  # rows mixed up
    for dtype in RTOL:
        assert not judge(wrong, ref, dtype).ok, dtype


def test_the_narrowest_dtype_sets_the_rule_and_the_line_says_what_was_compared():
    assert narrowest("fp32", "bf16") == "bf16" and narrowest("fp16", "fp32") == "fp16"
    assert narrowest("fp32", "fp32") == "fp32"
    line = judge(_logits(), _logits(), "fp32").describe()
    assert "logit scale" in line and "rtol 0.0001 (fp32 weights)" in line
    assert "--atol 0.001" in judge(_logits(), _logits(), "fp32", atol=1e-3).describe()
    assert judge(_logits(), _logits(), "fp32", rtol=0.5).rtol == pytest.approx(0.5)
