"""Training throughput of the Megatron actor: tokens/s, step time, peak memory (and MFU on GPU).

    torchrun --nproc-per-node N tools/bench_train.py [model] [layout] [workload]
    python tools/bench_train.py ...                    (one process)

model     --hf-config DIR|config.json (any architecture the bridge supports), --preset llama3.2-1b
          (Llama-3.2-1B shape, tools/model_shapes.py), or a synthetic Qwen2-style model:
          --hidden 256 --layers 4 --heads 4 --kv-heads 2 --ffn 688 --vocab 32000
layout    --tp 1 --pp 1 (DP = world / (TP x PP)) --ep 1 --etp 1 (mixture-of-experts models)
          --no-dist-opt --dtype auto|bf16|fp32
          --recompute none|selective|full --sequence-parallel
workload  --seq 512 (tokens per sample: prompt + response) --prompt-len 128 --batch 16 (samples per
          optimizer step, all DP ranks together) --micro-batch-size 1 | --max-tokens 4096
          --steps 5 --warmup 1 --vary-lengths (responses of random length up to the maximum)
kernels   --sdpa-backend auto|flash|efficient|cudnn|math: the torch SDPA kernels the local layer
          spec may use (not auto: only that one, so a run that cannot use it fails instead of
          silently falling back)
extra     --measure-offload: after the timed steps, time actor.offload() / onload() and record
          the GPU memory allocated before, while offloaded and after (log-probs must come back
          bit-identical)

It builds the real `MegatronActor` (random weights: nothing is loaded), then times
`actor.log_probs` and `actor.update` on a synthetic rollout batch (one optimizer step per
update). Reported: tokens/s of the update (prompt + response tokens the model reads, all ranks
together), update step time, log-prob throughput, peak memory per rank (CUDA max allocated, or
the process's peak RSS on CPU), and on GPU the model FLOPs utilisation

    MFU = (6 N + 6 L h s) x tokens / (step time x GPUs x peak dense bf16 FLOP/s)

with N the matmul parameters (transformer layers + LM head; the input embedding is a lookup),
6 L h s the causal attention score/value matmuls forward + backward per token (L layers, hidden
h, sequence length s), and peaks from a table keyed by the device name (recomputation is not
counted: that would be hardware FLOPs utilisation). One JSON line with every figure is printed
(and appended to --json-out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from tools.model_shapes import LLAMA_3_2_1B  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by device-name substring; first match wins.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("H800", 989.4),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
]


PRESETS = {"llama3.2-1b": LLAMA_3_2_1B}
SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}


def sdpa_kernels(name: str):
    """Context that restricts torch SDPA to one backend (a no-op for 'auto')."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def peak_tflops(device_name: str):
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf-config", help="HF model directory or config.json (else the synthetic model below)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named shape with random weights (else --hidden ...)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=None, help="default: 8/3 hidden rounded up to 8")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1, help="expert-parallel size (mixture-of-experts models)")
    p.add_argument("--etp", type=int, default=1, help="expert tensor-parallel size")
    p.add_argument("--no-dist-opt", action="store_true", help="plain (not distributed) optimizer")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--recompute", default="none", choices=("none", "selective", "full"))
    p.add_argument("--seq", type=int, default=512, help="tokens per sample (prompt + response)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="samples per optimizer step (all DP ranks)")
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=None, help="token budget per micro-batch (dynamic batching)")
    p.add_argument("--vary-lengths", action="store_true", help="random response lengths in [1, seq - prompt-len]")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sdpa-backend", default="auto", choices=("auto",) + tuple(SDPA_BACKENDS))
    p.add_argument("--measure-offload", action="store_true", help="time offload()/onload() after the steps")
    p.add_argument("--json-out", help="append the result as one JSON line to this file")
    p.add_argument(
        "--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (alpha 2x rank); 0 = all weights"
    )
    p.add_argument("--lora-experts", action="store_true", help="LoRA on the routed experts too")
    return p.parse_args(argv)


