"""`sppo-convert verify`'s rule: logit differences relative to the logit scale."""

import pytest
import torch

from sppo_megatron.models.agreement import RTOL, judge


def _logits(scale: float = 20.0) -> torch.Tensor:
    return scale * torch.randn(2, 16, 500, generator=torch.Generator().manual_seed(0))


def test_fp32_rounding_of_a_deep_model_passes_where_an_absolute_1e_4_failed():
    ref = _logits(30.0)
    ours = ref + 6.4e-4 * torch.sign(torch.randn_like(ref))  # the 24-layer fp32 figure
    got = judge(ours, ref)
    assert got.ok and got.max_diff > 1e-4 and got.relative < RTOL
    assert not judge(ours, ref, atol=1e-4).ok


def test_a_wrong_layout_fails_and_bf16_rounding_is_not_fp32_agreement():
    ref = _logits()
    wrong = ref[..., torch.randperm(ref.shape[-1], generator=torch.Generator().manual_seed(1))]  # rows mixed up
    assert not judge(wrong, ref).ok
    assert not judge(ref.to(torch.bfloat16).float(), ref).ok  # why verify rounds the HF weights first


def test_the_line_says_what_was_compared():
    line = judge(_logits(), _logits()).describe()
    assert "logit scale" in line and "rtol 0.0001" in line
    assert "--atol 0.001" in judge(_logits(), _logits(), atol=1e-3).describe()
    assert judge(_logits(), _logits(), rtol=0.5).rtol == pytest.approx(0.5)
