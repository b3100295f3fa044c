#!/usr/bin/env python
"""torch.profiler view of the actor's update: what it spends outside the matrix multiplies.

    python tools/profile_update.py [model and workload options of tools/bench_train.py] [--updates 2]

One process (TP = PP = DP = 1; the distributed optimizer unless --no-dist-opt), random weights,
one warm-up update, then --updates profiled ones. Prints one JSON line: per update, the copy_
calls and their self-CPU milliseconds, the copies of at least 1 M elements (whole gradient or
parameter buffers, embedding-sized tensors), the top operators by self-CPU time, and the loss
and grad norm of each profiled update (to check that two trees did the same arithmetic).
Op counts are exact; milliseconds move with the machine's load.
"""

from __future__ import annotations

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from tools import bench_train  # noqa: E402

BIG = 1_000_000


def main(argv=None) -> dict:
    import argparse

    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--updates", type=int, default=2, help="profiled updates (after one warm-up)")
    known, rest = own.parse_known_args(argv)
    args = bench_train.parse_args(rest)
    if args.tp != 1 or args.pp != 1:
        raise SystemExit("profile_update profiles one process: --tp 1 --pp 1")
    from sppo_megatron.trainer.setup import build_actor

    hf = bench_train.hf_config_from_args(args)
    actor = build_actor(bench_train.build_config(args), hf, load_weights=False)
    batch = bench_train.make_batch(args, hf.vocab_size)
    targets = torch.randn(len(batch), generator=torch.Generator().manual_seed(args.seed)) * 0.1
    old = actor.log_probs(batch)
    actor.update(batch, targets, old)
    n = known.updates
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        metrics = [actor.update(batch, targets, old) for _ in range(n)]
    by_shape = prof.key_averages(group_by_input_shape=True)
    big = [
        e
        for e in by_shape
        if e.key == "aten::copy_" and e.input_shapes and e.input_shapes[0] and math.prod(e.input_shapes[0]) >= BIG
    ]
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    copies = next((e for e in ops if e.key == "aten::copy_"), None)
    result = {
        "distributed_optimizer": not args.no_dist_opt,
        "load_average": os.getloadavg(),
        "updates": n,
        "copy_calls_per_update": (copies.count if copies else 0) / n,
        "copy_self_ms_per_update": round((copies.self_cpu_time_total if copies else 0) / 1e3 / n, 1),
        "big_copies_per_update": sum(e.count for e in big) / n,
        "big_copy_self_ms_per_update": round(sum(e.self_cpu_time_total for e in big) / 1e3 / n, 1),
        "big_copy_shapes": sorted({str(e.input_shapes[0]) for e in big}),
        "top_self_ms_per_update": {e.key: round(e.self_cpu_time_total / 1e3 / n, 1) for e in ops[:12]},
        "loss": [m["train/loss"] for m in metrics],
        "grad_norm": [m["train/grad_norm"] for m in metrics],
    }
    print(json.dumps(result), flush=True)
    from sppo_megatron.platform.distributed import destroy_distributed

    destroy_distributed()
    return result


if __name__ == "__main__":
    main()
