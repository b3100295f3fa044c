"""`sppo-convert`: round trips for every architecture, the torchrun path, verify, and bad input.

Conversions run in spawned processes (they start a process group and megatron state, which must
not leak into the pytest process): one single-rank process converts every architecture both
ways and runs verify; one 4-rank process runs the torchrun path with --tp 2 --pp 2.
Bad-input cases run in-process: they must fail before any process group exists.
"""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
import torch

from sppo_megatron.testing.tiny import ARCHS, make_tiny_hf_model
from tests.multirank import run_ranks
from tests.tiny_models import convert as _run
from tests.tiny_models import hf_state_dict, tiny_models_root

TORCHRUN_ARCHS = ("qwen3", "llama3.2-tied")


def _single_rank_body(root, work):
    codes = {}
    for arch in ARCHS:
        src = os.path.join(root, arch)
        mg, hf = os.path.join(work, arch, "mg"), os.path.join(work, arch, "hf")
        codes[(arch, "h2m")] = _run(["hf-to-megatron", "--hf", src, "--out", mg])
        codes[(arch, "m2h")] = _run(["megatron-to-hf", "--ckpt", mg, "--out", hf, "--max-shard-size", "40KB"])
    codes["verify"] = _run(["verify", "--hf", os.path.join(root, "qwen2"), "--ckpt", os.path.join(work, "qwen2", "mg")])
    codes["verify-other-weights"] = _run(
        ["verify", "--hf", os.path.join(work, "qwen2-seed1"), "--ckpt", os.path.join(work, "qwen2", "mg")]
    )
    # bf16 checkpoint -> fp32 HF export (the checkpoint dtype differs from the model dtype)
    bf16 = os.path.join(work, "bf16")
    codes["h2m-bf16"] = _run(["hf-to-megatron", "--hf", os.path.join(root, "qwen3"), "--out", bf16, "--dtype", "bf16"])
    # a bf16 conversion of an fp32 model passes verify: judged relative to the logits at bf16's tolerance
    codes["verify-bf16"] = _run(["verify", "--hf", os.path.join(root, "qwen3"), "--ckpt", bf16])
    codes["m2h-bf16"] = _run(
        ["megatron-to-hf", "--ckpt", bf16, "--out", os.path.join(work, "bf16-hf"), "--dtype", "fp32"]
    )
    # --overwrite replaces a non-empty output
    codes["overwrite"] = _run(
        [
            "hf-to-megatron",
            "--hf",
            os.path.join(root, "llama"),
            "--out",
            os.path.join(work, "llama", "mg"),
            "--overwrite",
        ]
    )
    return codes


def _torchrun_body(root, work):
    codes = {}
    for arch in TORCHRUN_ARCHS:
        src = os.path.join(root, arch)
        mg, hf = os.path.join(work, "tr-" + arch, "mg"), os.path.join(work, "tr-" + arch, "hf")
        codes[(arch, "h2m")] = _run(["hf-to-megatron", "--hf", src, "--out", mg, "--tp", "2", "--pp", "2"])
        codes[(arch, "verify")] = _run(["verify", "--hf", src, "--ckpt", mg, "--tp", "2", "--pp", "2"])
        codes[(arch, "m2h")] = _run(["megatron-to-hf", "--ckpt", mg, "--out", hf, "--tp", "2", "--pp", "2"])
    return codes


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tiny_models_root(tmp_path_factory)
    work = str(tmp_path_factory.mktemp("convert"))
    make_tiny_hf_model("qwen2", os.path.join(work, "qwen2-seed1"), seed=1)
    single = run_ranks(_single_rank_body, 1, root, work, timeout=240)[0]
    multi = run_ranks(_torchrun_body, 4, root, work, timeout=240)
    return root, work, single, multi


