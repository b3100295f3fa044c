"""Acceptance of the Megatron -> HF-engine weight sync on 4 gloo ranks, (TP, PP) = (2, 2), fp32:

- after a sync the HF engine's logits equal the Megatron model's (<= 1e-5), and after
  `actor.update` + sync they track the new weights;
- rollout/logp_abs_diff (engine log-probs vs actor.log_probs, same samples, same temperature)
  < 1e-5 after every sync;
- greedy generation after the sync equals greedy generation of the exported HF checkpoint
  loaded by transformers;
- the 4 data-parallel HF engines return the same samples as a single engine (seeded sampling
  is independent of how prompts are split), and every rank gets the same list (also unseeded:
  the seed is drawn on rank 0 and broadcast).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.multirank import run_ranks
from tests.sync_probe import engine_logits, megatron_logits
from tests.tiny_models import PEAKY_EOS, peaky_qwen2

PROMPTS = [[5, 6, 7, 8], [10, 11, 12], [20, 21], [30, 31, 32, 33, 34]]
PROBE = [[5, 6, 7, 8, 9, 10], [40, 41, 42, 43, 44, 45]]
T = 0.8


def _acceptance(hf_dir, out_dir):
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
    from sppo_megatron.rollout import SamplingParams, create_rollout_engine, logp_abs_diff, samples_logprobs
    from sppo_megatron.sync import WeightSync
    from sppo_megatron.trainer.setup import build_actor

    cfg = Config(
        model=ModelConfig(path=hf_dir, dtype="fp32"),
        parallel=ParallelConfig(tp=2, pp=2),
        rollout=RolloutConfig(engine="hf", n=2, temperature=T),
        data=DataConfig(train_batch_size=len(PROMPTS)),
        train=TrainConfig(mini_batch_size=len(PROMPTS)),
        optim=OptimConfig(lr=1e-3, weight_decay=0.0),
        trainer=TrainerConfig(seed=7),
    )
    actor = build_actor(cfg)
    rank = dist.get_rank()
    engine = create_rollout_engine(
        cfg.rollout, hf_dir, seed=cfg.trainer.seed, log_dir=os.path.join(cfg.trainer.output_dir, "logs")
    )
    with torch.no_grad():  # make the engine's weights differ, so the first sync must do work
        for p in engine.model.parameters():
            p.add_(0.05)
    sync = WeightSync(engine)
    report = {"logit_diff": [], "logp_diff": [], "moved": None}
    sampling = SamplingParams(temperature=T, max_new_tokens=6, seed=3)
    before = None
    for step in range(2):
        metrics = sync.sync(actor.export_hf_weights())
        assert metrics["sync/checked"] == 1.0
        ref = megatron_logits(actor, PROBE)
        got = engine_logits(engine, PROBE)
        report["logit_diff"].append(float((ref - got).abs().max()))
        if before is not None:
            report["moved"] = float((got - before).abs().max())
        before = got
        samples = engine.generate(PROMPTS, sampling, n=cfg.rollout.n)
        batch = SequenceBatch([PROMPTS[s.prompt_index] for s in samples], [s.response_ids for s in samples])
        old = actor.log_probs(batch, temperature=T)
        rollout_lp, _ = samples_logprobs(samples, old.logp.shape[1])
        report["logp_diff"].append(logp_abs_diff(rollout_lp, old.logp, old.mask))
        if step == 0:
            targets = torch.tensor([0.5, -0.5] * len(PROMPTS))
            actor.update(batch, targets, old)
    report["samples"] = [(s.prompt_index, s.sample_index, s.response_ids) for s in samples]
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=8), n=1)
    report["greedy"] = [s.response_ids for s in greedy]
    unseeded = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=4), n=1)  # seed from rank 0
    report["unseeded"] = [s.response_ids for s in unseeded]
    # the exported HF checkpoint (rank 0 writes it; every rank iterates the collective export)
    exported = {name: t.clone() for name, t in actor.export_hf_weights()}
    if rank == 0:
        from transformers import AutoConfig, AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf_dir), dtype=torch.float32)
        missing, unexpected = model.load_state_dict(exported, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        model.save_pretrained(out_dir)
    dist.barrier()
    return report


@pytest.mark.slow
def test_sync_from_tp2_pp2_megatron_into_hf_engine(tmp_path):
    hf_dir, out_dir = str(tmp_path / "hf"), str(tmp_path / "exported")
    peaky_qwen2(hf_dir, seed=0)  # init std 0.3: varied greedy outputs
    reports = run_ranks(_acceptance, 4, hf_dir, out_dir, timeout=300, env={"CUDA_VISIBLE_DEVICES": ""})  # CPU/gloo
    for r in reports:
        assert max(r["logit_diff"]) <= 1e-5, r["logit_diff"]
        assert max(r["logp_diff"]) < 1e-5, r["logp_diff"]
        assert r["moved"] > 1e-3  # the update changed the engine's logits (it tracks the new weights)
    assert all(r["samples"] == reports[0]["samples"] for r in reports)
    for key in ("greedy", "unseeded"):
        assert all(r[key] == reports[0][key] for r in reports), key

    from transformers import AutoModelForCausalLM

    from sppo_megatron.rollout import SamplingParams
    from sppo_megatron.rollout.hf_engine import HFRolloutEngine

    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    for p, g in zip(PROMPTS, reports[0]["greedy"]):
        ref = model.generate(
            torch.tensor([p]), do_sample=False, max_new_tokens=8, eos_token_id=PEAKY_EOS, pad_token_id=0
        )
        assert g == ref[0, len(p) :].tolist()
    # one engine on the exported weights (synced in, as sppo-eval does) samples exactly what the
    # 4 data-parallel engines did
    from sppo_megatron.models.hf_io import iter_hf_weights

    engine = HFRolloutEngine(out_dir, device="cpu")
    engine.update_weights(iter_hf_weights(out_dir))
    single = engine.generate(PROMPTS, SamplingParams(temperature=T, max_new_tokens=6, seed=3), n=2)
    assert [(s.prompt_index, s.sample_index, s.response_ids) for s in single] == reports[0]["samples"]
    assert os.path.isdir(out_dir)
