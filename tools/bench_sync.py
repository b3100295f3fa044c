#!/usr/bin/env python
"""Weight-sync throughput: Megatron export -> rollout engine, against a plain copy of the same
bytes on the same device (host memcpy on CPU, device-to-device copy on GPU).

    python tools/bench_sync.py [--preset small|tiny|moe-small | --hf DIR] [--tp 1] [--pp 1] [--ep 1]
                               [--engine hf|sglang] [--bucket-mb 512] [--iters 5]
                               [--source megatron|hf] [--rollout-tp 1] [--json OUT]
                               [--lora-rank R [--lora-experts]]

--source megatron (default): a megatron-core GPTModel built by the bridge at (TP, PP) on
PP*lcm(TP, EP) ranks (the script starts them itself with torch.distributed.run when not launched
by torchrun; --ep splits a mixture-of-experts model's experts) streams `bridge.export_hf_weights(model)` into the engine through `WeightSync`, as the
trainer does every step (gathers across TP and PP included). --source hf streams the state dict of
the HF model (TP=PP=1): the engine-side cost alone.
Each iteration is one full sync followed by one floor copy of the same tensors (each into a
preallocated buffer: `dst.copy_(src)`); the first is a warm-up and is not counted. The floor is
the best of those copies. Each iteration also times the export alone (the stream consumed
without an engine: the bridge's gathers and re-layout copies) and counts the page faults of
rank 0 during the sync (minor faults: a fresh CPU allocation's pages, none once warm). Prints one
JSON object (rank 0): seconds (median and best), GB (1e9 bytes) and GB/s of sync and floor, the
median sync over the best floor, the median of the per-iteration ratios (sync over the copy
right after it: on a loaded machine the figure that the load moves least), the export-alone
seconds and the page faults per sync. On a shared machine the spread between iterations is the load of other
processes: quote the best and the median.

--lora-rank R attaches LoRA adapters (rank R, alpha 2R; --lora-experts: the routed experts too)
and streams the actor's export: merged weights, the whole model in the warm-up sync
(`first_sync_gb`), then only the adapted tensors (the HF engine keeps the rest: `partial`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {
    # (tiny-model variant, sizes). Qwen2-shaped; "small" is about 0.13 B parameters (0.5 GB in
    # fp32); "moe-small" is Qwen3-MoE-shaped, 8 experts top 2, about 0.15 B parameters (0.6 GB)
    "tiny": (
        "qwen2",
        dict(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
    ),
    "small": (
        "qwen2",
        dict(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
        ),
    ),
    "moe-small": (
        "qwen3-moe",
        dict(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            head_dim=64,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=384,
        ),
    ),
}


def make_preset(name: str, out_dir: str) -> str:
    from sppo_megatron.testing.tiny import tiny_config, tiny_model

    arch, sizes = PRESETS[name]
    tiny_model(tiny_config(arch, **sizes, max_position_embeddings=2048)).save_pretrained(out_dir)
    return out_dir


def world_size(tp: int, pp: int, ep: int) -> int:
    """Ranks for a (TP, PP, EP) layout: EP must divide the TP x DP ranks of a stage."""
    return pp * math.lcm(tp, ep)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_once(dst, tensors) -> float:
    """Seconds to copy all `tensors` into the preallocated `dst` buffers on the same device."""
    _sync(tensors[0].device)
    t0 = time.perf_counter()
    for d, s in zip(dst, tensors):
        d.copy_(s)
    _sync(tensors[0].device)
    return time.perf_counter() - t0


def export_once(stream) -> float:
    """Seconds to consume one export stream without an engine."""
    t0 = time.perf_counter()
    for _ in stream:
        pass
    return time.perf_counter() - t0


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run(args) -> dict:
    import torch
    import torch.distributed as dist

    from sppo_megatron.config.schema import ParallelConfig
    from sppo_megatron.platform.dtypes import resolve_dtype
    from sppo_megatron.rollout.base import make_engine_groups
    from sppo_megatron.sync import WeightSync

    hf_dir = args.hf
    if hf_dir is None:
        hf_dir = os.path.join(tempfile.gettempdir(), f"sppo_bench_sync_{args.preset}")
        rank0 = int(os.environ.get("RANK", "0")) == 0
        if rank0 and not os.path.isfile(os.path.join(hf_dir, "config.json")):
            make_preset(args.preset, hf_dir)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or args.source == "megatron"
    if args.source == "megatron":
        # import before the CPU compatibility layer patches torch.cuda (torch.compile'd fusions
        # in megatron-core trip over the patched functions otherwise)
        import megatron.core.models.gpt  # noqa: F401
        import megatron.core.models.gpt.gpt_layer_specs  # noqa: F401
    if distributed:
        from sppo_megatron.platform.distributed import init_distributed

        init_distributed(args.tp, args.pp, seed=0, ep=args.ep)
        dist.barrier()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    if args.source == "megatron":
        from sppo_megatron.config.schema import LoraConfig, ModelConfig
        from sppo_megatron.models.bridge import get_bridge
        from sppo_megatron.models.export import WeightExport
        from sppo_megatron.models.lora import attach_lora

        bridge = get_bridge(hf_dir)
        lora = LoraConfig(rank=args.lora_rank, alpha=2.0 * max(args.lora_rank, 1), experts=args.lora_experts)
        model = bridge.build_model(ModelConfig(lora=lora), ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep))
        if args.lora_rank:
            attach_lora(model, lora, seed=0)
        model_dtype = next(model.parameters()).dtype

        def stream():
            return WeightExport(bridge, model)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device)
        model_dtype = torch.float32

        def stream():
            return (
                (k, v.detach())
                for k, v in model.state_dict().items()
                if k != "lm_head.weight" or not model.config.tie_word_embeddings
            )

    if args.engine == "hf":
        from sppo_megatron.rollout.hf_engine import HFRolloutEngine

        engine = HFRolloutEngine(
            hf_dir, dtype=resolve_dtype(args.dtype, device), device=device, placement=make_engine_groups(1)
        )
    else:
        from sppo_megatron.rollout.sglang import SglangRolloutEngine

        engine = SglangRolloutEngine(
            hf_dir,
            tp=args.rollout_tp,
            mem_fraction=args.mem_fraction,
            dtype=resolve_dtype(args.dtype, device),
            bucket_mb=args.bucket_mb,
            placement=make_engine_groups(args.rollout_tp),
            sync_mode=args.sync_mode,
        )
    sync = WeightSync(engine)
    tensors = [t.detach().clone() for _, t in stream()]
    dst = [torch.empty_like(t) for t in tensors]
    times, floors, exports, faults, last, first = [], [], [], [], {}, None
    for i in range(args.iters + 1):  # each sync paired with a floor copy right after it
        if distributed:
            dist.barrier()
        before = minor_faults()
        last = sync.sync(stream())
        first = first or last
        after = minor_faults()
        floor_s = copy_once(dst, tensors)
        if distributed:
            dist.barrier()
        export_s = export_once(stream())
        if i > 0:
            times.append(last["timing/sync_s"])
            floors.append(floor_s)
            exports.append(export_s)
            faults.append(after - before)
    floor = min(floors)
    nbytes = last["sync/bytes"]
    engine.shutdown()
    sync_s = statistics.median(times)
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{os.cpu_count()}",
        "engine": args.engine,
        "source": args.source,
        "tp": args.tp,
        "pp": args.pp,
        "ep": args.ep,
        "model": args.hf or args.preset,
        "model_dtype": str(model_dtype).replace("torch.", ""),
        "engine_dtype": str(engine.dtype).replace("torch.", ""),
        "tensors": int(last["sync/tensors"]),
        "gb": nbytes / 1e9,
        "lora_rank": args.lora_rank,
        "partial": bool(last["sync/partial"]),
        "first_sync_gb": first["sync/bytes"] / 1e9,
        "sync_s_median": sync_s,
        "sync_s_min": min(times),
        "sync_s_all": times,
        "sync_gb_per_s": nbytes / sync_s / 1e9,
        "sync_gb_per_s_best": nbytes / min(times) / 1e9,
        "floor_s": floor,
        "floor_gb_per_s": nbytes / floor / 1e9,
        "sync_over_floor": sync_s / floor,
        "sync_over_floor_paired_median": statistics.median(t / f for t, f in zip(times, floors)),
        "export_alone_s_median": statistics.median(exports),
        "page_faults_per_sync": faults,
        "checked": bool(last["sync/checked"]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="weight-sync throughput vs a plain copy")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--hf", help="HF model directory (overrides --preset)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1, help="expert-parallel size (mixture-of-experts models)")
    p.add_argument("--engine", choices=("hf", "sglang"), default="hf")
    p.add_argument("--source", choices=("megatron", "hf"), default="megatron")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"), help="rollout engine dtype")
    p.add_argument("--bucket-mb", type=float, default=512)
    p.add_argument("--rollout-tp", type=int, default=1)
    p.add_argument("--mem-fraction", type=float, default=0.5)
    p.add_argument("--sync-mode", choices=("flattened_bucket", "tensor"), default="flattened_bucket")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (0 = none)")
    p.add_argument("--lora-experts", action="store_true", help="LoRA on the routed experts too")
    args = p.parse_args(argv)
    world = world_size(args.tp, args.pp, args.ep) if args.source == "megatron" else 1
    if args.source == "hf" and (args.tp, args.pp, args.ep) != (1, 1, 1):
        p.error("--source hf streams an HF state dict: TP=PP=EP=1 only")
    if "WORLD_SIZE" not in os.environ and world > 1:
        from sppo_megatron.platform.distributed import free_port

        if args.hf is None:  # build the preset once, before the ranks start
            path = os.path.join(tempfile.gettempdir(), f"sppo_bench_sync_{args.preset}")
            if not os.path.isfile(os.path.join(path, "config.json")):
                make_preset(args.preset, path)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={world}",
            f"--master-port={free_port()}",
            os.path.abspath(__file__),
        ] + (argv if argv is not None else sys.argv[1:])
        return subprocess.call(cmd)
    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=1))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
