"""LoRA on one rank: the frozen base (no gradients, optimizer state or DDP buffers), the memory
rule against the allocated actor, the adapter over a Transformer-Engine-style fused-norm layer,
checkpoint refusals, the export as merged weights and as a PEFT adapter that `peft` loads with
the actor's logits, and the weight sync's choice between whole and changed-only updates.
(Layouts against the single rank, resume and the engine after a TP-2 sync: test_lora_parallel.py.)
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from sppo_megatron.config.loader import load_config
from sppo_megatron.errors import ConfigError
from sppo_megatron.models.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_config, peft_key
from sppo_megatron.rollout.base import EngineCapabilities, RolloutEngine
from sppo_megatron.sync import WeightSync
from sppo_megatron.testing.tiny import make_tiny_hf_model
from tests.multirank import run_ranks
from tests.sync_probe import engine_logits, megatron_logits

PROMPTS = [[5, 6, 7], [5, 6, 7], [10, 11, 12, 13], [10, 11, 12, 13]]
RESPONSES = [[30, 31, 32, 33], [40], [50, 51, 52], [60, 61]]
TARGETS = [0.4, -0.4, 0.25, -0.25]
PROBE = [[5, 6, 7, 8, 9, 10], [40, 41, 42, 43, 44, 45]]


# ------------------------------------------------------------------------------ config
def _load(*overrides):
    base = ["model.path=/x", "data.train_files=[/x]"]
    return load_config(overrides=base + list(overrides), world_size=1, check_paths=False)


def test_lora_config_keys_and_defaults():
    cfg = _load("model.lora.rank=8", "model.lora.target_modules=[linear_qkv,linear_proj]", "model.lora.experts=true")
    assert (cfg.model.lora.rank, cfg.model.lora.alpha, cfg.model.lora.init) == (8, 16.0, "kaiming")
    assert cfg.model.lora.target_modules == ["linear_qkv", "linear_proj"] and cfg.model.lora.experts
    assert _load().model.lora.rank == 0  # off by default: full fine-tuning


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.lora.target_modules=[q_proj]", "model.lora.target_modules: invalid value 'q_proj'"),
        ("model.lora.target_modules=[]", "model.lora.target_modules: empty"),
        ("model.lora.alpha=0", "model.lora.alpha=0"),
        ("model.lora.init=xavier", "model.lora.init: invalid value 'xavier'"),
        ("model.lora.ranks=4", "did you mean 'model.lora.rank'"),
    ],
)
def test_lora_config_problems_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        _load("model.lora.rank=8", override)
    assert words in str(err.value)


# ------------------------------------------------------------------------------ PEFT naming
def test_peft_names_and_config():
    assert peft_key("model.layers.3.self_attn.q_proj.weight", "lora_A") == (
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    )
    from sppo_megatron.config.schema import LoraConfig

    cfg = adapter_config(LoraConfig(rank=8, alpha=32.0), "/base", ["q_proj", "v_proj", "q_proj"])
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 32.0
    assert cfg["target_modules"] == ["q_proj", "v_proj"] and cfg["base_model_name_or_path"] == "/base"


# ------------------------------------------------------------------------------ sync: whole or changed only
class _Engine(RolloutEngine):
    """Records what each update received; `partial` is its capability."""

    name = "probe"

    def __init__(self, partial: bool, keeps: bool = True) -> None:
        super().__init__()
        self.capabilities = EngineCapabilities(True, keeps_weights_asleep=keeps, partial_updates=partial)
        self.updates = []

    def _generate_local(self, prompts, sampling, n, first):
        raise NotImplementedError

    def _load_weights(self, named_tensors):
        self.updates.append(("whole", [n for n, _ in named_tensors]))

    def _load_some_weights(self, named_tensors):
        self.updates.append(("partial", [n for n, _ in named_tensors]))


class _Stream:
    def __iter__(self):
        return iter([("a", torch.zeros(2)), ("b", torch.ones(3))])

    def changed_only(self):
        return iter([("b", torch.ones(3))])


def test_sync_sends_changed_tensors_only_after_a_whole_sync_to_an_engine_that_keeps_them():
    engine = _Engine(partial=True)
    sync = WeightSync(engine, check=False)
    first, second = sync.sync(_Stream()), sync.sync(_Stream())
    assert engine.updates == [("whole", ["a", "b"]), ("partial", ["b"])]
    assert (first["sync/partial"], second["sync/partial"]) == (0.0, 1.0)
    assert (first["sync/bytes"], second["sync/bytes"]) == (20.0, 12.0)


@pytest.mark.parametrize("case", ["no partial updates", "weights dropped asleep", "plain stream"])
def test_sync_sends_everything_when_the_engine_or_stream_cannot_do_less(case):
    engine = _Engine(partial=case != "no partial updates", keeps=case != "weights dropped asleep")
    sync = WeightSync(engine, check=False)
    for _ in range(2):
        sync.sync(list(_Stream()) if case == "plain stream" else _Stream())
        engine.sleep()
        engine.wake()
    assert [kind for kind, _ in engine.updates] == ["whole", "whole"]


def test_partial_update_refused_without_valid_weights():
    engine = _Engine(partial=True)
    with pytest.raises(RuntimeError, match="partial weight update needs"):
        engine.update_weights(iter([]), partial=True)


# ------------------------------------------------------------------------------ Transformer Engine contract
def test_megatron_te_linears_keep_what_the_adapters_read():
    """The attributes describe_linear reads on megatron's TE wrappers (TE itself is not installed
    here: the wrapper source is checked; test_lora_on_a_fused_norm_layer runs the convention)."""
    import megatron.core

    path = os.path.join(os.path.dirname(megatron.core.__file__), "extensions", "transformer_engine.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"TEColumnParallelLinear", "TERowParallelLinear", "TELayerNormColumnParallelLinear"} <= set(classes)
    src = {name: ast.unparse(node) for name, node in classes.items()}
    assert (
        "self._tp_group = tp_group" in src["TELinear"]
        and "self._tp_group = tp_group" in src["TELayerNormColumnParallelLinear"]
    )
    # explicit expert communication hands TE no parallel mode: the adapter then does no TP communication
    assert "te_parallel_mode = None" in src["TELinear"] and "parallel_mode=te_parallel_mode" in src["TELinear"]
    assert "return_layernorm_output=False" in src["TELayerNormColumnParallelLinear"]
    assert "return (out, None)" in src["TELayerNormColumnParallelLinear"]  # ((out, norm_out), None) when asked


# ------------------------------------------------------------------------------ one rank
def _cfg(path, rank=4, **kw):
    from sppo_megatron.config.schema import (
        Config,
        DataConfig,
        LoraConfig,
        ModelConfig,
        OptimConfig,
        RolloutConfig,
        TrainConfig,
        TrainerConfig,
    )

    return Config(
        model=ModelConfig(path=path, dtype="fp32", lora=LoraConfig(rank=rank, alpha=8.0), **kw),
        rollout=RolloutConfig(engine="hf", n=2),
        data=DataConfig(train_batch_size=2),
        train=TrainConfig(mini_batch_size=2, micro_batch_size=1),
        optim=OptimConfig(lr=1e-2),
        trainer=TrainerConfig(total_steps=10, seed=7),
    )


def _train(actor, steps=2):
    from sppo_megatron.actor.batch import SequenceBatch

    batch = SequenceBatch(PROMPTS, RESPONSES)
    for _ in range(steps):
        actor.update(batch, torch.tensor(TARGETS), actor.log_probs(batch))


class _FusedNormLinear(torch.nn.Module):
    """Transformer Engine's LayerNormColumnParallelLinear as megatron wraps it: the input norm
    fused in, (out, None) returned, ((out, norm_out), None) once asked for the norm's output."""

    def __init__(self, weight, group):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.parallel_mode, self.sequence_parallel, self._tp_group = "column", False, group
        self.return_layernorm_output = False
        self.config = type("C", (), {"gated_linear_unit": False})()

    def forward(self, x):
        norm = torch.nn.functional.rms_norm(x, (x.shape[-1],), eps=1e-6)
        out = norm @ self.weight.t()
        return ((out, norm) if self.return_layernorm_output else out), None


