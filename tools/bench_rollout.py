#!/usr/bin/env python
"""Rollout-engine figures on one model: start-up, one full weight sync, and generation throughput,
for each engine named, in one process (world size 1), on the same prompts.

    python tools/bench_rollout.py --engine hf sglang [--hf DIR | --preset tiny|4x256|small]
                                  [--prompts 32] [--n 8] [--prompt-len 16] [--max-new-tokens 64]
                                  [--rounds 3] [--dtype fp32] [--json OUT]

The model is an HF directory (`--hf`, e.g. the demo's `outputs/tiny_cpu/assets/model`) or a random
Qwen2-shaped preset written to a temporary directory. Prompts are random token ids (seeded), each
sampled `--n` times at temperature 1 with a fixed seed per round; a random model rarely stops
early, so most rows run to `--max-new-tokens`. Tokens per second counts the generated tokens of a
round over its wall time; the first round is a warm-up and is not counted. Start-up is the
engine's constructor (for SGLang: its scheduler and detokenizer processes up); sync is one
`WeightSync.sync` of the model's state dict. Prints one JSON object per engine (and writes them
to `--json`). On a shared machine quote the best round and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=4),
    "4x256": dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4),
    "small": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12),
}


def make_preset(name: str, out_dir: str) -> str:
    from sppo_megatron.testing.tiny import tiny_config, tiny_model

    sizes = PRESETS[name]
    heads = max(4, sizes["hidden_size"] // 64)
    config = tiny_config(
        "qwen2", **sizes, num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=2048
    )
    tiny_model(config).save_pretrained(out_dir)
    return out_dir


def build_engine(kind: str, hf_dir: str, dtype, log_dir: str):
    from sppo_megatron.rollout import make_placement

    if kind == "hf":
        import torch

        from sppo_megatron.rollout.hf_engine import HFRolloutEngine

        return HFRolloutEngine(hf_dir, dtype=dtype, device=torch.device("cpu"), placement=make_placement(1))
    from sppo_megatron.rollout.sglang import SglangRolloutEngine

    return SglangRolloutEngine(hf_dir, tp=1, dtype=dtype, placement=make_placement(1), log_dir=log_dir)


def bench(kind: str, hf_dir: str, args: argparse.Namespace, log_dir: str) -> dict:
    import torch

    from sppo_megatron.models.hf_io import iter_hf_weights
    from sppo_megatron.platform.dtypes import resolve_dtype
    from sppo_megatron.rollout import SamplingParams
    from sppo_megatron.sync import WeightSync

    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    start = time.perf_counter()
    engine = build_engine(kind, hf_dir, dtype, log_dir)
    start_s = time.perf_counter() - start
    try:
        sync = WeightSync(engine, check=False).sync(iter_hf_weights(hf_dir))
        g = torch.Generator().manual_seed(0)
        vocab = json.load(open(os.path.join(hf_dir, "config.json")))["vocab_size"]
        prompts = [torch.randint(4, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
        rates = []
        for r in range(args.rounds + 1):
            sampling = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=r)
            t = time.perf_counter()
            samples = engine.generate(prompts, sampling, n=args.n)
            seconds = time.perf_counter() - t
            if r:
                rates.append(sum(len(s.response_ids) for s in samples) / seconds)
    finally:
        engine.shutdown()
    return {
        "engine": kind,
        "start_s": round(start_s, 2),
        "sync_s": round(sync["timing/sync_s"], 3),
        "sync_mb": round(sync["sync/bytes"] / 1e6, 1),
        "tokens_per_s_median": round(statistics.median(rates)),
        "tokens_per_s_best": round(max(rates)),
        "rows": args.prompts * args.n,
        "max_new_tokens": args.max_new_tokens,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", nargs="+", choices=("hf", "sglang"), default=["hf"])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--hf", help="HF model directory")
    src.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--json", help="also write the results here (one object per line)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = args.hf or make_preset(args.preset, os.path.join(tmp, "model"))
        results = [bench(kind, hf_dir, args, os.path.join(tmp, "logs")) for kind in args.engine]
    for r in results:
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
