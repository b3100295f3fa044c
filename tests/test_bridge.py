"""Bridge unit tests in one process (no process group): tables, config paths, TE/FP8, SDPA, file IO."""

from __future__ import annotations

import ast
import json
import math
import os
import types

import pytest
import torch

from sppo_megatron.config.schema import ModelConfig, ParallelConfig
from sppo_megatron.errors import UserError
from sppo_megatron.models import SUPPORTED_MODEL_TYPES, get_bridge, layouts, specs
from sppo_megatron.models.rope import llama3_inv_freq, rope_settings
from sppo_megatron.models.transformer_config import pipeline_split
from sppo_megatron.testing.tiny import ARCHS, MOE_ARCHS, tiny_config

#: another release's megatron/core source directory to check the APIs against (CONTRIBUTING.md)
OTHER_MCORE = os.environ.get("SPPO_MCORE_SOURCE")


def bridge_of(arch, **overrides):
    cfg = tiny_config(arch, num_hidden_layers=3)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return get_bridge(cfg)


# ------------------------------------------------------------------------ architectures
def test_supported_model_types():
    assert set(SUPPORTED_MODEL_TYPES) == {"llama", "qwen2", "qwen3", "mistral", "qwen3_moe", "qwen2_moe", "mixtral"}


def test_unsupported_model_type_lists_the_supported_ones():
    from transformers import GPT2Config

    with pytest.raises(UserError) as e:
        get_bridge(GPT2Config())
    msg = str(e.value)
    assert "gpt2" in msg and all(t in msg for t in SUPPORTED_MODEL_TYPES)
    assert len(msg.splitlines()) == 1


@pytest.mark.parametrize(
    "arch,overrides,needle",
    [
        ("llama", {"attention_bias": True}, "attention_bias"),
        ("llama", {"hidden_act": "gelu"}, "hidden_act"),
        ("llama", {"mlp_bias": True}, "mlp_bias"),
        ("qwen2", {"use_sliding_window": True}, "use_sliding_window"),
        ("qwen3", {"attention_bias": True}, "attention_bias"),
    ],
)
def test_unsupported_features_are_user_errors(arch, overrides, needle):
    with pytest.raises(UserError, match=needle):
        bridge_of(arch, **overrides)


def test_unsupported_rope_type():
    cfg = tiny_config("llama", num_hidden_layers=3)
    cfg.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    with pytest.raises(UserError, match="yarn"):
        get_bridge(cfg)


def test_every_table_row_is_well_formed():
    from sppo_megatron.models.arch import ARCHITECTURES

    for arch in ARCHITECTURES.values():
        hf_names = [h for p in arch.params for h in p.hf]
        assert len(hf_names) == len(set(hf_names)), arch.model_type
        for p in arch.params:
            assert all(("{layer}" in n) == p.per_layer for n in p.megatron + p.hf), p


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_names_cover_the_hf_model_exactly(arch):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, num_hidden_layers=3)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    saved = set(model.state_dict())
    if cfg.tie_word_embeddings:
        saved.discard("lm_head.weight")  # save_pretrained drops the tied copy
    names = get_bridge(cfg).hf_names()
    assert len(names) == len(set(names))
    assert set(names) == saved


# ------------------------------------------------------------------------ sizes
def test_padded_vocab_does_not_depend_on_power_of_two_tp():
    b = bridge_of("llama")
    assert b.vocab_size == 100
    assert {b.padded_vocab_size(tp) for tp in (1, 2, 4, 8, 16, 32, 64, 128)} == {128}
    assert b.padded_vocab_size(3) == 384  # lcm(128, 3)
    for vocab in (151936, 128256, 32000):
        big = bridge_of("qwen2", vocab_size=vocab)
        assert big.padded_vocab_size(1) == big.padded_vocab_size(8) == math.ceil(vocab / 128) * 128


