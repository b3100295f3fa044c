"""The process groups a bridge table row is split over, and which experts this rank holds."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from sppo_megatron.models.arch import Param
from sppo_megatron.models.layouts import Layout
from sppo_megatron.platform.distributed import current_device


def local_expert_range(num_experts: int) -> Tuple[int, int]:
    """(first global expert, number of experts) held by this expert-parallel rank."""
    if not num_experts:
        return 0, 0
    ep = ps.get_expert_model_parallel_world_size()
    per_rank = num_experts // ep
    return ps.get_expert_model_parallel_rank() * per_rank, per_rank


class TensorGroups:
    """The groups one table row is split over: TP for dense rows, expert TP (ETP) for expert
    rows, and EP for the experts themselves."""

    def __init__(self) -> None:
        self.tp = (
            ps.get_tensor_model_parallel_world_size(),
            ps.get_tensor_model_parallel_rank(),
            ps.get_tensor_model_parallel_group(),
        )
        self.etp = (
            ps.get_expert_tensor_parallel_world_size(),
            ps.get_expert_tensor_parallel_rank(),
            ps.get_expert_tensor_parallel_group(check_initialized=False),
        )
        self.ep = (
            ps.get_expert_model_parallel_world_size(),
            ps.get_expert_model_parallel_rank(),
            ps.get_expert_model_parallel_group(check_initialized=False),
        )

    def split(self, row: Param) -> Tuple[int, int]:
        """(size, rank) of the tensor-parallel split of `row` on this rank."""
        size, rank, _ = self.etp if row.per_expert else self.tp
        return size, rank

    def assemble(
        self, row: Param, data: torch.Tensor, dims: Any, layout: Optional[Layout] = None
    ) -> List[torch.Tensor]:
        """The full HF tensor(s) of this rank's `data` of `row`, gathered over its TP split as
        `layout` (default: the row's) says."""
        layout = layout or row.layout
        size, _, group = self.etp if row.per_expert else self.tp
        if size > 1 and layout.tp_sharded and layout.rows_sharded:
            data = data.contiguous()
            full = torch.empty((size * data.shape[0],) + tuple(data.shape[1:]), dtype=data.dtype, device=data.device)
            dist.all_gather_into_tensor(full, data, group=group)
            shards = [full]  # one allocation and no join copy (the biggest tensors: embedding, qkv)
        elif size > 1 and layout.tp_sharded:
            data = data.contiguous()
            shards = [torch.empty_like(data) for _ in range(size)]
            dist.all_gather(shards, data, group=group)
        else:
            shards = [data]
        return layout.assemble(shards, dims)

    def from_expert_owner(
        self, tensors: Optional[List[torch.Tensor]], shapes: List[Any], dtype: torch.dtype, owner: int
    ) -> List[torch.Tensor]:
        """Expert-parallel rank `owner`'s assembled tensors, on every EP rank."""
        size, rank, group = self.ep
        if rank == owner and tensors is None:
            raise ValueError(f"expert-parallel rank {owner} owns the tensors but passed none")
        if size == 1:
            return tensors or []
        if rank != owner:
            tensors = [torch.empty(s, dtype=dtype, device=current_device()) for s in shapes]
        else:
            tensors = [t.contiguous() for t in tensors or []]
        src = dist.get_global_rank(group, owner)
        for t in tensors:
            dist.broadcast(t, src=src, group=group)
        return tensors
