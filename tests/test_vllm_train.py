"""`sppo-train` with rollout.engine=vllm for real (the CPU build), on the demo's tiny assets, under
torchrun: 3 steps colocated (2 ranks, one vLLM engine over both: rollout.tp=2); the same run
stopped after step 2 and resumed reproduces step 3 exactly; 3 steps with
rollout.placement=separate (2 training ranks, 1 rollout rank hosting the engine) sample what the
colocated run sampled. Every run ends with the engine shut down and the trainer's process group
intact (a clean exit after the final checkpoint and barrier)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.engines import needs_vllm
from tests.tiny_run import QUICK, base_overrides, by_step, train

pytestmark = [pytest.mark.engine, pytest.mark.slow, needs_vllm]

STEPS = ["trainer.save_freq=1", "trainer.keep_last=3", "trainer.log_samples_freq=1", "model.dtype=fp32"]
VLLM = ["rollout.engine=vllm"]


def _samples(run_dir: str):
    with open(os.path.join(run_dir, "samples.jsonl"), encoding="utf-8") as fh:
        return [(row["step"], row["prompt"], row["response"]) for row in map(json.loads, fh)]


@pytest.fixture(scope="module")
def colocated(tiny_assets, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vllm_colocated") / "run")
    proc = train(
        base_overrides(tiny_assets, out) + QUICK + STEPS + VLLM + ["rollout.tp=2", "trainer.total_steps=3"],
        nproc=2,
        timeout=600,
    )
    return out, proc


def test_three_colocated_steps(colocated):
    out, proc = colocated
    assert "rollout vllm x1" in proc.stdout
    rows = by_step(out)
    assert sorted(rows) == [1, 2, 3]
    for row in rows.values():
        assert row["rollout/logp_abs_diff"] < 1e-4  # fp32 engine vs the actor's recomputation
        assert row["sync/tensors"] > 0


def test_resumed_run_reproduces_the_uninterrupted_one(colocated, tiny_assets, tmp_path):
    full, _ = colocated
    split = str(tmp_path / "split")
    common = base_overrides(tiny_assets, split) + QUICK + STEPS + VLLM + ["rollout.tp=2"]
    train([*common, "trainer.total_steps=2"], nproc=2, timeout=600)
    resumed = train([*common, "trainer.total_steps=3"], nproc=2, timeout=600)
    assert "resumed from" in resumed.stdout
    a, b = by_step(full), by_step(split)
    assert sorted(b) == [1, 2, 3]
    for step in (1, 2, 3):
        assert b[step]["reward/mean"] == a[step]["reward/mean"], step
        for key in ("train/loss", "train/grad_norm", "rollout/logp_abs_diff"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-9), (step, key)
    assert _samples(split) == _samples(full)


def test_separate_placement_samples_what_colocated_sampled(colocated, tiny_assets, tmp_path):
    full, _ = colocated
    out = str(tmp_path / "separate")
    overrides = base_overrides(tiny_assets, out) + QUICK + STEPS + VLLM + ["trainer.total_steps=3"]
    proc = train([*overrides, "rollout.placement=separate", "rollout.num_ranks=1"], nproc=3, timeout=600)
    assert "on 1 rollout rank(s)" in proc.stdout
    rows = by_step(out)
    assert sorted(rows) == [1, 2, 3]
    assert all(rows[s]["rollout/logp_abs_diff"] < 1e-4 for s in rows)
    # per-request seeds: the same samples whether one engine (TP=2 over the training ranks) or a
    # rollout rank's engine draws them
    assert _samples(out) == _samples(full)
    shutil.rmtree(out)
