"""Full-vocabulary logits of a (TP, PP)-sharded GPTModel, for checks (converter `verify`, tests).

Training code should NOT use this: it gathers the whole vocabulary. Log-probs for training come
from the vocab-parallel logits (see the engine).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from sppo_megatron.models.dist_ckpt import unwrap_model

# megatron-core is imported inside the functions that use it: the console scripts import this
# package before they silence megatron's import-time warnings, and `--help` stays quick.


def forward_logits(model: Any, input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits [b, s, vocab_size] (padding columns dropped) for `input_ids` [b, s], on every rank.

    Runs megatron's forward-only pipeline schedule (one micro-batch), gathers the
    vocab-parallel logits across TP on the last stage and broadcasts them to every stage.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    module = unwrap_model(model)
    b, s = input_ids.shape
    device = next(module.parameters()).device
    input_ids = input_ids.to(device)
    position_ids = torch.arange(s, device=device).unsqueeze(0).expand(b, s)
    outputs = []

    def forward_step(data_iterator, m):
        tokens = next(data_iterator)
        out = m(tokens, position_ids, None)

        def collect(output):
            outputs.append(output.detach())
            return output.sum() * 0.0, {}

        return out, collect

    was_training = module.training
    module.eval()
    with torch.no_grad():
        get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([input_ids]),
            model=[model],
            num_microbatches=1,
            seq_length=s,
            micro_batch_size=b,
            forward_only=True,
        )
    module.train(was_training)
    dtype = module.config.params_dtype
    if parallel_state.is_pipeline_last_stage():
        logits = outputs[0]  # GPTModel returns [b, s, vocab / tp]
        logits = gather_from_tensor_model_parallel_region(logits)[..., :vocab_size].contiguous()
    else:
        logits = torch.empty(b, s, vocab_size, dtype=dtype, device=device)
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp > 1:
        group = parallel_state.get_pipeline_model_parallel_group()
        src = dist.get_process_group_ranks(group)[-1]
        logits = logits.to(dtype)
        dist.broadcast(logits, src=src, group=group)
    return logits
