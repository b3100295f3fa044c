"""Policy, optimizer and LR schedule for the actor: megatron-core objects built from its config groups.

* the model: `bridge.build_model` (this rank's PP stage of a GPTModel, recomputation per
  `model.recompute` in the bridge's TransformerConfig), weights
  from `model.megatron_ckpt` (a model-only dist checkpoint, `{"model": ...}`) or else from the
  HF directory `model.path` through the bridge, wrapped in Megatron DDP (grads reduced in fp32;
  the distributed optimizer per `parallel.use_distributed_optimizer`);
* the optimizer: `get_megatron_optimizer` (AdamW; bf16/fp16 mixed precision with fp32 main
  params when the model is bf16/fp16, plain fp32 otherwise; clipping `optim.clip_grad`);
* the LR schedule: megatron's OptimizerParamScheduler, linear warmup from 0 over
  `optim.lr_warmup_steps` (or `optim.lr_warmup_ratio` of all optimizer steps), then constant or
  cosine to `optim.min_lr`.

The TransformerConfig gets the training-loop hooks megatron's schedule needs:
`finalize_model_grads_func` (without it DP>1 never reduces gradients), `grad_scale_func`,
`calculate_per_token_loss` (the loss function returns a sum and a count; finalize divides the
gradients by the count summed over micro-batches and DP ranks, see actor.update) and
`variable_seq_lengths` (micro-batches are padded to their own length; the pipeline exchanges
shapes before each activation).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch

from sppo_megatron.actor.checkpoint import read_meta
from sppo_megatron.config.schema import ModelConfig, OptimConfig, ParallelConfig
from sppo_megatron.errors import UserError
from sppo_megatron.models.converted import check_checkpoint_matches
from sppo_megatron.models.dist_ckpt import load_model_checkpoint, model_vocab_for

# megatron-core is imported inside the functions that use it: the trainer and the tests import
# the actor's batch types without paying for it.


def warmup_steps(optim: OptimConfig, total: int) -> int:
    if optim.lr_warmup_steps > 0:
        return int(optim.lr_warmup_steps)
    return int(optim.lr_warmup_ratio * total)


def sequence_pad_multiple(model: ModelConfig, tconfig: Any) -> int:
    """Sequence lengths must be multiples of this: TP with sequence parallelism (on by request,
    and always for MoE models under TP: see transformer_config) splits the sequence across TP
    ranks, and Transformer Engine's FP8 GEMMs need token counts divisible by 16 (32 for MXFP8)."""
    multiple = tconfig.tensor_model_parallel_size if tconfig.sequence_parallel else 1
    if model.fp8:
        multiple = math.lcm(multiple, 32 if model.fp8_recipe == "mxfp8" else 16)
    return multiple


