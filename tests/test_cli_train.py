"""`sppo-train` as users call it: --help, config errors (exit 2, no traceback), under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(args, env=None, timeout=120):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_help_lists_config_groups():
    out = run([sys.executable, "-m", "sppo_megatron.train", "--help"])
    assert out.returncode == 0
    for group in ("model", "parallel", "data", "rollout", "algorithm", "reward", "optim", "train", "trainer"):
        assert f"\n  {group} " in out.stdout


def test_unknown_key_exits_2_without_traceback():
    out = run([sys.executable, "-m", "sppo_megatron.train", "trainer.bogus_key=1"])
    assert out.returncode == 2
    assert "trainer.bogus_key" in out.stderr and "Traceback" not in out.stderr


def test_missing_config_file_exits_2(tmp_path):
    out = run([sys.executable, "-m", "sppo_megatron.train", "--config", str(tmp_path / "nope.yaml")])
    assert out.returncode == 2 and "nope.yaml" in out.stderr


@pytest.mark.slow
def test_tp_not_dividing_world_size_under_torchrun(tmp_path):
    out = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "0",
            "-m",
            "sppo_megatron.train",
            "parallel.tp=3",
            f"trainer.output_dir={tmp_path}",
        ]
    )
    assert out.returncode != 0
    assert "sppo-train: error: parallel.tp=3" in out.stderr and "world size 2" in out.stderr
    assert "sppo_megatron/" not in out.stderr, "a config error must not print a traceback of ours"
    assert not (tmp_path / "config.yaml").exists()
