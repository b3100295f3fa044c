"""What `sppo-convert` writes around a megatron-core checkpoint, and how any checkpoint's model
is found again from it.

A converted checkpoint carries its description (`write_checkpoint_meta`: META_FILE, and the
source's config/tokenizer in HF_SUBDIR), from which `resolve_megatron_checkpoint` finds the
model of a checkpoint and `load_megatron_model` builds and fills it. Two layouts (LAYOUTS):
"sppo", the checkpoint in OUT itself; "megatron-lm", Megatron-LM's tracker file + release/ or
iter_%07d/ with `args` in the common state (megatron_lm.py). The save/load primitives are in
dist_ckpt.py.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import OmegaConf

from sppo_megatron.config.schema import ModelConfig, ParallelConfig
from sppo_megatron.errors import UserError
from sppo_megatron.models.bridge import get_bridge
from sppo_megatron.models.dist_ckpt import (
    MODEL_KEY,
    check_checkpoint_dir,
    load_model_checkpoint,
    model_vocab_for,
    save_model_checkpoint,
    unwrap_model,
)
from sppo_megatron.models.hf_io import copy_side_files, hf_dtype_name, load_hf_config
from sppo_megatron.models.megatron_lm import (
    check_args_match,
    common_state,
    iteration_dir,
    megatron_lm_args,
    megatron_lm_padded_vocab,
    read_args,
    resolve_checkpoint_dir,
    write_tracker,
)
from sppo_megatron.platform.distributed import barrier, is_rank0

#: written next to a converted checkpoint by `sppo-convert hf-to-megatron` (architecture, sizes, dtype)
META_FILE = "sppo_checkpoint.json"
META_FORMAT = "sppo-megatron-model"
#: the source model's config.json, generation config and tokenizer inside a converted checkpoint
HF_SUBDIR = "hf"
LAYOUTS = ("sppo", "megatron-lm")


def read_checkpoint_meta(ckpt: str) -> Optional[Dict[str, Any]]:
    """The converter's description of a checkpoint (META_FILE), None for training checkpoints."""
    path = os.path.join(ckpt, META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise UserError(f"{path}: not an sppo-megatron checkpoint description")
    return meta


def check_checkpoint_matches(
    ckpt: str, bridge: Any, hf_what: str, what: str = "--ckpt"
) -> Tuple[Optional[Dict[str, Any]], Any]:
    """UserError (one line) unless `ckpt` (any layout) holds `bridge`'s model, judged by our
    description (META_FILE) and Megatron-LM `args` where present; returns both (None if absent)."""
    ckpt_dir = resolve_checkpoint_dir(ckpt, what)
    check_checkpoint_dir(ckpt_dir, what)
    meta, args = read_checkpoint_meta(ckpt_dir), read_args(ckpt_dir, what)
    check_meta_matches(meta, bridge, ckpt_dir, hf_what)
    check_args_match(args, bridge, ckpt_dir, hf_what)
    return meta, args


def check_meta_matches(meta: Optional[Dict[str, Any]], bridge: Any, ckpt: str, hf_what: str) -> None:
    """UserError if the checkpoint was written for another model than `bridge`'s."""
    if meta is None:
        return
    fields = {
        "model_type": bridge.model_type,
        "vocab_size": bridge.vocab_size,
        "num_layers": bridge.num_layers,
        "hidden_size": bridge.hidden_size,
    }
    for key, have in fields.items():
        if key in meta and meta[key] != have:
            raise UserError(
                f"checkpoint {ckpt} was written for {key}={meta[key]!r} but {hf_what} has {key}={have!r} "
                f"(checkpoint of another model / architecture)"
            )


def layout_padded_vocab(bridge: Any, layout: str, tp: int) -> int:
    """Padded vocabulary of a checkpoint written in `layout` at tensor-parallel size `tp`:
    Megatron-LM's rule for "megatron-lm", ours otherwise."""
    if layout == "megatron-lm":
        return megatron_lm_padded_vocab(bridge.vocab_size, tp)
    return bridge.padded_vocab_size(tp)


def write_converted_checkpoint(
    model: Any,
    out: str,
    bridge: Any,
    dtype: str,
    hf_src: str,
    tp: int,
    pp: int,
    layout: str = "sppo",
    iteration: Optional[int] = None,
) -> str:
    """Collective: `model` as a model-only checkpoint in `layout` under `out`, with our
    description; returns the torch_dist directory. "megatron-lm" writes `out/release/`
    (iteration None) or `out/iter_%07d/` with Megatron-LM's common state, the tracker last."""
    padded = int(unwrap_model(model).vocab_size)
    if layout == "megatron-lm":
        ckpt = iteration_dir(out, iteration)
        common = common_state(megatron_lm_args(bridge, dtype, tp, pp, padded), iteration)
    else:
        ckpt, common = out, {}
    save_model_checkpoint(model, ckpt, common)
    if is_rank0():
        write_checkpoint_meta(ckpt, bridge, dtype, hf_src, tp, pp, padded, layout)
        if layout == "megatron-lm":
            write_tracker(out, iteration)
    barrier()
    return ckpt


def write_checkpoint_meta(
    ckpt: str, bridge: Any, dtype: str, hf_src: str, tp: int, pp: int, padded_vocab_size: int, layout: str = "sppo"
) -> None:
    """The converter's description of a checkpoint it wrote: META_FILE and HF_SUBDIR (the
    source's config.json and side files), which `resolve_megatron_checkpoint` reads back."""
    hf_out = os.path.join(ckpt, HF_SUBDIR)
    os.makedirs(hf_out)
    shutil.copy2(os.path.join(hf_src, "config.json"), os.path.join(hf_out, "config.json"))
    copy_side_files(hf_src, hf_out)
    meta = {
        "format": META_FORMAT,
        "format_version": 1,
        "model_type": bridge.model_type,
        "hf_architecture": bridge.arch.hf_class,
        "vocab_size": bridge.vocab_size,
        "padded_vocab_size": padded_vocab_size,
        "layout": layout,
        "num_layers": bridge.num_layers,
        "hidden_size": bridge.hidden_size,
        "tie_word_embeddings": bridge.tied,
        "dtype": dtype,
        "state_key": MODEL_KEY,
        "hf_dir": HF_SUBDIR,
        "source": os.path.abspath(hf_src),
        "written_with": {"tp": tp, "pp": pp, "megatron_core": _mcore_version(), "torch": torch.__version__},
    }
    with open(os.path.join(ckpt, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)


def _mcore_version() -> str:
    try:
        return version("megatron-core")
    except Exception:  # noqa: BLE001
        return "unknown"


def model_dir_of(ckpt_dir: str) -> Optional[str]:
    """The HF directory (config, tokenizer) of a Megatron checkpoint, None when it does not say:
    its hf/ subdirectory (written by hf-to-megatron), else, for a training checkpoint
    OUTPUT_DIR/checkpoints/step_N, the model.path of the config it was trained with (its own
    config.yaml; the run's OUTPUT_DIR/config.yaml for checkpoints written before they held one)."""
    own = os.path.join(ckpt_dir, HF_SUBDIR)
    if os.path.isfile(os.path.join(own, "config.json")):
        return own
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir)))
    for config in (os.path.join(ckpt_dir, "config.yaml"), os.path.join(run_dir, "config.yaml")):
        if os.path.isfile(config):
            path = OmegaConf.select(OmegaConf.load(config), "model.path")
            return str(path) if path else None
    return None