@pytest.mark.parametrize(
    "layers,pp,expected",
    [(4, 2, [2, 2]), (3, 2, [2, 1]), (3, 1, [3]), (7, 2, [4, 3]), (10, 4, [2, 3, 3, 2]), (31, 8, None), (9, 4, None)],
)
def test_pipeline_split(layers, pp, expected):
    split = pipeline_split(layers, pp)
    assert sum(split) == layers and len(split) == pp and min(split) >= 1
    assert len(set(split[1:-1])) <= 1  # megatron: equal middle stages
    if expected is not None:
        assert split == expected


def test_pipeline_larger_than_layers():
    with pytest.raises(UserError, match="exceeds"):
        pipeline_split(3, 4)


# ------------------------------------------------------------------------ TransformerConfig
def test_transformer_config_llama_cpu_defaults():
    kw = bridge_of("llama").transformer_config_kwargs(ModelConfig(), ParallelConfig())
    assert kw["num_query_groups"] == 2 and kw["num_attention_heads"] == 4
    assert kw["kv_channels"] == 16 and kw["ffn_hidden_size"] == 96
    assert kw["layernorm_epsilon"] == 1e-6 and kw["normalization"] == "RMSNorm"
    assert kw["gated_linear_unit"] and kw["activation_func"] is torch.nn.functional.silu
    assert not kw["add_bias_linear"] and not kw["add_qkv_bias"] and not kw["qk_layernorm"]
    assert kw["hidden_dropout"] == 0.0 and kw["attention_dropout"] == 0.0
    assert kw["params_dtype"] == torch.float32 and kw["pipeline_dtype"] == torch.float32  # auto without CUDA
    assert not kw["bf16"] and not kw["fp16"]
    assert kw["use_cpu_initialization"] is True
    assert "fp8" not in kw and "recompute_granularity" not in kw
    assert "num_layers_in_first_pipeline_stage" not in kw


def test_transformer_config_arch_features():
    assert bridge_of("qwen2").transformer_config_kwargs()["add_qkv_bias"] is True
    q3 = bridge_of("qwen3").transformer_config_kwargs()
    assert q3["qk_layernorm"] is True and q3["kv_channels"] == 24  # head_dim != hidden / heads
    assert bridge_of("mistral").transformer_config_kwargs()["window_size"] == (7, 0)
    assert "window_size" not in bridge_of("mistral", sliding_window=None).transformer_config_kwargs()


def test_transformer_config_dtype_recompute_parallel():
    b = bridge_of("llama")
    kw = b.transformer_config_kwargs(
        ModelConfig(dtype="bf16", recompute="selective"), ParallelConfig(tp=2, pp=2, sequence_parallel=True)
    )
    assert kw["params_dtype"] == torch.bfloat16 and kw["bf16"] and kw["pipeline_dtype"] == torch.bfloat16
    assert kw["recompute_granularity"] == "selective"
    assert kw["tensor_model_parallel_size"] == 2 and kw["pipeline_model_parallel_size"] == 2
    assert kw["sequence_parallel"] is True
    full = b.transformer_config_kwargs(ModelConfig(dtype="fp16", recompute="full"), ParallelConfig())
    assert full["fp16"] and full["recompute_granularity"] == "full" and full["recompute_method"] == "uniform"
    odd = bridge_of("qwen2").transformer_config_kwargs(None, ParallelConfig(pp=2))  # 3 layers
    assert odd["num_layers_in_first_pipeline_stage"] == 2 and odd["num_layers_in_last_pipeline_stage"] == 1


def test_transformer_config_builds_in_megatron():
    for arch in ARCHS:
        cfg = bridge_of(arch).transformer_config(ModelConfig(), ParallelConfig(tp=2, pp=2))
        assert cfg.num_query_groups == 2


