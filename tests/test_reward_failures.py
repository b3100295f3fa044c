"""A reward function that raises, returns a non-number, kills its worker or hangs is loud: its
message reaches the console, too many failing steps stop the run (exit 1, one line), and a
preemption signal cuts a scorer without a time limit short."""

from __future__ import annotations

import threading
import time

import pytest

from sppo_megatron.config.schema import RewardConfig
from sppo_megatron.errors import RunStopped
from sppo_megatron.reward import RewardScorer, ScoreStats
from sppo_megatron.trainer.guards import RewardGuard
from tests.tiny_run import base_overrides, read_metrics, train

pytestmark = pytest.mark.timeout(900)  # includes building the tiny assets when first

REWARDS = """
import os, time
def boom(solution_str, ground_truth):
    raise ValueError("boom\\nsecond line")
def not_a_number(solution_str, ground_truth):
    return "many"
def exits(solution_str, ground_truth):
    os._exit(3)
def hangs(solution_str, ground_truth):
    time.sleep(3600)
def graded(solution_str, ground_truth):
    return 0.5 + 0.25 * (ground_truth in solution_str)
"""


@pytest.fixture
def rewards(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    return str(path)


def test_each_kind_of_failure_is_counted_with_its_message(rewards):
    expected = {
        "boom": "ValueError: boom",
        "not_a_number": "not_a_number returned 'many' (str), not a number",
        "exits": "reward worker exited unexpectedly (exit code 3)",
    }
    for name, message in expected.items():
        with RewardScorer(RewardConfig(custom_fn=f"{rewards}:{name}", timeout_s=30, num_workers=1)) as scorer:
            scores, stats = scorer.score(["x"], ["a"], ["1"])
        assert scores == [0.0] and stats.errors == 1 and stats.timeouts == 0, name
        assert message in stats.first_error, name


def test_a_scorer_without_time_limit_is_cut_short_by_preemption(rewards):
    signalled = threading.Event()
    threading.Timer(1.0, signalled.set).start()
    start = time.monotonic()
    with RewardScorer(
        RewardConfig(custom_fn=f"{rewards}:hangs", timeout_s=0, num_workers=2), interrupted=signalled.is_set
    ) as scorer:
        scores, stats = scorer.score(["x"] * 3, ["a"] * 3, ["1"] * 3)
    assert time.monotonic() - start < 30
    assert scores == [0.0] * 3 and stats.timeouts == 3
    assert stats.first_error == "scoring cut short by a preemption signal"


def test_guard_warns_then_stops_and_a_good_step_resets_it(capsys):
    guard = RewardGuard(RewardConfig(max_error_frac=0.25, max_bad_steps=2))
    bad = ScoreStats(errors=1, timeouts=1, first_error="KeyError: 'x'")
    good = ScoreStats(errors=1)  # 1 of 4 is within 25 %
    guard.check(1, bad, 4)
    assert "WARNING: step 1: 2 of 4 reward samples failed" in capsys.readouterr().err
    guard.check(2, good, 4)
    guard.check(3, bad, 4)
    with pytest.raises(RunStopped, match=r"stopping at step 4: 2 steps in a row .* first error: KeyError: 'x'"):
        guard.check(4, bad, 4)


@pytest.mark.slow
def test_a_raising_reward_stops_the_run_with_exit_1(tiny_assets, tmp_path, rewards):
    res = train(
        base_overrides(tiny_assets, str(tmp_path / "run"))
        + [
            "trainer.total_steps=5",
            "trainer.val_before_train=false",
            "trainer.test_freq=0",
            "reward.max_bad_steps=2",
            f"reward.custom_fn={rewards}:boom",
        ],
        check=False,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    warnings = [line for line in res.stderr.splitlines() if "WARNING" in line]
    errors = [line for line in res.stderr.splitlines() if line.startswith("sppo-train: error:")]
    assert len(warnings) == 1 and "step 1: 16 of 16 reward samples failed" in warnings[0]
    assert len(errors) == 1 and "stopping at step 2" in errors[0] and "ValueError: boom second line" in errors[0]
    assert [row["reward/errors"] for row in read_metrics(str(tmp_path / "run"))] == [16.0]


def _validate_only(tiny_assets, tmp_path, rewards, name, *extra):
    """Step-0 validation alone (trainer.total_steps=0) scored by `rewards`' function `name`."""
    return train(
        base_overrides(tiny_assets, str(tmp_path / "run"))
        + ["trainer.total_steps=0", f"reward.custom_fn={rewards}:{name}", *extra],
        check=False,
    )


@pytest.mark.slow
def test_validation_where_every_reward_timed_out_warns(tiny_assets, tmp_path, rewards):
    res = _validate_only(tiny_assets, tmp_path, rewards, "hangs", "reward.timeout_s=0.2", "reward.num_workers=4")
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, res.stderr[-3000:]
    assert "WARNING: val: 64 of 64 reward samples failed (0 errors, 64 timeouts" in warnings[0]
    assert "count as 0" in warnings[0]
    [row] = read_metrics(str(tmp_path / "run"))
    assert row["val/accuracy"] == 0.0 and row["val/reward_timeouts"] == 64


@pytest.mark.slow
def test_validation_of_a_graded_reward_is_a_score_not_an_accuracy(tiny_assets, tmp_path, rewards):
    res = _validate_only(tiny_assets, tmp_path, rewards, "graded")
    assert res.returncode == 0, res.stderr[-3000:]
    [row] = read_metrics(str(tmp_path / "run"))
    assert not any(key.startswith("val/accuracy") or key.startswith("val/pass_at") for key in row)
    assert 0.5 <= row["val/score"] <= 0.75 and "val/score/arith" in row
    assert "val_score" in res.stderr and "val_acc" not in res.stderr
