"""Signals as an operator sends them: the first SIGTERM / SIGUSR1 / SIGINT asks for a checkpoint
at the end of the step, a second one exits at once, even while the main thread is blocked; a
trainer whose scorer hangs (reward.timeout_s=0) still checkpoints and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.tiny_run import ENV, ROOT, latest, start_hanging_run

pytestmark = pytest.mark.timeout(900)  # includes building the tiny assets when first


def _wait_for_line(proc, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"never printed {text!r}: {proc.stderr.read()[-2000:]}")


@pytest.mark.parametrize(
    "first,second",
    [(signal.SIGINT, signal.SIGINT), (signal.SIGUSR1, signal.SIGTERM)],
    ids=["ctrl-c-twice", "usr1-then-term"],
)
def test_first_signal_asks_second_exits_at_once(first, second):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.signal_target"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **ENV},
    )
    _wait_for_line(proc, "ready")
    os.kill(proc.pid, first)
    _wait_for_line(proc, "requested", timeout=10)
    assert proc.poll() is None, "the first signal only asks for a checkpoint"
    os.kill(proc.pid, second)
    start = time.monotonic()
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - start < 5
    assert proc.returncode == 128 + second
    assert f"{first.name} received: checkpointing at the end of this step" in err
    assert f"{second.name} received a second time: exiting now" in err


@pytest.mark.slow
def test_sigterm_interrupts_a_hanging_scorer_then_checkpoints(tiny_assets, tmp_path):
    proc, out = start_hanging_run(tiny_assets, tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "checkpointed step 2, exiting" in stdout
    assert latest(out) == "step_2"
    assert "first error: scoring cut short by a preemption signal" in stderr
