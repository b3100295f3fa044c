"""One model under one run's settings -> megatron-core TransformerConfig keyword arguments."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from sppo_megatron.config.schema import ModelConfig, ParallelConfig
from sppo_megatron.errors import UserError
from sppo_megatron.models.specs import check_fp8_support, resolve_transformer_impl
from sppo_megatron.platform.dtypes import resolve_dtype


def pipeline_split(num_layers: int, pp: int) -> List[int]:
    """Layers per pipeline stage. Even when divisible; otherwise megatron's uneven split:
    equal middle stages, the remainder shared by the first and last stage (first >= last)."""
    if pp < 1:
        raise UserError(f"parallel.pp={pp} must be >= 1")
    if pp > num_layers:
        raise UserError(f"parallel.pp={pp} exceeds the model's {num_layers} layers")
    if num_layers % pp == 0:
        return [num_layers // pp] * pp
    if pp == 2:
        first = (num_layers + 1) // 2
        return [first, num_layers - first]
    middle = -(-num_layers // pp)
    rest = num_layers - (pp - 2) * middle
    if rest < 2:
        middle = num_layers // pp
        rest = num_layers - (pp - 2) * middle
    first = (rest + 1) // 2
    return [first] + [middle] * (pp - 2) + [rest - first]


def transformer_config_kwargs(
    bridge: Any, model: Optional[ModelConfig] = None, parallel: Optional[ParallelConfig] = None
) -> Dict[str, Any]:
    """Every TransformerConfig field we set for `bridge`'s model (None = the schema defaults)."""
    model = ModelConfig() if model is None else model
    parallel = ParallelConfig() if parallel is None else parallel
    tp, pp = parallel.tp, parallel.pp
    # megatron-core trains MoE layers under TP only with sequence parallelism: on for them
    sequence_parallel = (bool(parallel.sequence_parallel) or bridge.arch.moe) and tp > 1
    bridge.check_parallel(parallel)
    dtype = resolve_dtype(model.dtype)
    if model.fp8 is not None:
        check_fp8_support(model)
    kwargs: Dict[str, Any] = dict(
        num_layers=bridge.num_layers,
        hidden_size=bridge.hidden_size,
        ffn_hidden_size=bridge.ffn_hidden_size,
        num_attention_heads=bridge.num_attention_heads,
        num_query_groups=bridge.num_kv_heads,
        kv_channels=bridge.head_dim,
        layernorm_epsilon=bridge.rms_norm_eps,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=bridge.arch.qkv_bias,
        qk_layernorm=bridge.arch.qk_norm,
        rotary_interleaved=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=float(getattr(bridge.hf_config, "initializer_range", 0.02) or 0.02),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
    )
    split = pipeline_split(bridge.num_layers, pp)
    if len(set(split)) > 1:
        kwargs["num_layers_in_first_pipeline_stage"] = split[0]
        kwargs["num_layers_in_last_pipeline_stage"] = split[-1]
    if model.recompute == "selective":
        kwargs["recompute_granularity"] = "selective"
    elif model.recompute == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif model.recompute != "none":
        raise UserError(f"model.recompute={model.recompute!r}: expected none, selective or full")
    if model.fp8 is not None:
        kwargs.update(fp8=model.fp8, fp8_recipe=model.fp8_recipe)
    if bridge.arch.moe:
        kwargs.update(moe_kwargs(bridge, model, parallel))
    kwargs.update(bridge.arch.extra_transformer_kwargs(bridge.hf_config))
    return kwargs


def moe_kwargs(bridge: Any, model: ModelConfig, parallel: ParallelConfig) -> Dict[str, Any]:
    """The mixture-of-experts fields: HF routing -> megatron's router, experts and dispatcher.

    HF routers take a softmax over all experts, then the top k, renormalised when
    `norm_topk_prob` (Mixtral: always). Megatron's softmax router does the same with
    moe_router_pre_softmax=True (no renormalisation) or, with False, a softmax over the top-k
    logits, which equals the renormalised form. Router logits in fp32 (megatron's advice for
    stable routing; the same as HF in fp32). Experts: TE grouped GEMM with Transformer Engine,
    SequentialMLP otherwise, and with LoRA on the experts (the same checkpoint loads into either). The alltoall dispatcher
    runs on NCCL and, with the CPU layer, on gloo."""
    cfg = bridge.hf_config
    renormalise = bool(getattr(cfg, "norm_topk_prob", True)) if bridge.model_type != "mixtral" else True
    kwargs: Dict[str, Any] = dict(
        num_moe_experts=bridge.num_experts,
        moe_router_topk=int(cfg.num_experts_per_tok),
        moe_ffn_hidden_size=int(getattr(cfg, "moe_intermediate_size", None) or bridge.ffn_hidden_size),
        moe_router_score_function="softmax",
        moe_router_pre_softmax=not renormalise,
        moe_router_dtype="fp32",
        # LoRA on routed experts needs one linear layer per expert (SequentialMLP), not TE's grouped GEMM
        moe_grouped_gemm=resolve_transformer_impl(model) == "transformer_engine"
        and not (model.lora.rank and model.lora.experts),
        moe_token_dispatcher_type="alltoall",
        moe_router_load_balancing_type="aux_loss" if model.moe_aux_loss_coeff > 0 else "none",
        moe_aux_loss_coeff=float(model.moe_aux_loss_coeff),
        moe_z_loss_coeff=float(model.moe_z_loss_coeff) or None,
        moe_layer_freq=[int(moe) for moe in bridge.moe_layers],
        expert_model_parallel_size=parallel.ep,
        expert_tensor_parallel_size=parallel.etp,
    )
    if bridge.arch.shared_expert:
        kwargs.update(
            moe_shared_expert_intermediate_size=int(cfg.shared_expert_intermediate_size), moe_shared_expert_gate=True
        )
    return kwargs
