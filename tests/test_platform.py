"""Launcher detection (torchrun, srun, single) and distributed start-up on gloo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sppo_megatron.platform.distributed import default_cpu_threads, detect_launch, first_slurm_host
from sppo_megatron.platform.parallel_dims import ParallelDims, split_evenly
from tests.multirank import run_ranks


def test_torchrun_variables_win():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "1234",
        "SLURM_PROCID": "0",
        "SLURM_STEP_NUM_TASKS": "4",
    }
    info = detect_launch(env)
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port) == (
        "torchrun",
        3,
        8,
        1,
        "n1",
        1234,
    )


def test_srun_step_without_torchrun():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_LOCALID": "5",
        "SLURM_STEP_NODELIST": "gpu[007-008]",
        "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
        "SLURM_JOB_ID": "4242",
    }
    info = detect_launch(env)
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.local_world_size) == ("slurm", 5, 16, 5, 8)
    assert info.master_addr == "gpu007" and info.master_port == 20000 + 4242


def test_slurm_batch_script_is_a_single_process():
    info = detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_NODELIST": "gpu[1-2]"})
    assert (info.launcher, info.world_size) == ("single", 1)


@pytest.mark.parametrize(
    "nodelist,first",
    [("node1", "node1"), ("gpu[003-005,9]", "gpu003"), ("a[10,12],b[1-2]", "a10"), ("host-01,host-02", "host-01")],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def _rank_state(tp, pp, seed):
    import random

    import torch
    from megatron.core import parallel_state, tensor_parallel

    from sppo_megatron.platform.distributed import init_distributed

    info = init_distributed(tp=tp, pp=pp, seed=seed)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        tp_region = torch.rand(2).tolist()
    return {
        "rank": info.rank,
        "backend": torch.distributed.get_backend(),
        "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
        "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "layout": ParallelDims.current(),
        "python": random.random(),
        "tp_region": tp_region,
    }


@pytest.mark.slow
def test_init_distributed_builds_megatron_groups_and_seeds():
    states = run_ranks(_rank_state, 4, 2, 1, 5)
    again = run_ranks(_rank_state, 4, 2, 1, 5)
    assert [s["backend"] for s in states] == ["gloo"] * 4
    assert [(s["tp_rank"], s["pp_rank"], s["dp"]) for s in states] == [(0, 0, 2), (1, 0, 2), (0, 0, 2), (1, 0, 2)]
    assert {s["layout"] for s in states} == {ParallelDims.for_world(4, 2, 1)} == {ParallelDims(2, 1, 2)}
    assert states == again, "same seed must give the same RNG streams"
    # the model-parallel RNG differs across TP ranks (dropout in TP regions) but not across DP ranks
    assert states[0]["tp_region"] != states[1]["tp_region"]
    assert states[0]["tp_region"] == states[2]["tp_region"]


@pytest.mark.slow
def test_single_process_without_launcher():
    (state,) = run_ranks(_rank_state, 1, 1, 1, 0)
    assert state["dp"] == 1


def test_atomic_output_dir_replaces_on_success_and_keeps_the_old_output_on_failure(tmp_path):
    from sppo_megatron.platform.files import atomic_output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_output_dir(str(out)) as tmp:
            (Path(tmp) / "new.txt").write_text("partial")
            raise RuntimeError("half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no OUT.tmp-* left behind
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with atomic_output_dir(str(out)) as tmp:
        (Path(tmp) / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_resolve_dtype_auto_follows_the_device():
    import torch

    from sppo_megatron.errors import UserError
    from sppo_megatron.platform.dtypes import dtype_name, resolve_dtype, torch_dtype_name

    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("fp16", torch.device("cuda", 0)) == torch.float16
    with pytest.raises(UserError, match="expected auto, bf16, fp16 or fp32"):
        resolve_dtype("int8")
    assert torch_dtype_name("bf16") == torch_dtype_name(torch.bfloat16) == "bfloat16"
    assert dtype_name("float16") == "fp16" and dtype_name(None) == "fp32" and dtype_name(torch.float64) == "fp32"


def test_parallel_layout_for_world():
    layout = ParallelDims.for_world(8, 2, 2)
    assert (layout.tp, layout.pp, layout.dp, layout.world) == (2, 2, 2, 8)
    assert layout.sizes() == {"tp": 2, "pp": 2, "dp": 2} and layout.describe() == "TP=2 PP=2 DP=2"
    assert ParallelDims.for_world(6, 4, 1) is None  # 4 does not divide 6
    assert ParallelDims.for_world(1, 1, 1) == ParallelDims(1, 1, 1)


def test_config_dtype_choices_are_the_dtype_table():
    from sppo_megatron.config.schema import DTYPE_CHOICES
    from sppo_megatron.platform.dtypes import DTYPES

    assert DTYPE_CHOICES == ("auto", *DTYPES)


def test_reward_workers_do_not_import_torch():
    """A reward worker imports sppo_megatron.reward; torch there costs seconds per worker start."""
    import subprocess
    import sys

    code = "import sys, sppo_megatron.reward.worker_main; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_single_rank_collective_is_skipped_only_when_it_is_an_identity(monkeypatch):
    """cpu_compat: megatron's DP=1 reduce-scatter / all-gather onto the same buffer is skipped;
    any other call (another buffer, async, a larger group) still runs."""
    import torch

    from sppo_megatron.platform import cpu_compat

    calls = []
    wrapped = cpu_compat._single_rank_identity(lambda out, inp, **kw: calls.append(kw))
    sizes = {"one": 1, "two": 2}
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: sizes[group])
    buf = torch.zeros(8)
    wrapped(buf, buf.view(-1)[0:8], group="one", async_op=False)
    assert calls == []
    wrapped(buf, torch.zeros(8), group="one", async_op=False)
    wrapped(buf, buf, group="one", async_op=True)
    wrapped(buf, buf, group="two", async_op=False)
    wrapped(buf[:4], buf, group="one", async_op=False)
    assert len(calls) == 4


def test_split_evenly():
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]


def test_a_cpu_process_without_omp_num_threads_takes_one_thread():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert default_cpu_threads({"OMP_NUM_THREADS": "2"}) is None and torch.get_num_threads() == 2
        line = default_cpu_threads({})
        assert torch.get_num_threads() == 1 and "OMP_NUM_THREADS is unset" in line
        assert default_cpu_threads({}) is None, "nothing to say when it already runs one thread"
    finally:
        torch.set_num_threads(before)