def _fused_norm_case():
    """A LoRA adapter on the fused-norm layer adds s B A norm(x) to its output."""
    from megatron.core import parallel_state as ps

    from sppo_megatron.config.schema import LoraConfig
    from sppo_megatron.models import lora as lora_module

    gen = torch.Generator().manual_seed(0)
    block = torch.nn.Module()
    block.linear_qkv = _FusedNormLinear(torch.randn(12, 8, generator=gen), ps.get_tensor_model_parallel_group())
    original = lora_module._te_classes
    lora_module._te_classes = lambda: {_FusedNormLinear: True}
    try:
        lora_module.attach_lora(block, LoraConfig(rank=2, alpha=4.0, target_modules=["linear_qkv"]), seed=0)
    finally:
        lora_module._te_classes = original
    adapter = block.linear_qkv_lora
    with torch.no_grad():
        adapter.lora_B.copy_(torch.randn(12, 2, generator=gen))
    x = torch.randn(3, 1, 8, generator=gen)
    out, bias = block.linear_qkv(x)
    norm = torch.nn.functional.rms_norm(x, (8,), eps=1e-6)
    want = norm @ block.linear_qkv.weight.t() + 2.0 * (norm @ adapter.lora_A.t()) @ adapter.lora_B.t()
    return {"fused": adapter.site.fused_norm, "bias": bias, "diff": float((out - want).abs().max())}


