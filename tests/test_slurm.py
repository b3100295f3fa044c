"""sppo-train under a real one-node Slurm (tests/slurm_cluster.py), launched as an operator does:
a plain `srun -n2` (SLURM_* detection, no torchrun) and examples/slurm/sppo_2x8.sbatch preempted
with SIGUSR1 to its batch shell, requeued, and resumed to the same metrics as the srun run.
Skipped, with the reason, where the Slurm daemons cannot start."""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest

from sppo_megatron.platform.distributed import free_port
from tests.slurm_cluster import ClusterUnavailable, SlurmCluster
from tests.tiny_run import ENV, ROOT, base_overrides, by_step

pytestmark = pytest.mark.slow

CONFIG = os.path.join(ROOT, "examples", "tiny_cpu", "config.yaml")
SBATCH = os.path.join(ROOT, "examples", "slurm", "sppo_2x8.sbatch")
STEPS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(str(tmp_path_factory.mktemp("slurm")))
    try:
        c.start()
    except ClusterUnavailable as e:
        c.stop()
        pytest.skip(f"no one-node Slurm cluster here: {e}")
    yield c
    c.stop()


def _overrides(assets, out) -> list:
    return base_overrides(assets, str(out)) + [
        "parallel.tp=2",
        f"trainer.total_steps={STEPS}",
        "trainer.test_freq=0",
        "trainer.val_before_train=false",
        "trainer.save_freq=0",
        "trainer.export_hf=false",
    ]


@pytest.fixture(scope="module")
def srun_run(cluster, tiny_assets, tmp_path_factory):
    """`srun -N1 -n2 python -m sppo_megatron.train` (rank, world size, master from SLURM_*)."""
    out = tmp_path_factory.mktemp("srun") / "run"
    proc = cluster.run(
        [
            "srun",
            "-N1",
            "-n2",
            "--cpus-per-task=1",
            "--overcommit",
            sys.executable,
            "-m",
            "sppo_megatron.train",
            "--config",
            CONFIG,
            *_overrides(tiny_assets, out),
        ],
        check=False,
        timeout=300,
        cwd=ROOT,
        env=ENV,
    )
    return proc, out


def _comparable(rows: dict) -> dict:
    """Metrics without the clock: times and rates."""
    return {
        step: {
            k: v for k, v in row.items() if not (k.startswith(("timing/", "perf/", "memory/")) or k.endswith("_per_s"))
        }
        for step, row in rows.items()
    }


def test_srun_two_tasks_detect_slurm_and_train(srun_run):
    proc, out = srun_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TP=2 PP=1 DP=1" in proc.stdout  # two ranks found from SLURM_PROCID / SLURM_STEP_NUM_TASKS
    assert sorted(by_step(str(out))) == list(range(1, STEPS + 1))


def _wait(what: str, check, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_sbatch_preempted_with_usr1_is_requeued_and_resumes_exactly(cluster, srun_run, tiny_assets, tmp_path):
    proc, reference = srun_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()  # the operator's `mkdir -p logs`: --output is opened before the script runs
    submit = cluster.run(
        [
            "sbatch",
            "--nodes=1",
            "--gpus-per-node=0",
            "--cpus-per-task=2",
            "--overcommit",
            f"--output={logs}/%x-%j.out",
            SBATCH,
            *_overrides(tiny_assets, out),
        ],
        cwd=ROOT,
        env={
            **ENV,
            "CONFIG": CONFIG,
            "NPROC_PER_NODE": "2",
            "LOG_DIR": str(logs),
            "RDZV_PORT": str(free_port()),
            "PYTHON": sys.executable,
        },
    )
    job = re.search(r"Submitted batch job (\d+)", submit.stdout).group(1)
    log = logs / f"sppo-{job}.out"
    metrics = out / "metrics.jsonl"

    def step_logged() -> bool:
        assert cluster.job_field(job, "JobState") in ("PENDING", "RUNNING", "CONFIGURING"), log.read_text()[-3000:]
        return metrics.exists() and any(json.loads(line)["step"] >= 1 for line in metrics.read_text().splitlines())

    _wait("step 1", step_logged, 240)
    cluster.run(["scancel", "--batch", "--signal=USR1", job])  # what --signal=B:USR1@60 does at the time limit

    def finished() -> bool:
        state = cluster.job_field(job, "JobState")
        if state == "PENDING" and cluster.job_field(job, "Restarts") == "1":
            cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)  # skip the requeue delay
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), log.read_text()[-3000:]
        return state == "COMPLETED"

    _wait("the requeued job to complete", finished, 300)
    text = log.read_text()
    assert cluster.job_field(job, "Restarts") == "1", text[-3000:]
    assert "preemption signal received: checkpointed step" in text and "resumed from" in text, text[-3000:]
    assert "(restart 0)" in text and "(restart 1)" in text  # --open-mode=append kept the first attempt's log
    assert _comparable(by_step(str(out))) == _comparable(by_step(str(reference)))