def build_policy(
    model_cfg: ModelConfig, parallel: ParallelConfig, bridge: Any, load_weights: bool = True, seed: int = 1234
):
    """This rank's GPTModel stage with its weights, and its DDP wrapper: (model, ddp).

    load_weights=False leaves the weights to a checkpoint restored next (or random: benchmarks);
    a LoRA policy (model.lora.rank > 0) still loads its frozen base from model.megatron_ckpt /
    model.path when the config names weights there, since its checkpoints hold the adapters only.
    The adapters are attached after the base is loaded (seeded by `seed` and the layer, so every
    layout starts from the same ones) and before DDP, which then holds the adapters alone."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    lora = model_cfg.lora.rank > 0
    if lora and model_cfg.lora.experts and not bridge.arch.moe:
        raise UserError(f"model.lora.experts=true but this {bridge.model_type} model has no routed experts")
    load_base = load_weights or (lora and bool(model_cfg.megatron_ckpt or model_cfg.path))
    # perform_initialization must stay on even though the weights are loaded next: megatron-core
    # 0.16.1 sets the `tensor_model_parallel` attribute of TP weights only inside the random
    # init, and without it the grad norm (and so clipping) drops TP>1 shards as "duplicates".
    model = bridge.build_model(
        model_cfg, parallel, padded_vocab_size=initial_padded_vocab(model_cfg, parallel) if load_base else None
    )
    tconfig = model.config
    tconfig.calculate_per_token_loss = True
    tconfig.variable_seq_lengths = True
    tconfig.finalize_model_grads_func = finalize_model_grads
    if load_base:
        load_initial_weights(model_cfg, model, bridge)
    if lora:
        from sppo_megatron.models.lora import attach_lora

        attach_lora(model, model_cfg.lora, seed)
    ddp = DistributedDataParallel(
        config=tconfig,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=bool(parallel.use_distributed_optimizer),
        ),
        module=model,
    )
    return model, ddp


def initial_padded_vocab(model_cfg: ModelConfig, parallel: ParallelConfig) -> Optional[int]:
    """model.megatron_ckpt's padded vocabulary (it may follow Megatron-LM's rule), None = ours."""
    if not model_cfg.megatron_ckpt:
        return None

    return model_vocab_for(model_cfg.megatron_ckpt, parallel.tp, "model.megatron_ckpt")


def load_initial_weights(model_cfg: ModelConfig, model: Any, bridge: Any) -> None:
    """model.megatron_ckpt (a dist checkpoint of any layout, Megatron-LM's included) if set, else
    the HF weights at model.path."""
    if model_cfg.megatron_ckpt:
        path = model_cfg.megatron_ckpt
        if os.path.isdir(path) and read_meta(path).get("lora"):
            raise UserError(
                f"model.megatron_ckpt={path} holds LoRA adapters, not a model: resume its run with trainer.resume, "
                "or merge it into weights with sppo-convert megatron-to-hf"
            )
        check_checkpoint_matches(path, bridge, "model.path", "model.megatron_ckpt")
        load_model_checkpoint(model, path, "model.megatron_ckpt")
    elif model_cfg.path:
        bridge.load_hf_weights(model, model_cfg.path)
    else:
        raise UserError(
            "set model.path (a Hugging Face model directory) or model.megatron_ckpt to load the policy weights"
        )


def build_optimizer(o: OptimConfig, parallel: ParallelConfig, ddp: Any, dtype: torch.dtype):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer="adam",
        lr=float(o.lr),
        min_lr=float(o.min_lr),
        weight_decay=float(o.weight_decay),
        adam_beta1=float(o.adam_beta1),
        adam_beta2=float(o.adam_beta2),
        adam_eps=float(o.adam_eps),
        clip_grad=float(o.clip_grad),
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=bool(parallel.use_distributed_optimizer),
    )
    optimizer = get_megatron_optimizer(config, [ddp])
    ddp.config.grad_scale_func = optimizer.scale_loss
    for sub in getattr(optimizer, "chained_optimizers", None) or [optimizer]:
        skip_fp32_self_copies(sub)
    return optimizer


def skip_fp32_self_copies(optimizer: Any) -> None:
    """The distributed optimizer's main params of fp32 parameters are views of the parameters'
    own buffer, so after each step it copies every fp32 parameter onto itself (a pass over all
    the weights in fp32 training). Drop those copies, once checked that source and destination
    are the same memory; bf16/fp16 parameters still get their copy from the fp32 main params."""
    groups = getattr(optimizer, "shard_fp32_groups", None)
    if not groups or getattr(optimizer.ddp_config, "fp8_param_gather", False):
        return
    for model_group, shard_group in zip(optimizer.model_fp32_groups, groups):
        for model_param, shard in zip(model_group, shard_group):
            world = optimizer._get_model_param_range_map(model_param)["gbuf_world_in_bucket"]
            gbuf, _, bucket = optimizer.model_param_gbuf_map[model_param]
            target = optimizer.buffers[gbuf].buckets[bucket].param_data.view(-1)[world.start : world.end]
            if target.data_ptr() != shard.data_ptr() or target.numel() != shard.numel():
                return
    copy_back = optimizer._copy_main_params_to_model_params

    def copy_float16_only() -> None:
        optimizer.shard_fp32_groups = [[] for _ in groups]
        try:
            copy_back()
        finally:
            optimizer.shard_fp32_groups = groups

    optimizer._copy_main_params_to_model_params = copy_float16_only


def build_scheduler(o: OptimConfig, total_optimizer_steps: int, optimizer: Any):
    """OptimizerParamScheduler over `total_optimizer_steps`; stepped once per successful optimizer step."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    total = total_optimizer_steps
    warmup = min(warmup_steps(o, total), total)
    decay_steps = max(total, warmup + 1)
    return OptimizerParamScheduler(
        optimizer=optimizer,
        init_lr=0.0 if warmup > 0 else float(o.lr),
        max_lr=float(o.lr),
        min_lr=float(o.min_lr),
        lr_warmup_steps=warmup,
        lr_decay_steps=decay_steps,
        lr_decay_style=str(o.lr_decay_style),
        start_wd=float(o.weight_decay),
        end_wd=float(o.weight_decay),
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
        # the config wins over a checkpoint's lr/warmup/decay settings; only the step count is restored
        # (the parameter groups get this run's lr back from optimizer_state.apply_optim_settings)
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
    )


def current_lr(optimizer: Any) -> float:
    """The learning rate of the default parameter group (what the next step uses)."""
    for group in optimizer.param_groups:
        if not group.get("is_decoupled_lr", False):
            lr = group["lr"]
            return float(lr.item() if isinstance(lr, torch.Tensor) else lr)
    return 0.0
