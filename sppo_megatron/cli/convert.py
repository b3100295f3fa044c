"""`sppo-convert`: Hugging Face <-> megatron-core dist checkpoint conversion, and a logit check.

    sppo-convert hf-to-megatron --hf DIR --out DIR [--dtype bf16|fp16|fp32] [--tp N --pp M]
                                [--layout sppo|megatron-lm] [--overwrite]
    sppo-convert megatron-to-hf --ckpt DIR --out DIR [--dtype ...] [--hf-config DIR] [--overwrite]
                                [--peft] [--base DIR]
    sppo-convert megatron-to-megatron-lm --ckpt DIR --out DIR [--hf-config DIR] [--iteration N]
                                [--tp N --pp M] [--overwrite]
    sppo-convert verify --hf DIR --ckpt DIR [--tp N --pp M] [--rtol R | --atol 1e-4]

Runs as one process (tp = pp = 1) or under torchrun with --tp/--pp (world size a multiple of
tp * pp) to shard the work. Output is written into `OUT.tmp-XXXX` next to OUT and renamed at
the very end, so an interrupted or failed run never leaves something that looks complete.

Megatron checkpoint directory written by hf-to-megatron:

    OUT/                     megatron-core torch_dist checkpoint, state {"model": ...}
                             (loadable under any TP/PP; megatron's own metadata.json is here)
    OUT/sppo_checkpoint.json architecture (model_type), vocab size, dtype, shapes
    OUT/hf/                  config.json, generation_config.json, tokenizer files of the source

With --layout megatron-lm the same directory is OUT/release/, next to Megatron-LM's tracker
OUT/latest_checkpointed_iteration.txt ("release"); its common state holds Megatron-LM's `args`,
checkpoint_version 3.0 and iteration 0, and the vocabulary is padded by Megatron-LM's rule
(a multiple of 128 * --tp). megatron-to-megatron-lm re-writes any checkpoint (a training run's
checkpoints/step_N included) that way as OUT/iter_%07d/ (iteration = --iteration, else the
run's step, else release/). Every --ckpt may also be a Megatron-LM load directory.

A checkpoint of a LoRA run (model.lora.rank > 0) holds the adapters and names its frozen base:
megatron-to-hf loads that base (or --base) and writes the merged weights, or with --peft a PEFT
adapter directory (adapter_config.json + adapter_model.safetensors) for the HF base.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from sppo_megatron.cli.common import exit_on_user_error
from sppo_megatron.config.schema import ModelConfig, ParallelConfig
from sppo_megatron.errors import UserError
from sppo_megatron.models.agreement import judge
from sppo_megatron.models.converted import LAYOUTS, resolve_megatron_checkpoint
from sppo_megatron.models.dist_ckpt import load_model_checkpoint, model_vocab_for
from sppo_megatron.platform.console import say
from sppo_megatron.platform.distributed import broadcast_object, rank
from sppo_megatron.platform.dtypes import DTYPES, resolve_dtype
from sppo_megatron.platform.files import atomic_output_dir

# The models and megatron-core are imported inside the commands that use them: `--help` and bad
# arguments answer at once.

PROG = "sppo-convert"

DTYPE_CHOICES = tuple(DTYPES)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert between Hugging Face checkpoints and megatron-core dist checkpoints "
        "(single process, or under torchrun with --tp/--pp).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    h2m = sub.add_parser("hf-to-megatron", help="HF safetensors directory -> megatron-core dist checkpoint")
    h2m.add_argument("--hf", required=True, metavar="DIR", help="Hugging Face model directory")
    h2m.add_argument("--out", required=True, metavar="DIR", help="output checkpoint directory")
    h2m.add_argument(
        "--dtype", choices=DTYPE_CHOICES, help="parameter dtype (default: the HF config's dtype, else fp32)"
    )
    h2m.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the conversion job (default 1)")
    h2m.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the conversion job (default 1)")
    h2m.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="sppo",
        help="sppo (default): the checkpoint in OUT; megatron-lm: Megatron-LM's tracker + OUT/release/",
    )
    h2m.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")

    m2h = sub.add_parser("megatron-to-hf", help="megatron-core dist checkpoint -> HF safetensors directory")
    m2h.add_argument("--ckpt", required=True, metavar="DIR", help="dist checkpoint (from hf-to-megatron or training)")
    m2h.add_argument("--out", required=True, metavar="DIR", help="output HF directory")
    m2h.add_argument("--dtype", choices=DTYPE_CHOICES, help="output dtype (default: the checkpoint's)")
    m2h.add_argument("--hf-config", metavar="DIR", help="HF directory with config/tokenizer (default: CKPT/hf)")
    m2h.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the job (default 1)")
    m2h.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the job (default 1)")
    m2h.add_argument(
        "--max-shard-size", default="5GB", help="max safetensors shard size, e.g. 5GB, 500MB (default 5GB)"
    )
    m2h.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    m2h.add_argument(
        "--peft",
        action="store_true",
        help="a LoRA run's checkpoint: write its adapters as a PEFT adapter directory instead of merged weights",
    )
    m2h.add_argument(
        "--base",
        metavar="DIR",
        help="a LoRA run's checkpoint: its base (HF directory or megatron checkpoint; default: the one it names)",
    )

    m2l = sub.add_parser(
        "megatron-to-megatron-lm", help="dist checkpoint (e.g. checkpoints/step_N) -> Megatron-LM layout"
    )
    m2l.add_argument("--ckpt", required=True, metavar="DIR", help="dist checkpoint (from hf-to-megatron or training)")
    m2l.add_argument("--out", required=True, metavar="DIR", help="output Megatron-LM load directory")
    m2l.add_argument("--hf-config", metavar="DIR", help="HF directory with config/tokenizer (default: CKPT/hf)")
    m2l.add_argument(
        "--iteration", type=int, help="iteration of OUT/iter_%%07d (default: the training step, else release)"
    )
    m2l.add_argument(
        "--tp", type=int, default=1, help="tensor-parallel size of the job and of the vocab padding (default 1)"
    )
    m2l.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the job (default 1)")
    m2l.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")

    ver = sub.add_parser("verify", help="compare the logits of an HF model and a megatron checkpoint")
    ver.add_argument("--hf", required=True, metavar="DIR", help="Hugging Face model directory")
    ver.add_argument("--ckpt", required=True, metavar="DIR", help="megatron dist checkpoint")
    ver.add_argument("--tp", type=int, default=1)
    ver.add_argument("--pp", type=int, default=1)
    ver.add_argument(
        "--rtol",
        type=float,
        help="max |logit difference| relative to the logit scale (default 1e-4: both sides run in fp32 from the "
        "same weights, the HF ones rounded to the checkpoint's dtype)",
    )
    ver.add_argument("--atol", type=float, help="an absolute bound on |logit difference| instead of --rtol")
    ver.add_argument("--batch-size", type=int, default=2)
    ver.add_argument("--seq-len", type=int, default=32)
    ver.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------- checks
def _parse_size(text: str) -> int:
    units = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if t.endswith(unit):
            try:
                return int(float(t[: -len(unit)]) * units[unit])
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        raise UserError(f"--max-shard-size: cannot parse {text!r} (e.g. 5GB, 500MB)") from None


def _check_out(out: str, overwrite: bool, inputs: List[str]) -> None:
    out_abs = os.path.realpath(out)
    for inp in inputs:
        if inp is None:
            continue
        inp_abs = os.path.realpath(inp)
        if out_abs == inp_abs or inp_abs.startswith(out_abs + os.sep) or out_abs.startswith(inp_abs + os.sep):
            raise UserError(f"--out {out} must not be, contain or lie inside the input {inp}")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out {out} exists and is not a directory")
        if os.listdir(out) and not overwrite:
            raise UserError(f"--out {out} exists and is not empty (use --overwrite to replace it)")
    parent = os.path.dirname(out_abs) or "."
    while not os.path.exists(parent):  # missing parents are created; the nearest existing one must be writable
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: {parent} is not a writable directory")


def _check_layout(tp: int, pp: int) -> None:
    from sppo_megatron.platform.distributed import detect_launch

    if tp < 1 or pp < 1:
        raise UserError(f"--tp {tp} --pp {pp}: sizes must be >= 1")
    world = detect_launch().world_size
    if world % (tp * pp):
        if world == 1:
            raise UserError(
                f"--tp {tp} --pp {pp} needs {tp * pp} processes: run under torchrun --nproc-per-node {tp * pp}"
            )
        raise UserError(f"--tp {tp} x --pp {pp} = {tp * pp} does not divide the world size {world}")


# --------------------------------------------------------------------------------- distributed helpers
def _start_distributed(tp: int, pp: int) -> None:
    """init_distributed for the command. The process group is kept afterwards (torchrun tears it
    down at exit), so one process can run several commands: re-creating a gloo group on the same
    MASTER_PORT right after destroying it can hang."""
    from sppo_megatron.platform.distributed import init_distributed

    init_distributed(tp=tp, pp=pp, seed=0)


# --------------------------------------------------------------------------------- commands
def hf_to_megatron(args: argparse.Namespace) -> int:
    from sppo_megatron.models import get_bridge
    from sppo_megatron.models.converted import conversion_model_config, layout_padded_vocab, write_converted_checkpoint
    from sppo_megatron.models.hf_io import SafetensorsReader, hf_dtype_name, load_hf_config
    from sppo_megatron.models.megatron_lm import megatron_lm_args
    from sppo_megatron.models.transformer_config import pipeline_split

    hf_config = load_hf_config(args.hf, "--hf")
    bridge = get_bridge(hf_config)
    SafetensorsReader(args.hf).close()  # weights present and in safetensors format
    _check_out(args.out, args.overwrite, [args.hf])
    _check_layout(args.tp, args.pp)
    bridge.check_tp(args.tp)
    pipeline_split(bridge.num_layers, args.pp)
    dtype = args.dtype or hf_dtype_name(hf_config)
    padded = layout_padded_vocab(bridge, args.layout, args.tp)
    if args.layout == "megatron-lm":
        megatron_lm_args(bridge, dtype, args.tp, args.pp, padded)  # refuses what Megatron-LM cannot express, early

    t0 = time.time()
    _start_distributed(args.tp, args.pp)
    with atomic_output_dir(args.out) as tmp:
        model = bridge.build_model(
            conversion_model_config(dtype),
            ParallelConfig(tp=args.tp, pp=args.pp),
            perform_initialization=False,
            padded_vocab_size=padded,
        )
        bridge.load_hf_weights(model, args.hf)
        t_load = time.time() - t0
        write_converted_checkpoint(model, tmp, bridge, dtype, args.hf, args.tp, args.pp, args.layout)
        del model
    say(
        PROG,
        f"wrote {args.out} ({bridge.model_type}, {dtype}, tp={args.tp} pp={args.pp}, {args.layout} layout, "
        f"padded vocab {padded}) in {time.time() - t0:.1f}s (load {t_load:.1f}s)",
    )
    return 0


def _lora_run(ckpt: str) -> Optional[Tuple[Any, Dict[str, Optional[str]]]]:
    from sppo_megatron.actor.checkpoint import read_lora
    from sppo_megatron.models.megatron_lm import resolve_checkpoint_dir

    return read_lora(resolve_checkpoint_dir(ckpt, "--ckpt"))


def _refuse_lora(args: argparse.Namespace) -> None:
    if _lora_run(args.ckpt) is not None:
        raise UserError(
            f"--ckpt {args.ckpt} holds LoRA adapters, not a model: merge them into HF weights with "
            "sppo-convert megatron-to-hf first"
        )


def _lora_base(args: argparse.Namespace, base: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
    """The base of a LoRA checkpoint: --base (an HF directory or a megatron checkpoint), else the
    one the checkpoint names; UserError when it is not there."""
    from sppo_megatron.models.dist_ckpt import is_dist_checkpoint

    if args.base:
        if is_dist_checkpoint(args.base):
            return {"path": base.get("path"), "megatron_ckpt": args.base}
        return {"path": args.base, "megatron_ckpt": None}
    for key in ("megatron_ckpt", "path"):
        if base.get(key) and not os.path.exists(base[key]):
            raise UserError(
                f"--ckpt {args.ckpt}: its base model.{key}={base[key]} does not exist; pass --base DIR "
                "(the HF directory or megatron checkpoint the adapters were trained on)"
            )
    return base


def _peft_base_name(base: Dict[str, Optional[str]], hf_dir: str) -> str:
    """What a PEFT adapter names as its base: the HF weights, i.e. a base megatron checkpoint's
    conversion source when it is there, else model.path."""
    from sppo_megatron.models.converted import read_checkpoint_meta

    source = (read_checkpoint_meta(base["megatron_ckpt"]) or {}).get("source") if base.get("megatron_ckpt") else None
    return source if source and os.path.isdir(source) else base.get("path") or hf_dir


def _source_checkpoint(args: argparse.Namespace, hf_config: Optional[str] = None):
    """(hf_dir, bridge, dtype) of --ckpt, after the checks every Megatron -> X export makes
    (hf_config: the HF config directory when --hf-config is not given)."""

    hf_dir, bridge, dtype = resolve_megatron_checkpoint(args.ckpt, args.hf_config or hf_config)
    _check_out(args.out, args.overwrite, [args.ckpt, args.hf_config])
    _check_layout(args.tp, args.pp)
    bridge.check_tp(args.tp)
    return hf_dir, bridge, dtype


def megatron_to_hf(args: argparse.Namespace) -> int:
    from sppo_megatron.models.converted import load_lora_model, load_megatron_model
    from sppo_megatron.models.hf_io import write_hf_dir
    from sppo_megatron.models.peft import write_peft_dir

    lora = _lora_run(args.ckpt)
    if lora is None and (args.peft or args.base):
        raise UserError(f"--{'peft' if args.peft else 'base'}: --ckpt {args.ckpt} is not a LoRA run's checkpoint")
    base = _lora_base(args, lora[1]) if lora else {}
    hf_dir, bridge, ckpt_dtype = _source_checkpoint(args, base.get("path"))
    if args.peft and lora[0].experts and bridge.arch.moe:
        raise UserError(
            f"--peft: --ckpt {args.ckpt} adapts the routed experts, which PEFT cannot hold (transformers fuses "
            "them into one tensor per layer): export the merged weights without --peft"
        )
    max_shard = _parse_size(args.max_shard_size)
    out_dtype = args.dtype or ckpt_dtype

    t0 = time.time()
    _start_distributed(args.tp, args.pp)
    with atomic_output_dir(args.out) as tmp:
        if lora:
            model = load_lora_model(bridge, args.ckpt, lora[0], base, ckpt_dtype, args.tp, args.pp)
        else:
            model = load_megatron_model(bridge, args.ckpt, ckpt_dtype, args.tp, args.pp)
        if args.peft:
            base_name = _peft_base_name(base, hf_dir)
            write_peft_dir(
                bridge.export_lora_factors(model), lora[0], base_name, tmp, DTYPES[out_dtype], write=rank() == 0
            )
        else:
            write_hf_dir(
                bridge.export_hf_weights(model),
                hf_dir,
                tmp,
                out_dtype,
                bridge.arch.hf_class,
                max_shard,
                write=rank() == 0,
            )
        del model
    what = "PEFT adapter" if args.peft else "merged LoRA weights" if lora else bridge.model_type
    say(PROG, f"wrote {args.out} ({what}, {out_dtype}) in {time.time() - t0:.1f}s")
    return 0


def megatron_to_megatron_lm(args: argparse.Namespace) -> int:
    from sppo_megatron.models.converted import layout_padded_vocab, load_megatron_model, write_converted_checkpoint
    from sppo_megatron.models.megatron_lm import megatron_lm_args, resolve_checkpoint_dir

    _refuse_lora(args)
    hf_dir, bridge, dtype = _source_checkpoint(args)
    if args.iteration is not None and args.iteration < 0:
        raise UserError(f"--iteration {args.iteration} must be >= 0")
    iteration = args.iteration if args.iteration is not None else _training_step(resolve_checkpoint_dir(args.ckpt))
    padded = layout_padded_vocab(bridge, "megatron-lm", args.tp)
    megatron_lm_args(bridge, dtype, args.tp, args.pp, padded)  # refuses what Megatron-LM cannot express, early

    t0 = time.time()
    _start_distributed(args.tp, args.pp)
    with atomic_output_dir(args.out) as tmp:
        model = load_megatron_model(bridge, args.ckpt, dtype, args.tp, args.pp, padded_vocab_size=padded)
        ckpt = write_converted_checkpoint(model, tmp, bridge, dtype, hf_dir, args.tp, args.pp, "megatron-lm", iteration)
        del model
    say(
        PROG,
        f"wrote {os.path.join(args.out, os.path.basename(ckpt))} ({bridge.model_type}, {dtype}, padded vocab {padded}) "
        f"in {time.time() - t0:.1f}s",
    )
    return 0


def _training_step(ckpt_dir: str) -> Optional[int]:
    """The trainer step of a run's checkpoint directory (its state file), None for other checkpoints."""
    from sppo_megatron.trainer.checkpointing import STATE_FILE, CheckpointManager

    if not os.path.isfile(os.path.join(ckpt_dir, STATE_FILE)):
        return None
    return int(CheckpointManager.read_state(ckpt_dir)["step"])


