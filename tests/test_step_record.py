"""A step's metrics.jsonl record comes from typed phase records: each key from one owner, and
perf/tokens_per_s counts rollout and training time only (no validation phase, no checkpoint)."""

import pytest

from sppo_megatron.reward import ScoreStats
from sppo_megatron.trainer.generation import RolloutStats, SampleSummary
from sppo_megatron.trainer.loop import StepRecord, Validation
from sppo_megatron.trainer.rollouts import RoundStats


def _rollout(rounds, no_signal_frac=0.25):
    return RolloutStats(
        rounds=rounds,
        score=ScoreStats(errors=1, seconds=0.5),
        summary=SampleSummary(0.5, 0.1, 3.0, 6.0, 0.0),
        extra_rounds=len(rounds) - 1,
        drawn_prompts=8,
        kept_prompts=4,
        no_signal_frac=no_signal_frac,
    )


def test_tokens_per_s_leaves_out_every_validation_phase_and_the_checkpoint():
    record = StepRecord(
        _rollout([RoundStats(gen_s=2.0, sync={"timing/sync_s": 1.0, "sync/bytes": 10.0})]),
        algorithm={"sppo/no_signal_frac": 0.5, "sppo/win_rate_mean": 0.5},
        update={"train/loss": 0.1, "train/skipped": 0.0, "train/tokens": 600.0},
        old_logp_s=1.0,
        update_s=2.0,
        bad_steps=0,
        validation=Validation({"val/accuracy": 0.75}, sync_s=1.5, seconds=4.0),
        save_s=1.0,
        step_s=11.0,
    )
    metrics = record.metrics()
    assert metrics["timing/val_sync_s"] == 1.5 and metrics["timing/val_s"] == 2.5  # the phase less its sync
    assert metrics["perf/tokens_per_s"] == pytest.approx(600.0 / (11.0 - 4.0 - 1.0))
    # the rollout's no_signal_frac (of every drawn prompt) wins over the algorithm's (of the kept ones)
    assert metrics["sppo/no_signal_frac"] == 0.25 and metrics["sppo/win_rate_mean"] == 0.5
    assert metrics["reward/errors"] == 1.0 and metrics["timing/reward_s"] == 0.5
    assert metrics["timing/sync_s"] == 1.0 and metrics["sync/bytes"] == 10.0 and metrics["timing/gen_s"] == 2.0


def test_refill_rounds_add_their_generation_and_sync_time():
    rounds = [
        RoundStats(gen_s=2.0, sync={"timing/sync_s": 1.0, "sync/bytes": 10.0}),
        RoundStats(gen_s=3.0),  # an engine that kept its weights: no sync
        RoundStats(gen_s=4.0, sync={"timing/sync_s": 0.5, "sync/bytes": 10.0}),
    ]
    metrics = StepRecord(_rollout(rounds)).metrics()
    assert metrics["timing/gen_s"] == 9.0 and metrics["timing/sync_s"] == 1.5
    assert metrics["rollout/extra_rounds"] == 2.0 and metrics["sppo/kept_prompts"] == 4.0
    # a step that kept no prompt trains nothing
    assert metrics["train/tokens"] == 0.0 and metrics["perf/tokens_per_s"] == 0.0
    assert "train/loss" not in metrics and "timing/update_s" not in metrics


def test_policy_entropy_is_the_mean_over_response_tokens_only():
    import torch

    from sppo_megatron.actor.batch import LogProbs

    mask = torch.tensor([[True, True, False], [True, False, False]])
    entropy = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]])
    logp = LogProbs(torch.zeros(2, 3), mask, entropy)
    assert logp.mean_entropy() == pytest.approx(7.0 / 3)
    assert LogProbs(torch.zeros(2, 3), mask).mean_entropy() is None
    record = StepRecord(_rollout([RoundStats(gen_s=1.0, sync={})]), entropy=logp.mean_entropy(), step_s=1.0)
    assert record.metrics()["policy/entropy"] == pytest.approx(7.0 / 3)
    assert "policy/entropy" not in StepRecord(_rollout([RoundStats(gen_s=1.0, sync={})]), step_s=1.0).metrics()