def resolve_megatron_checkpoint(
    ckpt: str, hf_config_dir: Optional[str] = None, what: str = "--ckpt"
) -> Tuple[str, Any, str]:
    """Check a Megatron checkpoint (converter output or a training checkpoint) and find its model:
    (HF directory with config and tokenizer, bridge, checkpoint dtype). `hf_config_dir` defaults
    to `model_dir_of(ckpt)`; `what` names the checkpoint in errors (the flag or key the user passed)."""
    ckpt_dir = resolve_checkpoint_dir(ckpt, what)
    check_checkpoint_dir(ckpt_dir, what)
    hf_dir = hf_config_dir or model_dir_of(ckpt_dir)
    if hf_dir is None:
        raise UserError(
            f"{what} {ckpt} has no {HF_SUBDIR}/config.json and no config.yaml naming model.path (its own or the run's): "
            "pass --hf-config DIR (the HF model it was trained from)"
        )
    hf_config = load_hf_config(hf_dir, "--hf-config")
    bridge = get_bridge(hf_config)
    meta, args = check_checkpoint_matches(ckpt_dir, bridge, hf_dir)
    return hf_dir, bridge, (meta or {}).get("dtype") or _args_dtype(args) or hf_dtype_name(hf_config)


def _args_dtype(args: Any) -> Optional[str]:
    """The parameter dtype Megatron-LM `args` record (bf16 / fp16 flags), None without args."""
    if args is None:
        return None
    return "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"


def conversion_model_config(dtype: str) -> ModelConfig:
    """What conversion builds: local layers (no Transformer Engine needed; their dist-checkpoint
    keys equal the TE spec's) in `dtype`."""
    return ModelConfig(dtype=dtype, transformer_impl="local")


def load_megatron_model(
    bridge: Any, ckpt: str, dtype: str, tp: int = 1, pp: int = 1, padded_vocab_size: Optional[int] = None
) -> Any:
    """This rank's stage of the model, with the checkpoint's weights (call after init_distributed).
    Built with the checkpoint's padded vocabulary, or re-padded to `padded_vocab_size`."""
    have = model_vocab_for(ckpt, tp)
    model = bridge.build_model(
        conversion_model_config(dtype),
        ParallelConfig(tp=tp, pp=pp),
        perform_initialization=False,
        padded_vocab_size=padded_vocab_size or have,
    )
    load_model_checkpoint(model, ckpt, resize_vocab=padded_vocab_size is not None)
    return model


def load_lora_model(
    bridge: Any, ckpt: str, lora: Any, base: Dict[str, Optional[str]], dtype: str, tp: int = 1, pp: int = 1
) -> Any:
    """This rank's stage of a LoRA run's policy (call after init_distributed): its frozen base
    (`base["megatron_ckpt"]` if set, else the HF weights at `base["path"]`) with the adapters
    (`lora`: their LoraConfig) of the run's checkpoint `ckpt`."""
    from sppo_megatron.models.dist_ckpt import load_dist_checkpoint
    from sppo_megatron.models.lora import adapter_sharded_state, attach_lora, load_adapter_state

    base_ckpt = base.get("megatron_ckpt")
    if base_ckpt:
        model = load_megatron_model(bridge, base_ckpt, dtype, tp, pp)
    else:
        model = bridge.build_model(
            conversion_model_config(dtype), ParallelConfig(tp=tp, pp=pp), perform_initialization=False
        )
        bridge.load_hf_weights(model, base["path"])
    attach_lora(model, lora, seed=0)  # the init is overwritten next
    state = load_dist_checkpoint({MODEL_KEY: adapter_sharded_state(model)}, ckpt, "--ckpt")
    load_adapter_state(model, state[MODEL_KEY])
    return model
