"""rollout.placement=separate and rollout.off_policy_steps=1, run for real: 2 training + 2 rollout
gloo ranks under torchrun on the demo's tiny assets, against the colocated run on 2 ranks."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from sppo_megatron.config import load_config
from sppo_megatron.errors import ConfigError
from tests.multirank import run_ranks
from tests.tiny_run import base_overrides, by_step, train

pytestmark = pytest.mark.slow

SEPARATE = ["rollout.placement=separate", "rollout.num_ranks=2"]
#: metrics that measure time or throughput, not what was computed
_TIMING = ("timing/", "perf/", "memory/", "sync/gb_per_s", "rollout/policy_lag", "timing/gen_busy_s")


def _problems(overrides, world_size):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides, world_size=world_size, check_paths=False)
    return str(err.value)


def test_placement_rules_count_training_and_rollout_ranks():
    base = ["model.path=m", "data.train_files=[t.parquet]"]
    assert "rollout.num_ranks: placement=separate needs >= 1" in _problems(base + ["rollout.placement=separate"], 4)
    assert "only with rollout.placement=separate" in _problems(base + ["rollout.num_ranks=2"], 4)
    assert "rollout.off_policy_steps=1: needs rollout.placement=separate" in _problems(
        base + ["rollout.off_policy_steps=1"], 4
    )
    assert "leaves no training rank" in _problems(base + SEPARATE, 2)
    line = _problems(base + SEPARATE + ["parallel.tp=2"], 5)
    assert "does not divide the 3 training ranks (world size 5 - rollout.num_ranks=2)" in line
    cfg = load_config(
        None, base + SEPARATE + ["parallel.tp=2", "rollout.off_policy_steps=1"], world_size=4, check_paths=False
    )
    assert (cfg.rollout.placement, cfg.rollout.num_ranks, cfg.rollout.off_policy_steps) == ("separate", 2, 1)


class _RefusingEngine:
    """Stands in for the rollout ranks' engine: its generation fails on every rollout rank."""

    eos_token_ids, capabilities = (0,), None

    def __init__(self):
        import torch

        self.dtype = torch.float32

    def describe(self):
        return "refusing x2"

    def generate(self, prompts, sampling, n):
        raise ValueError(f"no samples for {len(prompts)} prompts")


def _split_job():
    """2 training + 2 rollout ranks: megatron state on the training ranks only; a failure on the
    rollout side is raised on every training rank."""
    from megatron.core import parallel_state as ps

    from sppo_megatron.platform.distributed import destroy_distributed, init_distributed, is_rollout_rank, rank
    from sppo_megatron.rollout import SamplingParams
    from sppo_megatron.rollout.remote import RemoteRolloutEngine, serve

    init_distributed(tp=1, pp=1, rollout_ranks=2)
    try:
        if is_rollout_rank():
            serve(_RefusingEngine())
            return rank(), None, ps.model_parallel_is_initialized()
        engine = RemoteRolloutEngine(bucket_mb=1)
        try:
            engine.generate([[1, 2]], SamplingParams(), 2)
        except ValueError as e:
            error = str(e)
        finally:
            engine.shutdown()
        return rank(), error, ps.get_data_parallel_world_size()
    finally:
        destroy_distributed()


def test_split_job_trains_on_its_own_ranks_and_carries_rollout_failures():
    results = run_ranks(_split_job, 4, timeout=180)
    assert results == [
        (0, "no samples for 1 prompts", 2),
        (1, "no samples for 1 prompts", 2),
        (2, None, False),
        (3, None, False),
    ]


def _samples(out):
    with open(os.path.join(out, "samples.jsonl"), encoding="utf-8") as fh:
        return [(r["step"], r["prompt"], r["response"], r["reward"]) for r in map(json.loads, fh)]


def _same_metrics(a, b, steps):
    for step in steps:
        for key, value in a[step].items():
            if key.startswith(_TIMING) or isinstance(value, str):
                continue
            assert b[step][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, key)


