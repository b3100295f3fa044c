"""Conversion benchmark: time and peak RSS of `sppo-convert` on a ~1B-parameter random model (CPU).

    python tools/bench_convert.py [--workdir DIR] [--dtype bf16|fp32] [--layers 16] [--keep]

Writes a random Llama-3.2-1B-shaped HF checkpoint (hidden 2048, 16 layers, 32 heads, 8 KV
heads, FFN 8192, vocab 128256, tied embeddings: 1.24B parameters) as sharded safetensors, then
times, each in a fresh process:
  1. sppo-convert hf-to-megatron   (HF -> megatron-core dist checkpoint)
  2. sppo-convert megatron-to-hf   (dist checkpoint -> HF safetensors)
and checks that the round trip is bit-exact, tensor by tensor. Peak RSS is each conversion
process's own maximum resident set size (getrusage). Figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
from sppo_megatron.cli.convert import main
t = time.time()
try:
    code = main(sys.argv[2:])
except SystemExit as e:
    code = e.code
wall = time.time() - t
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "wall_s": wall, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, f)
"""


def build_random_hf(path: str, dtype: str, layers: int, seed: int = 0) -> int:
    """Random Llama-3.2-1B-shaped checkpoint, written tensor by tensor. Returns #parameters."""
    import torch
    from model_shapes import LLAMA_3_2_1B
    from transformers import GenerationConfig, LlamaConfig

    from sppo_megatron.models import get_bridge
    from sppo_megatron.models.hf_io import ShardedSafetensorsWriter
    from sppo_megatron.platform.dtypes import DTYPES

    torch_dtype = DTYPES[dtype]
    cfg = LlamaConfig(**{**LLAMA_3_2_1B, "num_hidden_layers": layers}, dtype=torch_dtype)
    os.makedirs(path, exist_ok=True)
    cfg.save_pretrained(path)
    GenerationConfig(bos_token_id=128000, eos_token_id=128001).save_pretrained(path)
    bridge = get_bridge(cfg)
    h, f, q, kv = cfg.hidden_size, cfg.intermediate_size, 32 * 64, 8 * 64
    shapes = {
        "model.embed_tokens.weight": (cfg.vocab_size, h),
        "model.norm.weight": (h,),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    gen = torch.Generator().manual_seed(seed)
    writer = ShardedSafetensorsWriter(path, max_shard_bytes=1 << 30)
    n = 0
    for name in bridge.hf_names():
        key = name if name in shapes else name.split(".", 3)[3]
        t = torch.randn(shapes[key], generator=gen).mul_(0.02).to(torch_dtype)
        writer.add(name, t)
        n += t.numel()
    writer.finish()
    return n


def run_child(args, log_dir: str, tag: str) -> dict:
    stats = os.path.join(log_dir, f"{tag}.json")
    env = dict(
        os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    )
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, stats] + args, env=env, capture_output=True, text=True)
    total = time.time() - t
    if proc.returncode != 0 or not os.path.isfile(stats):
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{tag} failed (exit {proc.returncode})")
    out = json.load(open(stats))
    out["process_s"] = total
    out["stdout"] = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if out["code"] != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{tag} exited {out['code']}")
    return out


def compare(src: str, dst: str) -> int:
    """Bit-exact comparison, one tensor at a time. Returns the number of tensors compared."""
    import torch

    from sppo_megatron.models.hf_io import SafetensorsReader

    a, b = SafetensorsReader(src), SafetensorsReader(dst)
    if set(a.weight_map) != set(b.weight_map):
        raise SystemExit(f"tensor names differ: {sorted(set(a.weight_map) ^ set(b.weight_map))[:5]}")
    for name in a.weight_map:
        x, y = a.read(name), b.read(name)
        if x.dtype != y.dtype or not torch.equal(x, y):
            raise SystemExit(f"round trip differs at {name}")
    return len(a.weight_map)


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="scratch directory (default: a new temp dir)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    import torch

    work = args.workdir or tempfile.mkdtemp(prefix="bench_convert.")
    os.makedirs(work, exist_ok=True)
    src, mg, back = (os.path.join(work, n) for n in ("hf", "megatron", "hf_back"))
    for p in (src, mg, back):
        shutil.rmtree(p, ignore_errors=True)
    try:
        t = time.time()
        n = build_random_hf(src, args.dtype, args.layers)
        t_build = time.time() - t
        h2m = run_child(["hf-to-megatron", "--hf", src, "--out", mg, "--dtype", args.dtype], work, "h2m")
        m2h = run_child(["megatron-to-hf", "--ckpt", mg, "--out", back, "--dtype", args.dtype], work, "m2h")
        t = time.time()
        tensors = compare(src, back)
        t_cmp = time.time() - t
        try:
            from importlib.metadata import version

            mcore = version("megatron-core")
        except Exception:  # noqa: BLE001
            mcore = "?"
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, no GPU"
            if not torch.cuda.is_available()
            else f"machine: {os.cpu_count()} cores, GPU {torch.cuda.get_device_name()}"
        )
        print(f"versions: python {platform.python_version()}, torch {torch.__version__}, megatron-core {mcore}")
        print(
            f"model: random Llama-3.2-1B shape, {args.layers} layers, {n / 1e9:.3f}B parameters, {args.dtype}, "
            f"HF checkpoint {dir_bytes(src) / 2**30:.2f} GiB (built in {t_build:.1f}s)"
        )
        for tag, r, size_dir in (("hf-to-megatron", h2m, mg), ("megatron-to-hf", m2h, back)):
            print(
                f"{tag:15s} wall {r['wall_s']:6.1f}s (process incl. imports {r['process_s']:6.1f}s)  "
                f"peak RSS {r['peak_rss_kb'] / 2**20:5.2f} GiB  output {dir_bytes(size_dir) / 2**30:.2f} GiB"
            )
        print(f"round trip bit-exact: {tensors} tensors compared in {t_cmp:.1f}s")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
