"""Router losses of mixture-of-experts models, for the step metrics.

megatron-core's router records each MoE layer's load-balancing (aux) loss and z-loss, divided by
their coefficients, in a layer-wise tracker when the coefficient is positive (model.moe_aux_loss_coeff
/ model.moe_z_loss_coeff; both 0 by default for RL, then nothing is recorded). One optimizer
step's values: per rank the sum over its layers and micro-batches, divided by its micro-batch
count; averaged over the ranks of a pipeline stage (TP / DP replicas of the same layers), summed
over stages, divided by the number of MoE layers. The tracker is cleared for the next step.
megatron's own reduction (reduce_aux_losses_tracker_across_ranks) averages with ReduceOp.AVG,
which gloo lacks, hence this one.
"""

from __future__ import annotations

from typing import Any, Dict

import torch.distributed as dist

# megatron-core is imported inside the functions that use it: the trainer and the tests import
# the actor's batch types without paying for it.


def router_losses(num_micro_batches: int, config: Any) -> Dict[str, float]:
    """{"moe/<loss name>": value} for the step just run (empty for dense models or zero coefficients)."""
    if not config.num_moe_experts:
        return {}
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

    tracker = get_moe_layer_wise_logging_tracker()
    if not tracker:
        return {}
    moe_layers = max(1, sum(config.moe_layer_freq) if isinstance(config.moe_layer_freq, list) else config.num_layers)
    out = {}
    for name in sorted(tracker):
        values = tracker[name]["values"].detach().float().sum().reshape(1) / max(num_micro_batches, 1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values)
            values /= dist.get_world_size() // ps.get_pipeline_model_parallel_world_size()
        out[f"moe/{name}"] = float(values) / moe_layers
    clear_aux_losses_tracker()
    return out
