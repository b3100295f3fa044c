"""Expert parallelism on gloo ranks: a tiny Qwen3-MoE (4 experts, top 2) under (TP, PP, EP)
layouts against the single-rank run, through the real actor (megatron DDP, distributed
optimizer, 1F1B), the HF engine sync and checkpoints.

Three launches; each re-initialises megatron's parallel state per layout in the same processes:

    L2 (2 ranks)  (TP, PP, EP) = (1, 1, 2): log-probs, one SPPO update (and one with the router's
                  load-balancing and z-loss on: their logged values); sync into the HF engine
                  (engine logits = actor logits); 1 update, save, 1 more (the uninterrupted run)
    L4 (4 ranks)  (2, 1, 2), (1, 2, 2) and (2, 1, 2) with expert TP 2: log-probs, one update;
                  (2, 1, 2) with expert TP 2:
                  the export equals the HF checkpoint (experts gathered across EP and ETP); Qwen2-MoE
                  and Mixtral there: logits vs transformers, the export
    L1 (1 rank)   the reference; the EP = 2 checkpoint resumed at EP = 1: the next step's metrics
"""

from __future__ import annotations

import io
import os

import pytest
import torch

from sppo_megatron.testing.tiny import make_tiny_hf_model
from tests.multirank import run_ranks
from tests.sync_probe import engine_logits, megatron_logits
from tests.tiny_models import hf_logits, hf_state_dict

pytestmark = pytest.mark.slow

PROMPTS = [[5, 6, 7], [5, 6, 7], [10, 11, 12, 13, 14, 15, 16], [10, 11, 12, 13, 14, 15, 16]]
RESPONSES = [[30, 31, 32, 33], [40], [50, 51, 52, 53, 54, 55, 56, 57, 58], [60, 61]]
TARGETS = [0.4, -0.4, 0.25, -0.25]
PROBE = [[5, 6, 7, 8, 9, 10], [40, 41, 42, 43, 44, 45]]
SEED = 1234


def _actor(path, tp, pp, ep, etp=1, aux=0.0):
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
    from sppo_megatron.trainer.setup import build_actor

    cfg = Config(
        model=ModelConfig(path=path, dtype="fp32", moe_aux_loss_coeff=aux, moe_z_loss_coeff=aux),
        parallel=ParallelConfig(tp=tp, pp=pp, ep=ep, etp=etp),
        rollout=RolloutConfig(engine="hf", n=2, temperature=1.0),
        data=DataConfig(train_batch_size=2),
        train=TrainConfig(mini_batch_size=2, micro_batch_size=1),
        optim=OptimConfig(lr=3e-4, weight_decay=0.01, clip_grad=1.0, adam_eps=1e-6),  # eps: see test_actor
        trainer=TrainerConfig(total_steps=10, seed=SEED),
    )
    init_distributed(tp, pp, SEED, ep=ep, etp=etp)
    return cfg, build_actor(cfg)


def _update(actor):
    from sppo_megatron.actor.batch import SequenceBatch

    batch = SequenceBatch(PROMPTS, RESPONSES)
    actor.update(batch, torch.tensor(TARGETS), actor.log_probs(batch))
    return [(s["train/loss"], s["train/grad_norm"]) for s in actor.last_steps]


def _layout(path, tp, pp, ep, etp=1):
    """log-probs, then one update's (loss, grad norm); with router losses on: their metrics."""
    from sppo_megatron.actor.batch import SequenceBatch

    _, actor = _actor(path, tp, pp, ep, etp)
    out = {"logp": actor.log_probs(SequenceBatch(PROMPTS, RESPONSES)).logp, "steps": _update(actor)}
    out["no_router_metrics"] = not any(k.startswith("moe/") for k in actor.last_steps[0])
    if (tp, pp) == (1, 1):
        _, actor = _actor(path, tp, pp, ep, aux=1e-2)
        _update(actor)
        out["router"] = {k: v for k, v in actor.last_steps[0].items() if k.startswith("moe/")}
    return out


