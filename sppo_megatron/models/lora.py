"""LoRA adapters on megatron-core's linear layers, sharded the way the weight they adapt is sharded.

    names = attach_lora(model, cfg.model.lora, seed)   # after the base weights are loaded, before DDP

An adapter of a base weight W (out x in) holds A (rank x in) and B (out x rank); the layer then
computes W x + s B A dropout(x) with s = alpha / rank. B starts at zero, so a fresh adapter leaves
the model exactly as it was. The adapter is a sibling module of its base layer (`linear_qkv` ->
`linear_qkv_lora`, see `adapters`), added to the base's output by a forward hook: the base layer,
its parameter names and its checkpoint keys stay as they are, and the bridge tables keep naming
them. Every parameter outside an adapter is frozen: no gradient, no optimizer state, nothing in
DDP's (or the distributed optimizer's) buffers.

Sharding, over the base layer's group (tensor parallel; expert tensor parallel for routed experts):

    column-parallel W (rows split: linear_qkv, linear_fc1)    B split by rows like W, A whole
    row-parallel W (columns split: linear_proj, linear_fc2)   A split by columns like W, B whole

so this rank's merged shard is W_r + s B_r A (column) or W_r + s B A_r (row): `delta_weight` is
local, and the bridge's layouts gather merged shards as they gather base ones (gate/up and q/k/v
interleavings included). The whole factor's gradient is made equal on the ranks that hold it by
megatron's own region functions where the layer communicates (copy / reduce, or their
sequence-parallel gather / reduce-scatter), and by `_SumGrad` where its gradient is partial
(sequence-parallel inputs; routed experts, whose communication the MoE dispatcher does).

Transformer Engine layers (GPU) are recognised by class, imported only when TE is importable;
`TELayerNormColumnParallelLinear` fuses the input norm, so it is asked for the norm's output
(`return_layernorm_output`), which is what the adapter reads there. Routed experts need one
linear layer per expert (megatron's SequentialMLP): `moe_kwargs` turns TE's grouped GEMM off
when `model.lora.experts` is set.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel import mappings
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group
from megatron.core.utils import make_sharded_tensor_for_checkpoint, make_tp_sharded_tensor_for_checkpoint

from sppo_megatron.config.schema import LoraConfig
from sppo_megatron.errors import UserError
from sppo_megatron.models.specs import te_available
from sppo_megatron.platform.distributed import current_device

#: an adapter is registered next to its base layer under the base's name plus this suffix
SUFFIX = "_lora"
EXPERT_MARK = ".mlp.experts."  # routed experts (megatron's SequentialMLP / grouped MLP)


@dataclass(frozen=True)
class LinearSite:
    """What the adapter needs to know about one base linear layer."""

    column: bool  # W's rows are split across `group` (else its columns)
    group: Any  # the group W is split over (TP, or expert TP)
    layer_comm: bool  # the layer gathers / reduces over `group` itself (False: the MoE dispatcher does)
    sequence_parallel: bool  # the layer's input (column) or output (row) is split along the sequence
    expert: bool  # a routed expert's layer
    fused_norm: bool  # TE LayerNormLinear: the adapter reads the fused norm's output


def _te_classes() -> Dict[type, bool]:
    """Transformer Engine linear classes -> column-parallel; {} without TE (never imported then)."""
    if not te_available():
        return {}
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )

    return {TEColumnParallelLinear: True, TELayerNormColumnParallelLinear: True, TERowParallelLinear: False}


def describe_linear(module: Any, te_classes: Dict[type, bool], expert: bool) -> Optional[LinearSite]:
    """The site of a megatron-core linear layer (local or TE; `expert`: of a routed expert), None
    for any other module."""
    if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
        return LinearSite(
            column=isinstance(module, ColumnParallelLinear),
            group=module.tp_group,
            layer_comm=not module.explicit_expert_comm,
            sequence_parallel=bool(module.sequence_parallel) and not module.explicit_expert_comm,
            expert=expert,
            fused_norm=False,
        )
    column = te_classes.get(type(module))
    if column is None:
        return None
    layer_comm = module.parallel_mode is not None  # megatron hands TE None under explicit expert comm
    return LinearSite(
        column=column,
        group=module._tp_group,
        layer_comm=layer_comm,
        sequence_parallel=bool(module.sequence_parallel) and layer_comm,
        expert=expert,
        fused_norm=hasattr(module, "return_layernorm_output"),
    )


class _SumGrad(torch.autograd.Function):
    """Identity on a weight; its gradient is summed over `group` (each rank computed a part of it)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _group_size_rank(group: Any) -> Tuple[int, int]:
    if group is None or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


