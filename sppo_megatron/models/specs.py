"""Layer-spec selection (Transformer Engine or local + SDPA) and the FP8 capability check.

Transformer Engine is imported lazily and only here (`te_available`), so everything works on
machines without it. Tests monkeypatch `te_available` to exercise both branches on CPU.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Tuple

import torch

from sppo_megatron.config.schema import ModelConfig
from sppo_megatron.errors import UserError

# megatron-core is imported inside the functions that use it: the console scripts import this
# package before they silence megatron's import-time warnings, and `--help` stays quick.
# Transformer Engine is optional; sdpa_attention and norms import megatron-core at their top.

# FP8 compute-capability requirements (NVIDIA): FP8 tensor cores from Ada/Hopper (8.9) on;
# MXFP8 needs Blackwell (10.0); TE's blockwise FP8 scaling needs Hopper (9.0).
FP8_MIN_CAPABILITY = (8, 9)
RECIPE_MIN_CAPABILITY = {"mxfp8": (10, 0), "blockwise": (9, 0)}


@functools.lru_cache(maxsize=1)
def _te_importable() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means "not usable"
        return False
    return True


def te_available() -> bool:
    """True when Transformer Engine (PyTorch) can be imported. Never imports it twice."""
    return _te_importable()


def resolve_transformer_impl(model_cfg: ModelConfig) -> str:
    """'transformer_engine' or 'local' for `model.transformer_impl` (auto = TE when usable)."""
    impl = model_cfg.transformer_impl
    if impl == "local":
        return "local"
    usable = torch.cuda.is_available() and te_available()  # never import TE on a CPU machine
    if impl == "transformer_engine":
        if not te_available():
            raise UserError(
                "model.transformer_impl=transformer_engine but Transformer Engine is not importable "
                "(pip install transformer-engine[pytorch], or use model.transformer_impl=local|auto)"
            )
        if not torch.cuda.is_available():
            raise UserError("model.transformer_impl=transformer_engine needs a CUDA GPU (use local or auto on CPU)")
        return "transformer_engine"
    if impl != "auto":
        raise UserError(f"model.transformer_impl={impl!r}: expected auto, transformer_engine or local")
    return "transformer_engine" if usable else "local"


def _te_check(name: str) -> Optional[Tuple[bool, str]]:
    """Call one of TE's own capability checks if this TE version has it."""
    try:
        from transformer_engine.pytorch import fp8 as te_fp8
    except Exception:  # noqa: BLE001
        return None
    fn = getattr(te_fp8, name, None)
    if fn is None:
        return None
    try:
        ok, reason = fn()
    except Exception:  # noqa: BLE001
        return None
    return bool(ok), str(reason)


def check_fp8_support(model_cfg: ModelConfig) -> None:
    """Raise UserError unless `model.fp8` / `model.fp8_recipe` can run here. No-op when fp8 is off.

    Callable from config validation (before any process group exists): it needs only torch and,
    when FP8 is requested, Transformer Engine.
    """
    fp8, recipe = model_cfg.fp8, model_cfg.fp8_recipe
    if fp8 is None:
        return
    if fp8 not in ("e4m3", "hybrid"):
        raise UserError(f"model.fp8={fp8!r}: expected null, e4m3 or hybrid")
    if recipe not in ("delayed", "tensorwise", "mxfp8", "blockwise"):
        raise UserError(f"model.fp8_recipe={recipe!r}: expected delayed, tensorwise, mxfp8 or blockwise")
    if model_cfg.transformer_impl == "local":
        raise UserError(
            "model.fp8 needs Transformer Engine layers (model.transformer_impl=auto or transformer_engine), not local"
        )
    if not torch.cuda.is_available():
        raise UserError(
            f"model.fp8={fp8} needs a CUDA GPU with FP8 support (compute capability >= 8.9); none is available"
        )
    if not te_available():
        raise UserError(
            f"model.fp8={fp8} needs Transformer Engine, which is not importable (pip install transformer-engine[pytorch])"
        )
    cap = tuple(torch.cuda.get_device_capability())
    name = torch.cuda.get_device_name()
    if cap < FP8_MIN_CAPABILITY:
        raise UserError(
            f"model.fp8={fp8}: the GPU {name} (compute capability {cap[0]}.{cap[1]}) cannot do FP8; "
            f"it needs >= {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} (Ada, Hopper, Blackwell)"
        )
    need = RECIPE_MIN_CAPABILITY.get(recipe)
    if need is not None and cap < need:
        raise UserError(
            f"model.fp8_recipe={recipe}: the GPU {name} (compute capability {cap[0]}.{cap[1]}) does not support it; "
            f"it needs >= {need[0]}.{need[1]}"
        )
    te_name = {"mxfp8": "check_mxfp8_support", "blockwise": "check_fp8_block_scaling_support"}.get(
        recipe, "check_fp8_support"
    )
    verdict = _te_check(te_name)
    if verdict is not None and not verdict[0]:
        raise UserError(f"model.fp8={fp8} fp8_recipe={recipe}: Transformer Engine reports: {verdict[1]}")


def layer_spec(model_cfg: ModelConfig, qk_layernorm: bool = False, config: Any = None):
    """The GPT layer ModuleSpec: TE spec, or the local spec with `SDPAttention` as core attention.
    A mixture-of-experts model (`config` has experts) gets megatron's decoder block spec instead:
    one spec per layer (expert or dense MLP per `config.moe_layer_freq`), this stage's layers.

    Layer-spec functions take keywords only (megatron-core 0.19 wraps them as *args/**kwargs).
    """
    impl = resolve_transformer_impl(model_cfg)
    if config is not None and config.num_moe_experts:
        return _moe_block_spec(model_cfg, config, impl)
    if impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    if model_cfg.fp8 is not None:
        raise UserError("model.fp8 needs Transformer Engine layers; the local layer spec has no FP8")
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from sppo_megatron.models.sdpa_attention import SDPAttention

    spec = get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def _moe_block_spec(model_cfg: ModelConfig, config: Any, impl: str):
    """megatron's block spec for MoE models; on the local spec with SDPA attention and norms that
    work under sequence parallelism (MoE under TP needs it)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    if impl == "transformer_engine":
        return get_gpt_decoder_block_spec(config=config, use_transformer_engine=True)
    if model_cfg.fp8 is not None:
        raise UserError("model.fp8 needs Transformer Engine layers; the local layer spec has no FP8")
    from sppo_megatron.models.norms import SequenceParallelRMSNorm
    from sppo_megatron.models.sdpa_attention import SDPAttention

    block = get_gpt_decoder_block_spec(config=config, use_transformer_engine=False, normalization="RMSNorm")
    for spec in block.layer_specs:
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
        spec.submodules.input_layernorm = SequenceParallelRMSNorm
        spec.submodules.pre_mlp_layernorm = SequenceParallelRMSNorm
        attention = spec.submodules.self_attention.submodules
        if config.qk_layernorm:  # torch's norm refuses a sequence-parallel config even here
            attention.q_layernorm = attention.k_layernorm = SequenceParallelRMSNorm
    block.layer_norm = SequenceParallelRMSNorm
    return block