def test_transformer_config_moe_routing_and_layers():
    q3 = bridge_of("qwen3-moe").transformer_config_kwargs(None, ParallelConfig(tp=2, ep=2))
    assert q3["num_moe_experts"] == 4 and q3["moe_router_topk"] == 2 and q3["moe_ffn_hidden_size"] == 32
    # norm_topk_prob=True: softmax over the top-k logits (= HF's renormalised top-k of the softmax)
    assert q3["moe_router_pre_softmax"] is False and q3["moe_router_score_function"] == "softmax"
    assert q3["moe_layer_freq"] == [1, 1, 1] and q3["expert_model_parallel_size"] == 2
    assert q3["sequence_parallel"] is True  # MoE under TP trains only with sequence parallelism
    assert q3["moe_router_load_balancing_type"] == "none" and q3["moe_aux_loss_coeff"] == 0.0
    assert q3["moe_grouped_gemm"] is False and q3["moe_token_dispatcher_type"] == "alltoall"
    q2 = bridge_of("qwen2-moe").transformer_config_kwargs(ModelConfig(moe_aux_loss_coeff=1e-3, moe_z_loss_coeff=1e-4))
    assert q2["moe_router_pre_softmax"] is True  # norm_topk_prob=False: top-k of the full softmax
    assert q2["moe_layer_freq"] == [1, 0, 1]  # mlp_only_layers=[1]
    assert q2["moe_shared_expert_intermediate_size"] == 48 and q2["moe_shared_expert_gate"] is True
    assert q2["moe_router_load_balancing_type"] == "aux_loss" and q2["moe_z_loss_coeff"] == 1e-4
    assert bridge_of("qwen2-moe", decoder_sparse_step=2, mlp_only_layers=[]).moe_layers == [False, True, False]
    assert bridge_of("mixtral").transformer_config_kwargs()["moe_router_pre_softmax"] is False
    assert "num_moe_experts" not in bridge_of("qwen3").transformer_config_kwargs()


@pytest.mark.parametrize(
    "arch,parallel,needle",
    [
        ("qwen3-moe", ParallelConfig(ep=3), "parallel.ep=3 must divide the 4 experts"),
        ("qwen3-moe", ParallelConfig(etp=3), "parallel.etp=3 must divide the expert width 32"),
        ("qwen3", ParallelConfig(ep=2), "has no experts"),
    ],
)
def test_expert_parallel_sizes_must_fit_the_model(arch, parallel, needle):
    with pytest.raises(UserError, match=needle):
        bridge_of(arch).transformer_config_kwargs(None, parallel)


def test_tp_must_divide_heads():
    with pytest.raises(UserError, match="parallel.tp=4"):
        bridge_of("llama").transformer_config_kwargs(None, ParallelConfig(tp=4))