def _bytes(obj) -> bytes:
    """Tensors leave the rank processes as bytes (a queued tensor's shared memory dies with them)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(raw):
    return [torch.load(io.BytesIO(r)) for r in raw]


def _two_ranks(path, ckpt):
    from sppo_megatron.rollout import create_rollout_engine
    from sppo_megatron.sync import WeightSync

    out = {"layout": _layout(path, 1, 1, 2)}
    cfg, actor = _actor(path, 1, 1, 2)
    engine = create_rollout_engine(cfg.rollout, path, seed=SEED, log_dir=os.path.join(cfg.trainer.output_dir, "logs"))
    _update(actor)  # the engine still has the HF weights: the sync must move them
    before = float((engine_logits(engine, PROBE) - megatron_logits(actor, PROBE)).abs().max())
    checked = WeightSync(engine).sync(actor.export_hf_weights())["sync/checked"]
    after = float((engine_logits(engine, PROBE) - megatron_logits(actor, PROBE)).abs().max())
    out["sync"] = {"before": before, "after": after, "checked": checked}
    actor.save_checkpoint(ckpt)
    out["after_save"] = _update(actor)
    return _bytes(out)


def _families(paths):
    """Qwen2-MoE (shared expert, a dense layer) and Mixtral at (TP, EP, ETP) = (2, 2, 2):
    bridge-loaded logits and the export."""
    from sppo_megatron.config.schema import ModelConfig, ParallelConfig
    from sppo_megatron.models import get_bridge
    from sppo_megatron.models.inference import forward_logits
    from sppo_megatron.platform.distributed import init_distributed

    init_distributed(2, 1, SEED, ep=2, etp=2)
    out = {}
    for arch, path in paths.items():
        bridge = get_bridge(path)
        model = bridge.build_model(ModelConfig(dtype="fp32"), ParallelConfig(tp=2, ep=2, etp=2))
        bridge.load_hf_weights(model, path)
        ids = torch.tensor(PROBE)
        out[arch] = {
            "logits": forward_logits(model, ids, bridge.vocab_size),
            "export": {name: t.clone() for name, t in bridge.export_hf_weights(model)},
        }
    return out


def _four_ranks(path, families):
    out = {
        (2, 1, 2): _layout(path, 2, 1, 2),
        (1, 2, 2): _layout(path, 1, 2, 2),
        (2, 1, 2, 2): _layout(path, 2, 1, 2, 2),
    }
    _, actor = _actor(path, 2, 1, 2, etp=2)
    out["export_etp2"] = {name: t.clone() for name, t in actor.export_hf_weights()}
    out["families"] = _families(families)
    return _bytes(out)


def _one_rank(path, ckpt):
    out = {"reference": _layout(path, 1, 1, 1)}
    _, actor = _actor(path, 1, 1, 1)
    actor.load_checkpoint(ckpt)
    out["resumed"] = _update(actor)
    return _bytes(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("moe_parallel")
    path = make_tiny_hf_model("qwen3-moe", work / "hf")
    families = {arch: make_tiny_hf_model(arch, work / arch) for arch in ("qwen2-moe", "mixtral")}
    ckpt = str(work / "ckpt_ep2")
    two = _load(run_ranks(_two_ranks, 2, path, ckpt, timeout=900))
    four = _load(run_ranks(_four_ranks, 4, path, families, timeout=900))
    one = _load(run_ranks(_one_rank, 1, path, ckpt, timeout=900))[0]
    return path, one, two, four, families


def _close_steps(got, want, rel=1e-4):
    assert len(got) == len(want) == 1, (got, want)
    for (loss, gnorm), (loss_ref, gnorm_ref) in zip(got, want):
        assert abs(loss - loss_ref) <= rel * abs(loss_ref), (got, want)
        assert abs(gnorm - gnorm_ref) <= rel * abs(gnorm_ref), (got, want)


@pytest.mark.parametrize(
    "layout", [(1, 1, 2), (2, 1, 2), (1, 2, 2), (2, 1, 2, 2)], ids=["tp1-ep2", "tp2-ep2", "pp2-ep2", "tp2-ep2-etp2"]
)
def test_logprobs_and_update_match_single_rank(runs, layout):
    _, one, two, four, _ = runs
    ref = one["reference"]
    for rank_result in two if layout == (1, 1, 2) else four:
        got = rank_result["layout"] if layout == (1, 1, 2) else rank_result[layout]
        assert (got["logp"] - ref["logp"]).abs().max() <= 1e-5
        _close_steps(got["steps"], ref["steps"])
    assert ref["steps"][0][1] > 0


def test_router_losses_are_logged_when_on_and_match_across_ep(runs):
    _, one, two, four, _ = runs
    ref = one["reference"]["router"]
    assert set(ref) == {"moe/load_balancing_loss", "moe/z_loss"} and all(v > 0 for v in ref.values()), ref
    for r in two:
        for key, value in ref.items():
            assert abs(r["layout"]["router"][key] - value) <= 1e-5 * value, (r["layout"]["router"], ref)
    assert one["reference"]["no_router_metrics"] and all(r[(1, 2, 2)]["no_router_metrics"] for r in four)


def test_hf_engine_logits_equal_actor_after_sync_from_ep2(runs):
    for r in runs[2]:
        assert r["sync"]["checked"] == 1.0 and r["sync"]["before"] > 1e-4, r["sync"]
        assert r["sync"]["after"] <= 1e-5, r["sync"]


def test_ep2_checkpoint_resumes_at_ep1_with_same_next_step(runs):
    _, one, two, _, _ = runs
    _close_steps(one["resumed"], two[0]["after_save"])


def test_export_gathers_experts_across_ep_and_etp(runs):
    path, _, _, four, _ = runs
    want = hf_state_dict(path)
    for r in four:
        got = r["export_etp2"]
        assert list(got) == list(dict.fromkeys(got)) and set(got) == set(want), sorted(set(got) ^ set(want))[:4]
        for k in want:
            assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("arch", ["qwen2-moe", "mixtral"])
def test_other_families_at_tp2_ep2_etp2_match_hf(runs, arch):
    path = runs[4][arch]
    want = hf_state_dict(path)
    ref = hf_logits(path, torch.tensor(PROBE))
    for r in runs[3]:
        got = r["families"][arch]
        assert (got["logits"] - ref).abs().max() <= 1e-4
        assert set(got["export"]) == set(want) and all(torch.equal(got["export"][k], want[k]) for k in want)
