"""No process of ours outlives the trainer: SIGKILL a trainer that has its checkpoint-save
Manager and its reward workers running, and every descendant is gone; the forked save helper
takes SIGTERM despite the trainer's handler, and a dead one is replaced with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import alive
from tests.tiny_run import ENV, ROOT, start_hanging_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # includes building the tiny assets when first


def test_sigkilled_trainer_leaves_no_process_behind(tiny_assets, tmp_path):
    proc, _ = start_hanging_run(tiny_assets, tmp_path)  # step 1 saved (Manager up), workers busy on step 2
    children = psutil.Process(proc.pid).children(recursive=True)
    workers = [p for p in children if "worker_main" in " ".join(p.cmdline())]
    assert len(workers) == 2 and len(children) > len(workers), [p.cmdline() for p in children]  # + the Manager
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while alive(p.pid for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in children if p.pid in alive(p.pid for p in children)]
    commands = [p.cmdline() for p in left]
    for p in left:
        p.kill()
    assert not left, commands


SAVE_HELPER = """
import os, signal, sys
from sppo_megatron.models.dist_ckpt import _SaveHelper
from sppo_megatron.platform.process import install_fork_hygiene
install_fork_hygiene()
signal.signal(signal.SIGTERM, lambda *a: None)  # the trainer's preemption handler, inherited by a plain fork
_SaveHelper.ensure()
first = _SaveHelper.manager._process
os.kill(first.pid, signal.SIGTERM)
first.join(timeout=10)
print("exitcode", first.exitcode, flush=True)
_SaveHelper.ensure()
from megatron.core.dist_checkpointing.strategies import filesystem_async as fsa
fsa._results_queue.put("ok")
print("replaced", _SaveHelper.manager._process.pid != first.pid, fsa._results_queue.get(), flush=True)
"""


def test_save_helper_takes_sigterm_and_a_dead_one_is_replaced():
    res = subprocess.run(
        [sys.executable, "-c", SAVE_HELPER],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **ENV, "PYTHONPATH": ROOT},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"exitcode -{int(signal.SIGTERM)}" in res.stdout
    assert "replaced True ok" in res.stdout
    lines = [line for line in res.stderr.splitlines() if "checkpoint save helper" in line]
    assert len(lines) == 1 and f"died (exit code -{int(signal.SIGTERM)}); starting a new one" in lines[0]
