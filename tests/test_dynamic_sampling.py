"""Dynamic sampling (algorithm.filter_no_signal, rollout.max_extra_rounds, data.oversample_factor):
the refill loop on a scripted engine and scorer, then `sppo-train` end to end: resume stays exact
and TP=2 ranks take the single process's decisions."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sppo_megatron.algorithm import prompts_with_signal
from sppo_megatron.config import load_config
from sppo_megatron.config.rules import filters_no_signal
from sppo_megatron.config.schema import AlgorithmConfig, Config, DataConfig, RewardConfig, RolloutConfig
from sppo_megatron.data import PromptItem, PromptSampler
from sppo_megatron.reward import Scorer, ScoreStats
from sppo_megatron.rollout import RolloutSample
from sppo_megatron.trainer.generation import collect_rollout
from sppo_megatron.trainer.rollouts import ColocatedRollouts
from sppo_megatron.trainer.samples import train_sampling
from tests.test_config import problems
from tests.tiny_run import base_overrides, by_step, latest, train


def test_prompts_with_signal_scalar_and_matrix():
    cfg = AlgorithmConfig()
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5])
    assert prompts_with_signal(rewards, 2, cfg).tolist() == [False, True, False, False]
    # a matrix oracle: prompt 0's samples each win half (win rates tie), prompt 1's do not
    rows = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.9], [0.1, 0.5]])
    assert prompts_with_signal(rows, 2, AlgorithmConfig(preference="matrix")).tolist() == [False, True]


def test_filter_no_signal_auto_is_on_for_rule_rewards_only():
    assert filters_no_signal(Config())
    assert not filters_no_signal(Config(reward=RewardConfig(source="reward_model")))
    assert not filters_no_signal(Config(algorithm=AlgorithmConfig(preference="batch_softmean")))
    assert filters_no_signal(
        Config(reward=RewardConfig(source="reward_model"), algorithm=AlgorithmConfig(filter_no_signal=True))
    )
    assert not filters_no_signal(Config(algorithm=AlgorithmConfig(filter_no_signal=False)))


def test_config_errors_name_the_key(run_files):
    assert problems(run_files + ["algorithm.filter_no_signal=maybe"]) == [
        "algorithm.filter_no_signal: invalid value 'maybe'; allowed: auto, true, false"
    ]
    assert problems(run_files + ["rollout.max_extra_rounds=-1"]) == [
        "rollout.max_extra_rounds: -1 is below the minimum 0"
    ]
    assert problems(run_files + ["data.oversample_factor=0.5"]) == [
        "data.oversample_factor: 0.5 is below the minimum 1.0"
    ]
    (line,) = problems(run_files + ["data.oversample_factor=1.5", "algorithm.filter_no_signal=false"])
    assert line.startswith(
        "data.oversample_factor=1.5: oversampling refills prompts dropped by algorithm.filter_no_signal"
    )
    (line,) = problems(run_files + ["algorithm.preference=batch_softmean", "algorithm.filter_no_signal=true"])
    assert line.startswith("algorithm.filter_no_signal=true: batch_softmean compares each sample with the whole batch")
    cfg = load_config(None, run_files + ["algorithm.filter_no_signal=true", "data.oversample_factor=2"], world_size=1)
    assert cfg.algorithm.filter_no_signal is True and cfg.data.oversample_factor == 2.0


def test_sampler_draws_of_any_size_resume_exactly():
    sizes = [4, 3, 1, 4, 2, 4, 4, 1]
    reference = PromptSampler(10, 4, seed=2)
    expected = [reference.next_batch(size) for size in sizes]
    assert all(len(b) == s for b, s in zip(expected, sizes))
    interrupted = PromptSampler(10, 4, seed=2)
    for size in sizes[:3]:
        interrupted.next_batch(size)
    restored = PromptSampler(10, 4, seed=2)
    restored.load_state_dict(interrupted.state_dict())
    assert [restored.next_batch(size) for size in sizes[3:]] == expected[3:]
    with pytest.raises(ValueError, match="draws are 1..4"):
        restored.next_batch(5)


# ------------------------------------------------------------- the refill loop, scripted


class ScriptedEngine:
    """Sample j of every prompt is the token j; records the seeds it was called with."""

    weights_valid = True

    def __init__(self) -> None:
        self.seeds = []

    def wake(self) -> None:
        pass

    def sleep(self) -> None:
        pass

    def generate(self, prompt_ids, sampling, n):
        self.seeds.append(sampling.seed)
        return [RolloutSample(p, j, [j], "stop") for p in range(len(prompt_ids)) for j in range(n)]


class ScriptedScorer(Scorer):
    """ground_truth "tie": every sample scores 1; otherwise only sample 0 does."""

    def score_samples(self, prompts, texts, n):
        scores = [1.0 if p.ground_truth == "tie" or text == "0" else 0.0 for text, p in zip(texts, prompts)]
        return scores, ScoreStats()

    def close(self) -> None:
        pass


def _run(ties, batch_size=4, factor=1.0):
    """12 prompts in order (no shuffle); prompt i ties when i is in `ties`."""
    items = [PromptItem([1, 2, i + 3], f"p{i}", "arith", "tie" if i in ties else "mixed", index=i) for i in range(12)]
    syncs = []
    return SimpleNamespace(
        train_data=items,
        sampler=PromptSampler(12, int(batch_size * factor), seed=0, shuffle=False),
        engine=ScriptedEngine(),
        scorer=ScriptedScorer(),
        tokenizer=SimpleNamespace(batch_decode=lambda ids, skip_special_tokens: [" ".join(map(str, i)) for i in ids]),
        actor=SimpleNamespace(export_hf_weights=lambda: iter(()), offload=lambda: None, onload=lambda: None),
        weight_sync=SimpleNamespace(sync=lambda weights: syncs.append(1) or {"timing/sync_s": 0.5}),
        syncs=syncs,
    )


def collect(run, cfg, step):
    """collect_rollout through the trainer's own ColocatedRollouts, on the scripted parts; the
    stats as the step's metrics."""
    rollouts = ColocatedRollouts(
        cfg, run.engine, run.actor, run.weight_sync, run.sampler, run.train_data, run.tokenizer
    )
    rollout, rewards, stats = collect_rollout(rollouts, run.scorer, cfg, step)
    return rollout, rewards, stats.metrics()


