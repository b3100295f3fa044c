"""A dead or failed rank ends the others within parallel.peer_timeout_s, with one line naming
it, instead of leaving them in a collective for distributed_timeout_minutes; a SIGTERM after a
peer failed (the launcher's teardown) exits at once. Ranks are real processes killed for real."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from tests.multirank import launch_rank_processes
from tests.tiny_run import ENV, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _start(mode: str, victim: int, timeout_s: float):
    procs = launch_rank_processes(
        [sys.executable, "-m", "tests.peer_rank", mode, str(victim), str(timeout_s)], 2, env={**ENV, "PYTHONPATH": ROOT}
    )
    return procs


def _finish(procs, limit: float, survivor: int = 0):
    """(stdout, stderr) of each rank; the survivor may take `limit` s, then the rest are killed."""
    try:
        outputs = {survivor: procs[survivor].communicate(timeout=limit)}
    except BaseException:  # the communicate timeout or pytest-timeout's: a SIGSTOPped victim must not outlive the test
        for proc in procs:
            proc.kill()
            proc.communicate()
        raise
    for r, proc in enumerate(procs):
        if r != survivor:
            proc.kill()
            outputs[r] = proc.communicate()
    outputs = [outputs[r] for r in range(len(procs))]
    for out, _ in outputs:  # the victim's sleeper, holding its sockets
        for line in out.splitlines():
            if line.startswith("sleeper ") and psutil.pid_exists(int(line.split()[1])):
                os.kill(int(line.split()[1]), signal.SIGKILL)
    return outputs


@pytest.mark.parametrize("mode,victim", [("kill", 1), ("stop", 0)])
def test_a_dead_or_hung_rank_ends_the_survivor_with_one_line(mode, victim):
    procs = _start(mode, victim, 2.0)
    start = time.monotonic()
    outputs = _finish(procs, 60, survivor=1 - victim)
    elapsed = time.monotonic() - start
    out, err = outputs[1 - victim]
    assert procs[1 - victim].returncode == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("peer-rank: error:")]
    assert len(lines) == 1, err[-2000:]
    # rank 0 hosts the store without torchrun: when it hangs, so does the store
    assert ("rank 1 stopped responding" if victim == 1 else "the rendezvous store has not answered") in lines[0]
    assert "Traceback" not in err
    assert elapsed < 45, f"took {elapsed:.0f} s"


def test_sigterm_while_a_peer_is_dead_exits_at_once():
    procs = _start("kill", 1, 30.0)  # far from the monitor's own verdict: only the SIGTERM's probe can end it
    assert procs[1].wait(timeout=60) == -signal.SIGKILL
    os.kill(procs[0].pid, signal.SIGTERM)
    start = time.monotonic()
    outputs = _finish(procs, 30)
    assert time.monotonic() - start < 20  # the probe watches 3 heartbeats of 3 s
    assert procs[0].returncode == 128 + signal.SIGTERM
    assert "SIGTERM received while rank 1 is not responding: exiting now" in outputs[0][1]
    assert "checkpointing at the end of this step" not in outputs[0][1]  # the survivor says the peer is gone


def test_a_collective_broken_by_a_dead_peer_is_one_line_not_a_gloo_traceback():
    procs = _start("reset", 1, 30.0)  # far from the monitor's own verdict: the collective's error comes first
    outputs = _finish(procs, 60)
    out, err = outputs[0]
    assert procs[0].returncode == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("peer-rank: error:")]
    assert len(lines) == 1 and "rank 0: rank 1 stopped responding" in lines[0], err[-2000:]
    assert "this rank's collective failed with" in lines[0]
    assert "Traceback" not in err, err[-2000:]


def test_sigterm_after_a_peer_failed_exits_at_once_and_otherwise_the_failure_ends_it():
    procs = _start("fail", 1, 30.0)
    assert procs[1].wait(timeout=60) == 1
    os.kill(procs[0].pid, signal.SIGTERM)
    start = time.monotonic()
    outputs = _finish(procs, 30)
    assert time.monotonic() - start < 5
    assert procs[0].returncode == 128 + signal.SIGTERM
    assert "SIGTERM received after rank 1 failed: ValueError: boom: exiting now" in outputs[0][1]

    procs = _start("fail", 1, 3.0)  # no teardown signal (plain srun): the failure itself ends rank 0
    outputs = _finish(procs, 60)
    assert procs[0].returncode == 1
    assert "rank 0: rank 1 failed: ValueError: boom" in outputs[0][1]
