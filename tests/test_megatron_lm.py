"""Megatron-LM checkpoint layout (issue 15): our checkpoints load the way Megatron-LM's
`load_checkpoint` loads them, and Megatron-LM load directories load in sppo.

`_megatron_lm_load` re-implements Megatron-LM's torch_dist load path with megatron-core only
(independently of sppo's code): tracker -> release/ or iter_%07d/, the rank-0 common state
(`args`, checkpoint_version >= 3.0, iteration), a GPTModel built from those `args` alone (as
`--use-checkpoint-args` does), the sharded "model" state with the default
`--dist-ckpt-strictness assume_ok_unexpected`, then a strict `load_state_dict`.
Processes that build models run in spawned ranks (tests/multirank.py); the CLI's bad-input
cases run in-process, before any process group exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest
import torch

from sppo_megatron.testing.tiny import make_tiny_hf_model
from tests.multirank import run_ranks
from tests.tiny_models import convert as _run
from tests.tiny_models import hf_state_dict, tiny_models_root

TRACKER = "latest_checkpointed_iteration.txt"
MLM_ARCHS = ("qwen2", "qwen3", "llama3.2-tied", "mistral")


# ----------------------------------------------------------------- Megatron-LM's load path
def _resolve(load_dir):
    """read_metadata + get_checkpoint_name(return_base_dir=True), as Megatron-LM does."""
    with open(os.path.join(load_dir, TRACKER)) as f:
        text = f.read().strip()
    try:
        iteration, release = int(text), False
    except ValueError:
        assert text == "release", text
        iteration, release = 0, True
    return os.path.join(load_dir, "release" if release else "iter_{:07d}".format(iteration)), iteration, release


def _model_from_args(a):
    """GPTModel from checkpoint args only (core_transformer_config_from_args + model_provider)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    cfg = TransformerConfig(
        num_layers=a.num_layers,
        hidden_size=a.hidden_size,
        ffn_hidden_size=a.ffn_hidden_size,
        num_attention_heads=a.num_attention_heads,
        kv_channels=a.kv_channels,
        num_query_groups=a.num_query_groups if a.group_query_attention else None,
        layernorm_epsilon=a.layernorm_epsilon,
        normalization=a.normalization,
        gated_linear_unit=a.swiglu,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=a.add_bias_linear,
        add_qkv_bias=a.add_qkv_bias,
        qk_layernorm=a.qk_layernorm,
        hidden_dropout=a.hidden_dropout,
        attention_dropout=a.attention_dropout,
        params_dtype=a.params_dtype,
        bf16=a.bf16,
        fp16=a.fp16,
        use_cpu_initialization=True,
    )
    spec = get_gpt_layer_local_spec(qk_layernorm=a.qk_layernorm, normalization=a.normalization)
    model = GPTModel(
        config=cfg,
        transformer_layer_spec=spec,
        vocab_size=a.padded_vocab_size,
        max_sequence_length=a.max_position_embeddings,
        position_embedding_type=a.position_embedding_type,
        rotary_percent=a.rotary_percent,
        rotary_base=a.rotary_base,
        rope_scaling=a.use_rope_scaling,
        rope_scaling_factor=a.rope_scaling_factor,
        share_embeddings_and_output_weights=not a.untie_embeddings_and_output_weights,
    )
    return model.to(a.params_dtype)  # Megatron-LM's Float16Module casts the local spec's torch norms too


