#!/usr/bin/env python
"""The log-prob operation alone: megatron's `vocab_parallel_cross_entropy` against the fused path
(`sppo_megatron/actor/logprobs.py`) on the same random fp32 logits, one process (TP=1).

    OMP_NUM_THREADS=1 python tools/bench_logprobs.py [--rows-per-sample 255] [--batch 8]
                                                     [--vocab 32000] [--rounds 7]

Per round and side, interleaved: the forward with grad, its backward (`torch.autograd.grad`) and
a no-grad call; prints one JSON line with the medians in ms (first round dropped) and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rows-per-sample", type=int, default=255)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from sppo_megatron.actor.logprobs import token_log_probs, token_log_probs_and_entropy
    from sppo_megatron.platform.distributed import destroy_distributed, init_distributed

    init_distributed(1, 1, seed=0)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.rows_per_sample)
    logits = torch.randn(*shape, args.vocab, generator=gen)
    labels = torch.randint(0, args.vocab, shape, generator=gen)
    upstream = torch.randn(*shape, generator=gen)
    sides = {
        "megatron": (
            lambda z: -vocab_parallel_cross_entropy(vocab_parallel_logits=z, target=labels),
            lambda z: -vocab_parallel_cross_entropy(vocab_parallel_logits=z, target=labels),
        ),
        "fused": (
            lambda z: token_log_probs(z, labels),
            lambda z: token_log_probs_and_entropy(z, labels, with_entropy=False)[0],
        ),
    }
    times = {f"{s}_{k}": [] for s in sides for k in ("fwd", "bwd", "nograd")}
    for r in range(args.rounds):
        for side, (grad_fn, nograd_fn) in sides.items():
            z = logits.clone().requires_grad_(True) * 1  # a non-leaf, as the model's output
            t0 = time.perf_counter()
            lp = grad_fn(z)
            t1 = time.perf_counter()
            torch.autograd.grad((lp * upstream).sum(), z)
            t2 = time.perf_counter()
            plain = logits.clone()
            with torch.no_grad():
                t3 = time.perf_counter()
                nograd_fn(plain)
                t4 = time.perf_counter()
            if r:
                times[f"{side}_fwd"].append(t1 - t0)
                times[f"{side}_bwd"].append(t2 - t1)
                times[f"{side}_nograd"].append(t4 - t3)
    out = {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}
    out.update(
        shape=[args.batch * args.rows_per_sample, args.vocab], load_average=[round(x, 1) for x in os.getloadavg()]
    )
    print(json.dumps(out), flush=True)
    destroy_distributed()


if __name__ == "__main__":
    main()