def test_rope_settings_transformers5_and_legacy():
    rope = rope_settings(tiny_config("llama3.1", num_hidden_layers=3))
    assert rope.kind == "llama3" and rope.theta == 10000.0 and rope.factor == 4.0
    assert (rope.high_freq_factor, rope.original_max_position_embeddings) == (2.0, 32)
    legacy = types.SimpleNamespace(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    r = rope_settings(legacy)
    assert r.theta == 5e5 and r.kind == "linear" and r.factor == 2.0
    assert rope_settings(types.SimpleNamespace()).theta == 10000.0


@pytest.mark.parametrize("arch", ["llama3.1", "llama3.2-tied"])
def test_llama3_inv_freq_matches_transformers(arch):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = tiny_config(arch, num_hidden_layers=3)
    b = get_bridge(cfg)
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    assert torch.equal(llama3_inv_freq(b.rope, b.head_dim), want)


# ------------------------------------------------------------------------ TE / FP8 / spec selection
@pytest.fixture
def no_te(monkeypatch):
    monkeypatch.setattr(specs, "te_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA + TE 'present' with a chosen compute capability (only the checks see it)."""

    def setup(cap, te=True):
        monkeypatch.setattr(specs, "te_available", lambda: te)
        monkeypatch.setattr(specs, "_te_check", lambda name: None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cap)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")

    return setup


def test_spec_selection_without_te_is_local_with_sdpa(no_te):
    from sppo_megatron.models.sdpa_attention import SDPAttention

    assert specs.resolve_transformer_impl(ModelConfig(transformer_impl="auto")) == "local"
    spec = bridge_of("qwen3").layer_spec(ModelConfig())
    sub = spec.submodules.self_attention.submodules
    assert sub.core_attention is SDPAttention
    assert sub.q_layernorm is not None and "Identity" not in getattr(sub.q_layernorm, "__name__", "")
    plain = bridge_of("llama").layer_spec(ModelConfig(transformer_impl="local")).submodules.self_attention.submodules
    assert "Identity" in plain.q_layernorm.__name__


def test_transformer_engine_requested_but_absent(no_te):
    with pytest.raises(UserError, match="Transformer Engine is not importable"):
        bridge_of("llama").layer_spec(ModelConfig(transformer_impl="transformer_engine"))


def test_transformer_engine_without_cuda(monkeypatch):
    monkeypatch.setattr(specs, "te_available", lambda: True)
    assert specs.resolve_transformer_impl(ModelConfig()) == "local"  # auto: no GPU -> local
    with pytest.raises(UserError, match="CUDA"):
        specs.resolve_transformer_impl(ModelConfig(transformer_impl="transformer_engine"))


def test_auto_picks_te_with_te_and_gpu(fake_gpu):
    fake_gpu((9, 0))
    assert specs.resolve_transformer_impl(ModelConfig()) == "transformer_engine"


def test_fp8_off_is_fine_everywhere():
    specs.check_fp8_support(ModelConfig())


def test_fp8_on_cpu(no_te):
    with pytest.raises(UserError, match="CUDA GPU"):
        specs.check_fp8_support(ModelConfig(fp8="e4m3"))
    with pytest.raises(UserError, match="CUDA GPU"):
        bridge_of("llama").transformer_config_kwargs(ModelConfig(fp8="hybrid"), ParallelConfig())


def test_fp8_with_local_layers():
    with pytest.raises(UserError, match="Transformer Engine"):
        specs.check_fp8_support(ModelConfig(fp8="e4m3", transformer_impl="local"))


def test_fp8_without_te(fake_gpu):
    fake_gpu((9, 0), te=False)
    with pytest.raises(UserError, match="not importable"):
        specs.check_fp8_support(ModelConfig(fp8="e4m3"))


@pytest.mark.parametrize(
    "cap,recipe,ok",
    [
        ((8, 0), "delayed", False),
        ((8, 6), "tensorwise", False),
        ((8, 9), "delayed", True),
        ((8, 9), "blockwise", False),
        ((9, 0), "tensorwise", True),
        ((9, 0), "blockwise", True),
        ((9, 0), "mxfp8", False),
        ((10, 0), "mxfp8", True),
    ],
)
def test_fp8_compute_capability(fake_gpu, cap, recipe, ok):
    fake_gpu(cap)
    cfg = ModelConfig(fp8="e4m3", fp8_recipe=recipe)
    if ok:
        specs.check_fp8_support(cfg)
        kw = bridge_of("llama").transformer_config_kwargs(cfg, ParallelConfig())
        assert kw["fp8"] == "e4m3" and kw["fp8_recipe"] == recipe
    else:
        with pytest.raises(UserError, match="compute capability"):
            specs.check_fp8_support(cfg)


def test_fp8_reported_unsupported_by_te(fake_gpu, monkeypatch):
    fake_gpu((9, 0))
    monkeypatch.setattr(specs, "_te_check", lambda name: (False, "no FP8 on this device"))
    with pytest.raises(UserError, match="no FP8 on this device"):
        specs.check_fp8_support(ModelConfig(fp8="hybrid"))


# ------------------------------------------------------------------------ SDPAttention
def _attention(np_=4, ng=2, hd=8, window=None):
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from sppo_megatron.models.sdpa_attention import SDPAttention

    cfg = TransformerConfig(
        num_layers=1,
        hidden_size=np_ * hd,
        num_attention_heads=np_,
        num_query_groups=ng,
        kv_channels=hd,
        use_cpu_initialization=True,
        window_size=window,
        attention_dropout=0.0,
    )
    pg = types.SimpleNamespace(tp=types.SimpleNamespace(size=lambda: 1))
    return SDPAttention(
        config=cfg,
        layer_number=1,
        attn_mask_type=AttnMaskType.causal,
        attention_type="self",
        softmax_scale=None,
        cp_comm_type=None,
        pg_collection=pg,
    ), AttnMaskType


def _reference(q, k, v, masked):
    """Plain softmax attention, [s, b, h, d] inputs, masked: [b|1, 1, sq, sk] True = masked."""
    rep = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(masked, float("-inf"))
    out = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v)
    return out.reshape(q.shape[0], q.shape[1], -1)


def test_sdpa_attention_matches_reference_causal_gqa_mask_window():
    torch.manual_seed(0)
    s, b = 12, 2
    q, k, v = torch.randn(s, b, 4, 8), torch.randn(s, b, 2, 8), torch.randn(s, b, 2, 8)
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)[None, None]
    att, AMT = _attention()
    torch.testing.assert_close(att(q, k, v, None), _reference(q, k, v, causal), atol=1e-5, rtol=1e-5)
    # padding mask (True = masked): combined with causal
    pad = torch.zeros(b, 1, 1, s, dtype=torch.bool)
    pad[1, ..., :3] = True
    got = att(q, k, v, pad, attn_mask_type=AMT.causal)
    torch.testing.assert_close(got[3:], _reference(q, k, v, causal | pad)[3:], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()  # rows with every key masked do not produce NaN
    # sliding window of 4 (megatron (3, 0))
    watt, _ = _attention(window=(3, 0))
    idx = torch.arange(s)
    band = (idx[None, :] < idx[:, None] - 3)[None, None]
    torch.testing.assert_close(watt(q, k, v, None), _reference(q, k, v, causal | band), atol=1e-5, rtol=1e-5)
    # no_mask type: full attention
    full = att(q, k, v, None, attn_mask_type=AMT.no_mask)
    torch.testing.assert_close(
        full, _reference(q, k, v, torch.zeros(1, 1, s, s, dtype=torch.bool)), atol=1e-5, rtol=1e-5
    )


def test_sdpa_attention_refuses_packed_sequences_and_bias():
    att, _ = _attention()
    q, k = torch.randn(4, 1, 4, 8), torch.randn(4, 1, 2, 8)
    with pytest.raises(NotImplementedError, match="packed"):
        att(q, k, k, None, packed_seq_params=object())
    with pytest.raises(NotImplementedError, match="attention_bias"):
        att(q, k, k, None, attention_bias=torch.zeros(1))


# ------------------------------------------------------------------------ megatron API contracts (0.16.1 and 0.19.2)
def _signature_params(path, func, cls=None):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if cls is not None and isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == func:
                    return [a.arg for a in item.args.args + item.args.kwonlyargs]
        if cls is None and isinstance(node, ast.FunctionDef) and node.name == func:
            return [a.arg for a in node.args.args + node.args.kwonlyargs]
    raise AssertionError(f"{func} not found in {path}")


def _dataclass_fields(path, cls):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    raise AssertionError(cls)


def _mcore_roots():
    import megatron.core

    roots = [os.path.dirname(megatron.core.__file__)]
    if OTHER_MCORE:
        if not os.path.isdir(OTHER_MCORE):
            raise FileNotFoundError(f"SPPO_MCORE_SOURCE={OTHER_MCORE} is not a directory")
        roots.append(OTHER_MCORE)
    return roots


@pytest.mark.parametrize("root", _mcore_roots())
def test_megatron_apis_we_call_exist_with_these_keywords(root):
    # TransformerConfig fields we set (all archs, fp8, recompute, uneven pipeline)
    fields = _dataclass_fields(f"{root}/transformer/transformer_config.py", "TransformerConfig")
    fields |= _dataclass_fields(f"{root}/model_parallel_config.py", "ModelParallelConfig")
    used = set()
    for arch in ARCHS + MOE_ARCHS:
        parallel = ParallelConfig(pp=2, ep=2 if arch in MOE_ARCHS else 1)
        used |= set(bridge_of(arch).transformer_config_kwargs(ModelConfig(recompute="full"), parallel))
    used |= {"fp8", "fp8_recipe", "perform_initialization"}
    assert used <= fields, used - fields
    gpt = _signature_params(f"{root}/models/gpt/gpt_model.py", "__init__", "GPTModel")
    assert {
        "config",
        "transformer_layer_spec",
        "vocab_size",
        "max_sequence_length",
        "pre_process",
        "post_process",
        "parallel_output",
        "share_embeddings_and_output_weights",
        "position_embedding_type",
        "rotary_percent",
        "rotary_base",
        "rope_scaling",
        "rope_scaling_factor",
        "seq_len_interpolation_factor",
    } <= set(gpt)
    # core attention: same constructor / forward as DotProductAttention
    from sppo_megatron.models import sdpa_attention

    dpa_init = _signature_params(f"{root}/transformer/dot_product_attention.py", "__init__", "DotProductAttention")
    dpa_fwd = _signature_params(f"{root}/transformer/dot_product_attention.py", "forward", "DotProductAttention")
    ours_init = _signature_params(sdpa_attention.__file__, "__init__", "SDPAttention")
    ours_fwd = _signature_params(sdpa_attention.__file__, "forward", "SDPAttention")
    assert ours_init == dpa_init and ours_fwd == dpa_fwd
    # layer specs (keywords only), offsets, dist checkpointing
    for fn in ("get_gpt_layer_local_submodules", "get_gpt_layer_local_spec"):
        try:
            p = _signature_params(f"{root}/models/gpt/gpt_layer_specs.py", fn)
        except AssertionError:
            continue
        if "qk_layernorm" in p:
            assert "normalization" in p
            break
    else:
        raise AssertionError("local spec keywords not found")
    block = _signature_params(f"{root}/models/gpt/gpt_layer_specs.py", "get_gpt_decoder_block_spec")
    assert {"config", "use_transformer_engine", "normalization"} <= set(block)
    # the MoE names the CPU layer patches (cpu_compat._patch_megatron_moe)
    dispatcher = open(f"{root}/transformer/moe/token_dispatcher.py", encoding="utf-8").read()
    assert (
        "maybe_move_tensor_to_cpu(" in dispatcher
        and "te_general_gemm" in open(f"{root}/transformer/moe/moe_utils.py", encoding="utf-8").read()
    )
    ser = f"{root}/dist_checkpointing/serialization.py"
    assert {"sharded_state_dict", "checkpoint_dir"} <= set(_signature_params(ser, "save"))
    assert {"sharded_state_dict", "checkpoint_dir"} <= set(_signature_params(ser, "load"))
    src = open(f"{root}/dist_checkpointing/strategies/filesystem_async.py", encoding="utf-8").read()
    assert "_results_queue = None" in src  # the global the fork-context queue is installed into
    assert (
        "self.layer_number = layer_number + get_transformer_layer_offset("
        in open(f"{root}/transformer/transformer_layer.py", encoding="utf-8").read()
    )


# ------------------------------------------------------------------------ HF file IO
def test_safetensors_reader_slices_and_writer_shards(tmp_path):
    from safetensors.torch import load_file

    from sppo_megatron.models.hf_io import SafetensorsReader, ShardedSafetensorsWriter

    tensors = {f"t{i}": torch.randn(8, 6) for i in range(5)}
    w = ShardedSafetensorsWriter(str(tmp_path), max_shard_bytes=400)
    for k, t in tensors.items():
        w.add(k, t)
    files = w.finish()
    assert "model.safetensors.index.json" in files and len(files) > 2
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert set(index["weight_map"]) == set(tensors)
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]
    r = SafetensorsReader(str(tmp_path))
    assert torch.equal(r.read("t3"), tensors["t3"])
    assert torch.equal(r.read("t1", rows=(2, 5)), tensors["t1"][2:5])
    assert torch.equal(r.read("t1", cols=(1, 4)), tensors["t1"][:, 1:4])
    with pytest.raises(UserError, match="missing"):
        r.read("nope")
    single = tmp_path / "single"
    single.mkdir()
    w = ShardedSafetensorsWriter(str(single))
    w.add("a", torch.ones(2))
    assert w.finish() == ["model.safetensors"]
    assert torch.equal(load_file(single / "model.safetensors")["a"], torch.ones(2))