def _cfg(rounds=3, filtering="auto", factor=1.0):
    return Config(
        data=DataConfig(train_batch_size=4, oversample_factor=factor),
        rollout=RolloutConfig(n=2, max_extra_rounds=rounds),
        algorithm=AlgorithmConfig(filter_no_signal=filtering),
    )


def _kept_rows(rollout):
    return [item.index for item in rollout.items]


def test_refill_keeps_a_full_batch_of_prompts_with_signal(capsys):
    run, cfg = _run(ties={0, 2, 4, 5}), _cfg()
    rollout, rewards, metrics = collect(run, cfg, step=7)
    # round 1 draws 0-3 (keeps 1, 3), round 2 draws 4-5 (both tie), round 3 draws 6-7 (keeps both)
    assert _kept_rows(rollout) == [1, 3, 6, 7]
    assert prompts_with_signal(rewards, 2, cfg.algorithm).all() and len(rewards) == 8
    assert [s.prompt_index for s in rollout.samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert metrics["sppo/kept_prompts"] == 4 and metrics["rollout/extra_rounds"] == 2
    assert metrics["rollout/drawn_prompts"] == 8 and run.sampler.position == 8
    assert metrics["sppo/no_signal_frac"] == 0.5
    assert metrics["reward/mean"] == pytest.approx(12 / 16)  # over every drawn sample, not the kept ones
    # each round has its own seed; the first is the step's seed, as without dynamic sampling
    assert run.engine.seeds[0] == train_sampling(cfg, 7).seed and len(set(run.engine.seeds)) == 3
    assert len(run.syncs) == 1, "an engine that keeps its weights is synced once a step"
    assert capsys.readouterr().out == ""


def test_surplus_of_the_last_round_is_dropped_and_oversampling_draws_more():
    run = _run(ties={0}, factor=2.0)
    rollout, _, metrics = collect(run, _cfg(factor=2.0), step=1)
    assert _kept_rows(rollout) == [1, 2, 3, 4]  # one round of 8 prompts: 7 with signal, the first 4 kept
    assert metrics["rollout/extra_rounds"] == 0 and run.sampler.position == 8


def test_bound_hit_trains_on_what_it_has_and_says_why(capsys):
    run = _run(ties={0, 2, 4, 5, 6, 7})
    rollout, _, metrics = collect(run, _cfg(rounds=1), step=3)
    assert _kept_rows(rollout) == [1, 3]
    assert metrics["sppo/kept_prompts"] == 2 and run.sampler.position == 6
    (line,) = capsys.readouterr().out.splitlines()
    assert line == (
        "sppo-train: step 3: 2 of data.train_batch_size=4 prompts have a reward signal after 1 extra "
        "generation rounds (rollout.max_extra_rounds=1); training on those 2"
    )
    collect(_run(ties={0, 2}), _cfg(rounds=0), step=4)  # filtering alone: short batches by choice
    assert capsys.readouterr().out == ""
    run = _run(ties=set(range(12)))
    rollout, rewards, metrics = collect(run, _cfg(rounds=2), step=1)
    assert rollout.items == [] and len(rewards) == 0 and metrics["sppo/no_signal_frac"] == 1.0


def test_filter_off_trains_on_the_first_draw_as_before(capsys):
    run = _run(ties={0, 2})
    rollout, _, metrics = collect(run, _cfg(filtering=False), step=1)
    assert _kept_rows(rollout) == [0, 1, 2, 3] and metrics["rollout/extra_rounds"] == 0
    assert "sppo/no_signal_frac" not in metrics  # compute_targets reports it over the trained batch
    assert capsys.readouterr().out == ""


def test_an_engine_that_drops_its_weights_is_resynced_each_extra_round():
    run = _run(ties={0, 2, 4, 5})
    run.engine.weights_valid = False
    _, _, metrics = collect(run, _cfg(), step=1)
    assert len(run.syncs) == 3 and metrics["timing/sync_s"] == 1.5


# ------------------------------------------------------------- sppo-train end to end

ON = [
    "algorithm.filter_no_signal=true",
    "rollout.max_extra_rounds=3",
    "trainer.test_freq=0",
    "trainer.val_before_train=false",
]


@pytest.mark.slow
def test_resume_and_tp2_take_the_uninterrupted_single_process_decisions(tiny_assets, tmp_path):
    common = base_overrides(tiny_assets, "") + ON + ["trainer.save_freq=2"]
    full, split, tp2 = tmp_path / "full", tmp_path / "split", tmp_path / "tp2"
    train([*common, f"trainer.output_dir={full}", "trainer.total_steps=4"])
    train([*common, f"trainer.output_dir={split}", "trainer.total_steps=2"])
    resumed = train([*common, f"trainer.output_dir={split}", "trainer.total_steps=4"])
    assert "resumed from" in resumed.stdout
    train([*common, f"trainer.output_dir={tp2}", "trainer.total_steps=2", "parallel.tp=2"], nproc=2)
    a, b, c = by_step(str(full)), by_step(str(split)), by_step(str(tp2))
    assert sum(a[s]["rollout/drawn_prompts"] for s in a) > 16, "no step refilled: the comparison is vacuous"
    state = json.loads((full / "checkpoints" / latest(str(full)) / "trainer_state.json").read_text())
    assert state["sampler"]["position"] == sum(a[s]["rollout/drawn_prompts"] for s in a)  # every drawn prompt counts
    keys = ("rollout/drawn_prompts", "rollout/extra_rounds", "sppo/kept_prompts", "sppo/no_signal_frac", "reward/mean")
    for step in (3, 4):
        assert {k: b[step][k] for k in keys} == {k: a[step][k] for k in keys}
        for key in ("train/loss", "train/grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-9), (step, key)
    for step in (1, 2):
        assert {k: c[step][k] for k in keys} == {k: a[step][k] for k in keys}
        assert c[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-3, abs=1e-7)


@pytest.mark.slow
def test_a_step_without_any_signal_skips_the_update_and_says_so(tiny_assets, tmp_path):
    reward = tmp_path / "constant.py"
    reward.write_text("def score(solution_str, ground_truth):\n    return 1.0\n")
    out = tmp_path / "run"
    res = train(
        base_overrides(tiny_assets, str(out))
        + ON
        + ["trainer.total_steps=1", "rollout.max_extra_rounds=1", f"reward.custom_fn={reward}:score"]
    )
    assert (
        "sppo-train: step 1: 0 of data.train_batch_size=4 prompts have a reward signal after 1 extra generation "
        "rounds (rollout.max_extra_rounds=1); training on those 0"
    ) in res.stdout
    row = by_step(str(out))[1]
    assert row["sppo/kept_prompts"] == 0 and row["rollout/drawn_prompts"] == 8 and row["sppo/no_signal_frac"] == 1.0
    assert row["train/num_optimizer_steps"] == 0 and "train/loss" not in row
