"""Training memory per rank with and without LoRA: parameters, gradients, optimizer state.

    python tools/lora_memory.py --shape moe-small --dtype bf16                    # full fine-tuning
    python tools/lora_memory.py --shape moe-small --dtype bf16 --lora-rank 16 [--lora-experts]
    torchrun --nproc-per-node 2 tools/lora_memory.py --shape llama-3.2-1b --dtype bf16 --tp 2 --lora-rank 16

Builds this rank's stage of the model with random weights (megatron-core; gloo on CPU) and, with
--lora-rank, its adapters (the base frozen), then computes the bytes by megatron's rules
(`actor.memory.expected_memory`: fp32 gradients of the trainable elements, Adam's two fp32
moments plus fp32 main parameters for bf16 ones, sharded over data-parallel ranks).
--allocate builds the whole actor instead (DDP, distributed optimizer, Adam state) and reads
what it holds (`measured_memory`); tests/test_lora.py keeps the two equal. Prints one JSON line
per rank (GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sync import PRESETS  # noqa: E402
from model_shapes import LLAMA_3_2_1B  # noqa: E402

SHAPES = ("llama-3.2-1b", "moe-small")


def hf_config(shape: str):
    if shape == "llama-3.2-1b":
        from transformers import LlamaConfig

        return LlamaConfig(**LLAMA_3_2_1B)
    from sppo_megatron.testing.tiny import tiny_config

    arch, sizes = PRESETS[shape]
    return tiny_config(arch, **sizes, max_position_embeddings=2048)


def build_config(args):
    from sppo_megatron.config.schema import Config, LoraConfig, ModelConfig, ParallelConfig, TrainerConfig

    lora = LoraConfig(rank=args.lora_rank, alpha=2.0 * max(args.lora_rank, 1), experts=args.lora_experts)
    return Config(
        model=ModelConfig(dtype=args.dtype, transformer_impl="local", lora=lora),
        parallel=ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep),
        trainer=TrainerConfig(seed=0),
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=SHAPES, required=True)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning")
    p.add_argument("--lora-experts", action="store_true", help="adapt the routed experts too")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--allocate", action="store_true", help="build the whole actor and measure it")
    args = p.parse_args(argv)

    from megatron.core import parallel_state as ps

    from sppo_megatron.actor.memory import expected_memory, measured_memory
    from sppo_megatron.models import get_bridge
    from sppo_megatron.platform.distributed import init_distributed, rank
    from sppo_megatron.platform.layout import ParallelLayout
    from sppo_megatron.trainer.setup import build_actor

    cfg = build_config(args)
    hf = hf_config(args.shape)
    if args.allocate:
        actor = build_actor(cfg, hf, load_weights=False)
        memory = measured_memory(actor)
    else:
        init_distributed(args.tp, args.pp, 0, ep=args.ep)
        bridge = get_bridge(hf)
        model = bridge.build_model(cfg.model, cfg.parallel, perform_initialization=False)
        if args.lora_rank:
            from sppo_megatron.models.lora import attach_lora

            attach_lora(model, cfg.model.lora, seed=0)
        memory = expected_memory(
            model, dp=ParallelLayout.current().dp, expert_dp=ps.get_expert_data_parallel_world_size()
        )
    gib = 2**30
    out = {
        "shape": args.shape,
        "dtype": args.dtype,
        "lora_rank": args.lora_rank,
        "lora_experts": args.lora_experts,
        "layout": {"tp": args.tp, "pp": args.pp, "ep": args.ep},
        "rank": rank(),
        "how": "measured" if args.allocate else "computed",
        "trainable_params": memory.trainable_params,
        "params_gib": round(memory.params / gib, 4),
        "grads_gib": round(memory.grads / gib, 4),
        "optimizer_gib": round(memory.optimizer / gib, 4),
        "total_gib": round(memory.total / gib, 4),
    }
    print(json.dumps(out), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return out


if __name__ == "__main__":
    main()
