"""Megatron -> HF streaming: the walk behind `Bridge.export_hf_weights` (the converter, the HF
export of a run, the weight sync) and `Bridge.export_lora_factors` (PEFT adapters).

Each table row on this rank contributes `Piece`s: a local tensor and the layout it is gathered
by. A weight is one piece (merged with its LoRA adapter, when it has one: the merge is local to
the shard, see models/lora.py); an adapted weight's factors are two, the one split like the
weight gathered by the row's layout, the whole one as it is (repeated for each HF tensor of a
fused row: q/k/v and gate/up share A). Pieces are made one row at a time, so at most one row's
full tensors are alive. Pipeline stages exchange what they hold (names, shapes, dtypes) once per
stream; the owning stage broadcasts each piece, the owning expert-parallel rank each expert's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from sppo_megatron.models import layouts
from sppo_megatron.models.arch import Param
from sppo_megatron.models.dist_ckpt import unwrap_model
from sppo_megatron.models.groups import TensorGroups, local_expert_range
from sppo_megatron.models.lora import LoRAAdapter, adapters
from sppo_megatron.platform.distributed import current_device


@dataclass(frozen=True)
class Piece:
    """One local tensor of a row: `tag` (None = the weight, else "lora_A" / "lora_B"), gathered
    as `layout` says; `make` builds it when the row's turn comes."""

    tag: Optional[str]
    layout: layouts.Layout
    shape: Tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]


PieceFn = Callable[[Param, torch.nn.Parameter, Optional[LoRAAdapter]], List[Piece]]


def weight_pieces(trainable_only: bool = False) -> PieceFn:
    """The weight of each row, merged with its adapter; trainable_only: only rows training can
    change (a trainable parameter, or an adapter on a frozen one)."""

    def pieces(row: Param, param: torch.nn.Parameter, adapter: Optional[LoRAAdapter]) -> List[Piece]:
        if adapter is None:
            if trainable_only and not param.requires_grad:
                return []
            return [Piece(None, row.layout, tuple(param.shape), param.dtype, param.detach)]

        def merged() -> torch.Tensor:
            return (param.detach().float() + adapter.delta_weight()).to(param.dtype)

        return [Piece(None, row.layout, tuple(param.shape), param.dtype, merged)]

    return pieces


def factor_pieces(row: Param, param: torch.nn.Parameter, adapter: Optional[LoRAAdapter]) -> List[Piece]:
    """A and B of an adapted row (scaled by nothing: the scale lives in the adapter config)."""
    if adapter is None:
        return []
    a, b = adapter.lora_A, adapter.lora_B
    a_layout, b_layout = (layouts.REPLICATED, row.layout) if adapter.site.column else (row.layout, layouts.REPLICATED)
    return [
        Piece("lora_A", a_layout, tuple(a.shape), a.dtype, a.detach),
        Piece("lora_B", b_layout, tuple(b.shape), b.dtype, b.detach),
    ]


def stream(bridge: Any, model: Any, pieces: PieceFn) -> Iterator[Tuple[Optional[str], List[str], List[torch.Tensor]]]:
    """(tag, HF names, full tensors) of every piece, in the order of `bridge.hf_names()`, on
    every rank (collective over the model-parallel ranks: iterate to the end, in step)."""
    module = unwrap_model(model)
    groups = TensorGroups()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    stage = parallel_state.get_pipeline_model_parallel_rank()
    _, num_local = local_expert_range(bridge.num_experts)
    adapted = adapters(module)

    # keyed without the expert: every expert of a layer has the same shapes, and the pipeline
    # peers of this rank (same EP rank) hold other experts than the owner's
    local: Dict[Any, List[Piece]] = {}
    meta: Dict[Any, List[Tuple[Optional[str], List[Any], torch.dtype]]] = {}
    for layer, expert, row, mname, param, _ in bridge._local_params(module):
        if row.layout is layouts.OUTPUT and bridge.tied:
            continue  # last-stage copy of a tied embedding: exported once, as the embedding
        mine = pieces(row, param, adapted.get(mname))
        local[(layer, expert, row.hf)] = mine
        tp, _ = groups.split(row)
        meta[(layer, row.hf)] = [(p.tag, p.layout.hf_shapes(p.shape, tp, bridge), p.dtype) for p in mine]
    owners = _owners(meta, pp, stage)

    for layer, expert, row in bridge._plan():
        names = [h.format(layer=layer, expert=expert) for h in row.hf]
        if (layer, row.hf) not in owners:
            raise RuntimeError(f"no pipeline stage holds {names[0]}")
        src, described, owner_stage = owners[(layer, row.hf)]
        held = local.get((layer, expert, row.hf)) if owner_stage == stage else None
        for i, (tag, shapes, dtype) in enumerate(described):
            tensors = None
            if owner_stage == stage:
                if held is not None:
                    piece = held[i]
                    tensors = groups.assemble(row, piece.make(), bridge, piece.layout)
                if expert is not None:
                    tensors = groups.from_expert_owner(tensors, shapes, dtype, expert // num_local)
            if tensors is None:
                tensors = [torch.empty(s, dtype=dtype, device=current_device()) for s in shapes]
            if pp > 1:
                for t in tensors:
                    dist.broadcast(t, src=src, group=parallel_state.get_pipeline_model_parallel_group())
            yield tag, names, tensors * (len(names) // len(tensors))
            del tensors


def _owners(meta: Dict[Any, Any], pp: int, stage: int) -> Dict[Any, Tuple[Optional[int], Any, int]]:
    """(global rank of the owning stage, its pieces' description, owning stage) per row key."""
    if pp == 1:
        return {key: (None, value, stage) for key, value in meta.items()}
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    gathered: List[Any] = [None] * pp
    dist.all_gather_object(gathered, meta, group=pp_group)
    pp_ranks = dist.get_process_group_ranks(pp_group)
    owners: Dict[Any, Tuple[Optional[int], Any, int]] = {}
    for s, m in enumerate(gathered):
        for key, value in m.items():
            owners.setdefault(key, (pp_ranks[s], value, s))
    return owners


class WeightExport:
    """A model's HF-named weights as a stream (`for name, t in WeightExport(...)`: all of them);
    `changed_only()` streams just those training can change, or is None when that is all of them.
    What the weight sync takes: after a full sync, an engine that keeps its weights gets the
    changed ones only."""

    def __init__(self, bridge: Any, model: Any) -> None:
        self.bridge, self.model = bridge, model

    def __iter__(self) -> Iterator[Tuple[str, torch.Tensor]]:
        return self.bridge.export_hf_weights(self.model)

    def changed_only(self) -> Optional[Iterable[Tuple[str, torch.Tensor]]]:
        if all(p.requires_grad for p in unwrap_model(self.model).parameters()):
            return None
        return self.bridge.export_hf_weights(self.model, trainable_only=True)
