"""Host memory: the per-phase ledger (`memory/*`), and a checkpoint save that holds no second copy
of the model (measured on a mid-size random model, with megatron's own writer as the contrast)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from sppo_megatron.platform.memory import MemoryLedger, host_peak_rss_bytes, host_rss_bytes, reset_host_peak
from sppo_megatron.testing.tiny import make_tiny_hf_model
from tests.multirank import run_ranks
from tests.tiny_run import by_step

MIB = 1024**2
PHASES = ("sync", "gen", "old_logp", "update", "save")


def _touch(nbytes: int) -> torch.Tensor:
    return torch.ones(nbytes // 4, dtype=torch.float32)  # written, so resident


def test_ledger_peaks_are_per_phase_and_nested_phases_fold_into_the_outer():
    ledger = MemoryLedger()
    assert ledger.resettable, "this kernel lets the process reset its RSS high-water mark"
    with ledger.phase("small"):
        pass
    with ledger.phase("outer"):
        block = _touch(300 * MIB)
        del block
        with ledger.phase("inner"):
            pass
    with ledger.phase("small2"):
        pass
    got = ledger.metrics()
    assert set(got) == {f"memory/{p}_peak_rss_gib" for p in ("small", "outer", "inner", "small2")} | {
        "memory/step_peak_rss_gib"
    }
    base = got["memory/small_peak_rss_gib"]
    # the 300 MiB block lived in `outer` before `inner` began: outer keeps it, inner and later ones do not
    assert got["memory/outer_peak_rss_gib"] - base > 0.25
    assert got["memory/inner_peak_rss_gib"] - base < 0.1 and got["memory/small2_peak_rss_gib"] - base < 0.1
    assert got["memory/step_peak_rss_gib"] == got["memory/outer_peak_rss_gib"]
    assert ledger.metrics() == {}, "metrics() starts the next step afresh"


def test_host_marks_follow_an_allocation():
    reset_host_peak()
    before = host_rss_bytes()
    block = _touch(200 * MIB)
    assert host_rss_bytes() - before > 150 * MIB
    del block
    assert host_peak_rss_bytes() - before > 150 * MIB


@pytest.mark.slow
def test_ledger_keys_in_a_run(two_step_run):
    rows = by_step(two_step_run)
    for step in (1, 2):
        row = rows[step]
        for phase in PHASES:
            value = row[f"memory/{phase}_peak_rss_gib"]
            assert 0.2 < value < 8.0, (step, phase, value)  # a process with torch and megatron loaded
        assert row["memory/step_peak_rss_gib"] == max(row[f"memory/{p}_peak_rss_gib"] for p in PHASES)
        assert not any("cuda" in k for k in row), "no CUDA figures without CUDA"


def _save_transients(path: str, work: str) -> dict:
    """On one gloo rank: an actor after one update, saved with the streaming writer and then with
    megatron's own; each save's host peak above the RSS it started from, and the state's bytes."""
    from sppo_megatron.actor.batch import SequenceBatch
    from sppo_megatron.actor.memory import measured_memory
    from sppo_megatron.config.schema import Config, ModelConfig, RolloutConfig, TrainConfig, TrainerConfig
    from sppo_megatron.models import dist_ckpt
    from sppo_megatron.platform.distributed import init_distributed
    from sppo_megatron.trainer.setup import build_actor

    init_distributed(1, 1, 0)
    cfg = Config(
        model=ModelConfig(path=path),
        rollout=RolloutConfig(n=2),
        train=TrainConfig(mini_batch_size=1),
        trainer=TrainerConfig(seed=0),
    )
    actor = build_actor(cfg)
    batch = SequenceBatch([[5, 6, 7], [5, 6, 7]], [[30, 31], [40, 41, 42]])
    actor.update(batch, torch.tensor([0.3, -0.3]), actor.log_probs(batch))
    state = measured_memory(actor).total

    def transient(name: str) -> int:
        reset_host_peak()
        start = host_rss_bytes()
        actor.save_checkpoint(f"{work}/{name}")
        return host_peak_rss_bytes() - start

    streaming = transient("streaming")
    saved = dist_ckpt.streaming_writes
    dist_ckpt.streaming_writes = contextlib.nullcontext  # megatron's writer: every view cloned up front
    try:
        cloning = transient("cloning")
    finally:
        dist_ckpt.streaming_writes = saved
    return {"state": state, "streaming": streaming, "cloning": cloning}


@pytest.mark.slow
def test_checkpoint_save_transient_is_bounded(tmp_path):
    path = make_tiny_hf_model(
        "qwen2",
        tmp_path / "model",
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_shard_size="200MB",
    )
    # two intra-op threads: a clone in megatron's forked writer processes deadlocked on them
    got = run_ranks(_save_transients, 1, str(path), str(tmp_path), timeout=600, env={"OMP_NUM_THREADS": "2"})[0]
    state = got["state"]  # fp32 params + grads + Adam moments of ~24M parameters: ~380 MB
    assert state > 200 * MIB
    assert got["streaming"] < 0.1 * state, got
    # the contrast: megatron's own writer clones every parameter view (the model's bytes) at once
    assert got["cloning"] > 0.2 * state, got
    assert got["cloning"] > 3 * max(got["streaming"], MIB), got
