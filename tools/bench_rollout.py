#!/usr/bin/env python
"""Rollout-engine figures on one model: start-up, one full weight sync, and generation throughput,
for each engine named, in one process (world size 1), on the same prompts and weights.

    python tools/bench_rollout.py --engine hf sglang vllm [--hf DIR [--data FILE.parquet] | --preset tiny|4x256|small]
                                  [--prompts 32] [--n 8] [--prompt-len 16] [--max-new-tokens 64]
                                  [--warmup 1] [--rounds 3] [--dtype fp32] [--json OUT]

The model is an HF directory (`--hf`, e.g. the demo's `outputs/tiny_cpu/assets/model`, whose
chat-templated prompts `--data` gives) or a random Qwen2-shaped preset written to a temporary
directory, prompted with random token ids (seeded; a random model rarely stops early, so most rows
run to `--max-new-tokens`). Every engine is started (timed: for SGLang its scheduler and
detokenizer processes coming up) and synced once from the model's weights (`WeightSync`, timed),
then `generate(prompts, n)` runs `--warmup` + `--rounds` times at temperature 1, the engines taking
turns round by round (in alternating order) so that the machine's load hits them alike.
Tokens per second counts a round's generated tokens over its wall time. Prints one JSON object
per engine (and writes them to `--json`) with the load average: on a shared machine quote the
median and the best round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sppo_megatron.models.hf_io import iter_hf_weights  # noqa: E402
from sppo_megatron.platform.dtypes import resolve_dtype  # noqa: E402
from sppo_megatron.rollout import SamplingParams, make_engine_groups  # noqa: E402
from sppo_megatron.sync import WeightSync  # noqa: E402

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


def data_prompts(model_dir: str, data: str, count: int) -> List[List[int]]:
    """The first `count` prompts of a verl-schema parquet, chat-templated by the model's tokenizer."""
    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = pd.read_parquet(data)["prompt"].tolist()[:count]
    return [
        list(tokenizer.apply_chat_template(list(m), add_generation_prompt=True, tokenize=True, return_dict=False))
        for m in rows
    ]


def build_engine(kind: str, hf_dir: str, dtype: torch.dtype, log_dir: str):
    if kind == "hf":
        from sppo_megatron.rollout.hf_engine import HFRolloutEngine

        return HFRolloutEngine(hf_dir, dtype=dtype, device=torch.device("cpu"), placement=make_engine_groups(1))
    if kind == "sglang":
        from sppo_megatron.rollout.sglang import SglangRolloutEngine

        return SglangRolloutEngine(hf_dir, tp=1, dtype=dtype, placement=make_engine_groups(1), log_dir=log_dir)
    from sppo_megatron.rollout.vllm import VllmRolloutEngine

    return VllmRolloutEngine(hf_dir, dtype=dtype, seed=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", nargs="+", choices=("hf", "sglang", "vllm"), default=["hf"])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--hf", help="HF model directory with weights")
    src.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--data", help="parquet of prompts (verl schema) for --hf; default: random token ids")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--json", help="also write the results here (one object per line)")
    args = p.parse_args(argv)
    if args.data and not args.hf:
        p.error("--data needs --hf (the tokenizer that templates the prompts)")
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = args.hf or make_preset(args.preset, os.path.join(tmp, "model"))
        if args.data:
            prompts = data_prompts(hf_dir, args.data, args.prompts)
        else:
            vocab = json.load(open(os.path.join(hf_dir, "config.json")))["vocab_size"]
            g = torch.Generator().manual_seed(0)
            prompts = torch.randint(4, vocab, (args.prompts, args.prompt_len), generator=g).tolist()
        engines, figures = {}, {}
        try:
            for kind in args.engine:
                start = time.perf_counter()
                engines[kind] = build_engine(kind, hf_dir, dtype, os.path.join(tmp, "logs"))
                started = time.perf_counter() - start
                sync = WeightSync(engines[kind], check=False).sync(iter_hf_weights(hf_dir))
                figures[kind] = {"start_s": started, "sync_s": sync["timing/sync_s"], "rates": []}
            for r in range(args.warmup + args.rounds):
                sampling = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=r)
                for kind in engines if r % 2 == 0 else list(engines)[::-1]:
                    t = time.perf_counter()
                    samples = engines[kind].generate(prompts, sampling, n=args.n)
                    seconds = time.perf_counter() - t
                    if r >= args.warmup:
                        figures[kind]["rates"].append(sum(len(s.response_ids) for s in samples) / seconds)
        finally:
            for engine in engines.values():
                engine.shutdown()
        for kind, f in figures.items():
            results.append(
                {
                    "engine": kind,
                    "model": args.hf or f"preset {args.preset}",
                    "start_s": round(f["start_s"], 2),
                    "sync_s": round(f["sync_s"], 3),
                    "tokens_per_s_median": round(statistics.median(f["rates"])),
                    "tokens_per_s_best": round(max(f["rates"])),
                    "rows": len(prompts) * args.n,
                    "max_new_tokens": args.max_new_tokens,
                    "torch_threads": torch.get_num_threads(),
                    "load": round(os.getloadavg()[0], 1),
                }
            )
    for r in results:
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
