"""Unit tests of the actor's pure parts: batch collation (actor/batch.py) and the micro-batch planner (actor/batch_plan.py)."""

from __future__ import annotations

import random

import pytest
import torch

from sppo_megatron.actor.batch import LogProbs, SequenceBatch, collate
from sppo_megatron.actor.batch_plan import micro_batch_sizes, mini_batches, plan_micro_batches
from sppo_megatron.config.schema import TrainConfig


def test_collate_right_pads_and_marks_response_labels():
    batch = SequenceBatch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]])
    mb = collate(batch, [0, 1])
    # sample 0: tokens 1 2 3 5 (reads), labels 2 3 5 6; response labels 5, 6 at positions 2, 3
    assert mb.tokens.tolist() == [[1, 2, 3, 5], [4, 7, 8, 0]]
    assert mb.labels.tolist() == [[2, 3, 5, 6], [7, 8, 9, 0]]
    assert mb.response_mask.tolist() == [[False, False, True, True], [True, True, True, False]]
    assert mb.num_tokens == 7 and mb.sample_index == [0, 1]
    padded = collate(batch, [0, 1], pad_to_multiple=3)
    assert padded.seq_length == 6
    empty = collate(batch, [])
    assert empty.sample_index == [-1] and not empty.response_mask.any()


def test_response_index_maps_label_positions_to_response_positions():
    batch = SequenceBatch([[1, 2, 3], [4], [9, 9]], [[5, 6], [7, 8, 9], [1]])
    mb = collate(batch, [2, 0, 1])
    src, sample, col = mb.response_index()
    labels = mb.labels.reshape(-1)[src]
    assert sample.tolist() == [2, 0, 0, 1, 1, 1] and col.tolist() == [0, 0, 1, 0, 1, 2]
    assert labels.tolist() == [batch.response_ids[i][j] for i, j in zip(sample.tolist(), col.tolist())]
    rows, real = mb.sample_rows()
    assert rows.tolist() == [2, 0, 1] and real.all()
    src, _, _ = collate(batch, []).response_index()
    assert src.numel() == 0 and collate(batch, []).sample_rows()[1].tolist() == [False]


def test_forward_only_passes_take_their_own_micro_batch_sizes():
    update = {"micro_batch_size": 2, "max_tokens": None}
    assert micro_batch_sizes(TrainConfig(micro_batch_size=2), True) == update
    assert micro_batch_sizes(TrainConfig(micro_batch_size=2, logprob_micro_batch_size=8), False) == update
    cfg = TrainConfig(micro_batch_size=2, logprob_micro_batch_size=8)
    lengths = [10] * 16
    assert len(plan_micro_batches(range(16), lengths, 1, **micro_batch_sizes(cfg, True))[0]) == 2
    assert len(plan_micro_batches(range(16), lengths, 1, **micro_batch_sizes(cfg, False))[0]) == 8
    tokens = TrainConfig(max_tokens_per_micro_batch=20, logprob_micro_batch_size=8, logprob_max_tokens=80)
    assert micro_batch_sizes(tokens, True) == {"micro_batch_size": 1, "max_tokens": 80}
    assert micro_batch_sizes(tokens, False) == {"micro_batch_size": 1, "max_tokens": 20}


def test_sequence_batch_validation_and_logprob_sums():
    with pytest.raises(ValueError):
        SequenceBatch([[1]], [])
    with pytest.raises(ValueError):
        SequenceBatch([[]], [[1]])
    lp = LogProbs(
        torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    )
    assert lp.sequence_logp().tolist() == [-3.0, -0.5]


def test_mini_batches_are_whole_prompts():
    assert mini_batches(12, 3, 2) == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert mini_batches(6, 2, 2) == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(ValueError):
        mini_batches(7, 2, 1)


def _check_plan(plan, indices, lengths, max_tokens=None, mbs=None):
    counts = {len(rank) for rank in plan}
    assert len(counts) == 1, "every DP rank must run the same number of micro-batches"
    flat = [i for rank in plan for mb in rank for i in mb]
    assert sorted(flat) == sorted(indices), "every sample exactly once"
    for rank in plan:
        for mb in rank:
            if mbs is not None:
                assert len(mb) <= mbs
            if max_tokens is not None and len(mb) > 1:
                assert max(lengths[i] for i in mb) * len(mb) <= max_tokens


@pytest.mark.parametrize("dp", [1, 2, 3, 4])
def test_plans_cover_every_sample_with_equal_counts(dp):
    rng = random.Random(dp)
    for _ in range(50):
        n = rng.randint(1, 24)
        lengths = [rng.randint(1, 40) for _ in range(n)]
        indices = list(range(n))
        mbs = rng.randint(1, 4)
        _check_plan(plan_micro_batches(indices, lengths, dp, micro_batch_size=mbs), indices, lengths, mbs=mbs)
        budget = rng.randint(20, 100)
        _check_plan(plan_micro_batches(indices, lengths, dp, max_tokens=budget), indices, lengths, max_tokens=budget)


def test_token_budget_cuts_padding_and_balances_ranks():
    lengths = [30, 4, 28, 5, 6, 29, 3, 31]
    plan = plan_micro_batches(list(range(8)), lengths, 2, max_tokens=64)
    loads = [sum(lengths[i] for mb in rank for i in mb) for rank in plan]
    assert abs(loads[0] - loads[1]) <= 31
    for rank in plan:
        for mb in rank:
            # long and short samples are not padded together
            assert max(lengths[i] for i in mb) * len(mb) <= 64
    # a sample over the budget still gets a micro-batch of its own
    plan = plan_micro_batches([0, 1], [100, 2], 1, max_tokens=10)
    assert sorted(map(tuple, plan[0])) == [(0,), (1,)]


def test_dp_rank_without_samples_gets_empty_micro_batches():
    plan = plan_micro_batches([0], [5], 3, micro_batch_size=2)
    assert sorted(plan) == [[[]], [[]], [[0]]]
