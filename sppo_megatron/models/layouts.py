"""How one table row's HF tensor(s) map onto a megatron parameter and its tensor-parallel shards.

Each layout is an object with the three operations the bridge needs (TP = tensor-parallel size,
r = this rank's TP index, `dims` = the model's sizes, a `Bridge`):

    read_shard(reader, names, shape, tp, r, dims)  HF file -> this rank's shard (reads only its slice)
    hf_shapes(local_shape, tp, dims)               shapes of the full HF tensor(s) of one parameter
    assemble(shards, dims)                         TP shards (rank order) -> full HF tensor(s), views
                                                   where the layout allows (see Layout.assemble)

``replicated``  same tensor on every TP rank (norm weights, q/k norms)
``embedding``   vocab-parallel rows; megatron holds ``padded_vocab_size`` rows, the rows past
                the true vocabulary are zero and are stripped on export
``output``      the LM head, same layout as ``embedding`` (absent when embeddings are tied)
``row``         row-parallel linear: megatron rank r holds columns [r*n/TP, (r+1)*n/TP)
``qkv``         HF q_proj, k_proj, v_proj (weight or bias) -> one megatron ``linear_qkv``
                laid out per query group g as [q heads of g | k_g | v_g]; rank r holds a
                contiguous run of query groups
``gate_up``     HF gate_proj, up_proj -> megatron ``linear_fc1``; rank r holds
                [gate_r; up_r] (its slice of each), not a slice of [gate; up]
"""

from __future__ import annotations

from typing import Any, List, Protocol, Sequence, Tuple

import torch

from sppo_megatron.errors import UserError

Shape = Tuple[int, ...]


class ModelDims(Protocol):
    """The sizes a layout needs (a `Bridge` has them)."""

    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int


class Layout:
    """Base: subclasses read and size their shards; assembly joins the shards along dim 0 and
    returns the whole parameter as one HF tensor unless `_join` / `_views` say otherwise.
    One instance per layout (below); table rows refer to those."""

    name = ""
    num_hf = 1  # HF tensors per megatron parameter
    tp_sharded = True  # False: every TP rank holds the whole tensor
    # True: the whole parameter is the TP shards stacked along dim 0 in rank order, so the export
    # gathers them straight into one tensor (`all_gather_into_tensor`) and assembles that
    rows_sharded = True

    def __repr__(self) -> str:
        return self.name

    def read_shard(
        self, reader: Any, names: Sequence[str], shape: Shape, tp: int, r: int, dims: ModelDims
    ) -> torch.Tensor:
        raise NotImplementedError

    def hf_shapes(self, local_shape: Shape, tp: int, dims: ModelDims) -> List[Shape]:
        raise NotImplementedError

    def assemble(self, shards: Sequence[torch.Tensor], dims: ModelDims) -> List[torch.Tensor]:
        """Full HF tensor(s) from the TP shards of one megatron parameter (rank order).

        Zero-copy where the layout allows: with one shard (TP=1, or a replicated tensor) the
        shard is the parameter itself and an HF tensor that is a contiguous view of it is
        returned as that view (it aliases the parameter); several shards are joined into one new
        tensor first, then viewed the same way. Only a view that is not contiguous (a re-layout:
        qkv with several query groups) is copied, once, into a new tensor."""
        full = shards[0] if len(shards) == 1 else self._join(shards)
        return [
            view.view(shape) if view.is_contiguous() else _fresh(view, shape) for view, shape in self._views(full, dims)
        ]

    def _join(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(shards), dim=0)

    def _views(self, full: torch.Tensor, dims: ModelDims) -> List[Tuple[torch.Tensor, Shape]]:
        """(view of `full`, HF shape) for each HF tensor of one whole megatron parameter."""
        return [(full, tuple(full.shape))]


class ReplicatedLayout(Layout):
    name = "replicated"
    tp_sharded = False

    def read_shard(self, reader, names, shape, tp, r, dims):
        return reader.read(names[0])

    def hf_shapes(self, local_shape, tp, dims):
        return [tuple(local_shape)]

    def assemble(self, shards, dims):
        return super().assemble(shards[:1], dims)