def hf_config_from_args(args):
    if args.preset:
        from transformers import LlamaConfig

        return LlamaConfig(**PRESETS[args.preset])
    if args.hf_config:
        from transformers import AutoConfig

        path = os.path.dirname(args.hf_config) if args.hf_config.endswith(".json") else args.hf_config
        return AutoConfig.from_pretrained(path)
    from transformers import Qwen2Config

    ffn = args.ffn or -(-int(args.hidden * 8 / 3) // 8) * 8
    return Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(4096, args.seq),
        tie_word_embeddings=False,
    )


def matmul_params(hf) -> int:
    """Parameters that take part in matmuls per token: attention, MLP (gated; mixture of experts:
    the top-k routed experts and the shared expert, treating every layer as an expert layer) and
    the LM head."""
    h = hf.hidden_size
    heads = hf.num_attention_heads
    kv = getattr(hf, "num_key_value_heads", None) or heads
    hd = getattr(hf, "head_dim", None) or h // heads
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    mlp = 3 * h * hf.intermediate_size
    if getattr(hf, "num_experts_per_tok", None):
        moe_ffn = getattr(hf, "moe_intermediate_size", None) or hf.intermediate_size
        mlp = 3 * h * (moe_ffn * hf.num_experts_per_tok + (getattr(hf, "shared_expert_intermediate_size", None) or 0))
    return hf.num_hidden_layers * (attn + mlp) + hf.vocab_size * h


def build_config(args):
    from sppo_megatron.config.schema import (
        Config,
        DataConfig,
        LoraConfig,
        ModelConfig,
        OptimConfig,
        ParallelConfig,
        RolloutConfig,
        TrainConfig,
        TrainerConfig,
    )

    return Config(
        model=ModelConfig(
            dtype=args.dtype,
            recompute=args.recompute,
            lora=LoraConfig(rank=args.lora_rank, alpha=2.0 * max(args.lora_rank, 1), experts=args.lora_experts),
        ),
        parallel=ParallelConfig(
            tp=args.tp,
            pp=args.pp,
            ep=args.ep,
            etp=args.etp,
            use_distributed_optimizer=not args.no_dist_opt,
            sequence_parallel=args.sequence_parallel,
        ),
        rollout=RolloutConfig(n=1, temperature=1.0),
        data=DataConfig(train_batch_size=args.batch),
        train=TrainConfig(
            mini_batch_size=args.batch,  # one optimizer step per update
            micro_batch_size=args.micro_batch_size,
            max_tokens_per_micro_batch=args.max_tokens,
        ),
        optim=OptimConfig(lr=1e-6),
        trainer=TrainerConfig(total_steps=args.steps + args.warmup, seed=args.seed),
    )