def test_separate_placement_reproduces_colocated_run(tiny_assets, tmp_path):
    common = base_overrides(tiny_assets, "") + ["trainer.total_steps=2", "trainer.log_samples_freq=1"]
    colocated, separate = str(tmp_path / "colocated"), str(tmp_path / "separate")
    train([*common, f"trainer.output_dir={colocated}"], nproc=2, timeout=400)
    out = train([*common, *SEPARATE, f"trainer.output_dir={separate}"], nproc=4, timeout=400)
    assert "on 2 rollout rank(s)" in out.stdout
    a, b = by_step(colocated), by_step(separate)
    assert sorted(a) == sorted(b) == [0, 1, 2]
    _same_metrics(a, b, [0, 1, 2])
    assert b[1]["rollout/policy_lag"] == 0.0 and b[1]["sync/checked"] == 1.0
    assert _samples(separate) == _samples(colocated)


def test_off_policy_overlaps_generation_with_training_and_resumes_exactly(tiny_assets, tmp_path):
    common = (
        base_overrides(tiny_assets, "")
        + SEPARATE
        + [
            "rollout.off_policy_steps=1",
            "trainer.total_steps=4",
            "trainer.save_freq=2",
            "trainer.test_freq=2",
            "trainer.val_before_train=false",
        ]
    )  # validation at step 2 runs while batch 3 is in flight
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    train([*common, f"trainer.output_dir={full}"], nproc=4, timeout=400)
    a = by_step(full)
    assert [a[s]["rollout/policy_lag"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    assert "val/accuracy" in a[2] and "val/accuracy" in a[4]
    # the engine's sampling log-probs match the actor's recomputation only under the weights
    # that generated the batch (pi_t), not under the weights being trained
    assert all(a[s]["rollout/logp_abs_diff"] < 1e-4 for s in (1, 2, 3, 4))
    with open(os.path.join(full, "timeline.jsonl"), encoding="utf-8") as fh:
        events = [json.loads(line) for line in fh]
    for step in (1, 2, 3):
        gen = [e for e in events if e["phase"] == "generate" and e["step"] == step + 1]
        trained = [e for e in events if e["phase"] == "train" and e["step"] == step]
        assert sorted(e["rank"] for e in gen) == [2, 3] and sorted(e["rank"] for e in trained) == [0, 1]
        for g in gen:  # every rollout rank generated batch t+1 while every training rank trained on t
            assert all(g["start"] < t["end"] and t["start"] < g["end"] for t in trained), (step, g, trained)
    # resume from step 2, whose batch 3 was in flight: it is regenerated with the weights saved with it
    shutil.copytree(full, split)
    shutil.rmtree(os.path.join(split, "checkpoints", "step_4"))
    with open(os.path.join(split, "checkpoints", "latest"), "w", encoding="utf-8") as fh:
        fh.write("step_2\n")
    state = json.load(open(os.path.join(split, "checkpoints", "step_2", "trainer_state.json"), encoding="utf-8"))
    assert state["in_flight"]["step"] == 3 and len(state["in_flight"]["indices"]) == 4
    resumed = train([*common, f"trainer.output_dir={split}"], nproc=4, timeout=400)
    assert "resumed from" in resumed.stdout
    b = by_step(split)
    assert sorted(b) == [1, 2, 3, 4]
    _same_metrics(a, b, [3, 4])
    assert b[3]["rollout/policy_lag"] == 1.0
    # colocated, the in-flight prompts would be lost: one line, exit 2
    shutil.rmtree(os.path.join(split, "checkpoints", "step_4"))
    with open(os.path.join(split, "checkpoints", "latest"), "w", encoding="utf-8") as fh:
        fh.write("step_2\n")
    colocated = [
        o for o in common if not o.startswith(("rollout.placement", "rollout.num_ranks", "rollout.off_policy"))
    ]
    refused = train([*colocated, f"trainer.output_dir={split}"], check=False)
    assert refused.returncode == 2 and "trainer.resume_accept=[rollout.placement]" in refused.stderr
    # accepted as a config change, the in-flight batch still cannot be dropped
    accept = "trainer.resume_accept=[rollout.placement,rollout.num_ranks,rollout.off_policy_steps]"
    refused = train([*colocated, f"trainer.output_dir={split}", accept], check=False)
    assert refused.returncode == 2
    assert "holds the batch of step 3 in flight" in refused.stderr and "rollout.placement=separate" in refused.stderr