class VocabLayout(Layout):
    """The embedding (and the untied LM head): padded rows are zero-filled on load, cut on export."""

    name = "embedding"

    def read_shard(self, reader, names, shape, tp, r, dims):
        full = reader.shape(names[0])
        if full[0] != dims.vocab_size:
            raise UserError(
                f"{reader.hf_dir}: {names[0]} has {full[0]} rows but config.json says vocab_size={dims.vocab_size}"
            )
        start = r * shape[0]
        stop = min(start + shape[0], dims.vocab_size)
        out = torch.zeros(shape, dtype=torch.float32)
        if stop > start:
            part = reader.read(names[0], rows=(start, stop))
            out = out.to(part.dtype)
            out[: stop - start] = part
        return out

    def hf_shapes(self, local_shape, tp, dims):
        return [(dims.vocab_size,) + tuple(local_shape[1:])]

    def _views(self, full, dims):
        view = full[: dims.vocab_size]
        return [(view, tuple(view.shape))]


class OutputLayout(VocabLayout):
    name = "output"


class RowLayout(Layout):
    name = "row"
    rows_sharded = False  # sharded along dim 1

    def read_shard(self, reader, names, shape, tp, r, dims):
        n = shape[1]
        return reader.read(names[0], cols=(r * n, (r + 1) * n))

    def hf_shapes(self, local_shape, tp, dims):
        return [(local_shape[0], local_shape[1] * tp)]

    def _join(self, shards):
        return torch.cat(list(shards), dim=1)


class QKVLayout(Layout):
    name = "qkv"
    num_hf = 3

    def read_shard(self, reader, names, shape, tp, r, dims):
        groups = dims.num_kv_heads // tp
        per_group_q = (dims.num_attention_heads // dims.num_kv_heads) * dims.head_dim
        hd = dims.head_dim
        q = reader.read(names[0], rows=(r * groups * per_group_q, (r + 1) * groups * per_group_q))
        k = reader.read(names[1], rows=(r * groups * hd, (r + 1) * groups * hd))
        v = reader.read(names[2], rows=(r * groups * hd, (r + 1) * groups * hd))
        rest = tuple(q.shape[1:])
        fused = torch.cat(
            [q.reshape(groups, per_group_q, *rest), k.reshape(groups, hd, *rest), v.reshape(groups, hd, *rest)], dim=1
        )
        return fused.reshape(-1, *rest)

    def hf_shapes(self, local_shape, tp, dims):
        rest = tuple(local_shape[1:])
        q = dims.num_attention_heads * dims.head_dim
        kv = dims.num_kv_heads * dims.head_dim
        return [(q,) + rest, (kv,) + rest, (kv,) + rest]

    def _views(self, full, dims):
        hd = dims.head_dim
        per_group_q = (dims.num_attention_heads // dims.num_kv_heads) * hd
        rest = tuple(full.shape[1:])
        grouped = full.reshape(dims.num_kv_heads, per_group_q + 2 * hd, *rest)
        return [
            (v, (dims.num_kv_heads * v.shape[1], *rest)) for v in torch.split(grouped, [per_group_q, hd, hd], dim=1)
        ]


class GateUpLayout(Layout):
    name = "gate_up"
    num_hf = 2
    rows_sharded = False  # each rank holds [gate_r; up_r]

    def read_shard(self, reader, names, shape, tp, r, dims):
        n = shape[0] // 2
        gate = reader.read(names[0], rows=(r * n, (r + 1) * n))
        up = reader.read(names[1], rows=(r * n, (r + 1) * n))
        return torch.cat([gate, up], dim=0)

    def hf_shapes(self, local_shape, tp, dims):
        n = local_shape[0] * tp // 2
        rest = tuple(local_shape[1:])
        return [(n,) + rest, (n,) + rest]

    def assemble(self, shards, dims):
        if len(shards) == 1:
            return super().assemble(shards, dims)
        halves = [s.chunk(2, dim=0) for s in shards]
        return [torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)]

    def _views(self, full, dims):
        return [(v, tuple(v.shape)) for v in full.chunk(2, dim=0)]


REPLICATED = ReplicatedLayout()
EMBEDDING = VocabLayout()
OUTPUT = OutputLayout()
ROW = RowLayout()
QKV = QKVLayout()
GATE_UP = GateUpLayout()


def _fresh(view: torch.Tensor, shape: Shape) -> torch.Tensor:
    """A new contiguous tensor of `shape` holding the values of `view` (one copy, never an alias)."""
    out = torch.empty(shape, dtype=view.dtype, device=view.device)
    out.view(view.shape).copy_(view)
    return out
