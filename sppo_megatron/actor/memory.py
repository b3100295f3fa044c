"""Free the actor's GPU memory around rollouts: params, grad buffers and optimizer state.

`offload` copies every GPU storage the actor owns (model parameters, the DDP contiguous
parameter buffer of the distributed optimizer, the optimizer's fp32 main parameters and Adam
moments) into pinned CPU memory and shrinks the GPU storage to zero bytes with
`untyped_storage().resize_(0)`; gradient buffers are dropped without a copy (they are zeroed at
the start of every update). `onload` re-grows each storage and copies the bytes back.

Working at the STORAGE level (as megatron's own buffer offload does) keeps every view valid:
parameters that are views into DDP's parameter buffer, `main_grad` views into the grad buffer,
and distributed-optimizer shards that are views of fp32 parameters all see the restored memory,
without re-pointing a single tensor. Each storage is handled once however many tensors view it.

On CPU (no CUDA) both are no-ops: there is no device memory to give back to a rollout engine.

`measured_memory` reads what an actor holds (parameters, gradient buffers, optimizer state) and
`expected_memory` computes it from a built model by megatron's rules (tools/lora_memory.py, for
shapes too large to allocate whole here; a test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Any, Dict, Iterator, List, Tuple

import torch

from sppo_megatron.actor.optimizer_state import torch_optimizers


def _param_and_state_tensors(actor: Any) -> Iterator[torch.Tensor]:
    for p in actor.ddp.module.parameters():
        yield p
    for buffer in list(actor.ddp.buffers) + list(getattr(actor.ddp, "expert_parallel_buffers", [])):
        if getattr(buffer, "param_data", None) is not None:
            yield buffer.param_data
    for opt in torch_optimizers(actor.optimizer):
        for group in opt.param_groups:
            yield from group["params"]
        for state in opt.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    yield value


def _grad_tensors(actor: Any) -> Iterator[torch.Tensor]:
    for buffer in list(actor.ddp.buffers) + list(getattr(actor.ddp, "expert_parallel_buffers", [])):
        if getattr(buffer, "grad_data", None) is not None:
            yield buffer.grad_data


def _unique_cuda_storages(tensors) -> List[torch.UntypedStorage]:
    seen: Dict[int, torch.UntypedStorage] = {}
    for t in tensors:
        if not t.is_cuda:
            continue
        s = t.untyped_storage()
        if s.nbytes() > 0 and s.data_ptr() not in seen:
            seen[s.data_ptr()] = s
    return list(seen.values())


def offload(actor: Any) -> Any:
    """Move the actor's GPU state to pinned CPU memory; returns the handle `onload` needs."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    grads = [(s, s.nbytes()) for s in _unique_cuda_storages(_grad_tensors(actor))]
    grad_ptrs = {s.data_ptr() for s, _ in grads}
    saved: List[Tuple[torch.UntypedStorage, torch.UntypedStorage]] = []
    cache: List[torch.UntypedStorage] = getattr(actor, "_host_buffers", [])  # pinned buffers reused across rollouts
    storages = [s for s in _unique_cuda_storages(_param_and_state_tensors(actor)) if s.data_ptr() not in grad_ptrs]
    for idx, s in enumerate(storages):
        if idx < len(cache) and cache[idx].nbytes() == s.nbytes():
            host = cache[idx]
        else:
            host = torch.empty(s.nbytes(), dtype=torch.uint8, pin_memory=True).untyped_storage()
        host.copy_(s, non_blocking=True)
        saved.append((s, host))
    actor._host_buffers = [host for _, host in saved]
    torch.cuda.synchronize()
    for s, _ in saved:
        s.resize_(0)
    for s, _ in grads:
        s.resize_(0)
    torch.cuda.empty_cache()
    return {"saved": saved, "grads": grads}


def onload(actor: Any, handle: Any) -> None:
    """Undo `offload` (no-op for a None handle, i.e. on CPU or when nothing was offloaded)."""
    if handle is None or not torch.cuda.is_available():
        return
    for s, host in handle["saved"]:
        s.resize_(host.nbytes())
        s.copy_(host, non_blocking=True)
    for s, nbytes in handle["grads"]:
        s.resize_(nbytes)
    for grad in _grad_tensors(actor):
        grad.zero_()
    torch.cuda.synchronize()


@dataclass(frozen=True)
class MemoryPerRank:
    """Bytes this rank holds for training: parameters, gradients (DDP's buffers) and optimizer
    state (Adam moments, fp32 main parameters that are not the parameters themselves)."""

    trainable_params: int  # elements
    params: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer


def expected_memory(model: Any, dp: int = 1, expert_dp: int = 1, distributed_optimizer: bool = True) -> MemoryPerRank:
    """What `build_policy` + `build_optimizer` allocate for `model` (this rank's stage, built),
    by megatron's rules: gradients in fp32 for every trainable element (grad_reduce_in_fp32); Adam's
    two fp32 moments, plus fp32 main parameters for bf16/fp16 ones, sharded over the data-parallel
    ranks (expert-data-parallel for routed experts) by the distributed optimizer. Buffer padding
    (a few hundred elements per bucket) is not counted."""
    params = {id(p): p for p in model.parameters()}.values()
    trainable = [p for p in params if p.requires_grad]
    optimizer = 0.0
    for p in trainable:
        per_element = 8 + (4 if p.dtype != torch.float32 else 0)
        shards = (expert_dp if getattr(p, "allreduce", True) is False else dp) if distributed_optimizer else 1
        optimizer += p.numel() * per_element / shards
    return MemoryPerRank(
        trainable_params=sum(p.numel() for p in trainable),
        params=sum(p.numel() * p.element_size() for p in params),
        grads=4 * sum(p.numel() for p in trainable),
        optimizer=int(optimizer),
    )


def measured_memory(actor: Any) -> MemoryPerRank:
    """The bytes `actor` holds, read from its objects (optimizer state materialised first): model
    parameters, DDP gradient buffers, optimizer state and main parameters (storages counted once;
    main parameters that are views of the parameters' own buffer are not counted again)."""
    from sppo_megatron.actor.optimizer_state import init_state

    init_state(actor.optimizer)

    def storages(tensors: Iterator[torch.Tensor], skip: AbstractSet[int] = frozenset()) -> Dict[int, int]:
        return {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in tensors
            if t.untyped_storage().data_ptr() not in skip
        }

    buffers = list(actor.ddp.buffers) + list(getattr(actor.ddp, "expert_parallel_buffers", []))
    model_params = list(actor.ddp.module.parameters())
    params = storages(iter(model_params + [b.param_data for b in buffers if b.param_data is not None]))
    grads = storages(b.grad_data for b in buffers)
    state = storages(
        (
            t
            for opt in torch_optimizers(actor.optimizer)
            for t in [p for g in opt.param_groups for p in g["params"]]
            + [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
        ),
        skip=set(params) | set(grads),
    )
    return MemoryPerRank(
        trainable_params=sum(p.numel() for p in model_params if p.requires_grad),
        params=sum(params.values()),
        grads=sum(grads.values()),
        optimizer=sum(state.values()),
    )
