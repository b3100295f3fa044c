"""Host memory: the per-phase ledger (`memory/*`)."""

from __future__ import annotations

import pytest
import torch

from sppo_megatron.platform.memory import MemoryLedger, host_peak_rss_bytes, host_rss_bytes, reset_host_peak
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