def _assert_same_tensors(out_dir, src_dir, cast=None):
    got, want = hf_state_dict(out_dir), hf_state_dict(src_dir)
    assert set(got) == set(want), set(got) ^ set(want)
    for k in want:
        ref = want[k] if cast is None else want[k].to(cast).to(want[k].dtype)
        assert got[k].dtype == ref.dtype and torch.equal(got[k], ref), k


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_cli_round_trip_is_bit_exact(converted, arch):
    root, work, codes, _ = converted
    assert codes[(arch, "h2m")] == 0 and codes[(arch, "m2h")] == 0
    mg, hf = os.path.join(work, arch, "mg"), os.path.join(work, arch, "hf")
    meta = json.load(open(os.path.join(mg, "sppo_checkpoint.json")))
    cfg = json.load(open(os.path.join(root, arch, "config.json")))
    assert meta["model_type"] == cfg["model_type"] and meta["vocab_size"] == 100 and meta["dtype"] == "fp32"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(mg, "hf", name)), name
        assert os.path.isfile(os.path.join(hf, name)), name
    assert os.path.isfile(os.path.join(hf, "model.safetensors.index.json"))  # 40KB shards
    _assert_same_tensors(hf, os.path.join(root, arch))
    assert not [d for d in os.listdir(os.path.join(work, arch)) if ".tmp-" in d]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_exported_model_loads_with_from_pretrained_without_key_warnings(converted, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _, work, _, _ = converted
    hf = os.path.join(work, arch, "hf")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(hf, output_loading_info=True)
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(old)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    log = stream.getvalue()
    assert "MISSING" not in log and "UNEXPECTED" not in log and "not initialized" not in log, log
    assert model.config.tie_word_embeddings == json.load(open(os.path.join(hf, "config.json")))["tie_word_embeddings"]
    tok = AutoTokenizer.from_pretrained(hf)
    assert tok.apply_chat_template([{"role": "user", "content": "1 + 1 ?"}], tokenize=False, add_generation_prompt=True)


@pytest.mark.slow
def test_verify_passes_a_bf16_conversion_of_an_fp32_model(converted):
    _, _, codes, _ = converted
    assert codes["verify-bf16"] == 0  # the HF weights are rounded like the checkpoint's before comparing


@pytest.mark.slow
def test_verify_passes_on_matching_and_fails_on_other_weights(converted):
    _, _, codes, _ = converted
    assert codes["verify"] == 0
    assert codes["verify-other-weights"] == 1


@pytest.mark.slow
def test_bf16_checkpoint_exports_to_fp32(converted):
    root, work, codes, _ = converted
    assert codes["h2m-bf16"] == 0 and codes["m2h-bf16"] == 0
    meta = json.load(open(os.path.join(work, "bf16", "sppo_checkpoint.json")))
    assert meta["dtype"] == "bf16"
    assert json.load(open(os.path.join(work, "bf16-hf", "config.json")))["dtype"] == "float32"
    _assert_same_tensors(os.path.join(work, "bf16-hf"), os.path.join(root, "qwen3"), cast=torch.bfloat16)


@pytest.mark.slow
def test_overwrite_replaces_output(converted):
    root, work, codes, _ = converted
    assert codes["overwrite"] == 0
    meta = json.load(open(os.path.join(work, "llama", "mg", "sppo_checkpoint.json")))
    assert meta["model_type"] == "llama"
    assert not [d for d in os.listdir(os.path.join(work, "llama")) if ".old-" in d or ".tmp-" in d]


@pytest.mark.slow
@pytest.mark.parametrize("arch", TORCHRUN_ARCHS)
def test_torchrun_tp2_pp2_convert_verify_export(converted, arch):
    root, work, _, multi = converted
    for rank, codes in enumerate(multi):
        assert codes[(arch, "h2m")] == 0 and codes[(arch, "m2h")] == 0, (rank, codes)
        assert codes[(arch, "verify")] == 0, (rank, codes)
    meta = json.load(open(os.path.join(work, "tr-" + arch, "mg", "sppo_checkpoint.json")))
    assert meta["written_with"]["tp"] == 2 and meta["written_with"]["pp"] == 2
    _assert_same_tensors(os.path.join(work, "tr-" + arch, "hf"), os.path.join(root, arch))


# ------------------------------------------------------------------------ bad input (in-process)
def _error(argv, capsys):
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sppo-convert: error: "), err
    return err[0]


def test_missing_hf_directory(tmp_path, capsys):
    line = _error(["hf-to-megatron", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "out")], capsys)
    assert "does not exist" in line and not (tmp_path / "out").exists()


