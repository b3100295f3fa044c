"""LoRA adapters as a PEFT adapter directory (`peft.PeftModel.from_pretrained(hf_model, DIR)`).

    DIR/adapter_config.json         peft_type LORA, r, lora_alpha, lora_dropout, target_modules, ...
    DIR/adapter_model.safetensors   base_model.model.<HF module>.lora_A.weight (r x in) and
                                    .lora_B.weight (out x r) of every adapted HF weight

The factors come from `Bridge.export_lora_factors` (the bridge tables name and lay them out), so
q/k/v and gate/up, fused in megatron, arrive as PEFT's separate modules. PEFT's scale is
lora_alpha / r, the same as ours. Routed experts cannot be written: transformers fuses a layer's
experts into one tensor, which PEFT's per-module LoRA does not address (export merged weights).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Tuple

import torch

from sppo_megatron.config.schema import LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


def peft_key(hf_name: str, tag: str) -> str:
    """PEFT's tensor name of factor `tag` ("lora_A" / "lora_B") of HF weight `hf_name`."""
    module = hf_name[: -len(".weight")] if hf_name.endswith(".weight") else hf_name
    return f"{PREFIX}{module}.{tag}.weight"


def adapter_config(lora: LoraConfig, base_model: str, target_modules: Iterable[str]) -> dict:
    """The adapter_config.json of a PEFT LoRA adapter with our settings."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": int(lora.rank),
        "lora_alpha": float(lora.alpha),
        "lora_dropout": float(lora.dropout),
        "target_modules": sorted(set(target_modules)),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def write_peft_dir(
    factors: Iterable[Tuple[str, str, torch.Tensor]],
    lora: LoraConfig,
    base_model: str,
    out_dir: str,
    dtype: torch.dtype,
    write: bool = True,
) -> int:
    """Consume `factors` (collective: every rank iterates) and, where `write`, save the adapter
    directory into `out_dir` (exists); returns the number of adapted HF weights."""
    from safetensors.torch import save_file

    tensors, modules = {}, []
    for hf_name, tag, tensor in factors:
        if write:
            tensors[peft_key(hf_name, tag)] = tensor.detach().to("cpu", dtype).contiguous().clone()
        if tag == "lora_A":
            modules.append(hf_name)
    if write:
        save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        leaves = [name.split(".")[-2] for name in modules]  # q_proj, ..., down_proj
        with open(os.path.join(out_dir, ADAPTER_CONFIG), "w", encoding="utf-8") as fh:
            json.dump(adapter_config(lora, base_model, leaves), fh, indent=2)
    return len(modules)
