"""Config schema, loading, validation messages and the generated reference files."""

from __future__ import annotations

import dataclasses
import os

import pytest
from omegaconf import OmegaConf

from sppo_megatron.config import load_config, save_config
from sppo_megatron.config.loader import config_yaml
from sppo_megatron.config.reference import DEFAULTS_PATH, DOCS_PATH, defaults_file_text, reference_markdown
from sppo_megatron.config.schema import Config, ParallelConfig
from sppo_megatron.errors import ConfigError


def problems(overrides, world_size=1, config_file=None):
    with pytest.raises(ConfigError) as info:
        load_config(config_file, overrides, world_size=world_size)
    return str(info.value).splitlines()


def test_valid_config_loads_typed_and_frozen(run_files):
    cfg = load_config(None, run_files + ["parallel.tp=2", "rollout.n=8"], world_size=4)
    assert isinstance(cfg, Config) and isinstance(cfg.parallel, ParallelConfig)
    assert cfg.parallel.tp == 2 and cfg.rollout.n == 8 and cfg.algorithm.preference == "pairwise"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.parallel.tp = 4


def test_unknown_key_names_key_and_closest_valid_one(run_files):
    lines = problems(run_files + ["trainer.total_step=3"])
    assert lines == ["trainer.total_step: unknown config key; did you mean 'trainer.total_steps'?"]
    assert "trainer.bogus_key" in problems(["trainer.bogus_key=1"])[0]


def test_unknown_key_in_file_names_the_file(tmp_path, run_files):
    f = tmp_path / "run.yaml"
    f.write_text("rollout:\n  temprature: 0.7\n")
    (line,) = problems(run_files, config_file=str(f))
    assert "rollout.temprature" in line and str(f) in line and "rollout.temperature" in line


def test_wrong_type_and_range_name_key_value_and_allowed(run_files):
    assert problems(run_files + ["parallel.tp=abc"]) == ["parallel.tp: invalid value 'abc'; expected int"]
    assert problems(run_files + ["rollout.top_p=1.5"]) == ["rollout.top_p: 1.5 is above the maximum 1.0"]
    (line,) = problems(run_files + ["algorithm.loss=dpo"])
    assert line.startswith("algorithm.loss: invalid value 'dpo'") and "soft, pair, hard" in line


def test_every_problem_gets_its_own_line(run_files):
    lines = problems(run_files + ["rollout.top_p=2", "optim.lr=-1", "train.epochs_per_rollout=0"])
    assert len(lines) == 3


def test_cross_field_rules(run_files, tmp_path):
    assert "does not divide the world size 2" in problems(run_files + ["parallel.tp=3"], world_size=2)[0]
    (line,) = problems(run_files + ["parallel.ep=3"], world_size=4)
    (line,) = problems(run_files + ["parallel.ep=2", "parallel.etp=2", "parallel.pp=2"], world_size=4)
    assert line.startswith("parallel.ep=2 x parallel.etp=2 = 4 does not divide the 2 ranks of a pipeline stage"), line
    load_config(None, run_files + ["parallel.ep=2", "parallel.tp=2"], world_size=4)
    assert "rollout.n=1" in problems(run_files + ["rollout.n=1"])[0]
    load_config(None, run_files + ["rollout.n=1", "algorithm.preference=batch_softmean"], world_size=1)
    (line,) = problems(run_files + ["data.train_batch_size=6", "train.mini_batch_size=4"])
    assert "data.train_batch_size=6" in line
    (line,) = problems(run_files + ["train.mini_batch_size=1", "rollout.n=3"], world_size=2)
    assert "data-parallel" in line
    (line,) = problems(run_files + ["train.mini_batch_size=2", "rollout.n=2", "train.micro_batch_size=3"])
    assert "train.micro_batch_size=3" in line
    (line,) = problems(run_files + [f"data.val_files=[{tmp_path / 'nope.parquet'}]"])
    assert "data.val_files" in line and "nope.parquet" in line
    assert any("model.path" in line for line in problems(["trainer.total_steps=1"]))
    (line,) = problems(run_files + ["rollout.temperature=0"])
    assert "rollout.temperature=0" in line and "sampling" in line
    (line,) = problems(run_files + ["rollout.top_p=0"])
    assert "rollout.top_p=0" in line
    (line,) = problems(run_files + ["optim.lr=1e-6", "optim.min_lr=1e-5"])
    assert "optim.min_lr" in line
    (line,) = problems(run_files + ["model.dtype=fp16"])
    assert "model.dtype=fp16" in line and "bf16" in line


def test_cross_field_problems_of_every_group_are_reported_together(run_files):
    lines = problems(
        run_files
        + [
            "parallel.tp=3",
            "model.dtype=fp16",
            "rollout.temperature=0",
            "optim.min_lr=1",
            "algorithm.preference=batch_softmean",
            "algorithm.loss=pair",
        ],
        world_size=2,
    )
    assert [line.split(":")[0].split("=")[0] for line in lines] == [
        "model.dtype",
        "parallel.tp",
        "rollout.temperature",
        "algorithm.loss",
        "optim.min_lr",
    ]


def test_model_dir_without_config_json(tmp_path, run_files):
    empty = tmp_path / "empty"
    empty.mkdir()
    (line,) = problems(run_files + [f"model.path={empty}"])
    assert "config.json" in line
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    (line,) = problems(run_files + [f"model.path={afile}"])
    assert "is a file" in line


def test_saved_config_round_trips(run_files, tmp_path):
    cfg = load_config(None, run_files + ["optim.lr=3e-4"], world_size=1)
    path = tmp_path / "out" / "config.yaml"
    save_config(cfg, str(path))
    again = load_config(str(path), [], world_size=1)
    assert again == cfg
    assert path.read_text() == config_yaml(again)  # the same config writes the same config.yaml


def test_config_yaml_is_the_resolved_omegaconf_yaml(run_files, tmp_path):
    """config.yaml's content is a contract: the resolved YAML of the schema merged with the layers."""
    f = tmp_path / "run.yaml"
    f.write_text("optim:\n  lr: 1\ntrainer:\n  experiment_name: ${trainer.project_name}-x\n")
    overrides = run_files + ["rollout.n=8", "trainer.logger=[console,tensorboard]", "data.val_batch_size=4"]
    cfg = load_config(str(f), overrides, world_size=1)
    merged = OmegaConf.structured(Config)
    OmegaConf.set_readonly(merged, False)
    merged = OmegaConf.merge(merged, OmegaConf.load(f), OmegaConf.from_dotlist(overrides))
    assert config_yaml(cfg) == OmegaConf.to_yaml(merged, resolve=True)
    assert cfg.trainer.experiment_name == "sppo-x" and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_generated_reference_files_match_schema():
    hint = "run `python -m sppo_megatron.config.reference` after changing the schema"
    assert open(DEFAULTS_PATH).read() == defaults_file_text(), hint
    assert open(DOCS_PATH).read() == reference_markdown(), hint


@pytest.mark.parametrize(
    "recipe,world_size",
    [("qwen2.5-7b-math", 4), ("qwen2.5-0.5b-single-gpu", 1), ("qwen3-30b-a3b-math", 8)],
)
def test_gpu_recipes_are_valid_configs(recipe, world_size):
    path = os.path.join(os.path.dirname(__file__), "..", "examples", recipe, "config.yaml")
    cfg = load_config(path, [], world_size=world_size, check_paths=False)
    assert cfg.rollout.engine == "sglang"
