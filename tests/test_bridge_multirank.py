"""The bridge on real gloo ranks: logits, streaming export, dist-checkpoint round trips.

ONE 4-rank launch (spawning is most of the cost) runs, for every tiny architecture variant:
- (TP,PP) = (2,2): load the HF weights, logits, streaming export on every rank, the same with
  Transformer-Engine parameter names (a stand-in module), save a dist checkpoint;
- (1,1), (2,1), (1,2): load the HF weights, logits; load the (2,2) checkpoint, export.
The test then checks logits against the HF model (<= 1e-4), the exports against the HF
safetensors (names and bit-exact values) on every rank.
"""

from __future__ import annotations

import io
import os

import pytest
import torch

from sppo_megatron.testing.tiny import ARCHS
from tests.multirank import run_ranks
from tests.tiny_models import hf_logits, hf_state_dict, tiny_models_root

pytestmark = pytest.mark.slow

LAYOUTS = [(2, 2), (1, 1), (2, 1), (1, 2)]
WORLD = 4
SEQ = 16


def _tp_attributes(model):
    return {
        n: (
            getattr(p, "tensor_model_parallel", False),
            getattr(p, "partition_dim", -1),
            getattr(p, "partition_stride", 1),
        )
        for n, p in model.named_parameters()
    }


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(123))


