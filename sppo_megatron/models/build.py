"""GPTModel construction for one bridge, with the workarounds megatron-core needs to match HF."""

from __future__ import annotations

from typing import Any, Optional

import torch

from sppo_megatron.config.schema import ModelConfig, ParallelConfig
from sppo_megatron.models.dist_ckpt import unwrap_model
from sppo_megatron.models.rope import llama3_inv_freq

# megatron-core is imported inside the functions that use it: the console scripts import this
# package before they silence megatron's import-time warnings, and `--help` stays quick.

# megatron-core's RotaryEmbedding._apply_scaling hard-codes these llama3 parameters
_MEGATRON_LLAMA3 = (1.0, 4.0, 8192)


def build_gpt_model(
    bridge: Any,
    model_cfg: Optional[ModelConfig] = None,
    parallel_cfg: Optional[ParallelConfig] = None,
    *,
    perform_initialization: bool = True,
    padded_vocab_size: Optional[int] = None,
):
    """GPTModel for this rank's pipeline stage (see `Bridge.build_model`). parallel_cfg None =
    the layout megatron is initialised with; padded_vocab_size None = `bridge.padded_vocab_size(tp)`."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("build_model needs megatron's parallel state: call init_distributed(tp, pp) first")
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    ep = parallel_state.get_expert_model_parallel_world_size()
    etp = parallel_state.get_expert_tensor_parallel_world_size()
    parallel = ParallelConfig(tp=tp, pp=pp, ep=ep, etp=etp) if parallel_cfg is None else parallel_cfg
    if (parallel.tp, parallel.pp, parallel.ep, parallel.etp) != (tp, pp, ep, etp):
        raise RuntimeError(
            f"parallel config tp={parallel.tp} pp={parallel.pp} ep={parallel.ep} etp={parallel.etp} but "
            f"megatron is initialised with tp={tp} pp={pp} ep={ep} etp={etp}"
        )
    model_cfg = ModelConfig() if model_cfg is None else model_cfg
    config = bridge.transformer_config(model_cfg, parallel)
    config.perform_initialization = perform_initialization
    rope = bridge.rope
    model = GPTModel(
        config=config,
        transformer_layer_spec=bridge.layer_spec(model_cfg, config),
        vocab_size=padded_vocab_size or bridge.padded_vocab_size(tp),
        max_sequence_length=bridge.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=bridge.tied,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=rope.theta,
        rope_scaling=rope.kind == "llama3",
        rope_scaling_factor=rope.factor if rope.kind == "llama3" else 8.0,
        seq_len_interpolation_factor=rope.factor if rope.kind == "linear" else None,
    )
    if (
        rope.kind == "llama3"
        and (
            rope.low_freq_factor,
            rope.high_freq_factor,
            rope.original_max_position_embeddings,
        )
        != _MEGATRON_LLAMA3
    ):
        # megatron-core hard-codes low/high freq factors 1/4 and 8192 original positions
        emb = model.rotary_pos_emb
        emb.inv_freq = llama3_inv_freq(rope, bridge.head_dim, device=emb.inv_freq.device).to(emb.inv_freq.dtype)
    if config.params_dtype != torch.float32:
        # the local spec's torch RMSNorm ignores params_dtype; megatron's Float16Module would
        # cast it later, we do it here so the weights (and checkpoints) are uniformly typed
        model.to(config.params_dtype)
    if not perform_initialization:
        _set_tensor_parallel_attributes(model, config)
    if config.num_moe_experts:
        _mark_expert_parameters(model)
    _zero_vocab_padding(model, bridge.vocab_size)
    return model


def _zero_vocab_padding(model: Any, vocab_size: int) -> None:
    """Rows past the true vocabulary of this rank's embedding / LM-head shard are zero."""
    from megatron.core import parallel_state

    r = parallel_state.get_tensor_model_parallel_rank()
    module = unwrap_model(model)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
                start = r * p.shape[0]
                keep = max(0, min(p.shape[0], vocab_size - start))
                p[keep:].zero_()


def _mark_expert_parameters(model: Any) -> None:
    """Routed-expert weights are `allreduce=False` (reduced over the expert-data-parallel group,
    optimised by their own optimizer) at every EP size. megatron-core marks them only when
    EP > 1; at EP = 1 they would join the dense optimizer, the optimizer's checkpoint layout would
    then depend on EP, and a checkpoint saved at EP = 2 would not resume at EP = 1. At EP = 1 the
    expert-data-parallel group is the data-parallel group (x TP / ETP), so the math is unchanged."""
    for name, param in model.named_parameters():
        if ".mlp.experts." in name:
            param.allreduce = False


def _set_tensor_parallel_attributes(model: Any, config: Any) -> None:
    """megatron-core sets `tensor_model_parallel` / `partition_dim` / `partition_stride` on TP
    weights only inside its random init; without them the grad-norm treats TP shards as
    duplicates. Set them when the init is skipped (local layers; TE modules set their own)."""
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
        set_tensor_model_parallel_attributes,
    )

    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or getattr(weight, "tensor_model_parallel", False):
            continue
        if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
            stride = 2 if name.endswith("linear_fc1") and config.gated_linear_unit else 1
            set_tensor_model_parallel_attributes(weight, is_parallel=True, dim=0, stride=stride)
        elif isinstance(module, RowParallelLinear):
            set_tensor_model_parallel_attributes(weight, is_parallel=True, dim=1, stride=1)
