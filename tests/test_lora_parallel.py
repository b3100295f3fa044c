"""LoRA under TP, PP and EP on gloo ranks, against the single-rank run, through the real actor
(megatron DDP, distributed optimizer, 1F1B), its checkpoints and the HF engine sync.

The reference run (1 rank) trains adapters for one step and saves them (adapters, their Adam
state, the pointer to the base); every other layout loads that checkpoint, so the adapters hold a
non-zero B and the next update moves A and B through each layout's communication. Per layout:
log-probs (<= 1e-5) and the next update's loss and grad norm (<= 1e-4 relative) equal the
reference's. Launches:

    L1 (1 rank)   dense Qwen2 and Qwen3-MoE (experts adapted): B = 0 at init gives the base's
                  log-probs exactly; train, save, the next step; a resume from the checkpoint
                  repeats it exactly; only adapter parameters change
    L2 (2 ranks)  dense (TP, PP) = (2, 1) and (1, 2), MoE EP = 2: the checkpoint loaded, log-probs,
                  the next update; B = 0 at TP 2 gives the TP-2 base exactly; the HF engine
                  after syncs from the TP-2 actor (whole, then changed tensors only) equals it
    L4 (4 ranks)  MoE (TP, EP, ETP) = (2, 2, 2): sequence parallelism, experts split over ETP
"""

from __future__ import annotations

import io
import os

import pytest
import torch

from sppo_megatron.testing.tiny import make_tiny_hf_model
from tests.multirank import run_ranks
from tests.sync_probe import engine_logits, megatron_logits

PROMPTS = [[5, 6, 7], [5, 6, 7], [10, 11, 12, 13, 14, 15, 16], [10, 11, 12, 13, 14, 15, 16]]
RESPONSES = [[30, 31, 32, 33], [40], [50, 51, 52, 53, 54, 55, 56, 57, 58], [60, 61]]
TARGETS = [0.4, -0.4, 0.25, -0.25]
PROBE = [[5, 6, 7, 8, 9, 10], [40, 41, 42, 43, 44, 45]]
SEED = 1234

pytestmark = pytest.mark.slow


def _actor(path, tp=1, pp=1, ep=1, etp=1, rank=4, experts=False):
    from sppo_megatron.config.schema import (
        Config,
        DataConfig,
        LoraConfig,
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
        model=ModelConfig(path=path, dtype="fp32", lora=LoraConfig(rank=rank, alpha=8.0, experts=experts)),
        parallel=ParallelConfig(tp=tp, pp=pp, ep=ep, etp=etp),
        rollout=RolloutConfig(engine="hf", n=2, temperature=1.0),
        data=DataConfig(train_batch_size=2),
        train=TrainConfig(mini_batch_size=2, micro_batch_size=1),
        optim=OptimConfig(lr=1e-2, weight_decay=0.01, clip_grad=1.0, adam_eps=1e-6),
        trainer=TrainerConfig(total_steps=10, seed=SEED),
    )
    init_distributed(tp, pp, SEED, ep=ep, etp=etp)
    return cfg, build_actor(cfg)


def _batch():
    from sppo_megatron.actor.batch import SequenceBatch

    return SequenceBatch(PROMPTS, RESPONSES)


def _update(actor):
    batch = _batch()
    actor.update(batch, torch.tensor(TARGETS), actor.log_probs(batch))
    return [(s["train/loss"], s["train/grad_norm"]) for s in actor.last_steps]


def _from_checkpoint(path, ckpt, **layout):
    """Log-probs of the saved adapters and the next update's (loss, grad norm) in `layout`."""
    _, actor = _actor(path, experts="moe" in path, **layout)
    actor.load_checkpoint(ckpt)
    return {"logp": actor.log_probs(_batch()).logp, "steps": _update(actor)}


def _base_logp(path, **layout):
    """Log-probs of the base model and of a fresh LoRA actor on it (B = 0)."""
    _, base = _actor(path, rank=0, **layout)
    _, fresh = _actor(path, **layout)
    return base.log_probs(_batch()).logp, fresh.log_probs(_batch()).logp