def test_non_hf_directory(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("hi")
    line = _error(["hf-to-megatron", "--hf", str(tmp_path / "src"), "--out", str(tmp_path / "out")], capsys)
    assert "config.json" in line and not (tmp_path / "out").exists()


def test_unsupported_architecture(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    line = _error(["hf-to-megatron", "--hf", str(tmp_path / "src"), "--out", str(tmp_path / "out")], capsys)
    assert "gpt2" in line and "qwen2" in line and "llama" in line


def test_output_exists_and_is_not_empty(tmp_path_factory, tmp_path, capsys):
    root = tiny_models_root(tmp_path_factory)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    line = _error(["hf-to-megatron", "--hf", os.path.join(root, "llama"), "--out", str(out)], capsys)
    assert "--overwrite" in line
    assert os.listdir(out) == ["keep.txt"] and os.listdir(tmp_path) == ["out"]


def test_tp_without_torchrun(tmp_path_factory, tmp_path, capsys):
    root = tiny_models_root(tmp_path_factory)
    line = _error(
        ["hf-to-megatron", "--hf", os.path.join(root, "llama"), "--out", str(tmp_path / "o"), "--tp", "2"], capsys
    )
    assert "torchrun" in line and not (tmp_path / "o").exists()


def test_output_inside_input(tmp_path_factory, capsys):
    root = tiny_models_root(tmp_path_factory)
    line = _error(
        ["hf-to-megatron", "--hf", os.path.join(root, "llama"), "--out", os.path.join(root, "llama", "sub")], capsys
    )
    assert "must not" in line


def test_missing_and_non_checkpoint_dirs(tmp_path, capsys):
    line = _error(["megatron-to-hf", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert "does not exist" in line
    (tmp_path / "plain").mkdir()
    line = _error(["megatron-to-hf", "--ckpt", str(tmp_path / "plain"), "--out", str(tmp_path / "o")], capsys)
    assert "not a megatron-core dist checkpoint" in line
    assert sorted(os.listdir(tmp_path)) == ["plain"]


@pytest.mark.slow
def test_checkpoint_of_another_architecture(converted, tmp_path, capsys):
    root, work, _, _ = converted
    qwen_ckpt = os.path.join(work, "qwen2", "mg")
    line = _error(
        [
            "megatron-to-hf",
            "--ckpt",
            qwen_ckpt,
            "--hf-config",
            os.path.join(root, "llama"),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert "model_type" in line and "another" in line and not (tmp_path / "o").exists()
    line = _error(["verify", "--hf", os.path.join(root, "mistral"), "--ckpt", qwen_ckpt], capsys)
    assert "model_type" in line


@pytest.mark.slow
def test_checkpoint_without_hf_config(converted, tmp_path, capsys):
    import shutil

    _, work, _, _ = converted
    ckpt = tmp_path / "ckpt"
    shutil.copytree(os.path.join(work, "qwen2", "mg"), ckpt)
    shutil.rmtree(ckpt / "hf")
    line = _error(["megatron-to-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "o")], capsys)
    assert "--hf-config" in line


@pytest.mark.slow
def test_bad_shard_size(converted, tmp_path, capsys):
    _, work, _, _ = converted
    line = _error(
        [
            "megatron-to-hf",
            "--ckpt",
            os.path.join(work, "qwen2", "mg"),
            "--out",
            str(tmp_path / "o"),
            "--max-shard-size",
            "lots",
        ],
        capsys,
    )
    assert "max-shard-size" in line