def test_writer_header_larger_than_its_reservation(tmp_path, monkeypatch):
    from sppo_megatron.models.hf_io import SafetensorsReader, ShardedSafetensorsWriter

    monkeypatch.setattr(ShardedSafetensorsWriter, "HEADER_RESERVE", 64)
    tensors = {f"layer.{i}.weight": torch.randn(3, i + 1).to(torch.bfloat16) for i in range(6)}
    w = ShardedSafetensorsWriter(str(tmp_path))
    for k, t in tensors.items():
        w.add(k, t)
    assert w.finish() == ["model.safetensors"]
    r = SafetensorsReader(str(tmp_path))
    assert all(torch.equal(r.read(k), t) for k, t in tensors.items())


def test_reader_refuses_non_safetensors(tmp_path):
    from sppo_megatron.models.hf_io import SafetensorsReader

    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="only safetensors"):
        SafetensorsReader(str(tmp_path))
    os.remove(tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="no weights"):
        SafetensorsReader(str(tmp_path))


@pytest.mark.parametrize("layout", ["replicated", "embedding", "row", "qkv", "gate_up"])
def test_assemble_is_zero_copy_where_the_layout_allows(layout):
    """At TP=1 the shard IS the parameter: the export returns views of it (no copy) except where
    the HF tensors are a re-layout (qkv: one copy, never an alias), with the values the TP=2
    path assembles from the same weights split in two; the TP=2 path never aliases a shard."""
    bridge = bridge_of("qwen2")
    hd, groups = bridge.head_dim, bridge.num_kv_heads
    per_group = (bridge.num_attention_heads // groups + 2) * hd
    rows = {
        "replicated": 8,
        "embedding": bridge.padded_vocab_size(2),
        "row": 6,
        "qkv": groups * per_group,
        "gate_up": 12,
    }[layout]
    full = torch.randn(rows, 8)
    before = full.clone()
    if layout == "row":
        shards = list(full.chunk(2, dim=1))
    elif layout == "qkv":  # megatron splits qkv by whole query groups
        shards = list(full.reshape(groups, per_group, 8).chunk(2, dim=0))
        shards = [s.reshape(-1, 8) for s in shards]
    elif layout == "gate_up":  # each TP rank holds its half of gate and its half of up
        gate, up = full.chunk(2, dim=0)
        shards = [torch.cat([g, u]) for g, u in zip(gate.chunk(2), up.chunk(2))]
    elif layout == "replicated":
        shards = [full, full]
    else:
        shards = list(full.chunk(2, dim=0))
    single = getattr(layouts, layout.upper()).assemble([full], bridge)
    split = getattr(layouts, layout.upper()).assemble(shards, bridge)
    assert len(single) == len(split)
    aliases = layout != "qkv" or groups == 1
    for a, b in zip(single, split):
        assert torch.equal(a, b) and a.is_contiguous() and b.is_contiguous()
        assert (a.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()) == aliases
        if layout != "replicated":
            assert all(b.untyped_storage().data_ptr() != s.untyped_storage().data_ptr() for s in shards)
    if layout != "replicated":  # a replicated tensor is the rank's own parameter at any TP
        for b in split:
            b.add_(1.0)  # writing to a TP>1 export must not touch the shards (or the parameter)
    assert torch.equal(full, before)
