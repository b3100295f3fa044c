"""Smoke tests of tools/bench_train.py and tools/profile_update.py: they run the real actor and report sane figures."""

from __future__ import annotations

import os

import pytest

from tests.multirank import run_ranks

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(argv):
    from tools import bench_train

    return bench_train.main(argv)


def test_bench_train_reports_throughput():
    argv = [
        "--hidden",
        "64",
        "--layers",
        "2",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--vocab",
        "300",
        "--seq",
        "32",
        "--prompt-len",
        "8",
        "--batch",
        "4",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--tp",
        "2",
    ]
    result = run_ranks(_bench, 2, argv)[0]
    assert result["tp"] == 2 and result["dp"] == 1 and result["tokens_per_step"] == 4 * 31
    assert result["update_tokens_per_s"] > 0 and result["update_step_s"] > 0
    assert result["peak_mem_gib_per_rank"] > 0
    assert "mfu" not in result  # CPU: no MFU


def _profile(argv):
    from tools import profile_update

    return profile_update.main(argv)


def test_update_at_dp1_copies_no_whole_buffer():
    """The distributed optimizer at DP=1 (one rank): no copy of the 1.1 M-element gradient or
    parameter buffer, nor of the embedding-sized tensors, in an update (op counts, not times)."""
    argv = [
        "--hidden",
        "128",
        "--layers",
        "1",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--vocab",
        "4000",
        "--seq",
        "16",
        "--prompt-len",
        "8",
        "--batch",
        "2",
        "--dtype",
        "fp32",
        "--updates",
        "1",
    ]
    result = run_ranks(_profile, 1, argv)[0]
    assert result["distributed_optimizer"] and result["copy_calls_per_update"] > 0
    assert result["big_copies_per_update"] == 0, result["big_copy_shapes"]
    assert all(v == v for v in result["loss"] + result["grad_norm"])


def test_peak_table_and_flop_count():
    from tools import bench_train

    assert bench_train.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench_train.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_train.peak_tflops("NVIDIA H200") == 989.4
    assert bench_train.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_train.peak_tflops("Some GPU") is None
    from transformers import Qwen2Config

    cfg = Qwen2Config(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    # per layer: q 8x8 + k,v 2 x 8x4 + o 8x8 + mlp 3 x 8x16; plus the LM head 10x8
    assert bench_train.matmul_params(cfg) == 2 * (64 + 64 + 64 + 384) + 80