def _te_named_standin(model):
    """A module tree holding `model`'s parameters under the Transformer-Engine spec's names."""
    rename = {
        "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
        "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    }
    root = torch.nn.Module()
    layers = torch.nn.ModuleList([torch.nn.Module() for _ in model.decoder.layers])
    for fake, real in zip(layers, model.decoder.layers):
        fake.layer_number = real.layer_number
    root.decoder = torch.nn.Module()
    root.decoder.layers = layers
    for name, p in model.named_parameters():
        if name.startswith("decoder.layers."):
            _, _, j, rest = name.split(".", 3)
            rest = rename.get(rest, rest)
            owner, path = layers[int(j)], rest.split(".")
        else:
            owner, path = root, name.split(".")
        for part in path[:-1]:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(path[-1], torch.nn.Parameter(torch.zeros_like(p)))
    return root


def _compare_export(exported, reference):
    """Problems (empty when names and values are exactly the HF state dict)."""
    problems = []
    if list(exported) != list(dict.fromkeys(exported)):
        problems.append("duplicate names")
    missing, extra = set(reference) - set(exported), set(exported) - set(reference)
    if missing or extra:
        problems.append(f"missing {sorted(missing)[:3]} extra {sorted(extra)[:3]}")
    for k in set(reference) & set(exported):
        a, b = exported[k], reference[k]
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            problems.append(f"{k}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
    return problems


def _body(root: str, ckpt_root: str):
    from megatron.core import parallel_state
    from transformers import AutoConfig

    from sppo_megatron.config.schema import ModelConfig, ParallelConfig
    from sppo_megatron.models import get_bridge, load_model_checkpoint, save_model_checkpoint
    from sppo_megatron.models.inference import forward_logits
    from sppo_megatron.platform.distributed import init_distributed

    model_cfg = ModelConfig(dtype="fp32")
    logits, problems, orders = {}, {}, {}
    for tp, pp in LAYOUTS:
        init_distributed(tp=tp, pp=pp, seed=0)
        par = ParallelConfig(tp=tp, pp=pp)
        for arch in ARCHS:
            path = os.path.join(root, arch)
            ref = hf_state_dict(path)
            bridge = get_bridge(AutoConfig.from_pretrained(path))
            model = bridge.build_model(model_cfg, par)
            bridge.load_hf_weights(model, path)
            logits[(tp, pp, arch)] = forward_logits(model, _ids(bridge.vocab_size), bridge.vocab_size)
            if (tp, pp) == (2, 2):
                exported = {}
                for name, tensor in bridge.export_hf_weights(model):
                    exported[name] = tensor
                orders[arch] = list(exported) == bridge.hf_names()
                problems[("export", arch)] = _compare_export(exported, ref)
                standin = _te_named_standin(model)
                bridge.load_hf_weights(standin, path)
                problems[("te-names", arch)] = _compare_export(dict(bridge.export_hf_weights(standin)), ref)
                save_model_checkpoint(model, os.path.join(ckpt_root, arch))
                # perform_initialization=False must leave megatron's TP attributes as its init sets them
                bare = bridge.build_model(model_cfg, par, perform_initialization=False)
                problems[("tp-attributes", arch)] = (
                    []
                    if _tp_attributes(bare) == _tp_attributes(model)
                    else [_tp_attributes(bare), _tp_attributes(model)]
                )
            else:
                fresh = bridge.build_model(model_cfg, par)
                load_model_checkpoint(fresh, os.path.join(ckpt_root, arch))
                problems[(f"ckpt-tp2pp2->tp{tp}pp{pp}", arch)] = _compare_export(
                    dict(bridge.export_hf_weights(fresh)), ref
                )
            assert parallel_state.get_tensor_model_parallel_world_size() == tp
        if (tp, pp) == (1, 1):
            # bf16 on CPU: every parameter (the local spec's torch RMSNorm included) is bf16
            path = os.path.join(root, "qwen3")
            bridge = get_bridge(AutoConfig.from_pretrained(path))
            half = bridge.build_model(ModelConfig(dtype="bf16"), ParallelConfig())
            bridge.load_hf_weights(half, path)
            dtypes = {p.dtype for p in half.parameters()}
            ref = hf_state_dict(path)
            exported = {k: v for k, v in bridge.export_hf_weights(half)}
            problems[("bf16", "qwen3")] = [] if dtypes == {torch.bfloat16} else [str(dtypes)]
            problems[("bf16", "qwen3")] += _compare_export(exported, {k: v.to(torch.bfloat16) for k, v in ref.items()})
    buf = io.BytesIO()
    torch.save({"logits": logits, "problems": problems, "orders": orders}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tiny_models_root(tmp_path_factory)
    ckpt_root = str(tmp_path_factory.mktemp("bridge_ckpts"))
    raw = run_ranks(_body, WORLD, root, ckpt_root, timeout=300)
    return root, [torch.load(io.BytesIO(r)) for r in raw]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_hf_in_every_layout(results, arch):
    root, per_rank = results
    ref = hf_logits(os.path.join(root, arch), _ids(100))
    for rank, res in enumerate(per_rank):
        for tp, pp in LAYOUTS:
            got = res["logits"][(tp, pp, arch)]
            assert got.shape == ref.shape, (got.shape, ref.shape)
            diff = (got - ref).abs().max().item()
            assert diff <= 1e-4, f"{arch} tp={tp} pp={pp} rank {rank}: max |logit diff| {diff:.2e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_streaming_export_tp2_pp2_is_the_hf_state_dict_on_every_rank(results, arch):
    _, per_rank = results
    for rank, res in enumerate(per_rank):
        assert res["problems"][("export", arch)] == [], f"rank {rank}"
        assert res["orders"][arch], f"rank {rank}: export order differs from Bridge.hf_names()"


@pytest.mark.parametrize("arch", ARCHS)
def test_transformer_engine_parameter_names_use_the_same_table(results, arch):
    _, per_rank = results
    for rank, res in enumerate(per_rank):
        assert res["problems"][("te-names", arch)] == [], f"rank {rank}"


@pytest.mark.parametrize("arch", ARCHS)
def test_dist_checkpoint_written_at_tp2_pp2_round_trips_bit_exact_in_other_layouts(results, arch):
    _, per_rank = results
    for rank, res in enumerate(per_rank):
        keys = [k for k in res["problems"] if k[1] == arch and k[0].startswith("ckpt-")]
        assert len(keys) == 3
        for key in keys:
            assert res["problems"][key] == [], f"rank {rank} {key}"


def test_perform_initialization_false_keeps_tensor_parallel_attributes(results):
    _, per_rank = results
    for rank, res in enumerate(per_rank):
        for arch in ARCHS:
            assert res["problems"][("tp-attributes", arch)] == [], f"rank {rank} {arch}"


def test_bf16_model_on_cpu(results):
    _, per_rank = results
    for rank, res in enumerate(per_rank):
        assert res["problems"][("bf16", "qwen3")] == [], f"rank {rank}"
