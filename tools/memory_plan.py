"""Predict one training rank's host (CPU runs) or device memory from a run's config, before running it.

    python tools/memory_plan.py --config CFG.yaml [dotted.key=value ...] [--json]

Reads the HF config of `model.path` (no weights), counts the parameters on the meta device and
applies megatron's rules (`actor/memory.py`): parameters in the training dtype, fp32 gradients,
Adam's two fp32 moments (plus fp32 main parameters for bf16 / fp16) sharded over data-parallel
ranks; the colocated HF rollout engine's own copy of the weights; the activations of the largest
micro-batch (the logits dominate: fp32 logits, their log-softmax and its gradient over the padded
vocabulary); the embedding's and LM head's weight gradients before they are added into the
gradient buffer (2 x the largest tensor in fp32: the update's peak); the checkpoint transient (the largest tensor a save copies, models/ckpt_writer.py);
and the runtime, measured: this interpreter's RSS after importing the trainer (torch,
megatron-core, transformers). Prints bytes per component and the predicted peak of the update and save phases,
to compare with a run's `memory/update_peak_rss_gib` / `memory/save_peak_rss_gib`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Dict, List, Optional

GIB = 1024**3


def count_parameters(hf_config) -> Dict[str, int]:
    """Elements of the HF model (meta device: nothing allocated) and of its largest tensor."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    tensors = {id(p): p for p in model.parameters()}.values()
    return {"total": sum(p.numel() for p in tensors), "largest": max(p.numel() for p in tensors)}


def runtime_rss() -> int:
    """This interpreter's RSS with the trainer and its libraries imported, in bytes."""
    import megatron.core  # noqa: F401 - imported for its resident size
    import transformers  # noqa: F401

    import sppo_megatron.trainer.loop  # noqa: F401
    from sppo_megatron.platform.memory import host_rss_bytes

    return host_rss_bytes()


def plan(cfg, hf_config, runtime: int) -> Dict[str, int]:
    """Bytes per component for one training rank of the run `cfg` (see the module docstring)."""
    from sppo_megatron.models.bridge import Bridge
    from sppo_megatron.platform.dtypes import resolve_dtype

    dims = cfg.parallel
    dtype = resolve_dtype(cfg.model.dtype)
    width = 2 if dtype.is_floating_point and dtype.itemsize == 2 else 4
    counts = count_parameters(hf_config)
    vocab, hidden = hf_config.vocab_size, hf_config.hidden_size
    padded = Bridge(hf_config).padded_vocab_size(dims.tp)
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    total = counts["total"] + (padded - vocab) * hidden * (1 if tied else 2)
    local = total // (dims.tp * dims.pp)
    dp = max(1, _world(cfg) // (dims.tp * dims.pp))
    optimizer_per = 8 + (0 if width == 4 else 4)
    shards = dp if dims.use_distributed_optimizer else 1
    engine_width = 2 if resolve_dtype(cfg.rollout.dtype).itemsize == 2 else 4
    colocated = cfg.rollout.placement == "colocated" and cfg.rollout.engine == "hf"
    tokens = cfg.train.micro_batch_size * (cfg.data.max_prompt_length + cfg.data.max_response_length)
    if cfg.train.max_tokens_per_micro_batch:
        tokens = min(tokens, cfg.train.max_tokens_per_micro_batch)
    return {
        "runtime": runtime,
        "params": local * width,
        "grads": local * 4,
        "optimizer": math.ceil(local * optimizer_per / shards),
        "engine": counts["total"] * engine_width if colocated else 0,
        "activations": 3 * tokens * (padded // dims.tp) * 4,
        # without CUDA's fused gradient accumulation the embedding's and the LM head's weight
        # gradients are whole fp32 tensors before megatron adds them into its gradient buffer
        "weight_grad_transient": 2 * 4 * counts["largest"],
        "checkpoint_transient": counts["largest"] * width,
    }


def _world(cfg) -> int:
    from sppo_megatron.platform.distributed import detect_launch

    return detect_launch().world_size


def phases(parts: Dict[str, int]) -> Dict[str, int]:
    """Predicted peaks: the update holds the state, the engine, the activations and the weight
    gradients in flight; a save the state, the engine and the transient."""
    held = parts["runtime"] + parts["params"] + parts["grads"] + parts["optimizer"] + parts["engine"]
    update = held + parts["activations"] + parts["weight_grad_transient"]
    return {"update": update, "save": held + parts["checkpoint_transient"]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the run's YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, as sppo-train takes them")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)

    from sppo_megatron.config.loader import load_config
    from sppo_megatron.errors import UserError
    from sppo_megatron.models.hf_io import load_hf_config

    try:
        cfg = load_config(args.config, args.overrides, check_paths=False, cross_field=False)
        if cfg.model.path is None:
            raise UserError("model.path: the plan needs the model's HF config")
        hf_config = load_hf_config(str(cfg.model.path), "model.path")
    except UserError as e:
        print(f"memory_plan: error: {e}", file=sys.stderr)
        return 2
    parts = plan(cfg, hf_config, runtime_rss())
    peaks = phases(parts)
    if args.json:
        print(json.dumps({"bytes": parts, "peak_bytes": peaks}))
        return 0
    for name, value in parts.items():
        print(f"{name:22s} {value / GIB:8.3f} GiB")
    for name, value in peaks.items():
        print(f"{'peak ' + name:22s} {value / GIB:8.3f} GiB   (compare memory/{name}_peak_rss_gib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