def make_batch(args, vocab: int):
    from sppo_megatron.actor.batch import SequenceBatch

    rng = random.Random(args.seed)
    max_resp = max(1, args.seq - args.prompt_len)
    prompts, responses = [], []
    for _ in range(args.batch):
        r = rng.randint(1, max_resp) if args.vary_lengths else max_resp
        prompts.append([rng.randrange(vocab) for _ in range(args.prompt_len)])
        responses.append([rng.randrange(vocab) for _ in range(r)])
    return SequenceBatch(prompts, responses)


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def measure_offload(actor, batch) -> dict:
    """Seconds of one offload() and onload(), GPU memory around them, and whether the log-probs
    come back bit-identical (on CPU both calls are no-ops: only the timing is recorded)."""
    cuda = torch.cuda.is_available()

    def allocated():
        return round(torch.cuda.memory_allocated() / 2**30, 3) if cuda else None

    before_logp = actor.log_probs(batch).logp
    _sync()
    before = allocated()
    t0 = time.perf_counter()
    actor.offload()
    _sync()
    t1 = time.perf_counter()
    offloaded = allocated()
    actor.onload()
    _sync()
    t2 = time.perf_counter()
    return {
        "offload_s": round(t1 - t0, 4),
        "onload_s": round(t2 - t1, 4),
        "gpu_mem_gib_before_offload": before,
        "gpu_mem_gib_offloaded": offloaded,
        "gpu_mem_gib_after_onload": allocated(),
        "offload_logp_identical": bool(torch.equal(actor.log_probs(batch).logp, before_logp)),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    from megatron.core import __version__ as mcore_version

    from sppo_megatron.trainer.setup import build_actor

    hf = hf_config_from_args(args)
    actor = build_actor(build_config(args), hf, load_weights=False)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    batch = make_batch(args, hf.vocab_size)
    targets = torch.randn(len(batch), generator=torch.Generator().manual_seed(args.seed)) * 0.1
    tokens = sum(batch.input_lengths)

    logp_times, update_times, update_cpu = [], [], []
    with sdpa_kernels(args.sdpa_backend):
        for i in range(args.warmup + args.steps):
            _sync()
            t0 = time.perf_counter()
            old = actor.log_probs(batch)
            _sync()
            t1, c1 = time.perf_counter(), time.process_time()
            metrics = actor.update(batch, targets, old)
            _sync()
            t2, c2 = time.perf_counter(), time.process_time()
            if i >= args.warmup:
                logp_times.append(t1 - t0)
                update_times.append(t2 - t1)
                update_cpu.append(c2 - c1)
        offload = measure_offload(actor, batch) if args.measure_offload else {}
    step = sum(update_times) / len(update_times)
    logp = sum(logp_times) / len(logp_times)
    mem = torch.tensor([peak_memory_gib()])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(mem, op=torch.distributed.ReduceOp.MAX)
    n_mm = matmul_params(hf)
    flops_per_token = 6 * n_mm + 6 * hf.num_hidden_layers * hf.hidden_size * args.seq
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "world": world,
        "tp": args.tp,
        "pp": args.pp,
        "ep": args.ep,
        "dp": actor.parallel_dims.dp,
        "dtype": str(actor.dtype).replace("torch.", ""),
        "recompute": args.recompute,
        "lora_rank": args.lora_rank,
        "model": args.preset
        or args.hf_config
        or f"qwen2-like h{hf.hidden_size} L{hf.num_hidden_layers} heads{hf.num_attention_heads}/{getattr(hf, 'num_key_value_heads', None)} ffn{hf.intermediate_size} V{hf.vocab_size}",
        "matmul_params": n_mm,
        "batch": args.batch,
        "seq": args.seq,
        "sdpa_backend": args.sdpa_backend,
        "micro_batching": f"max_tokens={args.max_tokens}"
        if args.max_tokens
        else f"micro_batch_size={args.micro_batch_size}",
        "tokens_per_step": tokens,
        "update_step_s": round(step, 4),
        # CPU seconds of this process per update: on a shared CPU the figure others' load moves least
        "update_step_cpu_s": round(sum(update_cpu) / len(update_cpu), 4),
        "update_tokens_per_s": round(tokens / step, 1),
        "log_probs_s": round(logp, 4),
        "log_probs_tokens_per_s": round(tokens / logp, 1),
        "peak_mem_gib_per_rank": round(float(mem), 3),
        "loss": metrics["train/loss"],
        **offload,
        "megatron_core": mcore_version,
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        peak = peak_tflops(torch.cuda.get_device_name())
        achieved = flops_per_token * tokens / step / world / 1e12
        result["model_tflops_per_gpu"] = round(achieved, 2)
        result["mfu"] = round(achieved / peak, 4) if peak and actor.dtype in (torch.bfloat16, torch.float16) else None
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if rank0:
        print(json.dumps(result), flush=True)
        if args.json_out:
            with open(args.json_out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(result) + "\n")
    from sppo_megatron.platform.distributed import destroy_distributed

    destroy_distributed()
    return result


if __name__ == "__main__":
    main()