def _one_rank(dense, moe, work):
    from sppo_megatron.actor.memory import expected_memory, measured_memory
    from sppo_megatron.actor.optimizer_state import torch_optimizers
    from sppo_megatron.cli.eval import load_weights
    from sppo_megatron.errors import UserError
    from sppo_megatron.models.lora import LoRAAdapter
    from sppo_megatron.platform.distributed import init_distributed
    from sppo_megatron.rollout import create_rollout_engine
    from sppo_megatron.trainer.setup import build_actor

    init_distributed(1, 1, 7)
    out = {}
    actor = build_actor(_cfg(dense))
    adapters = [m for m in actor.model.modules() if isinstance(m, LoRAAdapter)]
    adapter_numel = sum(p.numel() for a in adapters for p in a.parameters())
    buffers = list(actor.ddp.buffers) + list(actor.ddp.expert_parallel_buffers)
    optimized = [p for opt in torch_optimizers(actor.optimizer) for g in opt.param_groups for p in g["params"]]
    _train(actor)
    out["frozen"] = {
        "adapter_numel": adapter_numel,
        "buffer_numel": sum(b.grad_data.numel() for b in buffers),
        "optimized_numel": sum(p.numel() for p in optimized),
        "base_grads": [
            n
            for n, p in actor.model.named_parameters()
            if not p.requires_grad and (p.grad is not None or hasattr(p, "main_grad"))
        ],
    }
    full = build_actor(_cfg(dense, rank=0))
    out["memory"] = {
        kind: (vars(expected_memory(a.model)), vars(measured_memory(a)), len(a._trained_params()))
        for kind, a in (("lora", actor), ("full", full))
    }
    out["fused_norm"] = _fused_norm_case()
    out["logits"] = megatron_logits(actor, PROBE)
    actor.save_checkpoint(f"{work}/dense_ckpt")
    engine = create_rollout_engine(_cfg(dense).rollout, dense, seed=7, log_dir=work)
    load_weights(engine, dense, f"{work}/dense_ckpt", 1, 1)  # what sppo-eval does with a LoRA run's checkpoint
    out["eval_logits"] = engine_logits(engine, PROBE)

    def refusal(fn):
        try:
            fn()
        except UserError as e:
            return str(e)
        return None

    out["refusals"] = {
        "other rank": refusal(lambda: build_actor(_cfg(dense, rank=8)).load_checkpoint(f"{work}/dense_ckpt")),
        "no lora": refusal(lambda: build_actor(_cfg(dense, rank=0)).load_checkpoint(f"{work}/dense_ckpt")),
        "as weights": refusal(lambda: build_actor(_cfg(dense, megatron_ckpt=f"{work}/dense_ckpt"))),
    }
    moe_actor = build_actor(_cfg(moe))  # Qwen2-MoE: attention, the dense layer and the shared expert
    _train(moe_actor)
    out["moe_logits"] = megatron_logits(moe_actor, PROBE)
    moe_actor.save_checkpoint(f"{work}/moe_ckpt")
    buf = io.BytesIO()
    torch.save(out, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    work = tmp_path_factory.mktemp("lora")
    dense = make_tiny_hf_model("qwen2", work / "qwen2")
    moe = make_tiny_hf_model("qwen2-moe", work / "qwen2-moe")
    raw = run_ranks(_one_rank, 1, dense, moe, str(work), timeout=300)[0]
    return work, dense, moe, torch.load(io.BytesIO(raw))


@pytest.mark.slow
def test_base_is_frozen_without_grads_buffers_or_optimizer_state(one):
    frozen = one[3]["frozen"]
    assert frozen["buffer_numel"] == frozen["optimized_numel"] == frozen["adapter_numel"] > 0
    assert frozen["base_grads"] == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_memory_rule_equals_the_allocated_actor(one, kind):
    """Up to DDP's buffer padding (a parameter starts at a multiple of 64 elements, a bucket ends
    at one of 128), which the rule leaves out; the optimizer state has none."""
    expected, measured, tensors = one[3]["memory"][kind]
    padding = 4 * (64 * tensors + 128)
    for key in ("params", "grads"):
        assert expected[key] <= measured[key] <= expected[key] + padding, (key, expected, measured)
    assert (expected["optimizer"], expected["trainable_params"]) == (
        measured["optimizer"],
        measured["trainable_params"],
    )
    if kind == "lora":
        full = one[3]["memory"]["full"][0]
        assert expected["params"] == full["params"] + 4 * expected["trainable_params"]  # the adapters, in fp32
        assert expected["grads"] < full["grads"] / 10 and expected["optimizer"] < full["optimizer"] / 10


@pytest.mark.slow
def test_adapter_on_a_fused_norm_layer_reads_the_norm_output(one):
    case = one[3]["fused_norm"]
    assert case["fused"] and case["bias"] is None and case["diff"] <= 1e-6


@pytest.mark.slow
def test_checkpoint_refusals_name_the_setting(one):
    refusals = one[3]["refusals"]
    assert "model.lora.rank=4 but the config says 8" in refusals["other rank"]
    assert "holds LoRA adapters (rank 4) but model.lora.rank=0" in refusals["no lora"]
    assert "holds LoRA adapters, not a model" in refusals["as weights"]


def _convert(*args):
    return subprocess.run(
        [sys.executable, "-m", "sppo_megatron.cli.convert", *args], capture_output=True, text=True, timeout=300
    )


def _hf_logits(path, adapter=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor(PROBE)).logits.float()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dense", "moe"])
def test_peft_adapter_and_merged_export_reproduce_the_actor(one, model):
    work, dense, moe, out = one
    ckpt, base = (f"{work}/dense_ckpt", dense) if model == "dense" else (f"{work}/moe_ckpt", moe)
    want = out["logits"] if model == "dense" else out["moe_logits"]
    peft_dir, merged_dir = work / f"{model}_peft", work / f"{model}_merged"
    for extra, target in ((["--peft"], peft_dir), ([], merged_dir)):
        result = _convert("megatron-to-hf", "--ckpt", ckpt, "--out", str(target), *extra)
        assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(peft_dir)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    config = json.loads((peft_dir / ADAPTER_CONFIG).read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == os.path.realpath(base)
    assert (_hf_logits(base) - want).abs().max() > 1e-2  # the adapters matter
    assert (_hf_logits(base, str(peft_dir)) - want).abs().max() <= 1e-5
    assert (_hf_logits(str(merged_dir)) - want).abs().max() <= 1e-5


@pytest.mark.slow
def test_sppo_eval_loads_a_lora_checkpoint_as_its_merged_policy(one):
    out = one[3]
    assert (out["eval_logits"] - out["logits"]).abs().max() <= 1e-5


@pytest.mark.slow
def test_convert_refuses_what_a_lora_checkpoint_cannot_give(one, tmp_path):
    work, dense, _, _ = one
    result = _convert("megatron-to-megatron-lm", "--ckpt", f"{work}/dense_ckpt", "--out", str(tmp_path / "lm"))
    assert result.returncode == 2 and "holds LoRA adapters, not a model" in result.stderr
    result = _convert("megatron-to-hf", "--ckpt", f"{work}/dense_ckpt", "--out", str(tmp_path / "x"), "--base", "/no")
    assert result.returncode == 2 and "/no" in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "lm").exists()


def test_lora_7b_recipe_is_a_valid_config():
    """examples/qwen2.5-7b-math/run_lora.sh: run.sh's config with its overrides (paths aside)."""
    import re

    root = os.path.join(os.path.dirname(__file__), "..", "examples", "qwen2.5-7b-math")
    script = open(os.path.join(root, "run_lora.sh"), encoding="utf-8").read()
    overrides = re.findall(r"^\s+([a-z_]+\.[a-z_.]+=\S+)$", script, flags=re.M)
    cfg = load_config(os.path.join(root, "config.yaml"), overrides, world_size=4, check_paths=False)
    assert cfg.model.lora.rank == 64 and cfg.rollout.engine == "sglang" and len(overrides) == 4


def _te_body(path):
    """On a GPU with Transformer Engine: adapters on TE layers (the fused-norm linear_qkv and
    linear_fc1 included), B = 0 exact, only adapters change, the merged export equals the actor."""
    from sppo_megatron.models.lora import LoRAAdapter
    from sppo_megatron.platform.distributed import init_distributed
    from sppo_megatron.rollout import create_rollout_engine
    from sppo_megatron.sync import WeightSync
    from sppo_megatron.trainer.setup import build_actor

    init_distributed(1, 1, 7)
    from sppo_megatron.actor.batch import SequenceBatch

    batch = SequenceBatch(PROMPTS, RESPONSES)
    te = dict(transformer_impl="transformer_engine")
    base = build_actor(_cfg(path, rank=0, **te)).log_probs(batch).logp
    actor = build_actor(_cfg(path, **te))
    adapters = [m for m in actor.model.modules() if isinstance(m, LoRAAdapter)]
    assert adapters and sum(a.site.fused_norm for a in adapters) == 2 * len(actor.model.decoder.layers)
    assert torch.equal(actor.log_probs(batch).logp, base)
    frozen = {n: p.detach().clone() for n, p in actor.model.named_parameters() if not p.requires_grad}
    _train(actor)
    assert all(torch.equal(p, frozen[n]) for n, p in actor.model.named_parameters() if not p.requires_grad)
    engine = create_rollout_engine(_cfg(path).rollout, path, seed=7, log_dir=os.path.dirname(path))
    WeightSync(engine).sync(actor.export_hf_weights())
    diff = (engine_logits(engine, PROBE).cpu() - megatron_logits(actor, PROBE).cpu()).abs().max()
    assert diff <= 1e-4, diff


@pytest.mark.gpu
def test_lora_on_transformer_engine_layers(tmp_path):
    pytest.importorskip("transformer_engine.pytorch")
    run_ranks(_te_body, 1, make_tiny_hf_model("qwen2", tmp_path / "qwen2"), timeout=300)
