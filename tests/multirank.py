"""Run a test body on N real gloo ranks (separate processes), as torchrun would.

`run_ranks(fn, n, *args)` starts n spawned processes with the torchrun environment variables
set, calls `fn(*args)` in each and returns the per-rank return values (rank order). If any rank
raises, the others are killed and the failing rank's traceback is raised in the test; a run that
exceeds `timeout` is killed and reported with the ranks that did not finish. `launch_rank_processes`
starts a program as rank processes without a launcher, for tests that kill ranks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from sppo_megatron.platform.distributed import free_port


def _child(fn: Callable, rank: int, world: int, port: int, args: tuple, env: Dict[str, str], out: Any) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            **env,
        }
    )
    import torch

    torch.set_num_threads(1)
    try:
        result = fn(*args)
        out.put((rank, True, result))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        out.put((rank, False, traceback.format_exc()))
    finally:
        try:
            from sppo_megatron.platform.distributed import destroy_distributed

            destroy_distributed()
        except Exception:  # noqa: BLE001 - teardown after a failure must not mask it
            pass


def run_ranks(
    fn: Callable, world_size: int, *args: Any, timeout: float = 180.0, env: Optional[Dict[str, str]] = None
) -> List[Any]:
    """Run `fn(*args)` on `world_size` gloo ranks; return the list of per-rank results."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(fn, r, world_size, port, args, env or {}, out), daemon=False)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: Dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(results))
                raise AssertionError(f"multi-rank test timed out after {timeout:.0f}s; ranks {missing} did not finish")
            try:
                rank, ok, value = out.get(timeout=min(remaining, 1.0))
            except queue.Empty as empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
                if dead:
                    raise AssertionError(
                        f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode} before reporting"
                    ) from empty
                continue
            if not ok:
                raise AssertionError(f"rank {rank} of {world_size} failed:\n{value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10 if len(results) == world_size else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(world_size)]


def launch_rank_processes(argv: List[str], world_size: int, env: Optional[Dict[str, str]] = None) -> List[Any]:
    """Start `argv` as `world_size` rank processes with the torchrun variables set but no
    launcher watching them (as plain srun runs tasks: a dead rank tears nothing down).
    Returns the Popen objects, rank order, stdout/stderr piped as text."""
    import subprocess

    port = free_port()
    procs = []
    for r in range(world_size):
        rank_env = {
            **os.environ,
            **(env or {}),
            "RANK": str(r),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(r),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(subprocess.Popen(argv, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs
