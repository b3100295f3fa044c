"""The vLLM engine synced from a Megatron actor at TP=2 on 2 gloo ranks, fp32, for real:

- rollout.tp=2 (one engine, a TP rank in each trainer process: vLLM's external launcher over the
  trainer's process group) and rollout.tp=1 (two engines, one per rank, sampling their share):
  the engine's log-probs equal the actor's recomputation (`rollout/logp_abs_diff` <= 1e-4) after
  a sync, and again after `actor.update` + sync (the samples follow the new weights);
- every rank gets the same samples;
- the trainer's process group survives the engine's shutdown (an all-reduce after it); the
  shutdown leaves no child process, and no /dev/shm file outlives the ranks (vLLM's CPU TP
  communicator keeps its shared buffers, two of 4 MiB, until the process exits: 0.32.0 has no
  call that frees them).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.engines import needs_vllm
from tests.multirank import run_ranks
from tests.vllm_testing import make_model

pytestmark = [pytest.mark.engine, pytest.mark.slow, needs_vllm]

PROMPTS = [[5, 6, 7, 8], [10, 11, 12], [20, 21], [30, 31, 32, 33, 34]]
T = 0.8


def _parity(hf_dir):
    import torch.distributed as dist

    import sppo_megatron.actor.actor  # noqa: F401 - imports megatron before init_distributed
    from sppo_megatron.actor.batch import SequenceBatch
    from sppo_megatron.config.schema import (
        Config,
        DataConfig,
        ModelConfig,
        OptimConfig,
        ParallelConfig,
        RolloutConfig,
        TrainConfig,
        TrainerConfig,
    )
    from sppo_megatron.platform.distributed import init_distributed
    from sppo_megatron.rollout import SamplingParams, create_rollout_engine, logp_abs_diff, samples_logprobs
    from sppo_megatron.sync import WeightSync
    from sppo_megatron.trainer.setup import build_actor
    from tests.vllm_testing import engine_children, leftover_shm, shm_files

    init_distributed(tp=2, seed=7)  # as sppo-train: the process group, then the engine, then the actor
    shm = shm_files()
    report = {"logp_diff": {}, "samples": {}, "moved": {}}
    actor = None
    for rollout_tp in (2, 1):
        cfg = Config(
            model=ModelConfig(path=hf_dir, dtype="fp32"),
            parallel=ParallelConfig(tp=2),
            rollout=RolloutConfig(engine="vllm", n=2, temperature=T, tp=rollout_tp),
            data=DataConfig(train_batch_size=len(PROMPTS)),
            train=TrainConfig(mini_batch_size=len(PROMPTS)),
            optim=OptimConfig(lr=1e-3, weight_decay=0.0),
            trainer=TrainerConfig(seed=7),
        )
        engine = create_rollout_engine(cfg.rollout, hf_dir, seed=cfg.trainer.seed, log_dir="unused")
        actor = actor or build_actor(cfg)
        sync = WeightSync(engine)
        diffs, firsts = [], []
        for step in range(2):
            sync.sync(actor.export_hf_weights())
            samples = engine.generate(PROMPTS, SamplingParams(temperature=T, max_new_tokens=8, seed=3), n=2)
            batch = SequenceBatch([PROMPTS[s.prompt_index] for s in samples], [s.response_ids for s in samples])
            old = actor.log_probs(batch, temperature=T)
            rollout_lp, _ = samples_logprobs(samples, old.logp.shape[1])
            diffs.append(logp_abs_diff(rollout_lp, old.logp, old.mask))
            firsts.append(samples[0].logprobs[0])
            if step == 0:
                actor.update(batch, torch.tensor([1.0, -1.0] * len(PROMPTS)), old)
        report["logp_diff"][rollout_tp] = diffs
        report["moved"][rollout_tp] = abs(firsts[1] - firsts[0])
        report["samples"][rollout_tp] = [(s.prompt_index, s.sample_index, s.response_ids) for s in samples]
        engine.shutdown()
        survived = torch.ones(1)
        dist.all_reduce(survived)  # the trainer's default process group is still there
        assert survived.item() == dist.get_world_size()
    report["children"] = engine_children()
    report["shm"] = sorted(leftover_shm(shm))
    return report


def test_vllm_engine_tracks_a_tp2_megatron_actor(tmp_path):
    hf_dir = make_model("qwen2", str(tmp_path / "hf"), seed=0)
    reports = run_ranks(_parity, 2, hf_dir, timeout=600, env={"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    for r in reports:
        for tp, diffs in r["logp_diff"].items():
            assert max(diffs) <= 1e-4, (tp, diffs)
            assert r["moved"][tp] > 1e-4, tp  # the update moved the engine's log-probs
        assert r["children"] == []
        assert [f for f in r["shm"] if os.path.exists(f)] == []
    for tp in (1, 2):
        assert all(r["samples"][tp] == reports[0]["samples"][tp] for r in reports), tp
    assert os.path.isdir(hf_dir)
