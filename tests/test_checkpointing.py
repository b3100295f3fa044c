"""CheckpointManager: what resume finds, what rotation keeps, what overwrite clears."""

from __future__ import annotations

import json
import os

import pytest

from sppo_megatron.errors import UserError
from sppo_megatron.trainer.checkpointing import CheckpointManager, RunStart


def _check_actor(path: str) -> None:
    """The fake actor's part of a checkpoint: actor.bin holding the step."""
    try:
        with open(os.path.join(path, "actor.bin")) as fh:
            int(fh.read())
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint {path}: actor.bin is broken ({e})") from None


def _mgr(tmp_path, keep_last: int) -> CheckpointManager:
    return CheckpointManager(str(tmp_path), keep_last=keep_last, check_actor=_check_actor)


def _save(mgr: CheckpointManager, step: int) -> str:
    def save_actor(path):
        with open(os.path.join(path, "actor.bin"), "w") as fh:
            fh.write(str(step))

    return mgr.save(step, {"sampler": {"position": step}}, save_actor, "seed: 1\n")


def _steps(mgr):
    return [os.path.basename(d) for d in mgr.step_dirs()]


def test_rotation_keeps_the_newest(tmp_path):
    mgr = _mgr(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        _save(mgr, step)
    assert _steps(mgr) == ["step_2", "step_3"]
    assert mgr.latest().endswith("step_3") and mgr.read_state(mgr.latest())["step"] == 3
    assert not [n for n in os.listdir(mgr.root) if n.startswith(".tmp")]


def test_resuming_an_older_checkpoint_supersedes_later_ones(tmp_path):
    mgr = _mgr(tmp_path, keep_last=1)
    for step in (10, 20):
        _save(mgr, step)
    mgr.keep_last = 3
    _save(mgr, 5)  # a run resumed from an earlier checkpoint: its future replaces the old one
    assert _steps(mgr) == ["step_5"] and mgr.latest().endswith("step_5")


def test_dangling_latest_falls_back_to_newest_complete(tmp_path):
    mgr = _mgr(tmp_path, keep_last=3)
    for step in (1, 2):
        _save(mgr, step)
    os.rename(os.path.join(mgr.root, "step_2"), os.path.join(tmp_path, "moved"))
    assert mgr.latest().endswith("step_1")
    os.makedirs(os.path.join(mgr.root, "step_7"))  # no trainer_state.json: not complete
    assert mgr.latest().endswith("step_1")


def test_resume_none_refuses_then_overwrite_clears(tmp_path):
    mgr = _mgr(tmp_path, keep_last=2)
    _save(mgr, 4)
    with pytest.raises(UserError, match="trainer.overwrite"):
        mgr.decide_start("none", overwrite=False)
    assert mgr.decide_start("none", overwrite=True) == RunStart(resume_from=None, clear=True)
    assert mgr.decide_start("auto", overwrite=False).resume_from.endswith("step_4")
    mgr.clear()
    assert mgr.step_dirs() == [] and mgr.latest() is None
    assert mgr.decide_start("auto", overwrite=False) == RunStart()
    assert mgr.decide_start("none", overwrite=False) == RunStart()  # nothing to clear: a plain fresh start


def test_resume_path_must_be_complete(tmp_path):
    mgr = _mgr(tmp_path, keep_last=2)
    path = _save(mgr, 3)
    assert mgr.decide_start(path, overwrite=False) == RunStart(resume_from=path)
    os.remove(os.path.join(path, "trainer_state.json"))
    with pytest.raises(UserError, match="not a complete checkpoint"):
        mgr.decide_start(path, overwrite=False)


def test_state_file_is_json_with_the_step(tmp_path):
    mgr = _mgr(tmp_path, keep_last=1)
    path = _save(mgr, 9)
    with open(os.path.join(path, "trainer_state.json")) as fh:
        assert json.load(fh) == {"step": 9, "sampler": {"position": 9}}


@pytest.mark.parametrize("break_it", ["garbage_state", "state_without_step", "broken_actor"])
def test_auto_falls_back_to_the_newest_intact_checkpoint(tmp_path, break_it):
    mgr = _mgr(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        _save(mgr, step)
    newest = os.path.join(mgr.root, "step_3")
    name, text = {
        "garbage_state": ("trainer_state.json", "{not json"),
        "state_without_step": ("trainer_state.json", '{"sampler": {}}'),
        "broken_actor": ("actor.bin", ""),
    }[break_it]
    with open(os.path.join(newest, name), "w") as fh:
        fh.write(text)
    start = mgr.decide_start("auto", overwrite=False)
    assert start.resume_from == os.path.join(mgr.root, "step_2")
    assert len(start.skipped) == 1 and newest in start.skipped[0] and name in start.skipped[0]
    # an explicit path gets no fallback: one line naming the file
    with pytest.raises(UserError, match=f"step_3: {name}"):
        mgr.decide_start(newest, overwrite=False)


def test_auto_refuses_when_no_checkpoint_is_intact(tmp_path):
    mgr = _mgr(tmp_path, keep_last=2)
    for step in (1, 2):
        path = _save(mgr, step)
        with open(os.path.join(path, "trainer_state.json"), "w") as fh:
            fh.write("garbage")
    with pytest.raises(UserError) as err:
        mgr.decide_start("auto", overwrite=False)
    message = str(err.value)
    assert "step_2: trainer_state.json is unreadable" in message and "no intact checkpoint" in message
    assert "\n" not in message


def test_a_pinned_checkpoint_outlives_its_rotation(tmp_path):
    mgr = _mgr(tmp_path, keep_last=1)
    _save(mgr, 1)
    with mgr.pinned_latest() as pinned:
        assert os.path.basename(pinned) == "step_1" and os.path.dirname(os.path.dirname(pinned)) == str(tmp_path)
        _save(mgr, 2)  # the run goes on: rotation removes step_1
        assert _steps(mgr) == ["step_2"]
        assert open(os.path.join(pinned, "actor.bin")).read() == "1"
        assert mgr.check(pinned)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]  # the pin is gone


def test_a_checkpoint_rotated_away_while_being_pinned_gives_way_to_the_newer_one(tmp_path, monkeypatch):
    mgr = _mgr(tmp_path, keep_last=1)
    _save(mgr, 1)
    link = os.link
    rotated = []

    def link_then_rotate(src, dst):
        if not rotated:  # the run saves step 2 (removing step_1) right after the first file is linked
            rotated.append(True)
            link(src, dst)
            _save(mgr, 2)
            return
        link(src, dst)

    monkeypatch.setattr(os, "link", link_then_rotate)
    with mgr.pinned_latest() as pinned:
        assert os.path.basename(pinned) == "step_2" and mgr.check(pinned)["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]


def test_pinning_a_broken_checkpoint_that_is_not_rotated_names_it(tmp_path):
    mgr = _mgr(tmp_path, keep_last=1)
    _save(mgr, 1)
    os.remove(os.path.join(mgr.root, "step_1", "actor.bin"))
    with pytest.raises(UserError, match="actor.bin is broken"):
        with mgr.pinned_latest():
            pass
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]
