"""The distributed optimizer's `fully_reshardable` checkpoint state without gathered copies when
there is one data-parallel rank.

To build that state (megatron-core 0.16.1 and 0.19.2, `sharded_param_state_fully_reshardable`),
every rank copies its shard of main parameters and Adam moments into contiguous buffers,
all-gathers them over the data-parallel group, concatenates the received pieces and copies them
into whole-buffer "world" tensors, whose per-parameter slices become the checkpoint's tensors:
four copies of 12 bytes per parameter for fp32 main parameters, held at once during a save. With
one data-parallel rank the gathered world tensors are the rank's own state: each parameter's main
parameter and moments, reshaped, ARE the checkpoint's tensors. `streaming_state(optimizer)`
builds them so: same keys, shapes, sharding and values, no copy. With DP > 1 megatron's own
gather runs (each rank must see the whole state to write its part).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Iterator

import torch

# megatron-core is imported inside the function that uses it (see checkpoint.py).

_STATE_KEYS = ("param", "exp_avg", "exp_avg_sq")


def _model_space_state(opt: Any, model_sharded_state_dict: Any) -> Dict[int, Dict[str, Any]]:
    """What `sharded_param_state_fully_reshardable` returns on one DP rank, from views."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
    from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories

    tensors_and_factories, _ = extract_sharded_tensors_and_factories(model_sharded_state_dict)
    metadata = {sh.data: sh for sh in nested_values(tensors_and_factories)}
    out: Dict[int, Dict[str, Any]] = {}
    param_idx = 0
    for buffer in opt.buffers:
        for model_param in buffer.param_index_map:  # megatron's order: the index is part of the key space
            sharded = metadata[model_param]
            states = opt._get_main_param_and_optimizer_states(model_param)
            tensors = {}
            for key in _STATE_KEYS:
                data = states[key].detach().view(sharded.data.shape)
                fields: Dict[str, Any] = {"key": f"optimizer.state.{key}.{sharded.key}", "data": data}
                if not isinstance(sharded, ShardedTensorFactory):
                    fields["dtype"] = data.dtype
                tensors[key] = dataclasses.replace(sharded, **fields)
            out[param_idx] = tensors
            param_idx += 1
    return out


@contextlib.contextmanager
def streaming_state(optimizer: Any) -> Iterator[None]:
    """Within the block, `optimizer.sharded_state_dict(..., is_loading=False)` of a distributed
    optimizer on one data-parallel rank builds its fully_reshardable state from views."""
    subs = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    patched = []
    for sub in subs:
        original = getattr(sub, "sharded_param_state_fully_reshardable", None)
        group = getattr(sub, "data_parallel_group", None)
        if original is None or group is None or group.size() != 1 or not hasattr(sub, "buffers"):
            continue
        if getattr(sub.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False):
            continue  # its states are unscaled copies anyway

        def from_views(model_sharded_state_dict, is_loading=False, metadata=None, _sub=sub, _original=original):
            if is_loading:
                return _original(model_sharded_state_dict, is_loading, metadata)
            return _model_space_state(_sub, model_sharded_state_dict)

        sub.sharded_param_state_fully_reshardable = from_views
        patched.append(sub)
    try:
        with torch.no_grad():
            yield
    finally:
        for sub in patched:
            del sub.sharded_param_state_fully_reshardable  # back to the class method
