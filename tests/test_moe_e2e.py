"""`sppo-train` on a tiny Qwen3-MoE under torchrun with expert parallelism (parallel.ep=2, two
gloo ranks): SPPO steps run end to end (HF-engine rollouts fed by the EP weight sync, the EP
actor update, a checkpoint), with the layout on the start-up line."""

from __future__ import annotations

import math

import pytest

from sppo_megatron.testing.tiny import make_tiny_hf_model
from tests.tiny_run import base_overrides, by_step, latest, train

pytestmark = pytest.mark.slow


def test_sppo_train_under_torchrun_with_ep2(tiny_assets, tmp_path):
    model = make_tiny_hf_model("qwen3-moe", tmp_path / "qwen3-moe")
    common = [o for o in base_overrides(tiny_assets, str(tmp_path / "run")) if not o.startswith("model.")]
    out = train(
        [
            f"model.path={model}",
            *common,
            "trainer.total_steps=2",
            "trainer.test_freq=0",
            "trainer.val_before_train=false",
            "parallel.ep=2",
        ],
        nproc=2,
        timeout=400,
    )
    assert "EP=2" in out.stdout + out.stderr
    steps = by_step(str(tmp_path / "run"))
    assert sorted(steps) == [1, 2]
    for row in steps.values():
        assert math.isfinite(row["train/loss"]) and row["train/grad_norm"] > 0, row
    assert latest(str(tmp_path / "run")) is not None