class LoRAAdapter(torch.nn.Module):
    """The A and B of one base linear layer, on this rank (see the module docstring)."""

    def __init__(self, base_weight: torch.Tensor, site: LinearSite, cfg: LoraConfig, gated: bool, seed: int) -> None:
        super().__init__()
        self.site = site
        self.rank = int(cfg.rank)
        self.scale = float(cfg.alpha) / self.rank
        self.gated = gated  # linear_fc1 of a gated MLP: B's rows are [gate_r; up_r] like W's
        self.dropout = float(cfg.dropout)
        self.size, self.group_rank = _group_size_rank(site.group)
        out_local, in_local = base_weight.shape
        a_full = _init_a(self.rank, in_local if site.column else in_local * self.size, cfg.init, seed)
        if not site.column:
            a_full = a_full[:, self.group_rank * in_local : (self.group_rank + 1) * in_local]
        dtype, device = base_weight.dtype, base_weight.device
        self.lora_A = torch.nn.Parameter(a_full.to(dtype=dtype, device=device).contiguous())
        self.lora_B = torch.nn.Parameter(torch.zeros(out_local, self.rank, dtype=dtype, device=device))
        sharded, whole = (self.lora_B, self.lora_A) if site.column else (self.lora_A, self.lora_B)
        tensor_parallel.set_tensor_model_parallel_attributes(sharded, True, 0 if site.column else 1, 1)
        if site.expert:
            for p in (self.lora_A, self.lora_B):
                # reduced over the expert-data-parallel group, by the expert optimizer
                p.allreduce = False  # type: ignore[attr-defined]
            # the expert optimizer's grad norm counts what is not a TP duplicate (judged by the dense TP
            # rank): the whole factor is one tensor per expert-TP group, counted on its first rank
            whole.tensor_model_parallel = True  # type: ignore[attr-defined]
            whole.shared = self.group_rank != 0  # type: ignore[attr-defined]
        partial_grad = not site.layer_comm or site.sequence_parallel
        self._sum_grad_of = ("A" if site.column else "B") if partial_grad and self.size > 1 else None

    def extra_repr(self) -> str:
        kind = "column" if self.site.column else "row"
        return f"rank={self.rank}, scale={self.scale:g}, {kind}, group size {self.size}"

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution to the base layer's output (this rank's share of it)."""
        site, group = self.site, self.site.group
        a, b = self.lora_A, self.lora_B
        if self._sum_grad_of == "A":
            a = _SumGrad.apply(a, group)
        elif self._sum_grad_of == "B":
            b = _SumGrad.apply(b, group)
        h = torch.nn.functional.linear(self._drop(x), a) * self.scale
        if site.layer_comm and self.size > 1:
            if site.column and site.sequence_parallel:
                h = mappings.gather_from_sequence_parallel_region(h, group=group)
            elif site.column:
                h = mappings.copy_to_tensor_model_parallel_region(h, group=group)
            elif site.sequence_parallel:
                h = mappings.reduce_scatter_to_sequence_parallel_region(h, group=group)
            else:
                h = mappings.reduce_from_tensor_model_parallel_region(h, group=group)
        return torch.nn.functional.linear(h, b)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Input dropout (training only): the same mask where the ranks of the group hold the same
        input (the default generator is seeded alike on them), distinct masks where they hold parts."""
        if not self.training or self.dropout == 0.0:
            return x
        same_input = self.site.column and not self.site.sequence_parallel
        if same_input:
            return torch.nn.functional.dropout(x, self.dropout)
        with tensor_parallel.get_cuda_rng_tracker().fork():
            return torch.nn.functional.dropout(x, self.dropout)

    def hook(self, module: Any, args: Tuple[Any, ...], output: Any) -> Any:
        """Forward hook of the base layer: (out, bias) -> (out + adapter, bias). A TE LayerNormLinear
        asked for its norm's output returns ((out, norm_out), None), or (out, bias, norm_out) when it
        returns its bias: the adapter reads norm_out and the caller gets the usual pair."""
        x = args[0]
        if len(output) == 3:
            out, bias, x = output
        else:
            out, bias = output
            if isinstance(out, tuple):
                out, x = out
        return out + self(x).to(out.dtype), bias

    # ------------------------------------------------------------------ merge, checkpoints
    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """s B A on this rank's shard of W (its shape and dtype; computed in fp32)."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        """A and B for megatron's dist checkpoints: the split factor sharded over the group on W's
        axis (gated fc1's B like W: gate and up halves apart), the whole one replicated."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        groups = dict(tp_group=self.site.group, dp_cp_group=metadata["dp_cp_group"])
        out = {}
        for name, axis in (("lora_A", None if self.site.column else 1), ("lora_B", 0 if self.site.column else None)):
            key = prefix + name
            param = getattr(self, name)
            if axis is None:
                sharded = make_sharded_tensor_for_checkpoint(param, key, prepend_offsets=sharded_offsets, **groups)
            else:
                sharded = make_tp_sharded_tensor_for_checkpoint(
                    param, key, tp_axis=axis, prepend_offsets=sharded_offsets, **groups
                )
                if self.gated:
                    sharded = apply_swiglu_sharded_factory(sharded, sharded_offsets)
            out[key] = sharded
        return out


def _init_a(rank: int, in_features: int, init: str, seed: int) -> torch.Tensor:
    """The whole A, the same on every layout (its own generator): PEFT's Kaiming-uniform
    (a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))) or N(0, 1/rank)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.empty(rank, in_features, dtype=torch.float32)
    if init == "gaussian":
        return a.normal_(0.0, 1.0 / rank, generator=gen)
    bound = 1.0 / math.sqrt(in_features)
    return a.uniform_(-bound, bound, generator=gen)


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")
_EXPERT = re.compile(r"local_experts\.(\d+)\.")


def _global_key(model: Any, name: str, first_expert: int) -> str:
    """The layout-independent identity of a linear layer (global layer and expert index): its
    adapter's init seed, so every TP/PP/EP layout starts from the same adapters."""
    match = _LAYER.match(name)
    if match is None:
        return name
    layer = model.decoder.layers[int(match.group(1))].layer_number - 1
    rest = _EXPERT.sub(lambda m: f"local_experts.{first_expert + int(m.group(1))}.", match.group(2))
    return f"decoder.layers.{layer}.{rest}"


def _foldable(t: torch.Tensor) -> torch.Tensor:
    """`t` with the strides of a contiguous tensor where a view gives them (no copy). Batch-1
    activations keep the strides of the transposed [1, s, h] embedding ([s, 1, h], stride s * h on
    the size-1 axis; their gradients those of the transposed logits), and torch.matmul, which
    megatron calls for frozen weights (forward and input gradient), then multiplies by batched
    GEMM instead of one GEMM: up to 15x slower (the LM head on CPU), and another kernel than a
    trainable weight gets (rounding differences)."""
    if t.dim() < 3:
        return t
    try:
        return t.view(-1, t.shape[-1]).view(t.shape)
    except RuntimeError:  # not viewable as a matrix: torch.matmul copies it anyway
        return t


def _foldable_input(module: Any, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
    """Forward pre-hook of a frozen megatron-core linear layer: `_foldable` input."""
    if not isinstance(args[0], torch.Tensor):
        return None
    return (_foldable(args[0]),) + tuple(args[1:])


def _foldable_output_grad(module: Any, args: Tuple[Any, ...], output: Any) -> None:
    """Forward hook of a frozen megatron-core linear layer: `_foldable` gradient of its output."""
    out = output[0]
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out.register_hook(_foldable)


def attach_lora(model: Any, cfg: LoraConfig, seed: int) -> List[str]:
    """Add an adapter to every targeted linear layer of this rank's stage and freeze the rest;
    returns the adapted layers' names. UserError when nothing of the model is targeted."""
    te_classes = _te_classes()
    targets = set(cfg.target_modules)
    first_expert = 0
    if parallel_state.get_expert_model_parallel_world_size() > 1:
        experts = next((m for n, m in model.named_modules() if n.endswith(".mlp.experts")), None)
        local = len(getattr(experts, "local_experts", []))
        first_expert = parallel_state.get_expert_model_parallel_rank() * local
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            module.register_forward_pre_hook(_foldable_input)
            module.register_forward_hook(_foldable_output_grad)
    attached = []
    for name, module in list(model.named_modules()):
        parent_name, _, leaf = name.rpartition(".")
        expert = EXPERT_MARK in f".{name}"
        if leaf not in targets or (expert and not cfg.experts):
            continue
        site = describe_linear(module, te_classes, expert)
        if site is None:
            if expert:
                raise UserError(
                    f"model.lora.experts: the experts of this model are not per-expert linear layers ({name} is "
                    f"{type(module).__name__}); LoRA on routed experts needs megatron's SequentialMLP"
                )
            continue
        if site.fused_norm:
            module.return_layernorm_output = True
        gated = leaf == "linear_fc1" and bool(module.config.gated_linear_unit)
        key = _global_key(model, name, first_expert)
        adapter = LoRAAdapter(module.weight, site, cfg, gated, seed=(seed * 1_000_003 + zlib.crc32(key.encode())))
        model.get_submodule(parent_name).add_module(leaf + SUFFIX, adapter)
        module.register_forward_hook(adapter.hook)
        attached.append(name)
    fewest = torch.tensor([len(attached)], dtype=torch.int64, device=current_device())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:  # the stages raise alike
        dist.all_reduce(fewest, op=dist.ReduceOp.MIN, group=parallel_state.get_pipeline_model_parallel_group())
    if int(fewest) == 0:
        raise UserError(
            f"model.lora: a pipeline stage has no linear layer matching model.lora.target_modules="
            f"{sorted(targets)} (experts={cfg.experts}): nothing to train there"
        )
    return attached


def adapters(model: Any) -> Dict[str, LoRAAdapter]:
    """Base weight name (as `model.named_parameters()` spells it) -> the adapter of that weight."""
    return {
        name[: -len(SUFFIX)] + ".weight": module
        for name, module in model.named_modules()
        if isinstance(module, LoRAAdapter)
    }


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key (local or global) belongs to an adapter."""
    return SUFFIX + "." in key


def adapter_sharded_state(model: Any) -> Dict[str, Any]:
    """The adapters' part of `model.sharded_state_dict()` (what a LoRA checkpoint holds)."""
    return {key: value for key, value in model.sharded_state_dict().items() if is_adapter_key(key)}


def load_adapter_state(model: Any, state: Dict[str, Any]) -> None:
    """Copy loaded adapter tensors (keys of `adapter_sharded_state`) into `model`; every adapter
    parameter must be among them."""
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if is_adapter_key(k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"LoRA adapter state: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
