#!/usr/bin/env python
"""The project's Megatron actor against a plain transformers + torch loop doing the same work.

    python tools/bench_vs_hf.py [model and workload options of tools/bench_train.py] [--rounds 5]

One process (TP = PP = DP = 1). Both sides run the same model (the HF model is loaded with the
actor's exported weights), the same rollout batch, the same micro-batching (right-padded
micro-batches of --micro-batch-size samples, longest first) and the same work per step:

  log-probs  a no-grad pass: log softmax(logits)[label] of every response token;
  update     the SPPO square loss (sum of response log-probs - old - target)^2 averaged over the
             batch, backward per micro-batch, gradient clipping at optim.clip_grad, AdamW.

The rounds are interleaved phase by phase (log-probs of both sides, then the updates of both,
the order alternating each round) after --warmup rounds, so the machine's load hits both alike;
it prints one JSON line with the median seconds, tokens/s of each side, the ratios actor /
plain throughput (> 1: the actor is faster) of the medians and the median of the per-round
ratios (the figure load moves least), plus the load average.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from tools import bench_train  # noqa: E402


class PlainLoop:
    """transformers model + torch AdamW: the reference the actor is measured against."""

    def __init__(self, hf_config, state: dict, optim, micro_batch_size: int) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa", dtype=torch.float32)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "rotary" not in m]:
            raise RuntimeError(f"HF model does not take the actor's export: missing {missing}, unexpected {unexpected}")
        self.clip = float(optim.clip_grad)
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=optim.lr,
            betas=(optim.adam_beta1, optim.adam_beta2),
            eps=optim.adam_eps,
            weight_decay=optim.weight_decay,
        )
        self.micro = micro_batch_size

    def _micro_batches(self, batch):
        from sppo_megatron.actor.batch import collate

        order = sorted(range(len(batch)), key=lambda i: (-batch.input_lengths[i], i))
        return [collate(batch, order[k : k + self.micro]) for k in range(0, len(order), self.micro)]

    def _seq_logp(self, mb) -> torch.Tensor:
        logits = self.model(input_ids=mb.tokens).logits
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, mb.labels.unsqueeze(-1)).squeeze(-1)
        return torch.where(mb.response_mask, lp.double(), torch.zeros((), dtype=torch.float64)).sum(dim=1)

    @torch.no_grad()
    def log_probs(self, batch) -> torch.Tensor:
        self.model.eval()
        out = torch.zeros(len(batch), dtype=torch.float64)
        for mb in self._micro_batches(batch):
            out[torch.tensor(mb.sample_index)] = self._seq_logp(mb)
        return out

    def update(self, batch, targets: torch.Tensor, old: torch.Tensor) -> float:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for mb in self._micro_batches(batch):
            rows = torch.tensor(mb.sample_index)
            err = self._seq_logp(mb) - old[rows] - targets[rows].double()
            loss = (err * err).sum() / len(batch)
            loss.backward()
            total += float(loss.detach())
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return total


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def main(argv=None) -> dict:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--rounds", type=int, default=5, help="timed rounds per side (after --warmup)")
    known, rest = own.parse_known_args(argv)
    rounds = known.rounds
    args = bench_train.parse_args(rest)
    if args.tp != 1 or args.pp != 1:
        raise SystemExit("bench_vs_hf compares one process: --tp 1 --pp 1")
    from sppo_megatron.trainer.setup import build_actor

    hf = bench_train.hf_config_from_args(args)
    hf.torch_dtype = torch.float32
    cfg = bench_train.build_config(args)
    actor = build_actor(cfg, hf, load_weights=False)
    if actor.dtype != torch.float32:
        raise SystemExit("bench_vs_hf compares fp32 runs (--dtype fp32, or auto on CPU)")
    plain = PlainLoop(
        hf, {n: t.detach().clone() for n, t in actor.export_hf_weights()}, cfg.optim, args.micro_batch_size
    )
    batch = bench_train.make_batch(args, hf.vocab_size)
    targets = torch.randn(len(batch), generator=torch.Generator().manual_seed(args.seed)) * 0.1
    tokens = sum(batch.input_lengths)
    check = (actor.log_probs(batch).sequence_logp() - plain.log_probs(batch)).abs().max().item()

    sides = {
        "actor": [actor.log_probs, lambda old: actor.update(batch, targets, old)],
        "plain": [plain.log_probs, lambda old: plain.update(batch, targets, old)],
    }
    times = {side: ([], []) for side in sides}  # (log-prob seconds, update seconds) per round
    for r in range(args.warmup + rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        olds = {}
        for side in order:  # phase by phase: each actor figure is paired with a plain one seconds apart
            t, olds[side] = _timed(functools.partial(sides[side][0], batch))
            if r >= args.warmup:
                times[side][0].append(t)
        for side in order:
            t, _ = _timed(functools.partial(sides[side][1], olds[side]))
            if r >= args.warmup:
                times[side][1].append(t)
    med = {side: [statistics.median(times[side][k]) for k in (0, 1)] for side in sides}
    paired = [statistics.median(p / a for a, p in zip(times["actor"][k], times["plain"][k])) for k in (0, 1)]
    result = {
        "model": f"qwen2-like h{hf.hidden_size} L{hf.num_hidden_layers} V{hf.vocab_size}"
        if not (args.preset or args.hf_config)
        else (args.preset or args.hf_config),
        "batch": args.batch,
        "seq": args.seq,
        "vary_lengths": args.vary_lengths,
        "micro_batch_size": args.micro_batch_size,
        "tokens_per_step": tokens,
        "rounds": rounds,
        "distributed_optimizer": not args.no_dist_opt,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "logp_max_abs_diff_seq": check,
        "actor_log_probs_s": round(med["actor"][0], 4),
        "plain_log_probs_s": round(med["plain"][0], 4),
        "actor_update_s": round(med["actor"][1], 4),
        "plain_update_s": round(med["plain"][1], 4),
        "actor_log_probs_tokens_per_s": round(tokens / med["actor"][0], 1),
        "plain_log_probs_tokens_per_s": round(tokens / med["plain"][0], 1),
        "actor_update_tokens_per_s": round(tokens / med["actor"][1], 1),
        "plain_update_tokens_per_s": round(tokens / med["plain"][1], 1),
        "log_probs_ratio": round(med["plain"][0] / med["actor"][0], 3),
        "update_ratio": round(med["plain"][1] / med["actor"][1], 3),
        "log_probs_ratio_paired_median": round(paired[0], 3),
        "update_ratio_paired_median": round(paired[1], 3),
    }
    print(json.dumps(result), flush=True)
    from sppo_megatron.platform.distributed import destroy_distributed

    destroy_distributed()
    return result


if __name__ == "__main__":
    main()
