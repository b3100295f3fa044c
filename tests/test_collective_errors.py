"""A failure on one rank must stop every rank with its exception, not leave the others blocked in
the next collective until the timeout: rollouts, rank-0 scoring, the post-sync check, SGLang host
calls (all through platform.distributed.share_outcomes)."""

from __future__ import annotations

import pytest

from tests.multirank import run_ranks

pytestmark = pytest.mark.slow


def _init():
    """The group, once per process: one spawn runs several of the bodies below in turn."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")


def _generation_fails_on_rank1():
    import torch.distributed as dist

    from sppo_megatron.rollout.base import RolloutEngine, RolloutSample, SamplingParams, make_engine_groups

    _init()

    class Engine(RolloutEngine):
        name = "fake"

        def _generate_local(self, prompts, sampling, n, first):
            if dist.get_rank() == 1:
                raise ValueError("engine fell over")
            return [RolloutSample(first + i, j, [1], "stop") for i in range(len(prompts)) for j in range(n)]

        def _load_weights(self, named_tensors):
            pass

    engine = Engine(make_engine_groups(1))
    engine.update_weights([])
    try:
        engine.generate([[1], [2], [3], [4]], SamplingParams(seed=0), 2)
    except ValueError as e:
        return str(e), getattr(e, "__notes__", [])
    return "no error", []


def _two_rank_bodies():
    return {
        "generation": _generation_fails_on_rank1(),
        "user_error": _user_error_on_rank1_exits_2(),
        "unpicklable": _unpicklable_error(),
    }


@pytest.fixture(scope="module")
def two_ranks():
    """The 2-rank bodies' results, rank order, from one spawn of 2 ranks (each body leaves the
    group usable: what the trainer relies on after a shared failure)."""
    return run_ranks(_two_rank_bodies, 2, timeout=120)


def test_generation_failure_on_one_rank_raises_on_all(two_ranks):
    (m0, notes0), (m1, notes1) = [r["generation"] for r in two_ranks]
    assert m0 == m1 == "engine fell over"
    assert notes0 == ["(raised on rank 1)"] and notes1 == []  # rank 1 raises its own, with its traceback


def _share_outcomes(raise_on):
    import torch.distributed as dist

    from sppo_megatron.errors import DataError
    from sppo_megatron.platform.distributed import share_outcomes

    _init()

    def fn():
        if dist.get_rank() == raise_on:
            raise DataError("bad reward input")
        return ("from rank", dist.get_rank())

    try:
        return share_outcomes(fn if dist.get_rank() != 2 else None)
    except DataError as e:
        return str(e)


def _share_outcomes_twice():
    return _share_outcomes(-1), _share_outcomes(1)


def test_share_outcomes_shares_results_or_the_exception():
    results = run_ranks(_share_outcomes_twice, 3, timeout=120)  # both cases in one spawn
    assert [r[0] for r in results] == [[("from rank", 0), ("from rank", 1), None]] * 3
    assert [r[1] for r in results] == ["bad reward input"] * 3


def _user_error_on_rank1_exits_2():
    import torch.distributed as dist

    from sppo_megatron.cli.common import exit_on_user_error
    from sppo_megatron.errors import UserError
    from sppo_megatron.platform.distributed import share_outcomes

    _init()

    def fn():
        if dist.get_rank() == 1:
            raise UserError("data.train_files: no such file")

    @exit_on_user_error("sppo-test")
    def main() -> int:
        share_outcomes(fn)
        return 0

    try:
        main()
    except SystemExit as e:
        return e.code
    return "no exit"


def test_user_error_on_rank1_exits_2_on_rank0(two_ranks):
    assert [r["user_error"] for r in two_ranks] == [2, 2]


class _Unpicklable(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")


def _unpicklable_error():
    import torch.distributed as dist

    from sppo_megatron.platform.distributed import share_outcomes

    _init()

    def fn():
        if dist.get_rank() == 0:
            raise _Unpicklable(7, "cannot be rebuilt from its args")

    try:
        share_outcomes(fn)
    except Exception as e:  # noqa: BLE001 - the type is what is checked
        return type(e).__name__, str(e)


def test_exception_that_does_not_pickle_arrives_as_runtime_error(two_ranks):
    r0, r1 = [r["unpicklable"] for r in two_ranks]
    assert r0 == ("_Unpicklable", "7: cannot be rebuilt from its args")
    assert r1 == ("RuntimeError", "_Unpicklable: 7: cannot be rebuilt from its args")


def test_single_process_generation_error_is_the_original():
    from sppo_megatron.rollout.base import RolloutEngine, SamplingParams

    class Engine(RolloutEngine):
        def _generate_local(self, prompts, sampling, n, first):
            raise ValueError("boom")

        def _load_weights(self, named_tensors):
            pass

    engine = Engine()
    engine.update_weights([])
    with pytest.raises(ValueError, match="boom"):
        engine.generate([[1]], SamplingParams(seed=0), 1)
