"""HF <-> Megatron bridges: one name/layout table per architecture (see arch.py).

Public API:
    get_bridge(hf_config) -> Bridge
    Bridge.build_model (this rank's pipeline stage of a GPTModel) / transformer_config / layer_spec /
          load_hf_weights / export_hf_weights / export_lora_factors / padded_vocab_size /
          vocab_size / hf_names / mask_padded_logits_
    lora.attach_lora(model, lora_cfg, seed)   (LoRA adapters; models/lora.py, PEFT output: peft.py)
    check_fp8_support(model_cfg)
    save_dist_checkpoint(state, ckpt_dir) / load_dist_checkpoint(sharded_state, ckpt_dir)
    resolve_dtype(name)   (re-exported from sppo_megatron.platform.dtypes, the one dtype table)
"""

from sppo_megatron.models.arch import ARCHITECTURES, SUPPORTED_MODEL_TYPES, get_architecture
from sppo_megatron.models.bridge import Bridge, get_bridge
from sppo_megatron.models.dist_ckpt import (
    MODEL_KEY,
    load_dist_checkpoint,
    load_model_checkpoint,
    save_dist_checkpoint,
    save_model_checkpoint,
    unwrap_model,
)
from sppo_megatron.models.specs import check_fp8_support, resolve_transformer_impl, te_available
from sppo_megatron.platform.dtypes import resolve_dtype

__all__ = [
    "ARCHITECTURES",
    "SUPPORTED_MODEL_TYPES",
    "Bridge",
    "MODEL_KEY",
    "check_fp8_support",
    "get_architecture",
    "get_bridge",
    "load_dist_checkpoint",
    "load_model_checkpoint",
    "resolve_dtype",
    "resolve_transformer_impl",
    "save_dist_checkpoint",
    "save_model_checkpoint",
    "te_available",
    "unwrap_model",
]
