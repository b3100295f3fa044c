"""End-to-end helpers: build the demo's tiny assets once, run `sppo-train` as users do (a plain
process or torchrun), read a run directory back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from sppo_megatron.platform.distributed import free_port
from tools.make_tiny_assets import build_and_convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def build_assets(out: str, warm_steps: int = 200) -> Dict[str, str]:
    """tools/make_tiny_assets.py + sppo-convert hf-to-megatron; returns the paths a config needs."""
    build_and_convert(out, "--warm-steps", str(warm_steps), "--num-test", "64", env={**os.environ, **ENV}, capture=True)
    return {
        "hf": f"{out}/model",
        "megatron": f"{out}/megatron",
        "train": f"{out}/data/train.parquet",
        "test": f"{out}/data/test.parquet",
    }


def base_overrides(assets: Dict[str, str], output_dir: str) -> List[str]:
    """A small, fast SPPO run on the tiny assets: exactly 4 prompts x 4 samples per step (dynamic
    sampling off, so that tests may count samples and prompts; tests/test_dynamic_sampling.py has it on)."""
    return [
        f"model.path={assets['megatron']}/hf",
        f"model.megatron_ckpt={assets['megatron']}",
        f"data.train_files=[{assets['train']}]",
        f"data.val_files=[{assets['test']}]",
        "data.train_batch_size=4",
        "data.max_prompt_length=16",
        "data.max_response_length=6",
        "rollout.engine=hf",
        "rollout.n=4",
        "algorithm.filter_no_signal=false",
        "train.mini_batch_size=2",
        "train.micro_batch_size=2",
        "optim.lr=1e-3",
        "optim.weight_decay=0",
        "trainer.test_freq=2",
        "trainer.seed=3",
        f"trainer.output_dir={output_dir}",
    ]


QUICK = ["trainer.test_freq=0", "trainer.val_before_train=false"]
# the conftest `two_step_run` fixture's run: base_overrides + these
TWO_STEP_RUN = QUICK + ["trainer.total_steps=2", "trainer.save_freq=1", "trainer.keep_last=3", "trainer.export_hf=true"]


def train_command(overrides: List[str], nproc: int = 1) -> List[str]:
    if nproc == 1:
        return [sys.executable, "-m", "sppo_megatron.train", *overrides]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "sppo_megatron.train",
        *overrides,
    ]


def train(overrides: List[str], nproc: int = 1, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        train_command(overrides, nproc),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"sppo-train exited {out.returncode}\n{out.stderr[-4000:]}")
    return out


def read_metrics(output_dir: str) -> List[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def by_step(output_dir: str) -> Dict[int, dict]:
    """Each step's metrics (event lines such as `resumed` left out)."""
    return {row["step"]: row for row in read_metrics(output_dir) if "event" not in row}


def latest(output_dir: str) -> Optional[str]:
    path = os.path.join(output_dir, "checkpoints", "latest")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


HANG_FROM_STEP_2 = """
import os, time
def score(solution_str, ground_truth):
    with open(os.path.join(os.path.dirname(__file__), "calls"), "a") as fh:
        fh.write("x")
    if os.path.getsize(os.path.join(os.path.dirname(__file__), "calls")) > 16:  # step 1 has 16 samples
        open(os.path.join(os.path.dirname(__file__), "hanging"), "w").close()
        time.sleep(3600)
    return 1.0 if ground_truth in solution_str else 0.0
"""


def start_hanging_run(tiny_assets: Dict[str, str], tmp_path) -> Tuple[subprocess.Popen, str]:
    """A trainer that saved step 1 and now hangs scoring step 2 (reward.timeout_s=0)."""
    reward = tmp_path / "reward" / "hang.py"
    reward.parent.mkdir()
    reward.write_text(HANG_FROM_STEP_2)
    out = tmp_path / "run"
    cmd = train_command(
        base_overrides(tiny_assets, str(out))
        + [
            "trainer.total_steps=50",
            "trainer.val_before_train=false",
            "trainer.test_freq=0",
            "trainer.save_freq=1",
            f"reward.custom_fn={reward}:score",
            "reward.timeout_s=0",
        ]
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **ENV}
    )
    deadline = time.monotonic() + 180
    while not (reward.parent / "hanging").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    return proc, str(out)


def wait_for_step(run_dir: str, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Return once the run of `proc` has logged `step` (or a later one) in run_dir/metrics.jsonl;
    its stderr when it exits first; killed after `timeout` seconds."""
    path = os.path.join(str(run_dir), "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else "the run exited"
        if os.path.exists(path) and any(json.loads(line)["step"] >= step for line in open(path) if line.strip()):
            return
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"step {step} not reached")
