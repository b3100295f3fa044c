"""Logits of both sides of a weight sync, for the sync tests: the Megatron actor's (through its
pipeline schedule, gathered over TP and PP) and the HF rollout engine's."""

from __future__ import annotations

import torch


def megatron_logits(actor, tokens):
    """Full-vocabulary logits [b, s, vocab] of the Megatron policy (PP schedule, TP gather), on every rank."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from sppo_megatron.actor.batch import MicroBatch

    tokens = torch.tensor(tokens)
    mb = MicroBatch(
        tokens=tokens, labels=tokens, response_mask=torch.ones_like(tokens, dtype=torch.bool), sample_index=[0, 1]
    )
    out = torch.zeros(tokens.shape[0], tokens.shape[1], actor.vocab_size)

    def loss_func(logits):
        full = gather_from_tensor_model_parallel_region(logits)
        out.copy_(full[..., : actor.vocab_size].float())
        return torch.zeros(()), torch.zeros((), dtype=torch.int), {}

    def forward_step(data_iterator, model):
        return actor._forward(model, next(data_iterator)), loss_func

    actor.ddp.eval()
    with torch.no_grad():
        actor._run_schedule([mb], forward_step, forward_only=True)
    actor.ddp.train()
    dist.all_reduce(out, group=ps.get_pipeline_model_parallel_group())
    return out


def engine_logits(engine, tokens):
    with torch.no_grad():
        ids = torch.tensor(tokens, device=next(engine.model.parameters()).device)
        return engine.model(ids).logits.float()
