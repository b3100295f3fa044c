#!/usr/bin/env python
"""Generation throughput of the rollout engines (HF, vLLM) on the same prompts and weights.

    python tools/bench_rollout_engines.py --model DIR [--data FILE.parquet] [--engines hf,vllm]
    python tools/bench_rollout_engines.py --hidden 256 --layers 4 [...]

One process, fp32, as the engines run in the trainer: each engine is created, synced from the
model directory's weights (WeightSync), then `generate(prompts, n)` runs --warmup + --rounds
times, the engines interleaved round by round so the machine's load hits both alike. Prompts:
the chat-templated prompts of --data (the demo's held-out set) with --model, or random token ids
of --prompt-len for a tiny_config Qwen2 of --hidden / --layers built on the fly (random weights:
responses run to --max-new-tokens). Prints one JSON line per engine: median seconds per round,
generated tokens per round and tokens/s of the median, plus the load average.
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
from sppo_megatron.rollout import SamplingParams  # noqa: E402
from sppo_megatron.sync import WeightSync  # noqa: E402


def demo_prompts(model_dir: str, data: str, count: int) -> List[List[int]]:
    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = pd.read_parquet(data)["prompt"].tolist()[:count]
    return [
        list(
            tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True, return_dict=False)
        )
        for messages in rows
    ]


def random_model(out: str, hidden: int, layers: int) -> str:
    from sppo_megatron.testing.tiny import make_tiny_hf_model

    return make_tiny_hf_model(
        "qwen2",
        out,
        vocab_size=1024,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=1024,
        max_shard_size="50MB",
    )


def make_engine(kind: str, model_dir: str):
    if kind == "hf":
        from sppo_megatron.rollout.hf_engine import HFRolloutEngine

        return HFRolloutEngine(model_dir, dtype=torch.float32, device=torch.device("cpu"))
    from sppo_megatron.rollout.vllm import VllmRolloutEngine

    return VllmRolloutEngine(model_dir, dtype=torch.float32, seed=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model directory with weights (e.g. the demo's OUT/assets/model)")
    parser.add_argument("--data", help="parquet of prompts (verl schema) for --model")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir = args.model
            prompts = demo_prompts(model_dir, args.data, args.prompts)
        else:
            model_dir = random_model(os.path.join(tmp, "model"), args.hidden, args.layers)
            g = torch.Generator().manual_seed(0)
            prompts = torch.randint(8, 1024, (args.prompts, args.prompt_len), generator=g).tolist()
        engines = {}
        for kind in args.engines.split(","):
            engines[kind] = make_engine(kind, model_dir)
            WeightSync(engines[kind]).sync(iter_hf_weights(model_dir))
        sampling = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=1)
        times = {k: [] for k in engines}
        tokens = {k: [] for k in engines}
        for r in range(args.warmup + args.rounds):
            for kind in engines if r % 2 == 0 else list(engines)[::-1]:
                start = time.perf_counter()
                samples = engines[kind].generate(prompts, sampling, n=args.n)
                elapsed = time.perf_counter() - start
                if r >= args.warmup:
                    times[kind].append(elapsed)
                    tokens[kind].append(sum(len(s.response_ids) for s in samples))
        for kind, engine in engines.items():
            median = statistics.median(times[kind])
            generated = statistics.median(tokens[kind])
            print(
                json.dumps(
                    {
                        "engine": kind,
                        "model": args.model or f"qwen2 hidden {args.hidden} x {args.layers} layers (random)",
                        "prompts": len(prompts),
                        "n": args.n,
                        "max_new_tokens": args.max_new_tokens,
                        "median_s": round(median, 3),
                        "tokens": generated,
                        "tokens_per_s": round(generated / median, 1),
                        "torch_threads": torch.get_num_threads(),
                        "load": os.getloadavg()[0],
                    }
                ),
                flush=True,
            )
            engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
