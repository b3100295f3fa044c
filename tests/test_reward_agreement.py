"""Differential test: the math fast path against math-verify on a seeded corpus.

A fast-path 1 where math-verify says 0 is a reward a policy could learn to collect with wrong
answers, so there must be none; fast-path 0 where math-verify says 1 (a right answer missed)
is reported. Undecided answers are math-verify's verdict by construction.
"""

import pytest

from sppo_megatron.reward.math import fast_score, final_answer
from sppo_megatron.reward.workers import WorkerPool
from tests.reward_corpus import GENERATORS, build_corpus

pytestmark = pytest.mark.timeout(240)

GENERATED = 2000


def _verdicts(items: list) -> tuple[dict, dict, int]:
    """(fast-path verdicts, math-verify verdicts from workers, number undecided), by distinct
    (answer, gold); math-verify only sees the pairs the fast path decides."""
    fast, undecided = {}, set()
    for _, response, gold in items:
        answer = final_answer(response, gold)
        verdict = None if answer is None else fast_score(answer, gold)
        if verdict is None:
            undecided.add((answer, gold))
        else:
            fast[(answer, gold)] = verdict
    pool = WorkerPool(num_workers=2, timeout_s=30.0)
    try:
        for answer, gold in fast:
            pool.submit((answer, gold), ("math", answer, gold))
        reference, timeouts, errors, first_error, _ = pool.drain()
    finally:
        pool.close()
    assert timeouts == 0 and errors == 0, first_error
    return fast, reference, len(undecided)


@pytest.mark.slow
def test_fast_path_has_no_false_positives_against_math_verify():
    items = build_corpus(GENERATED, seed=13)
    assert len(items) >= GENERATED >= 2000 and {kind for kind, _, _ in items} >= set(GENERATORS)
    fast, reference, undecided = _verdicts(items)
    false_pos = [pair for pair, v in fast.items() if v == 1.0 and reference[pair] == 0.0]
    false_neg = [pair for pair, v in fast.items() if v == 0.0 and reference[pair] == 1.0]
    print(
        f"\n{len(items)} pairs ({len(fast) + undecided} distinct): {len(fast)} decided by the fast "
        f"path, {undecided} left to math-verify; fast 1 / math-verify 0: {len(false_pos)}, "
        f"fast 0 / math-verify 1: {len(false_neg)}"
    )
    for answer, gold in false_neg[:20]:
        print(f"  fast 0, math-verify 1: answer {answer!r}, gold {gold!r}")
    assert not false_pos, false_pos[:20]
    assert len(fast) > len(items) // 2, "the fast path should still decide most answers"
