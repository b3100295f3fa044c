"""A resumed run's config against its checkpoint's: optimizer settings applied for real, keys that
must match refused in one line (or accepted by name), every launch's config kept."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from sppo_megatron.config.loader import all_keys, load_config
from sppo_megatron.config.resume import SAFE_KEYS, changes, check_changes, flatten, kind_of
from sppo_megatron.errors import ConfigError
from sppo_megatron.trainer.run_config import HISTORY_DIR, record_launch, stored_config_path
from tests.tiny_run import QUICK, ROOT, base_overrides, by_step, read_metrics, train


def test_every_table_key_is_a_config_key_and_the_readme_lists_them():
    keys = set(all_keys())
    assert set(SAFE_KEYS) <= keys
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    missing = [k for k in SAFE_KEYS if f"`{k}`" not in readme]
    assert not missing, f"README's resume table lacks {missing}"


def test_changes_are_classified_and_must_match_ones_refused_unless_accepted():
    old = {"optim": {"lr": 2e-4}, "rollout": {"n": 4, "mem_fraction": 0.5}, "trainer": {"seed": 1}}
    new = {"optim": {"lr": 5e-2}, "rollout": {"n": 8, "mem_fraction": 0.7}, "trainer": {"seed": 1, "added": 3}}
    found = changes(old, new)
    assert [(c.key, c.old, c.new, c.kind) for c in found] == [
        ("optim.lr", 2e-4, 5e-2, "applied"),
        ("rollout.n", 4, 8, "must_match"),
        ("rollout.mem_fraction", 0.5, 0.7, "safe"),
    ]
    known = flatten(new)
    with pytest.raises(ConfigError) as e:
        check_changes(found, [], "ckpt/step_2", known)
    assert str(e.value) == (
        "trainer.resume: rollout.n=8 but checkpoint ckpt/step_2 was trained with rollout.n=4; "
        "resume with the same value, or accept the change with trainer.resume_accept=[rollout.n]"
    )
    check_changes(found, ["rollout.n"], "ckpt/step_2", known)
    check_changes(found, ["rollout"], "ckpt/step_2", known)  # a whole group
    with pytest.raises(ConfigError, match=r"trainer.resume_accept: 'rollout.m' is not a config key or group"):
        check_changes(found, ["rollout.m", "rollout.n"], "ckpt/step_2", known)
    assert kind_of("trainer.seed") == "must_match" and kind_of("model.path") == "must_match"


def test_launches_are_numbered_and_an_older_config_yaml_is_filed_first(tmp_path, run_files):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("written: before the history\n")
    cfg = load_config(None, run_files, world_size=1)
    record_launch(cfg, str(out))
    record_launch(cfg, str(out))
    history = sorted(os.listdir(out / HISTORY_DIR))
    assert history == ["0001.yaml", "0002.yaml", "0003.yaml"]
    assert (out / HISTORY_DIR / "0001.yaml").read_text() == "written: before the history\n"
    assert (out / "config.yaml").read_text() == (out / HISTORY_DIR / "0003.yaml").read_text()


def test_the_stored_config_is_the_checkpoints_own_else_its_run_directorys(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    ckpt.mkdir(parents=True)
    assert stored_config_path(str(ckpt)) is None
    (tmp_path / "run" / "config.yaml").write_text("a: 1\n")
    assert stored_config_path(str(ckpt)) == str(tmp_path / "run" / "config.yaml")
    (ckpt / "config.yaml").write_text("a: 2\n")
    assert stored_config_path(str(ckpt)) == str(ckpt / "config.yaml")


NEW_OPTIM = ["optim.lr=1e-2", "optim.lr_decay_style=cosine", "optim.min_lr=1e-3"]


@pytest.mark.slow
def test_changed_optimizer_settings_on_resume_are_applied(tiny_assets, two_step_run, tmp_path):
    """two_step_run trained steps 1-2 at a constant lr 1e-3; resumed with a cosine schedule from
    1e-2 to 1e-3, steps 3-4 follow that schedule exactly as a fresh run with it does, and train
    differently from a resume with the old settings."""
    common = base_overrides(tiny_assets, "") + QUICK + ["trainer.total_steps=4"]
    new, old, fresh = tmp_path / "new", tmp_path / "old", tmp_path / "fresh"
    shutil.copytree(two_step_run, new)
    shutil.copytree(two_step_run, old)
    resumed = train([*common, *NEW_OPTIM, f"trainer.output_dir={new}"])
    train([*common, f"trainer.output_dir={old}"])
    train([*common, *NEW_OPTIM, f"trainer.output_dir={fresh}"])
    a, b, f = by_step(str(new)), by_step(str(old)), by_step(str(fresh))
    for step in (1, 2):
        assert a[step]["train/lr"] == pytest.approx(1e-3)
    for step in (3, 4):
        assert a[step]["train/lr"] == pytest.approx(f[step]["train/lr"], rel=1e-9), step
        assert b[step]["train/lr"] == pytest.approx(1e-3)
        assert a[step]["train/loss"] != pytest.approx(b[step]["train/loss"], rel=1e-3), step
    assert f[3]["train/lr"] < 1e-2 and f[3]["train/lr"] != f[4]["train/lr"]  # a schedule, not a constant
    events = [r for r in read_metrics(str(new)) if r.get("event") == "resumed"]
    assert len(events) == 1 and events[0]["step"] == 2
    assert events[0]["changed"]["optim.lr"] == {"old": 1e-3, "new": 1e-2, "kind": "applied"}
    assert "resumed with optim.lr changed: 0.001 -> 0.01 (applied)" in resumed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("change", ["rollout.n=8", "model.path"])
def test_a_must_match_change_is_refused_in_one_line_then_accepted_by_name(tiny_assets, two_step_run, tmp_path, change):
    run = tmp_path / "run"
    shutil.copytree(two_step_run, run)
    key = change.split("=")[0]
    override = change if "=" in change else f"model.path={tiny_assets['hf']}"
    before = {p: (run / p).read_bytes() for p in ("config.yaml", "metrics.jsonl")}
    history = sorted(os.listdir(run / HISTORY_DIR))
    common = base_overrides(tiny_assets, str(run)) + QUICK + ["trainer.total_steps=3", override]
    refused = train(common, check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = [line for line in refused.stderr.splitlines() if key in line]
    assert len(lines) == 1 and "trainer.resume_accept=[" + key + "]" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert {p: (run / p).read_bytes() for p in before} == before  # nothing written over
    assert sorted(os.listdir(run / HISTORY_DIR)) == history

    # reward.pairwise_prompt_template follows model.path (its default interpolates it)
    accepted = key if "=" in change else f"{key},reward.pairwise_prompt_template"
    train([*common, f"trainer.resume_accept=[{accepted}]"])
    launches = sorted(os.listdir(run / HISTORY_DIR))
    assert len(launches) == len(history) + 1
    first, last = (yaml.safe_load((run / HISTORY_DIR / n).read_text()) for n in (launches[0], launches[-1]))
    section, name = key.split(".")
    assert first[section][name] != last[section][name]
    assert yaml.safe_load((run / "config.yaml").read_text()) == last
    # each checkpoint says what it was trained with
    step2 = yaml.safe_load((run / "checkpoints/step_2/config.yaml").read_text())
    step3 = yaml.safe_load((run / "checkpoints/step_3/config.yaml").read_text())
    assert step2[section][name] == first[section][name] and step3[section][name] == last[section][name]
    events = [json.loads(line) for line in open(run / "metrics.jsonl") if '"event"' in line]
    assert [e["event"] for e in events] == ["resumed"]
    assert events[0]["changed"][key]["kind"] == "must_match"
