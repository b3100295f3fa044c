"""Problems found by trainer/preflight.py right after the config loads, before anything is built:
loggers, checkpoint kind, the rollout engine, Transformer Engine, the run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from sppo_megatron.config.loader import load_config
from sppo_megatron.errors import ConfigError, UserError
from sppo_megatron.models.converted import META_FILE, META_FORMAT
from sppo_megatron.rollout.sglang import sglang_available
from sppo_megatron.testing.tiny import make_tiny_hf_model
from sppo_megatron.trainer import preflight as preflight_module
from sppo_megatron.trainer.preflight import preflight
from sppo_megatron.trainer.run_lock import RunLock


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_tiny_hf_model("qwen2", tmp_path_factory.mktemp("preflight") / "qwen2")


def _fake_dist_ckpt(path, **meta):
    """Just enough for is_dist_checkpoint, plus the converter's description."""
    os.makedirs(path, exist_ok=True)
    for name in ("metadata.json", "common.pt"):
        (path / name).write_text("{}")
    if meta:
        (path / META_FILE).write_text(json.dumps({"format": META_FORMAT, **meta}))
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    import pandas as pd

    path = tmp_path_factory.mktemp("prompts") / "train.parquet"
    pd.DataFrame(
        {
            "prompt": [[{"role": "user", "content": "1+1="}]],
            "data_source": ["arith"],
            "ability": ["math"],
            "reward_model": [{"style": "rule", "ground_truth": "2"}],
            "extra_info": [{"index": 0}],
        }
    ).to_parquet(path)
    return path


@pytest.fixture
def make_cfg(tmp_path, prompts):
    def make(*overrides):
        return load_config(
            None,
            [
                f"trainer.output_dir={tmp_path / 'run'}",
                "rollout.engine=hf",
                f"data.train_files=[{prompts}]",
                "data.max_prompt_length=128",  # the tiny model has 256 positions
                "data.max_response_length=64",
                *overrides,
            ],
            world_size=1,
        )

    return make


def _problems(cfg, **kwargs):
    with pytest.raises(ConfigError) as info:
        preflight(cfg, **kwargs)
    return str(info.value).splitlines()


def test_a_usable_config_passes(tmp_path, hf_dir, make_cfg):
    assert preflight(make_cfg(f"model.path={hf_dir}")) is None


@pytest.mark.parametrize("arch, positions", [("qwen2", 256), ("llama3.1", 256), ("llama", 256)])
def test_prompt_plus_response_must_fit_the_models_positions(tmp_path, make_cfg, arch, positions):
    hf = make_tiny_hf_model(arch, tmp_path / arch)
    preflight(make_cfg(f"model.path={hf}", f"data.max_prompt_length={positions - 64}"))
    problems = _problems(make_cfg(f"model.path={hf}", f"data.max_prompt_length={positions - 63}"))
    assert problems == [
        f"data.max_prompt_length + data.max_response_length = {positions - 63} + 64 = {positions + 1} exceeds "
        f"the {positions} positions of the model ({hf}/config.json: max_position_embeddings, rope scaling "
        "included); lower them"
    ]


def test_linear_rope_scaling_stretches_the_context(tmp_path, make_cfg):
    hf = make_tiny_hf_model("llama", tmp_path / "linear", rope_scaling={"rope_type": "linear", "factor": 4.0})
    preflight(make_cfg(f"model.path={hf}", "data.max_prompt_length=900", "data.max_response_length=124"))
    assert (
        "exceeds the 1024 positions"
        in _problems(make_cfg(f"model.path={hf}", "data.max_prompt_length=901", "data.max_response_length=124"))[0]
    )


def test_expert_parallel_size_must_fit_the_model(tmp_path, hf_dir, prompts):
    def cfg(model, ep):
        return load_config(
            None,
            [
                f"trainer.output_dir={tmp_path / 'run'}",
                "rollout.engine=hf",
                f"data.train_files=[{prompts}]",
                f"model.path={model}",
                f"parallel.ep={ep}",
                "data.max_prompt_length=128",
                "data.max_response_length=64",
                "rollout.n=3",
                "train.micro_batch_size=1",
            ],
            world_size=ep,
        )

    moe = make_tiny_hf_model("qwen3-moe", tmp_path / "qwen3-moe")  # 4 experts
    assert _problems(cfg(moe, 3)) == ["parallel.ep=3 must divide the 4 experts of this qwen3_moe model"]
    problems = _problems(cfg(hf_dir, 3))
    assert len(problems) == 1 and "has no experts" in problems[0]