def _bytes(obj) -> bytes:
    """Tensors leave the rank processes as bytes (a queued tensor's shared memory dies with them)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(raw):
    return [torch.load(io.BytesIO(r)) for r in raw]


def _reference(path, ckpt):
    """One rank: train a step, save, the next step; resume; what changed; B = 0."""
    out = {"base": _base_logp(path)}
    _, actor = _actor(path, experts="moe" in path)
    before = {n: p.detach().clone() for n, p in actor.model.named_parameters()}
    out["first"] = _update(actor)
    actor.save_checkpoint(ckpt)
    out["logp"] = actor.log_probs(_batch()).logp
    out["steps"] = _update(actor)
    after = {n: p.detach().clone() for n, p in actor.model.named_parameters() if p.requires_grad}
    out["changed"] = sorted(n for n, p in actor.model.named_parameters() if not torch.equal(p, before[n]))
    out["trainable"] = sorted(n for n, p in actor.model.named_parameters() if p.requires_grad)
    _, resumed = _actor(path, experts="moe" in path)
    resumed.load_checkpoint(ckpt)
    out["resumed"] = _update(resumed)
    out["resumed_equal"] = all(torch.equal(p, after[n]) for n, p in resumed.model.named_parameters() if p.requires_grad)
    return out


def _one_rank(dense, moe, work):
    return _bytes({"dense": _reference(dense, f"{work}/dense"), "moe": _reference(moe, f"{work}/moe")})


def _sync_at_tp2(path, ckpt):
    """The HF engine synced from the TP-2 LoRA actor (whole), then after an update (changed only)."""
    from sppo_megatron.rollout import create_rollout_engine
    from sppo_megatron.sync import WeightSync

    cfg, actor = _actor(path, tp=2)
    actor.load_checkpoint(ckpt)
    engine = create_rollout_engine(cfg.rollout, path, seed=SEED, log_dir=os.path.join(cfg.trainer.output_dir, "logs"))
    sync = WeightSync(engine)
    out = []
    for _ in range(2):
        metrics = sync.sync(actor.export_hf_weights())
        diff = float((engine_logits(engine, PROBE) - megatron_logits(actor, PROBE)).abs().max())
        out.append({**metrics, "diff": diff})
        _update(actor)
    return out


def _two_ranks(dense, moe, work):
    out = {
        "tp2": _from_checkpoint(dense, f"{work}/dense", tp=2),
        "pp2": _from_checkpoint(dense, f"{work}/dense", pp=2),
        "ep2": _from_checkpoint(moe, f"{work}/moe", ep=2),
        "base_tp2": _base_logp(dense, tp=2),
        "sync": _sync_at_tp2(dense, f"{work}/dense"),
    }
    return _bytes(out)


def _four_ranks(moe, work):
    return _bytes({"tp2_ep2_etp2": _from_checkpoint(moe, f"{work}/moe", tp=2, ep=2, etp=2)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("lora_parallel")
    dense = make_tiny_hf_model("qwen2", work / "qwen2")
    moe = make_tiny_hf_model("qwen3-moe", work / "qwen3-moe")
    one = _load(run_ranks(_one_rank, 1, dense, moe, str(work), timeout=300))[0]
    two = _load(run_ranks(_two_ranks, 2, dense, moe, str(work), timeout=400))
    four = _load(run_ranks(_four_ranks, 4, moe, str(work), timeout=400))
    return one, two, four


def _close_steps(got, want, rel=1e-4):
    assert len(got) == len(want) == 1, (got, want)
    for (loss, gnorm), (loss_ref, gnorm_ref) in zip(got, want):
        assert abs(loss - loss_ref) <= rel * abs(loss_ref), (got, want)
        assert abs(gnorm - gnorm_ref) <= rel * abs(gnorm_ref), (got, want)


@pytest.mark.parametrize("model, layout", [("dense", "tp2"), ("dense", "pp2"), ("moe", "ep2"), ("moe", "tp2_ep2_etp2")])
def test_layout_equals_single_rank(runs, model, layout):
    one, two, four = runs
    ref = one[model]
    for rank_result in four if layout == "tp2_ep2_etp2" else two:
        got = rank_result[layout]
        assert (got["logp"] - ref["logp"]).abs().max() <= 1e-5
        _close_steps(got["steps"], ref["steps"])
    assert ref["steps"][0][1] > 0 and (ref["logp"] - ref["base"][0]).abs().max() > 1e-3  # the adapters do something


@pytest.mark.parametrize("model", ["dense", "moe"])
def test_fresh_adapters_give_the_base_logprobs_exactly(runs, model):
    base, fresh = runs[0][model]["base"]
    assert torch.equal(base, fresh)


def test_fresh_adapters_at_tp2_give_the_tp2_base_exactly(runs):
    for r in runs[1]:
        base, fresh = r["base_tp2"]
        assert torch.equal(base, fresh)


@pytest.mark.parametrize("model", ["dense", "moe"])
def test_only_adapter_parameters_train_and_change(runs, model):
    ref = runs[0][model]
    assert ref["trainable"] and all("_lora.lora_" in n for n in ref["trainable"])
    assert ref["changed"] == ref["trainable"]
    if model == "moe":
        assert any(".local_experts." in n for n in ref["trainable"])


@pytest.mark.parametrize("model", ["dense", "moe"])
def test_resume_repeats_the_next_step_exactly(runs, model):
    ref = runs[0][model]
    assert ref["resumed"] == ref["steps"] and ref["resumed_equal"]


def test_engine_after_sync_equals_the_tp2_actor_and_later_syncs_send_changed_tensors_only(runs):
    for r in runs[1]:
        whole, changed = r["sync"]
        assert whole["sync/partial"] == 0.0 and changed["sync/partial"] == 1.0
        assert whole["diff"] <= 1e-5 and changed["diff"] <= 1e-5, (whole, changed)
        # the tiny Qwen2: embeddings, norms and the q/k/v biases are not re-sent
        assert changed["sync/bytes"] < whole["sync/bytes"] and changed["sync/tensors"] == 21
