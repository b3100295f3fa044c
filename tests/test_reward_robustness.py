"""Hostile responses score 0.0 within the time limit, quietly, and never take the scorer down."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from sppo_megatron.config.schema import RewardConfig
from sppo_megatron.reward import RewardScorer
from sppo_megatron.reward.math import compute_score
from tests.helpers import alive

pytestmark = pytest.mark.timeout(60)

MEGABYTE = "word " * 400_000
HOSTILE = {
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "python power": "\\boxed{10**10**10}",
    "bare tower": "\\boxed{9^9^9^9}",
    "tower inside unknown commands": "\\boxed{\\lfloor 9^{9^{9}} \\rfloor + \\binom{x}{2}}",
    "huge exponent": "\\boxed{2^{99999999}}",
    "huge float literal": "\\boxed{1e999999999}",
    "huge integer literal": "\\boxed{" + "9" * 300 + "}",
    "deep braces": "\\boxed{" + "{" * 20000 + "1" + "}" * 20000 + "}",
    "deep braces within the length cap": "\\boxed{" + "{" * 100 + "1" + "}" * 100 + "}",
    "deep parentheses": "\\boxed{" + "(" * 200 + "1" + ")" * 200 + "}",
    "megabyte without box": MEGABYTE,
    "megabyte box": "\\boxed{" + MEGABYTE + "}",
    "unbalanced": "The answer is \\boxed{\\frac{1}{2",
    "unbalanced megabyte": "\\boxed{" + "{" * 1_000_000,
    "many box commands": "\\boxed{" * 100_000,
    "long box": "\\boxed{" + "x+" * 5000 + "1}",
    "control characters": "\\boxed{\x00\x1b[2J\uffff}",
}
# Gets past the cheap checks and makes SymPy run for minutes: only a killable worker bounds it.
SYMPY_BOMB = "\\boxed{\\binom{9^{99}}{9^{9}}}"


def _cfg(timeout_s=1.0, num_workers=2, custom_fn=None):
    return RewardConfig(custom_fn=custom_fn, timeout_s=timeout_s, num_workers=num_workers)


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("gold", ["1", "x + 1"])
def test_hostile_input_is_cheap_and_zero_in_process(name, gold, capfd):
    start = time.monotonic()
    assert compute_score(HOSTILE[name], gold) == 0.0
    assert time.monotonic() - start < 0.5
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 200


def test_megabyte_response_with_a_final_answer_is_still_scored():
    start = time.monotonic()
    assert compute_score(MEGABYTE + "so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert time.monotonic() - start < 0.5


def test_batch_of_hostile_inputs_with_workers(capfd):
    responses = list(HOSTILE.values()) + [SYMPY_BOMB, "\\boxed{\\frac{\\ln 3}{\\ln 2}}", "\\boxed{0.5}"]
    golds = ["x + 1"] * (len(responses) - 2) + ["\\log_2 3", "\\frac12"]
    with RewardScorer(_cfg(timeout_s=1.0)) as scorer:
        start = time.monotonic()
        scores, stats = scorer.score(["math"] * len(responses), responses, golds)
        elapsed = time.monotonic() - start
    assert scores == [0.0] * (len(responses) - 2) + [1.0, 1.0]
    assert stats.timeouts == 1 and stats.errors == 0
    assert stats.slow_path == 2
    assert elapsed < 1.0 + 5.0  # one time limit, plus starting the workers on a busy machine
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 200


@pytest.mark.slow
def test_timeouts_are_counted_and_workers_replaced():
    # The limit must leave room for the honest sample (0.2 s of SymPy when idle, several times that
    # on a loaded machine) while the bomb runs for minutes; the bound on the elapsed time also covers
    # starting the replacement worker (imports math-verify), which is slow under load.
    pids = []
    timeout_s = 3.0
    with RewardScorer(_cfg(timeout_s=timeout_s, num_workers=1)) as scorer:
        for _ in range(2):
            start = time.monotonic()
            scores, stats = scorer.score(["math"] * 2, [SYMPY_BOMB, "\\boxed{\\log_3 2}"], ["1", "\\log_2 3"])
            assert time.monotonic() - start < timeout_s + 30.0
            assert scores == [0.0, 0.0] and stats.timeouts == 1
            pids.append(scorer.pool._workers[0].proc.pid)
        scores, stats = scorer.score(
            ["math"] * 2, ["\\boxed{\\frac{\\ln 3}{\\ln 2}}", "\\boxed{\\log_3 2}"], ["\\log_2 3", "\\log_2 3"]
        )
        assert scores == [1.0, 0.0] and stats.timeouts == 0
        assert pids[0] != pids[1], "the worker that timed out was replaced"
        assert alive(pids) == [pids[1]]
    assert alive(pids) == []


def test_hanging_and_noisy_custom_function(tmp_path, capfd):
    path = tmp_path / "reward_fn.py"
    path.write_text(
        textwrap.dedent("""
        import os, sys, time

        def score(solution_str, ground_truth):
            if solution_str == "die":
                os._exit(3)
            if solution_str == "hang":
                time.sleep(600)
            if solution_str == "noisy":
                print("x" * 1_000_000)
                print("y" * 1_000_000, file=sys.stderr)
            if solution_str == "raise":
                raise KeyError("boom")
            return float(solution_str.strip() == ground_truth)
    """)
    )
    with RewardScorer(_cfg(timeout_s=0.5, num_workers=2, custom_fn=f"{path}:score")) as scorer:
        procs = scorer.pool._workers
        start = time.monotonic()
        responses = ["hang", "1", "noisy", "hang", "raise", "2", "die", "3"]
        scores, stats = scorer.score(["any"] * 8, responses, ["1", "1", "1", "1", "1", "2", "1", "3"])
        assert time.monotonic() - start < 0.5 + 8.0
        pids = [w.proc.pid for w in procs]
    assert scores == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert stats.timeouts == 2 and stats.errors == 2
    assert stats.first_error.startswith(("KeyError: 'boom'", "reward worker exited unexpectedly"))
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 200
    assert len(pids) == 2 and alive(pids) == []


def test_close_kills_a_busy_worker_and_exit_leaves_no_process():
    code = textwrap.dedent(f"""
        from sppo_megatron.config.schema import RewardConfig
        from sppo_megatron.reward import RewardScorer
        scorer = RewardScorer(RewardConfig(custom_fn=None, timeout_s=0, num_workers=2))
        scorer.score(["math"], ["\\\\boxed{{\\\\log_3 2}}"], ["\\\\log_2 3"])
        scorer.pool.submit(0, ("math", {SYMPY_BOMB[7:-1]!r}, "1"))
        print(*[w.proc.pid for w in scorer.pool._workers])
    """)
    start = time.monotonic()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=repo)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - start < 15
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    time.sleep(0.2)
    assert alive(pids) == []
