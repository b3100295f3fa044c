"""A failure on one rank must stop every rank with its message, not leave the others blocked in
the next collective until the timeout: rollouts, rank-0 scoring, the post-sync check."""

from __future__ import annotations

import pytest

from tests.multirank import run_ranks


def _init():
    import torch.distributed as dist

    dist.init_process_group("gloo")


def _generation_fails_on_rank1():
    import torch.distributed as dist

    from sppo_megatron.rollout.base import RolloutEngine, RolloutSample, SamplingParams, make_placement

    _init()

    class Engine(RolloutEngine):
        name = "fake"

        def _generate_local(self, prompts, sampling, n, first):
            if dist.get_rank() == 1:
                raise ValueError("engine fell over")
            return [RolloutSample(first + i, j, [1], "stop") for i in range(len(prompts)) for j in range(n)]

        def update_weights(self, named_tensors):
            pass

    try:
        Engine(make_placement(1)).generate([[1], [2], [3], [4]], SamplingParams(seed=0), 2)
    except RuntimeError as e:
        return str(e)
    return "no error"


def test_generation_failure_on_one_rank_raises_on_all():
    messages = run_ranks(_generation_fails_on_rank1, 2, timeout=120)
    assert all("rank 1" in m and "engine fell over" in m for m in messages), messages


def _on_rank0_raises():
    from sppo_megatron.errors import DataError
    from sppo_megatron.platform.distributed import on_rank0

    _init()

    def fn():
        raise DataError("bad reward input")

    try:
        on_rank0(fn)
    except DataError as e:
        return str(e)
    return "no error"


def _on_rank0_value():
    import torch.distributed as dist

    from sppo_megatron.platform.distributed import on_rank0

    _init()
    return on_rank0(lambda: ("from rank", dist.get_rank()))


def test_on_rank0_shares_result_or_exception():
    assert run_ranks(_on_rank0_value, 2, timeout=120) == [("from rank", 0)] * 2
    assert run_ranks(_on_rank0_raises, 2, timeout=120) == ["bad reward input"] * 2


def _first_error():
    import torch.distributed as dist

    from sppo_megatron.platform.distributed import first_error

    _init()
    return first_error("check failed on rank 1" if dist.get_rank() == 1 else None)


def test_first_error_reaches_every_rank():
    assert run_ranks(_first_error, 3, timeout=120) == ["check failed on rank 1"] * 3


def test_single_process_generation_error_is_the_original():
    from sppo_megatron.rollout.base import RolloutEngine, SamplingParams

    class Engine(RolloutEngine):
        def _generate_local(self, prompts, sampling, n, first):
            raise ValueError("boom")

        def update_weights(self, named_tensors):
            pass

    with pytest.raises(ValueError, match="boom"):
        Engine().generate([[1]], SamplingParams(seed=0), 1)