def test_missing_logger_package_is_named(tmp_path, hf_dir, make_cfg, monkeypatch):
    monkeypatch.setitem(preflight_module.LOGGER_PACKAGES, "tensorboard", "no_such_package_sppo")
    problems = _problems(make_cfg(f"model.path={hf_dir}", "trainer.logger=[console,tensorboard]"))
    assert problems == [
        "trainer.logger=tensorboard: the no_such_package_sppo package is not installed "
        "(pip install no_such_package_sppo, or pip install -e '.[logging]'; or drop it from trainer.logger)"
    ]


def test_checkpoint_kinds(tmp_path, hf_dir, make_cfg):
    problems = _problems(make_cfg(f"model.path={hf_dir}", f"model.megatron_ckpt={hf_dir}"))
    assert problems == [
        f"model.megatron_ckpt: {hf_dir} is not a megatron-core dist checkpoint (no metadata.json / .metadata)"
    ]
    other = _fake_dist_ckpt(tmp_path / "other", model_type="qwen2", hidden_size=4096)
    problems = _problems(make_cfg(f"model.path={hf_dir}", f"model.megatron_ckpt={other}"))
    assert len(problems) == 1 and "was written for hidden_size=4096" in problems[0]


def test_hf_directory_without_weights_needs_a_checkpoint(tmp_path, hf_dir, make_cfg):
    config_only = tmp_path / "config_only"
    shutil.copytree(hf_dir, config_only, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    assert "no weights found" in _problems(make_cfg(f"model.path={config_only}"))[0]
    ckpt = _fake_dist_ckpt(tmp_path / "ckpt")
    assert preflight(make_cfg(f"model.path={config_only}", f"model.megatron_ckpt={ckpt}")) is None


def test_engine_and_transformer_engine_are_checked(tmp_path, hf_dir, make_cfg, monkeypatch):
    monkeypatch.setattr("sppo_megatron.rollout.factory.sglang_available", lambda: False)
    monkeypatch.setattr("sppo_megatron.models.specs.te_available", lambda: False)
    cfg = make_cfg(f"model.path={hf_dir}", "rollout.engine=sglang", "model.transformer_impl=transformer_engine")
    problems = _problems(cfg)
    assert problems[0].startswith("rollout.engine=sglang but sglang is not installed")
    assert problems[1].startswith("model.transformer_impl=transformer_engine but Transformer Engine is not importable")
    assert _problems(cfg, training=False) == problems[:1], "sppo-eval checks the engine only"


def _intact_checkpoint(step_dir, step: int) -> None:
    """The files an intact training checkpoint has (a one-tensor torch_dist checkpoint)."""
    import torch
    import torch.distributed.checkpoint as dcp

    dcp.save({"x": torch.zeros(2)}, checkpoint_id=str(step_dir), no_dist=True)
    (step_dir / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (step_dir / "actor_meta.json").write_text(json.dumps({"layout": {"tp": 1, "pp": 1, "dp": 1}}))
    (step_dir / "trainer_state.json").write_text(json.dumps({"step": step, "sampler": {}}))


def test_run_directory_states(tmp_path, hf_dir, make_cfg):
    step = tmp_path / "run" / "checkpoints" / "step_5"
    step.mkdir(parents=True)
    _intact_checkpoint(step, 5)
    (step.parent / "latest").write_text("step_5\n")
    problems = _problems(make_cfg(f"model.path={hf_dir}", "trainer.resume=none"))
    assert problems[0].startswith("trainer.output_dir already holds checkpoints")
    notice = preflight(make_cfg(f"model.path={hf_dir}", "trainer.total_steps=5"))
    assert "already finished step 5 (trainer.total_steps=5): nothing to train" in notice
    assert "trainer.resume=none trainer.overwrite=true" in notice
    assert preflight(make_cfg(f"model.path={hf_dir}", "trainer.total_steps=6")) is None
    (step / "trainer_state.json").write_text("{garbage")  # and nothing older to fall back to
    problems = _problems(make_cfg(f"model.path={hf_dir}", "trainer.total_steps=6"))
    assert problems[0].startswith(f"checkpoint {step}: trainer_state.json is unreadable")
    assert "found no intact checkpoint" in problems[0]
    # a live run holds the directory: its half-written checkpoint is its business, the lock is the answer
    lock = RunLock(str(tmp_path / "run"))
    lock.acquire()
    try:
        with pytest.raises(UserError, match="in use by another run") as refused:
            preflight(make_cfg(f"model.path={hf_dir}", "trainer.total_steps=6"))
        assert "trainer_state.json" not in str(refused.value)
    finally:
        lock.release()


@pytest.mark.slow
@pytest.mark.skipif(sglang_available(), reason="needs a machine without sglang")
def test_sppo_train_reports_before_building_anything(tmp_path, hf_dir, prompts):
    """Under torchrun, every problem at once, exit 2, nothing written: no model or engine was built."""
    out = tmp_path / "run"
    start = time.monotonic()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sppo_megatron.train",
            f"model.path={hf_dir}",
            f"trainer.output_dir={out}",
            f"data.train_files=[{prompts}]",
            "data.max_prompt_length=128",
            "data.max_response_length=64",
            "rollout.engine=sglang",
            "model.megatron_ckpt=" + str(hf_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("sppo-train: error:")]
    assert [e.split(":")[2].strip() for e in errors] == [
        "rollout.engine=sglang but sglang is not installed",
        "model.megatron_ckpt",
    ], errors
    assert "Traceback" not in res.stderr and not out.exists()
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_config_data_and_model_mistakes_are_reported_together(tmp_path, hf_dir, prompts):
    """A wrong value, a prompt file that is not parquet and a model without weights: one attempt,
    exit 2, one line each (the value's group is left out of preflight, the others are checked)."""
    config_only = tmp_path / "config_only"
    shutil.copytree(hf_dir, config_only, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    not_parquet = tmp_path / "val.parquet"
    not_parquet.write_text("prompt,answer\n1+1=,2\n")
    out = tmp_path / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sppo_megatron.train",
            f"model.path={config_only}",
            f"trainer.output_dir={out}",
            f"data.train_files=[{prompts}]",
            f"data.val_files=[{not_parquet}]",
            "data.prompt_key=question",
            "data.max_prompt_length=128",  # the tiny model has 256 positions
            "data.max_response_length=64",
            "rollout.engine=hf",
            "optim.lr=-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line.split("error:", 1)[1].strip() for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 4, errors
    assert errors[0].startswith("optim.lr: -1.0 is below the minimum"), errors
    assert "no weights found" in errors[1], errors
    assert errors[2].startswith(f"{prompts}: missing column(s) 'question'"), errors
    assert errors[3].startswith(f"{not_parquet}: not a readable parquet file"), errors
    assert "Traceback" not in res.stderr and not out.exists()


def test_a_config_mistake_leaves_its_own_group_unchecked(tmp_path, hf_dir, make_cfg):
    """Preflight skips a group the config's problems name (its values are not to be trusted)."""
    with pytest.raises(ConfigError) as info:
        make_cfg(f"model.path={hf_dir}", "data.max_prompt_length=0", "data.prompt_key=question")
    assert info.value.candidate is not None
    lines = preflight_module.with_preflight(info.value).args[0].splitlines()
    assert lines == str(info.value).splitlines(), lines  # no data check: the data group has a problem
    with pytest.raises(ConfigError) as info:
        make_cfg(f"model.path={hf_dir}", "optim.lr=-1", "data.prompt_key=question")
    lines = str(preflight_module.with_preflight(info.value)).splitlines()
    assert lines[0].startswith("optim.lr") and "missing column(s) 'question'" in lines[1], lines