def verify(args: argparse.Namespace) -> int:
    import torch

    from sppo_megatron.models import get_bridge
    from sppo_megatron.models.hf_io import SafetensorsReader, load_hf_config
    from sppo_megatron.models.inference import forward_logits

    _refuse_lora(args)
    hf_config = load_hf_config(args.hf, "--hf")
    bridge = get_bridge(hf_config)
    SafetensorsReader(args.hf).close()  # a truncated file is one line here, not a transformers traceback
    ckpt_dtype = resolve_megatron_checkpoint(args.ckpt, args.hf)[2]
    _check_layout(args.tp, args.pp)
    bridge.check_tp(args.tp)
    padded = model_vocab_for(args.ckpt, args.tp)
    if (args.atol or 0) < 0 or (args.rtol or 0) < 0 or args.batch_size < 1 or args.seq_len < 1:
        raise UserError("--atol and --rtol must be >= 0, --batch-size and --seq-len >= 1")
    seq = min(args.seq_len, bridge.max_position_embeddings)
    ids = torch.randint(
        0, bridge.vocab_size, (args.batch_size, seq), generator=torch.Generator().manual_seed(args.seed)
    )

    _start_distributed(args.tp, args.pp)
    model = bridge.build_model(
        ModelConfig(dtype="fp32"),
        ParallelConfig(tp=args.tp, pp=args.pp),
        perform_initialization=False,
        padded_vocab_size=padded,
    )
    load_model_checkpoint(model, args.ckpt)
    logits = forward_logits(model, ids, bridge.vocab_size).float().cpu()
    del model
    agreement = None
    if rank() == 0:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32)
        hf.eval()
        with torch.no_grad():
            for param in hf.parameters():  # the checkpoint's rounding, so that the bound measures the conversion
                param.copy_(param.to(resolve_dtype(ckpt_dtype)))
            ref = hf(input_ids=ids).logits.float()
        agreement = judge(logits, ref[..., : bridge.vocab_size], args.atol, args.rtol)
    agreement = broadcast_object(agreement)
    say(
        PROG,
        f"{agreement.describe()}; over {args.batch_size}x{seq} tokens, vocab {bridge.vocab_size}, fp32 forward "
        f"of both from the checkpoint's {ckpt_dtype} weights, the HF ones rounded to {ckpt_dtype} like them "
        f"(tp={args.tp} pp={args.pp}): {'OK' if agreement.ok else 'FAIL'}",
    )
    return 0 if agreement.ok else 1


COMMANDS = {
    "hf-to-megatron": hf_to_megatron,
    "megatron-to-hf": megatron_to_hf,
    "megatron-to-megatron-lm": megatron_to_megatron_lm,
    "verify": verify,
}


@exit_on_user_error(PROG)
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from sppo_megatron.platform.cpu_compat import silence_cpu_noise

    silence_cpu_noise()
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