def _megatron_lm_load(load_dir):
    """(args, iteration, model) the way Megatron-LM's load_checkpoint gets them (torch_dist)."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.validation import StrictHandling

    ckpt_dir, iteration, release = _resolve(load_dir)
    assert dist_checkpointing.check_is_distributed_checkpoint(ckpt_dir)
    common = dist_checkpointing.load_common_state_dict(ckpt_dir)
    assert common["checkpoint_version"] >= 3.0 and "iteration" in common, sorted(common)
    args = common["args"]
    model = _model_from_args(args)
    metadata = dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or {}
    metadata["dp_cp_group"] = ps.get_data_parallel_group(with_context_parallel=True)
    state = dist_checkpointing.load(
        {"model": model.sharded_state_dict(metadata=metadata)}, ckpt_dir, strict=StrictHandling.ASSUME_OK_UNEXPECTED
    )
    model.load_state_dict(state["model"], strict=True)
    return args, (0 if release else common["iteration"]), model


def _tensors(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def _error_line(fn, *a):
    from sppo_megatron.errors import UserError

    try:
        fn(*a)
    except UserError as e:
        return str(e)
    return None


# ----------------------------------------------------------------- rank bodies
def _single_body(root, work):
    from sppo_megatron.config.schema import ModelConfig, ParallelConfig
    from sppo_megatron.models import get_bridge
    from sppo_megatron.models.converted import conversion_model_config, write_converted_checkpoint
    from sppo_megatron.models.megatron_lm import megatron_lm_padded_vocab
    from sppo_megatron.platform.distributed import init_distributed

    out = {"codes": {}, "args": {}, "equal": {}, "errors": {}}
    init_distributed(tp=1, pp=1, seed=0)
    for arch in MLM_ARCHS:
        # a tiny model built here, written in the megatron-lm layout, reloaded as Megatron-LM does
        bridge = get_bridge(os.path.join(root, arch))
        dtype = "bf16" if arch == "qwen3" else "fp32"
        model = bridge.build_model(
            conversion_model_config(dtype),
            ParallelConfig(),
            perform_initialization=False,
            padded_vocab_size=megatron_lm_padded_vocab(bridge.vocab_size, 1),
        )
        bridge.load_hf_weights(model, os.path.join(root, arch))
        load_dir = os.path.join(work, "api-" + arch)
        write_converted_checkpoint(
            model, load_dir, bridge, dtype, os.path.join(root, arch), 1, 1, "megatron-lm", iteration=12
        )
        args, iteration, reloaded = _megatron_lm_load(load_dir)
        want, got = _tensors(model), _tensors(reloaded)
        out["equal"][arch] = sorted(want) == sorted(got) and all(
            want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]) for k in want
        )
        tc = bridge.transformer_config_kwargs(ModelConfig(dtype=dtype), ParallelConfig())
        out["args"][arch] = {
            "args": vars(args),
            "iteration": iteration,
            "tc": {
                k: tc[k]
                for k in (
                    "num_layers",
                    "hidden_size",
                    "ffn_hidden_size",
                    "num_attention_heads",
                    "num_query_groups",
                    "kv_channels",
                    "add_qkv_bias",
                    "qk_layernorm",
                    "layernorm_epsilon",
                    "params_dtype",
                )
            },
            "tied": bridge.tied,
            "theta": bridge.rope.theta,
            "vocab": bridge.vocab_size,
            "window": tc.get("window_size"),
            "max_pos": bridge.max_position_embeddings,
        }
        del model, reloaded

    # CLI: conversions in both layouts and exports back to HF
    qwen2 = os.path.join(root, "qwen2")
    codes = out["codes"]
    codes["h2m-mlm"] = _run(
        ["hf-to-megatron", "--hf", qwen2, "--out", os.path.join(work, "mlm"), "--layout", "megatron-lm"]
    )
    codes["h2m-sppo"] = _run(["hf-to-megatron", "--hf", qwen2, "--out", os.path.join(work, "sppo")])
    codes["m2h-mlm"] = _run(
        ["megatron-to-hf", "--ckpt", os.path.join(work, "mlm"), "--out", os.path.join(work, "mlm-hf")]
    )
    codes["verify-mlm"] = _run(["verify", "--hf", qwen2, "--ckpt", os.path.join(work, "mlm")])
    codes["h2m-llama3.1-mlm"] = _run(
        [
            "hf-to-megatron",
            "--hf",
            os.path.join(root, "llama3.1"),
            "--out",
            os.path.join(work, "llama3.1-mlm"),
            "--layout",
            "megatron-lm",
        ]
    )
    # a bare Megatron-LM load directory (no sppo description, no hf/): needs --hf-config
    bare = os.path.join(work, "bare")
    shutil.copytree(os.path.join(work, "mlm"), bare)
    shutil.rmtree(os.path.join(bare, "release", "hf"))
    os.remove(os.path.join(bare, "release", "sppo_checkpoint.json"))
    codes["m2h-bare"] = _run(
        ["megatron-to-hf", "--ckpt", bare, "--out", os.path.join(work, "bare-hf"), "--hf-config", qwen2]
    )
    # a training-style checkpoint (trainer_state.json) exported as iter_<step>
    step = os.path.join(work, "run", "checkpoints", "step_5")
    shutil.copytree(os.path.join(work, "sppo"), step)
    with open(os.path.join(step, "trainer_state.json"), "w") as f:
        json.dump({"step": 5, "sampler": {}}, f)
    codes["m2l-step"] = _run(["megatron-to-megatron-lm", "--ckpt", step, "--out", os.path.join(work, "step-mlm")])
    codes["m2h-step-mlm"] = _run(
        ["megatron-to-hf", "--ckpt", os.path.join(work, "step-mlm"), "--out", os.path.join(work, "step-mlm-hf")]
    )
    _, iteration, _ = _megatron_lm_load(os.path.join(work, "step-mlm"))
    out["step_iteration"] = iteration

    # refused loads, one line each
    from sppo_megatron.actor.setup import load_initial_weights
    from sppo_megatron.models.dist_ckpt import load_model_checkpoint

    init_distributed(tp=1, pp=1, seed=0)
    bridge = get_bridge(qwen2)
    ours = bridge.build_model(
        conversion_model_config("fp32"), ParallelConfig(), perform_initialization=False, padded_vocab_size=256
    )
    out["errors"]["vocab"] = _error_line(load_model_checkpoint, ours, os.path.join(work, "mlm"), "model.megatron_ckpt")
    out["errors"]["trainer-vocab"] = _error_line(
        load_initial_weights, _with_ckpt(os.path.join(work, "mlm")), ours, bridge
    )
    # the trainer's load from a bare Megatron-LM directory, and from one of another model
    from sppo_megatron.actor.setup import initial_padded_vocab

    cfg = _with_ckpt(bare)
    policy = bridge.build_model(
        conversion_model_config("fp32"),
        ParallelConfig(),
        perform_initialization=False,
        padded_vocab_size=initial_padded_vocab(cfg, ParallelConfig()),
    )
    load_initial_weights(cfg, policy, bridge)
    want = hf_state_dict(qwen2)
    out["trainer_load_equal"] = all(torch.equal(t, want[n]) for n, t in bridge.export_hf_weights(policy))
    deeper = get_bridge(os.path.join(work, "qwen2-5layers"))
    out["errors"]["trainer-args"] = _error_line(load_initial_weights, _with_ckpt(bare), ours, deeper)
    # a model asking for a key the checkpoint lacks: the untied LM head from a tied checkpoint without description
    nodesc = os.path.join(work, "nodesc")
    assert _run(["hf-to-megatron", "--hf", os.path.join(root, "qwen2-tied"), "--out", nodesc]) == 0
    os.remove(os.path.join(nodesc, "sppo_checkpoint.json"))
    init_distributed(tp=1, pp=1, seed=0)
    untied = bridge.build_model(conversion_model_config("fp32"), ParallelConfig(), perform_initialization=False)
    out["errors"]["missing-key"] = _error_line(load_model_checkpoint, untied, nodesc, "--ckpt")
    return out


def _with_ckpt(path):
    """The default model group with model.megatron_ckpt = path."""
    from sppo_megatron.config.schema import ModelConfig

    return ModelConfig(megatron_ckpt=path)


def _tp2_body(root, work):
    """2 ranks: megatron-lm layout at --tp 2 (Megatron-LM pads to 256 rows, we to 128), and a
    128-row checkpoint re-padded to 256 by megatron-to-megatron-lm."""
    qwen3 = os.path.join(root, "qwen3")
    codes = {}
    codes["h2m"] = _run(
        [
            "hf-to-megatron",
            "--hf",
            qwen3,
            "--out",
            os.path.join(work, "tp2-mlm"),
            "--layout",
            "megatron-lm",
            "--tp",
            "2",
        ]
    )
    codes["m2l"] = _run(
        [
            "megatron-to-megatron-lm",
            "--ckpt",
            os.path.join(work, "tp1-sppo"),
            "--out",
            os.path.join(work, "tp2-export"),
            "--tp",
            "2",
            "--iteration",
            "7",
        ]
    )
    return codes


def _tp1_after_tp2_body(root, work):
    """One rank: the tp2 checkpoints back to HF, then everything `_single_body` checks."""
    codes = {}
    for name in ("tp2-mlm", "tp2-export"):
        codes[name] = _run(
            ["megatron-to-hf", "--ckpt", os.path.join(work, name), "--out", os.path.join(work, name + "-hf")]
        )
    return codes, _single_body(root, work)


def _single_convert_body(root, work):
    return _run(["hf-to-megatron", "--hf", os.path.join(root, "qwen3"), "--out", os.path.join(work, "tp1-sppo")])


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """All of the module's conversions in three spawns (1 rank, 2 ranks, 1 rank), not one per
    check: the single-rank checks run in the last, after the tp2 ones (other directories)."""
    root = tiny_models_root(tmp_path_factory)
    work = str(tmp_path_factory.mktemp("mlm"))
    make_tiny_hf_model("qwen2", os.path.join(work, "qwen2-5layers"), num_hidden_layers=5)
    run_ranks(_single_convert_body, 1, root, work, timeout=120)
    multi = run_ranks(_tp2_body, 2, root, work, timeout=240)
    after, single = run_ranks(_tp1_after_tp2_body, 1, root, work, timeout=400)[0]
    return root, work, single, multi, after


@pytest.fixture(scope="module")
def done(spawned):
    return spawned[:3]


@pytest.fixture(scope="module")
def tp2(spawned):
    return spawned[3:]


# ----------------------------------------------------------------- tests
@pytest.mark.slow
@pytest.mark.parametrize("arch", MLM_ARCHS)
def test_megatron_lm_load_path_gives_bitwise_equal_weights(done, arch):
    _, _, single = done
    assert single["equal"][arch]


@pytest.mark.slow
@pytest.mark.parametrize("arch", MLM_ARCHS)
def test_args_match_the_model_config(done, arch):
    _, work, single = done
    rec = single["args"][arch]
    a, tc = rec["args"], rec["tc"]
    assert rec["iteration"] == 12
    for key in (
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "num_query_groups",
        "kv_channels",
        "add_qkv_bias",
        "qk_layernorm",
        "layernorm_epsilon",
        "params_dtype",
    ):
        assert a[key] == tc[key], key
    assert a["norm_epsilon"] == tc["layernorm_epsilon"]
    assert a["group_query_attention"] is True  # 4 heads, 2 kv heads
    assert a["untie_embeddings_and_output_weights"] is (not rec["tied"])
    assert a["rotary_base"] == int(rec["theta"]) and isinstance(a["rotary_base"], int)
    assert a["normalization"] == "RMSNorm" and a["swiglu"] is True and a["position_embedding_type"] == "rope"
    assert a["padded_vocab_size"] == 128 and a["vocab_size"] == rec["vocab"] == 100
    assert a["make_vocab_size_divisible_by"] == 128 and a["max_position_embeddings"] == rec["max_pos"]
    assert a["tensor_model_parallel_size"] == 1 and a["pipeline_model_parallel_size"] == 1
    assert a["no_save_optim"] is True and a["no_save_rng"] is True and "disable_bias_linear" not in a
    assert a["window_size"] == (tuple(rec["window"]) if rec["window"] else None)
    for key, value in a.items():  # unpickles under weights_only with megatron.core's safe globals
        assert value is None or isinstance(value, (bool, int, float, str, tuple, torch.dtype)), (key, value)
    ckpt = os.path.join(work, "api-" + arch)
    assert open(os.path.join(ckpt, TRACKER)).read() == "12"
    assert sorted(os.listdir(ckpt)) == ["iter_0000012", TRACKER]
    meta = json.load(open(os.path.join(ckpt, "iter_0000012", "sppo_checkpoint.json")))
    assert meta["layout"] == "megatron-lm" and meta["padded_vocab_size"] == 128


@pytest.mark.slow
def test_common_pt_loads_with_default_torch_load(done):
    import megatron.core  # noqa: F401 - registers argparse.Namespace as a weights_only-safe global

    _, work, _ = done
    common = torch.load(os.path.join(work, "mlm", "release", "common.pt"))
    assert type(common["args"]) is argparse.Namespace
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == 0


@pytest.mark.slow
def test_cli_megatron_lm_layout_round_trips_bit_exact(done):
    root, work, single = done
    codes = single["codes"]
    assert codes["h2m-mlm"] == 0 and codes["m2h-mlm"] == 0 and codes["verify-mlm"] == 0, codes
    assert open(os.path.join(work, "mlm", TRACKER)).read() == "release"
    assert sorted(os.listdir(os.path.join(work, "mlm"))) == [TRACKER, "release"]
    got, want = hf_state_dict(os.path.join(work, "mlm-hf")), hf_state_dict(os.path.join(root, "qwen2"))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_default_layout_is_unchanged(done):
    _, work, single = done
    assert single["codes"]["h2m-sppo"] == 0
    names = sorted(os.listdir(os.path.join(work, "sppo")))
    assert TRACKER not in names and "release" not in names and "metadata.json" in names
    meta = json.load(open(os.path.join(work, "sppo", "sppo_checkpoint.json")))
    assert meta["layout"] == "sppo" and meta["padded_vocab_size"] == 128
    from megatron.core import dist_checkpointing

    assert dist_checkpointing.load_common_state_dict(os.path.join(work, "sppo")) == {}


@pytest.mark.slow
def test_llama3_rope_factors_megatron_lm_cannot_express_are_refused(done):
    _, work, single = done
    assert single["codes"]["h2m-llama3.1-mlm"] == 2
    assert not os.path.exists(os.path.join(work, "llama3.1-mlm"))


@pytest.mark.slow
def test_bare_megatron_lm_directory_loads_with_hf_config(done):
    root, work, single = done
    assert single["codes"]["m2h-bare"] == 0
    got, want = hf_state_dict(os.path.join(work, "bare-hf")), hf_state_dict(os.path.join(root, "qwen2"))
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_training_checkpoint_exports_as_iter_step(done):
    root, work, single = done
    assert single["codes"]["m2l-step"] == 0 and single["codes"]["m2h-step-mlm"] == 0
    assert open(os.path.join(work, "step-mlm", TRACKER)).read() == "5"
    assert single["step_iteration"] == 5
    got, want = hf_state_dict(os.path.join(work, "step-mlm-hf")), hf_state_dict(os.path.join(root, "qwen2"))
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_trainer_loads_a_bare_megatron_lm_directory(done):
    assert done[2]["trainer_load_equal"]


@pytest.mark.slow
def test_padded_vocab_mismatch_is_one_line_naming_both_sizes(done):
    _, _, single = done
    for key in ("vocab", "trainer-vocab"):
        msg = single["errors"][key]
        assert msg and "\n" not in msg and "128" in msg and "256" in msg, (key, msg)


@pytest.mark.slow
def test_args_hf_config_mismatch_is_refused_in_one_line(done):
    _, _, single = done
    msg = single["errors"]["trainer-args"]
    assert msg and "\n" not in msg and "num_layers=3" in msg and "num_layers=5" in msg, msg


@pytest.mark.slow
def test_missing_key_is_one_clean_line(done):
    _, _, single = done
    msg = single["errors"]["missing-key"]
    assert msg and "\n" not in msg and "nodesc" in msg and "output_layer.weight" in msg, msg


@pytest.mark.slow
def test_tp2_megatron_lm_padding_and_repadding_export(done, tp2):
    from megatron.core import dist_checkpointing

    root, work, _ = done
    multi, after = tp2
    assert all(codes == {"h2m": 0, "m2l": 0} for codes in multi), multi
    assert after == {"tp2-mlm": 0, "tp2-export": 0}, after
    for name, sub in (("tp2-mlm", "release"), ("tp2-export", "iter_0000007")):
        ckpt = os.path.join(work, name, sub)
        args = dist_checkpointing.load_common_state_dict(ckpt)["args"]
        assert args.padded_vocab_size == 256 and args.tensor_model_parallel_size == 2  # 128 * tp, ours would be 128
        rows = dist_checkpointing.load_tensors_metadata(ckpt)["embedding.word_embeddings.weight"].global_shape[0]
        assert rows == 256
        got, want = hf_state_dict(os.path.join(work, name + "-hf")), hf_state_dict(os.path.join(root, "qwen3"))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), name


# ----------------------------------------------------------------- bad input (in-process)
def test_bad_tracker_is_one_line(tmp_path, capsys):
    (tmp_path / TRACKER).write_text("latest\n")
    assert _run(["megatron-to-hf", "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and TRACKER in err[0] and "'latest'" in err[0], err


def test_tracker_pointing_at_missing_dir_is_one_line(tmp_path, capsys):
    (tmp_path / TRACKER).write_text("40")
    assert _run(["megatron-to-hf", "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "iter_0000040" in err[0], err


@pytest.mark.slow
def test_bare_megatron_lm_dir_without_hf_config_is_one_line(done, capsys):
    _, work, _ = done
    assert _run(["megatron-to-hf", "--ckpt", os.path.join(work, "bare"), "--out", os.path.join(work, "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hf-config" in err[0], err


@pytest.mark.slow
def test_args_mismatch_in_megatron_to_hf_is_one_line(done, capsys):
    _, work, _ = done
    code = _run(
        [
            "megatron-to-hf",
            "--ckpt",
            os.path.join(work, "bare"),
            "--out",
            os.path.join(work, "y"),
            "--hf-config",
            os.path.join(work, "qwen2-5layers"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "num_layers=3" in err[0] and "num_layers=5" in err[0], err
    assert not os.path.exists(os.path.join(work, "y"))


@pytest.mark.slow
def test_checkpoint_without_common_pt_is_one_line(done, tmp_path, capsys):
    """megatron-core >= 0.19 writes no common.pt; 0.16 cannot read such a checkpoint."""
    root, work, _ = done
    ckpt = tmp_path / "no-common"
    shutil.copytree(os.path.join(work, "bare"), ckpt)
    os.remove(ckpt / "release" / "common.pt")
    code = _run(
        [
            "megatron-to-hf",
            "--ckpt",
            str(ckpt),
            "--out",
            str(tmp_path / "o"),
            "--hf-config",
            os.path.join(root, "qwen2"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "common state" in err[0], err
